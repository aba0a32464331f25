"""topk: keep the k largest-magnitude entries, per tensor or over the whole message.

Parameters: fraction (default 0.01) or k (exactly one); scope "tensor" (k per tensor, at least 1 of
each non-empty tensor) or "global" (k over all tensors together, so busy tensors get more).

Error bound: kept entries are exact (before the value stage); every dropped |x_i| is <= every kept
|x_j| within the scope, hence over the scope ||x - x_hat||^2 <= (1 - k/n) * ||x||^2.
Positions go in the cheapest of bitmap / delta varints / int32 per tensor (see positions.py).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..errors import ConfigError
from .base import Entry, StageParams
from .sparsify import SparseStructure, keep_count


class TopKParams(StageParams):
    fraction: float | None = Field(0.01, ge=0.0, le=1.0, description="share of entries kept")
    k: int | None = Field(None, ge=1, description="entries kept (instead of fraction)")
    scope: Literal["tensor", "global"] = Field(
        "tensor", description="the k largest of each tensor, or of the whole message"
    )


class TopK(SparseStructure):
    """k largest magnitudes per tensor or global; ||x - x_hat||^2 <= (1 - k/n) ||x||^2."""

    name = "topk"
    Params = TopKParams
    params: TopKParams

    def check(self) -> None:
        if "fraction" in self.params.model_fields_set and self.params.k is not None:
            raise ConfigError("codec 'topk': give fraction or k, not both")
        if self.params.k is not None:
            self.params.fraction = None
        elif self.params.fraction is None or self.params.fraction <= 0:
            raise ConfigError("codec 'topk': fraction must be > 0")

    def select(self, entries: list[Entry]):
        if self.params.scope == "global":
            return self._select_global(entries)
        counts = np.array([keep_count(e.numel, self.params.fraction, self.params.k) for e in entries], np.int64)
        positions: list[np.ndarray] = [np.zeros(0, np.int64)] * len(entries)
        # Tensors of equal size share one batched topk: 420 LoRA tensors come in a handful of sizes.
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (e, k) in enumerate(zip(entries, counts.tolist())):
            if k:
                groups[(e.numel, k)].append(i)
        for (numel, k), members in groups.items():
            if k == numel:
                for i in members:
                    positions[i] = np.arange(numel)
                continue
            magnitudes = torch.empty(len(members), numel)
            for row, i in enumerate(members):  # one pass: source -> |x| rows, no stacked copy
                torch.abs(entries[i].tensor(), out=magnitudes[row])
            chosen = torch.topk(magnitudes, k, dim=1, sorted=False).indices
            rows = torch.sort(chosen, dim=1).values.numpy()
            for row, i in enumerate(members):
                positions[i] = rows[row]
        if not entries:
            return counts, np.zeros(0, np.int64), np.zeros(0, np.float32)
        values = np.concatenate([e.array()[p] for e, p in zip(entries, positions)])
        return counts, np.concatenate(positions).astype(np.int64, copy=False), values

    def _select_global(self, entries: list[Entry]):
        numels = np.array([e.numel for e in entries], np.int64)
        total = int(numels.sum())
        k = keep_count(total, self.params.fraction, self.params.k)
        if k == 0:
            return np.zeros(len(entries), np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        flat = torch.cat([e.tensor() for e in entries])
        chosen = torch.topk(flat.abs(), k, sorted=False).indices if k < total else torch.arange(total)
        idx = torch.sort(chosen).values.numpy().astype(np.int64, copy=False)
        offsets = np.cumsum(numels) - numels
        owner = np.searchsorted(offsets, idx, side="right") - 1
        counts = np.bincount(owner, minlength=len(entries)).astype(np.int64)
        return counts, idx - offsets[owner], flat.numpy()[idx]
