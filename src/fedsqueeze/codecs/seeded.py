"""seeded: LOSSLESS. `sparse` for masks that both ends can draw: positions never travel when the
message carries a mask seed.

A method that drops entries at random draws its mask with `seeded_positions(seed, name, n, k)`
(the first k of a seeded permutation of range(n), one per tensor name; randk's generator, pure
integer arithmetic, so every install agrees) and sends a `Message(tensors, mask_seed=seed)`; the
wire carries the seed as the MASK_SEED marker (8 bytes, wire.py). For each tensor this stage then finds the shortest
prefix of that tensor's seeded order that holds all its non-zero entries and sends only the values
there, in that order; the receiver redraws the prefix from the seed and scatters them. A tensor
whose prefix holds more zeros than its positions are worth (zeros cost value_bits each, positions
about n H(k/n) bits), e.g. a catch-up state, or any message without a seed, is sent as `sparse`
sends it (positions.py). Error bound: exact (a -0.0 arrives as 0.0), as sparse.

Section layout: per tensor a varint, k * 2 + 1 for a seeded tensor of k values, 0 for an explicit
one; then the explicit tensors' positions (positions.py).
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from . import positions as pos_codec
from .base import Entry, PayloadError, Plan
from .randk import mix64, sample_positions
from .sparsify import SparseStructure, scatter_rebuild
from .wire import MASK_SEED, Reader, Writer, encode_varints, marker_seed
from .wire import seed_marker as seed_marker  # re-exported: where the seeded stage's users look


def position_bits(numel: int, nonzero: int) -> float:
    """What sending the positions costs, about: n * H(k / n) bits (Golomb-Rice comes within a few
    percent of it, positions.py)."""
    if nonzero in (0, numel):
        return 0.0
    p = nonzero / numel
    return -numel * (p * np.log2(p) + (1 - p) * np.log2(1 - p))


def tensor_key(seed: int, name: str) -> int:
    """The permutation key of one tensor: the message seed mixed with a hash of its name."""
    digest = hashlib.sha256(name.encode()).digest()
    return mix64(seed ^ struct.unpack("<Q", digest[:8])[0])


def seeded_positions(seed: int, name: str, numel: int, k: int) -> np.ndarray:
    """The k positions (distinct, uniformly random, not sorted) a mask of `name` keeps; the first
    k of the same order for every k, so a mask of k entries is a prefix of one of k + 1."""
    if k <= 0:
        return np.zeros(0, np.int64)
    return sample_positions(tensor_key(seed, name), np.array([numel], np.int64), np.array([k], np.int64))[0]


def shortest_prefix(seed: int, name: str, data: np.ndarray, nonzero: int) -> np.ndarray:
    """The shortest seeded_positions(seed, name, data.size, k) holding every non-zero of `data`."""
    if nonzero == 0:
        return np.zeros(0, np.int64)
    first = seeded_positions(seed, name, data.size, nonzero)
    if np.count_nonzero(data[first]) == nonzero:  # the usual case, a seeded mask: O(k) work
        return first
    order = seeded_positions(seed, name, data.size, data.size)
    rank = np.empty(data.size, np.int64)
    rank[order] = np.arange(data.size)
    return order[: int(rank[np.flatnonzero(data)].max()) + 1]


class Seeded(SparseStructure):
    """sparse, but positions drawn from the message's mask seed are not sent; lossless."""

    name = "seeded"
    lossless = True
    keeps_support = True

    def __init__(self, **values):
        super().__init__(**values)
        self.seed: int | None = None

    def use_markers(self, markers: dict[str, np.ndarray]) -> None:
        self.seed = marker_seed(markers[MASK_SEED]) if MASK_SEED in markers else None

    def encode(self, entries: list[Entry], w: Writer) -> Plan:
        per_entry: list[np.ndarray] = []
        seeded: list[bool] = []
        for e in entries:
            data = e.array()
            nonzero = int(np.count_nonzero(data))
            prefix = shortest_prefix(self.seed, e.name, data, nonzero) if self.seed is not None else None
            # seeded when the zeros its prefix sends cost less than the positions would
            if prefix is not None and (prefix.size - nonzero) * self.value_bits <= position_bits(e.numel, nonzero):
                per_entry.append(prefix)
                seeded.append(True)
            else:
                per_entry.append(np.flatnonzero(data))
                seeded.append(False)
        lengths = np.array([p.size for p in per_entry], np.int64)
        flags = np.array(seeded, bool)
        w.array(encode_varints(np.where(flags, 2 * lengths + 1, 0)))
        explicit = [p for p, s in zip(per_entry, seeded) if not s]
        positions = np.concatenate(explicit).astype(np.int64) if explicit else np.zeros(0, np.int64)
        numels = np.array([e.numel for e, s in zip(entries, seeded) if not s], np.int64)
        pos_codec.write(w, numels, lengths[~flags], positions)
        values = [e.array()[p] for e, p in zip(entries, per_entry)]
        flat = np.concatenate(values).astype(np.float32, copy=False) if values else np.zeros(0, np.float32)
        return Plan(lengths, scatter_rebuild(entries, lengths, list(per_entry)), flat)

    def decode(self, entries: list[Entry], r: Reader) -> Plan:
        meta = r.varints(len(entries), "seeded counts")
        is_seeded = meta % 2 == 1
        ks = meta // 2
        if ((~is_seeded) & (ks != 0)).any():
            raise PayloadError("seeded: an explicit tensor's count must be 0 here (it travels with its positions)")
        numels = np.array([e.numel for e in entries], np.int64)
        over = np.flatnonzero(is_seeded & (ks > numels))
        if over.size:
            e = entries[over[0]]
            raise PayloadError(f"tensor {e.name!r} claims {ks[over[0]]} seeded entries out of {e.numel}")
        if is_seeded.any() and self.seed is None:
            raise PayloadError("seeded positions but the message carries no mask seed")
        explicit = [e for e, s in zip(entries, is_seeded.tolist()) if not s]
        counts, explicit_positions = pos_codec.read(r, explicit)
        lengths = ks.copy()
        lengths[~is_seeded] = counts
        seed = self.seed if self.seed is not None else 0  # unused unless an entry is seeded (checked above)

        def rebuild(values: np.ndarray) -> list[np.ndarray]:
            # Drawing positions is O(k) work: only once the values section has been validated.
            it = iter(explicit_positions)
            per_entry = [
                seeded_positions(seed, e.name, e.numel, int(k)) if s else next(it)
                for e, k, s in zip(entries, ks.tolist(), is_seeded.tolist())
            ]
            return scatter_rebuild(entries, lengths, per_entry)(values)

        return Plan(lengths, rebuild)
