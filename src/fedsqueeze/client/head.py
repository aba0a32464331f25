"""The language-model head over the response tokens only, a few dozen at a time.

A causal LM's forward builds logits for every position of the padded batch (batch x tokens x
vocabulary, in fp32 for the loss) and keeps them, their softmax and their gradient alive until the
backward pass: with SmolLM2's 49,152 words, leaving them out cut a training step's peak memory by 18%
on average (benchmarks/step_memory.py), and with a 128k vocabulary at long contexts they are gigabytes.
Only response tokens count in the loss, so here the decoder runs once, the head is applied to the
response positions alone, in chunks of about CHUNK_BYTES of fp32 logits, and each chunk's gradient is
taken at once and handed back to the decoder's hidden states, so no more than one chunk of logits is
ever alive. The loss and gradient are the model's own (the mean token cross-entropy), up to the order
of float sums.

Models whose head is more than a linear layer on the last hidden state (a logit soft-cap or scale)
fall back to the model's own forward: `split_head` checks the architecture once per model, on a
probe, and says why it fell back.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..hardware import Placement

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 23  # 8 MiB of fp32 logits per chunk
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
_CHECKED = "_fedsqueeze_split_head"  # set on the model: (decoder, head) or None


def _parts(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None, "it has no separate decoder and output layer"
    if decoder is None or head is None:
        return None, "it has no separate decoder and output layer"
    for name in _LOGIT_TRANSFORMS:
        value = getattr(base.config, name, None)
        if value not in (None, 1, 1.0):
            return None, f"its head transforms the logits ({name} = {value})"
    return (decoder, head), ""


@torch.no_grad()
def _reproduces_logits(model, decoder, head, placement: Placement) -> bool:
    """The split gives the model's own logits on a probe (catches a head this module does not know)."""
    was_training = model.training
    model.eval()
    vocab = head.weight.shape[0]
    ids = (torch.arange(1, 9, device=placement.device) * 7919 % vocab).unsqueeze(0)
    mask = torch.ones_like(ids)
    with placement.autocast():
        whole = model(input_ids=ids, attention_mask=mask).logits.float()
        split = head(decoder(input_ids=ids, attention_mask=mask).last_hidden_state).float()
    model.train(was_training)
    return whole.shape == split.shape and torch.allclose(whole, split, rtol=1e-3, atol=1e-3)


def split_head(model, placement: Placement):
    """(decoder, head) where the head may be applied apart from the decoder, else None (once per model)."""
    if hasattr(model, _CHECKED):
        return getattr(model, _CHECKED)
    parts, why = _parts(model)
    if parts is not None and not _reproduces_logits(model, parts[0], parts[1], placement):
        parts, why = None, "its logits differ from the output layer applied to the last hidden state"
    if parts is None:
        log.info("the loss uses the model's own forward (full logits): %s", why)
    object.__setattr__(model, _CHECKED, parts)  # a plain attribute, not a registered submodule
    return parts


def _chunk_tokens(head) -> int:
    return max(1, CHUNK_BYTES // (4 * head.weight.shape[0]))


def _chunked_cross_entropy(head, hidden, targets, placement: Placement, reduction: str):
    """(slice, cross-entropy) of each chunk of response positions; the chunk's logits live only
    inside its cross-entropy's graph."""
    step = _chunk_tokens(head)
    for i in range(0, len(targets), step):
        chunk = slice(i, i + step)
        with placement.autocast():
            logits = head(hidden[chunk])
        loss = F.cross_entropy(logits.float(), targets[chunk], reduction=reduction)
        del logits
        yield chunk, loss


def _response(decoder, batch: dict, placement: Placement):
    """Hidden states at the positions that predict a response token, and those tokens."""
    with placement.autocast():
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    return hidden[:, :-1][keep], targets[keep], keep


def backward_loss(model, batch: dict, placement: Placement, tokens: int, scaler=None) -> torch.Tensor:
    """Runs forward and backward of `batch`'s summed response-token cross-entropy divided by
    `tokens` (the whole step's response tokens, so micro-batches add up to the big batch's mean).
    Returns that loss, detached."""
    parts = split_head(model, placement)
    if parts is None:
        with placement.autocast():
            loss = model(**batch, num_items_in_batch=torch.tensor(tokens, device=placement.device)).loss
        (scaler.scale(loss) if scaler else loss).backward()
        return loss.detach()
    decoder, head = parts
    hidden, targets, _ = _response(decoder, batch, placement)
    total = torch.zeros((), device=placement.device)
    if targets.numel() == 0:
        return total
    cut = hidden.detach().requires_grad_()  # the chunks' gradients gather here
    for _, chunk_sum in _chunked_cross_entropy(head, cut, targets, placement, "sum"):
        loss = chunk_sum / tokens
        (scaler.scale(loss) if scaler else loss).backward()  # frees this chunk's logits before the next
        total += loss.detach()
    hidden.backward(cut.grad)
    return total


@torch.no_grad()
def token_losses(model, batch: dict, placement: Placement) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, response tokens) of each row of `batch`, as float64 and int64 vectors."""
    parts = split_head(model, placement)
    targets_all = batch["labels"][:, 1:]
    counts = (targets_all != -100).sum(dim=1)
    if parts is None:
        with placement.autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shifted = logits[:, :-1].float().transpose(1, 2)
        per_token = F.cross_entropy(shifted, targets_all, ignore_index=-100, reduction="none")
        return per_token.sum(dim=1).double(), counts
    decoder, head = parts
    hidden, targets, keep = _response(decoder, batch, placement)
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(len(counts), dtype=torch.float64, device=hidden.device)
    for chunk, per_token in _chunked_cross_entropy(head, hidden, targets, placement, "none"):
        sums.index_add_(0, rows[chunk], per_token.double())
    return sums, counts
