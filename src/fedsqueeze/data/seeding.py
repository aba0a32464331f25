"""Seeded generators for the data layer: every RNG is derived from (seed, a fixed purpose tag, ...),
never from global state, so partitions, splits and batch plans depend only on the data, the config
and the seed. Its own module so that every partitioner file can draw from it."""

from __future__ import annotations

import numpy as np


def seeded_rng(*key: int) -> np.random.Generator:
    """A generator that depends on `key` only (seed, purpose tag, client, round...)."""
    return np.random.default_rng(np.random.SeedSequence([abs(int(k)) for k in key]))
