"""One client's local training for a round: its data slice, the seeded batch plan, the optional
work limit (hybrid partial work) and the loop itself (trainer.py)."""

from __future__ import annotations

import hashlib
import time

import torch

from ..data import sample_batches
from ..tensors import Tensors
from .trainer import TrainSettings, train_local


def train_client(
    s,
    client: int,
    rnd: int,
    start: Tensors,
    on_step=None,
    steps: int | None = None,
    seconds: float | None = None,
    trainable=None,
) -> tuple[Tensors, list[float]]:
    """Trains a Session's adapter from `start` on `client`'s data; deterministic in (seed, client, rnd).

    steps / seconds (hybrid partial work): stop after that many of the round's local steps, or
    before the step that would end past `seconds` of wall-clock (always at least one step); the
    rest of the round's plan (and its learning-rate schedule) is simply not reached.
    trainable: name -> bool of the tensors trained (default: the method's `trainable`)."""
    t = s.cfg.train
    data = s.federation.clients[client]
    s.adapter.set(start)
    params = s.adapter.trainable(trainable or s.client_method.trainable)
    pad = s.tokenizer.pad_token_id
    lo, hi = s.client_method.data_slice(rnd)
    first, last = int(lo * len(data.train)), max(int(hi * len(data.train)), int(lo * len(data.train)) + 1)
    plan = sample_batches(last - first, t.batch_size, s.local_steps, s.cfg.seed, client, rnd)
    plan = [[first + i for i in batch] for batch in plan][:steps]
    torch.manual_seed(seed_of(s.cfg.seed, "train", client, rnd))  # LoRA dropout, if any
    settings = TrainSettings(
        s.local_steps, t.lr, t.weight_decay, t.schedule, t.warmup_steps, t.grad_clip, t.micro_batch_size
    )
    width = s.cfg.data.max_length if t.pad_to == "max_length" else None
    batches = (data.train.batch(ix, pad, width) for ix in plan)
    if seconds is not None:
        batches = within_seconds(batches, seconds)
    losses = train_local(s.model, params, batches, settings, on_step, s.placement)
    return s.adapter.get(), losses


def seed_of(*parts) -> int:
    """A stable 32-bit seed from its parts (str hashes are salted per process, so not hash())."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def within_seconds(batches, seconds: float):
    """Yields batches while one more step, at the mean pace so far, still ends within `seconds`
    of the first; the first always comes (a client that reports something beats one that does not)."""
    t0 = time.perf_counter()
    for n, batch in enumerate(batches):
        if n and (time.perf_counter() - t0) * (n + 1) / n > seconds:
            return
        yield batch
