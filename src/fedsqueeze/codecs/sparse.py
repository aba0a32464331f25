"""sparse: LOSSLESS. Sends exactly the non-zero entries and their positions (cheapest encoding per
tensor), for methods that sparsify by themselves (FedSRD, Fed-DARE) and need the bytes counted.

Error bound: exact (a -0.0 arrives as 0.0). With a lossy value stage after it, that stage's bound
applies to the non-zero values.
"""

from __future__ import annotations

import numpy as np

from .base import Entry
from .sparsify import SparseStructure


class Sparse(SparseStructure):
    """Exactly the non-zero entries and their positions; lossless."""

    name = "sparse"
    lossless = True
    keeps_support = True

    def select(self, entries: list[Entry]):
        kept = [np.flatnonzero(e.array()) for e in entries]
        counts = np.array([p.size for p in kept], np.int64)
        if not entries:
            return counts, np.zeros(0, np.int64), np.zeros(0, np.float32)
        values = np.concatenate([e.array()[p] for e, p in zip(entries, kept)])
        return counts, np.concatenate(kept).astype(np.int64, copy=False), values
