"""Named tensors and the adapter layout that both ends of a link share."""

from __future__ import annotations

import hashlib
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
    def of(cls, tensors: Tensors) -> "Layout":
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


def add(a: Tensors, b: Tensors, scale: float = 1.0) -> Tensors:
    """a + scale * b over b's keys (a's other keys are kept)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = a[k] + scale * v
    return out


def sub(a: Tensors, b: Tensors) -> Tensors:
    return {k: a[k] - b[k] for k in a}


def nbytes(tensors: Tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
