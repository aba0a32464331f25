"""Local training and evaluation: a plain torch loop on the peft model, on the placement's device."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..hardware import Placement


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    lr: float
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    micro_batch_size: int | None = None

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(self.steps - self.warmup_steps, 1)
        progress = (step - self.warmup_steps) / span
        if self.schedule == "linear":
            return 1.0 - progress
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0


def micro_batches(batch: dict, size: int | None) -> list[dict]:
    """Row chunks of one padded batch (same padding, so the chunks add up to the batch exactly)."""
    rows = batch["input_ids"].shape[0]
    if size is None or size >= rows:
        return [batch]
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, rows, size)]


def _backward(model, batch: dict, settings: TrainSettings, placement: Placement, scaler) -> torch.Tensor:
    """Forward + backward of one step's batch; returns its mean token loss (detached).

    With micro-batches each chunk's loss is its token sum over the whole batch's token count, so
    the accumulated gradient is the one big batch's."""
    chunks = micro_batches(batch, settings.micro_batch_size)
    if len(chunks) == 1:
        with placement.autocast():
            loss = model(**placement.batch(batch)).loss
        (scaler.scale(loss) if scaler else loss).backward()
        return loss.detach()
    tokens = (batch["labels"][:, 1:] != -100).sum()
    total = torch.zeros((), device=placement.device)
    for chunk in chunks:
        with placement.autocast():
            loss = model(**placement.batch(chunk), num_items_in_batch=tokens).loss
        (scaler.scale(loss) if scaler else loss).backward()
        total += loss.detach()
    return total


def train_local(
    model,
    params: list[torch.nn.Parameter],
    batches: Iterable[dict],
    settings: TrainSettings,
    on_step: Callable[[float], None] | None = None,
    placement: Placement | None = None,
) -> list[float]:
    """Runs one round of local steps with a fresh AdamW (as every federated client does) and
    returns the per-step losses."""
    placement = placement or Placement.cpu_fp32()
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.lr_factor)
    scaler = placement.grad_scaler()
    model.train()
    losses = []
    for batch in batches:
        loss = _backward(model, batch, settings, placement, scaler)
        if scaler:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        if scaler:
            scaler.step(optimizer)  # skips the step (and lowers the scale) on inf/NaN gradients
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value}; lower train.lr or check the data")
        losses.append(value)
        if on_step:
            on_step(value)
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model, batches: Iterable[dict], placement: Placement | None = None) -> float:
    """Mean cross-entropy over all response tokens (token-weighted, so batch size doesn't matter)."""
    placement = placement or Placement.cpu_fp32()
    total, count = 0.0, 0
    model.eval()
    for batch in batches:
        batch = placement.batch(batch)
        labels = batch["labels"]
        with placement.autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shift_logits = logits[:, :-1].float()
        shift_labels = labels[:, 1:]
        total += float(
            F.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
        )
        count += int((shift_labels != -100).sum())
    return total / max(count, 1)


@torch.no_grad()
def example_losses(model, batches: Iterable[dict], placement: Placement | None = None) -> list[tuple[float, int]]:
    """(summed cross-entropy, response tokens) of every example, in order: what a pooled
    evaluation regroups (by domain, by client) into token-weighted means."""
    placement = placement or Placement.cpu_fp32()
    out: list[tuple[float, int]] = []
    model.eval()
    for batch in batches:
        batch = placement.batch(batch)
        with placement.autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shift_logits, shift_labels = logits[:, :-1].float(), batch["labels"][:, 1:]
        per_token = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none")
        sums, counts = per_token.sum(dim=1).tolist(), (shift_labels != -100).sum(dim=1).tolist()
        out.extend((float(s), int(c)) for s, c in zip(sums, counts))
    return out
