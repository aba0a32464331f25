"""Server-side admission: what every decoded upload must pass before it can touch the aggregate,
for every method and runtime. The driver bills an upload first, then asks here; a rejected one is
left out of its round and listed in `rejected` with its reason."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch

from ..config import ServerConfig
from ..tensors import Tensors


@dataclass
class Candidate:
    client: int
    tensors: Tensors
    claimed_examples: int
    known_examples: int | None
    """None: only the client knows (per-owner data); its claim is then capped, not checked."""


def screen(method, rnd: int, candidates: list[Candidate], cfg: ServerConfig) -> dict[int, str]:
    """client -> why its upload is rejected, for the round's decoded uploads."""
    reasons: dict[int, str] = {}
    norms: dict[int, float] = {}
    for c in candidates:
        values = method.update_values(c.tensors)
        reason = method.check_upload(rnd, c.client, c.tensors) or _claim(c) or _finite(values)
        if reason:
            reasons[c.client] = reason
        else:
            norms[c.client] = _norm(values)
    if cfg.max_update_norm is not None:
        for client, n in norms.items():
            if n > cfg.max_update_norm:
                reasons[client] = f"norm {n:.3g} above server.max_update_norm = {cfg.max_update_norm:g}"
    if cfg.norm_factor is not None:
        fine = {c: n for c, n in norms.items() if c not in reasons}
        for client, n in fine.items():
            others = [m for d, m in fine.items() if d != client]
            if others and n > cfg.norm_factor * statistics.median(others):
                reasons[client] = (
                    f"norm {n:.3g} above server.norm_factor = {cfg.norm_factor:g} x the median "
                    f"{statistics.median(others):.3g} of the round's other uploads"
                )
    return reasons


def _claim(c: Candidate) -> str | None:
    if c.known_examples is None:
        return None if c.claimed_examples >= 1 else f"claims {c.claimed_examples} examples"
    # The server built the same federation: a client's weight is what it holds, not what it says.
    if c.claimed_examples != c.known_examples:
        return f"claims {c.claimed_examples} examples, its partition holds {c.known_examples}"
    return None


def _finite(tensors: Tensors) -> str | None:
    for name, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            return f"non-finite values in {name}"
    return None


def _norm(tensors: Tensors) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in tensors.values()))
