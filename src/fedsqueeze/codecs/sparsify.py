"""The half that topk and sparse share: send some positions of each tensor and their values."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import positions as pos_codec
from .base import Entry, Plan, Structure
from .wire import Reader, Writer


def keep_count(numel: int, fraction: float | None, k: int | None) -> int:
    """Entries kept of a tensor: k (capped at its size) or a rounded fraction, at least one."""
    if numel == 0:
        return 0
    if k is not None:
        return min(k, numel)
    assert fraction is not None
    return min(numel, max(1, int(fraction * numel + 0.5)))


class SparseStructure(Structure):
    def select(self, entries: list[Entry]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(counts per entry, sorted positions concatenated, their float32 values concatenated)."""
        raise NotImplementedError

    def encode(self, entries: list[Entry], w: Writer) -> Plan:
        counts, positions, values = self.select(entries)
        numels = np.array([e.numel for e in entries], np.int64)
        pos_codec.write(w, numels, counts, positions)
        per_entry = np.split(positions, np.cumsum(counts)[:-1]) if entries else []
        return Plan(counts, scatter_rebuild(entries, counts, list(per_entry)), values)

    def decode(self, entries: list[Entry], r: Reader) -> Plan:
        counts, per_entry = pos_codec.read(r, entries)
        return Plan(counts, scatter_rebuild(entries, counts, per_entry))


def scatter_rebuild(entries: list[Entry], counts: np.ndarray, per_entry: Sequence[np.ndarray | None]):
    def rebuild(values: np.ndarray) -> list[np.ndarray]:
        out = []
        offset = 0
        for e, k, pos in zip(entries, counts.tolist(), per_entry):
            part = values[offset : offset + k]
            offset += k
            if pos is None:  # every position kept
                out.append(np.array(part, np.float32))
            else:
                dense = np.zeros(e.numel, np.float32)
                dense[pos] = part
                out.append(dense)
        return out

    return rebuild
