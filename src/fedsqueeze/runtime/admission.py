"""Server-side admission: what every decoded upload must pass before it can touch the aggregate,
for every method and runtime. The driver bills an upload first, then asks here; a rejected one is
left out of its round and listed in `rejected` with its reason.

What an upload may carry is the method's to say where it has the Admission mixin
(strategies/mixins.py); for every other method it is exactly the trained tensors of the layout
(TrainedTensors here)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch

from ..config import ServerConfig
from ..strategies import Method
from ..strategies.base import layout_mismatch, trained_shapes
from ..strategies.mixins import Admission
from ..tensors import Tensors


class TrainedTensors:
    """The admission of a method without the Admission mixin: an upload carries exactly the
    tensors of the layout that the method trains, in their shapes (what the default
    client_upload sends), and all of them are the update."""

    def __init__(self, method: Method):
        self.method = method
        self._shapes: dict[str, tuple[int, ...]] | None = None  # computed on first use

    def shapes(self) -> dict[str, tuple[int, ...]]:
        if self._shapes is None:
            self._shapes = trained_shapes(self.method.ctx.layout, self.method.trainable)
        return self._shapes

    def accepts(self, name: str, shape: tuple[int, ...]) -> bool:
        return self.shapes().get(name) == tuple(shape)

    def check_upload(self, rnd: int, client: int, tensors: Tensors) -> str | None:
        return layout_mismatch(tensors, self.shapes())

    def update_values(self, tensors: Tensors) -> Tensors:
        return tensors


def admission_of(method: Method) -> Admission | TrainedTensors:
    """Who says what `method`'s uploads may carry: the method itself, or the default."""
    return method if isinstance(method, Admission) else TrainedTensors(method)


@dataclass
class Candidate:
    client: int
    tensors: Tensors
    claimed_examples: int
    known_examples: int | None
    """None: only the client knows (per-owner data); its claim is then capped, not checked."""


def screen(
    admission: Admission | TrainedTensors, rnd: int, candidates: list[Candidate], cfg: ServerConfig
) -> dict[int, str]:
    """client -> why its upload is rejected, for the round's decoded uploads (`admission`: what
    admission_of says for the method)."""
    reasons: dict[int, str] = {}
    norms: dict[int, float] = {}
    for c in candidates:
        values = admission.update_values(c.tensors)
        reason = admission.check_upload(rnd, c.client, c.tensors) or _claim(c) or _finite(values)
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
