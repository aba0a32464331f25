"""Local training and evaluation: a plain torch loop on the peft model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    lr: float
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    bf16: bool = True

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


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def train_local(model, params: list[torch.nn.Parameter], batches: Iterable[dict], settings: TrainSettings,
                on_step: Callable[[float], None] | None = None) -> list[float]:
    """Runs one round of local steps with a fresh AdamW (as every federated client does) and
    returns the per-step losses."""
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.lr_factor)
    model.train()
    losses = []
    for batch in batches:
        with _autocast(settings.bf16):
            loss = model(**batch).loss
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value}; lower train.lr or check the data")
        losses.append(value)
        if on_step:
            on_step(value)
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model, batches: Iterable[dict], bf16: bool = True) -> float:
    """Mean cross-entropy over all response tokens (token-weighted, so batch size doesn't matter)."""
    total, count = 0.0, 0
    model.eval()
    for batch in batches:
        labels = batch["labels"]
        with _autocast(bf16):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shift_logits = logits[:, :-1].float()
        shift_labels = labels[:, 1:]
        total += float(F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                                       ignore_index=-100, reduction="sum"))
        count += int((shift_labels != -100).sum())
    return total / max(count, 1)
