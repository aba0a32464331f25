"""Local training and evaluation: a plain torch loop on the peft model, on the placement's device."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..hardware import Placement
from .head import backward_loss, token_losses


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
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    total = torch.zeros((), device=placement.device)
    for chunk in micro_batches(batch, settings.micro_batch_size):
        total += backward_loss(model, placement.batch(chunk), placement, tokens, scaler)
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
    losses = example_losses(model, batches, placement)
    return sum(s for s, _ in losses) / max(sum(c for _, c in losses), 1)


@torch.no_grad()
def example_losses(model, batches: Iterable[dict], placement: Placement | None = None) -> list[tuple[float, int]]:
    """(summed cross-entropy, response tokens) of every example, in order: what a pooled
    evaluation regroups (by domain, by client) into token-weighted means."""
    placement = placement or Placement.cpu_fp32()
    out: list[tuple[float, int]] = []
    model.eval()
    for batch in batches:
        sums, counts = token_losses(model, placement.batch(batch), placement)
        out.extend((float(s), int(c)) for s, c in zip(sums.tolist(), counts.tolist()))
    return out
