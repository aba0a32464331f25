"""Clipping and Gaussian noise on dicts of tensors, and the secret the noise is drawn from.

The noise must not be derivable from the config: anyone holding the config could subtract it. So
each noising party draws a secret from os.urandom once (the server for central mode, each client
for local mode, kept in its own state and checkpointed with it, never sent), and the noise of a
round comes from a generator seeded by a hash of (secret, purpose, round): a resumed run draws
the same noise, and no one without the secret can reproduce it. `privacy.noise_seed` replaces
the secret by one derived from the config, for tests (the summary then says the noise is known).
"""

from __future__ import annotations

import hashlib
import math
import os

import torch

from ..tensors import Tensors


def new_secret(noise_seed: int | None, *purpose: object) -> int:
    if noise_seed is None:
        return int.from_bytes(os.urandom(8), "little") >> 1
    digest = hashlib.sha256(repr(("fedsqueeze-dp", noise_seed, *purpose)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(secret: int, *keys: object) -> torch.Generator:
    digest = hashlib.sha256(repr((secret, *keys)).encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return g


def l2_norm(tensors: Tensors) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in tensors.values()))


def clip(tensors: Tensors, bound: float) -> tuple[Tensors, float]:
    """`tensors` scaled by min(1, bound / ||tensors||) (one L2 norm over all of them), and that norm."""
    norm = l2_norm(tensors)
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    return {k: v.float() * scale for k, v in tensors.items()}, norm


def add_noise(tensors: Tensors, std: float, g: torch.Generator, only_nonzero: bool = False) -> Tensors:
    """tensors + N(0, std^2) per entry, drawn in name order (only where non-zero: select-first)."""
    out = {}
    for name in sorted(tensors):
        v = tensors[name].float()
        noise = torch.randn(v.shape, generator=g, dtype=torch.float32) * std
        out[name] = v + (noise * (v != 0) if only_nonzero else noise)
    return {k: out[k] for k in tensors}
