"""The loss over response tokens with the head applied in chunks (client/head.py) is the model's own
mean token cross-entropy, loss and gradient, and never holds more than one chunk of logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedsqueeze import config as config_mod
from fedsqueeze.client import head as head_mod
from fedsqueeze.runtime.session import Session

from conftest import tiny_config


@pytest.fixture
def session(tmp_path, corpus):
    cfg = config_mod.load(tiny_config(tmp_path, corpus, **{"train.batch_size": "8"}))
    s = Session.build(cfg, log=lambda *_: None)
    noisy = {k: torch.randn_like(v) * 0.02 for k, v in s.adapter.get().items()}  # B != 0: A gets gradients
    s.adapter.set(noisy)
    return s


def _batch(s):
    batch = s.federation.clients[1].train.batch(list(range(8)), s.tokenizer.pad_token_id)
    assert len(set((batch["labels"] != -100).sum(1).tolist())) > 1  # rows of different lengths
    return batch


def _model_loss_and_grads(s, batch):
    """The reference: the model's own forward over every position, transformers' loss."""
    params = s.adapter.trainable(s.method.trainable)
    s.model.train()
    loss = s.model(**batch).loss
    loss.backward()
    grads = [p.grad.clone() for p in params]
    s.model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def _split_loss_and_grads(s, batch):
    params = s.adapter.trainable(s.method.trainable)
    s.model.train()
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    loss = head_mod.backward_loss(s.model, batch, s.placement, tokens)
    grads = [p.grad.clone() for p in params]
    s.model.zero_grad(set_to_none=True)
    return float(loss), grads


def _close(a, b):
    scale = max(float(g.abs().max()) for g in a)
    assert scale > 0
    assert max(float((x - y).abs().max()) for x, y in zip(a, b)) <= 5e-6 * scale


def test_chunked_head_gives_the_models_loss_and_gradient_and_holds_one_chunk_of_logits(session, monkeypatch):
    batch = _batch(session)
    want_loss, want_grads = _model_loss_and_grads(session, batch)
    decoder, head = head_mod.split_head(session.model, session.placement)
    monkeypatch.setattr(head_mod, "CHUNK_BYTES", 4 * head.weight.shape[0] * 7)  # 7 tokens of fp32 logits
    assert head_mod._chunk_tokens(head) == 7
    seen = []
    hook = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    try:
        got_loss, got_grads = _split_loss_and_grads(session, batch)
    finally:
        hook.remove()
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    _close(want_grads, got_grads)
    response = int((batch["labels"][:, 1:] != -100).sum())
    assert sum(seen) == response and max(seen) == 7  # response positions only, 7 at a time
    assert response < batch["input_ids"].numel()  # prompts and padding got no logits


def test_per_example_losses_equal_the_full_logits_ones(session, monkeypatch):
    from fedsqueeze.client import example_losses

    batch = _batch(session)
    session.model.eval()
    with torch.no_grad():
        logits = session.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="none")
    want = list(zip(per_token.sum(1).tolist(), (targets != -100).sum(1).tolist()))
    monkeypatch.setattr(head_mod, "CHUNK_BYTES", 4 * logits.shape[-1] * 5)
    got = example_losses(session.model, [batch], session.placement)
    assert [c for _, c in got] == [c for _, c in want]
    assert [s for s, _ in got] == pytest.approx([s for s, _ in want], rel=1e-5)


def test_a_head_that_transforms_logits_falls_back_to_the_models_forward(session, caplog):
    """A soft-capped or scaled head is not a plain linear layer on the last hidden state: the loss
    then runs through the model's forward (and says so once), with the same figures."""
    batch = _batch(session)
    want_loss, want_grads = _model_loss_and_grads(session, batch)
    session.model.get_base_model().config.final_logit_softcapping = 30.0
    with caplog.at_level("INFO", logger="fedsqueeze.client.head"):
        assert head_mod.split_head(session.model, session.placement) is None
    assert "final_logit_softcapping" in caplog.text
    got_loss, got_grads = _split_loss_and_grads(session, batch)
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    _close(want_grads, got_grads)


def test_the_probe_catches_a_head_it_does_not_know(session, monkeypatch):
    """No known attribute, but the model's logits are not head(hidden): the probe sees it."""
    base = session.model.get_base_model()
    forward = base.forward

    def doubled(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out

    monkeypatch.setattr(base, "forward", doubled)
    assert head_mod.split_head(session.model, session.placement) is None
