"""Named tensors and the adapter layout that both ends of a link share."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """Ordered names and shapes of an adapter's tensors.

    Both sides build it from the same model + LoRA config, so a blob can carry its 8-byte
    fingerprint instead of every tensor name.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, tensors: Tensors) -> Layout:
        return cls(tuple(tensors), tuple(tuple(t.shape) for t in tensors.values()))

    @property
    def fingerprint(self) -> bytes:
        h = hashlib.sha256()
        for name, shape in zip(self.names, self.shapes):
            h.update(name.encode())
            h.update(repr(shape).encode())
        return h.digest()[:8]

    def index(self, name: str) -> int:
        return self._positions[name]

    @property
    def _positions(self) -> dict[str, int]:
        cache = self.__dict__.get("_pos")
        if cache is None:
            cache = {n: i for i, n in enumerate(self.names)}
            object.__setattr__(self, "_pos", cache)
        return cache

    def __contains__(self, name: str) -> bool:
        return name in self._positions

    @property
    def numel(self) -> int:
        total = 0
        for shape in self.shapes:
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


def clone(tensors: Tensors) -> Tensors:
    return {k: v.detach().clone() for k, v in tensors.items()}


def prefixed(prefix: str, tensors: Tensors) -> Tensors:
    """Nests a state dict under `prefix` (e.g. "server/"), for flat checkpoints and client states."""
    return {f"{prefix}{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: Tensors) -> Tensors:
    """The entries under `prefix`, with it removed (the inverse of `prefixed`)."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def nested(prefix: str, groups: dict[int, Tensors]) -> Tensors:
    """Several state dicts keyed by an int (one per client) flattened as f"{prefix}{key}/{name}"."""
    return {f"{prefix}{key}/{name}": v for key, tensors in groups.items() for name, v in tensors.items()}


def unnested(prefix: str, tensors: Tensors) -> dict[int, Tensors]:
    """The inverse of `nested`: the state dicts under `prefix`, by their int key."""
    groups: dict[int, Tensors] = {}
    for k, v in unprefixed(prefix, tensors).items():
        key, _, name = k.partition("/")
        groups.setdefault(int(key), {})[name] = v
    return groups


def fp32_bytes(tensors: Tensors) -> int:
    """What `tensors` weigh as dense fp32: the reference every compression ratio is taken against."""
    return 4 * sum(t.numel() for t in tensors.values())


def relative_error(original: Tensors, decoded: Tensors) -> float:
    """||x - x_hat|| / ||x|| over all tensors of `original` (a missing tensor decodes as zeros), in
    float64. 0.0 when both are zero; inf when only the original is zero."""
    err = norm = 0.0
    for name, x in original.items():
        x = x.detach().double()
        y = decoded[name].detach().double() if name in decoded else torch.zeros_like(x)
        err += float(torch.sum((x - y) ** 2))
        norm += float(torch.sum(x**2))
    if norm == 0.0:
        return 0.0 if err == 0.0 else math.inf
    return math.sqrt(err / norm)
