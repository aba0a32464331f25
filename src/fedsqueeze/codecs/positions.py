"""Positions of the entries a sparse structure keeps, each tensor in its cheapest encoding.

Per tensor with n elements and k kept positions (sorted, distinct), the candidates cost:
    deltas  LEB128 varints of the gaps (p[0], p[i] - p[i-1] - 1): about 1 byte each below 1/128 gaps
    int32   4k bytes
    bitmap  ceil(n / 8) bytes: wins above roughly 1 kept entry in 8-12
    all     0 bytes, when k == n
The chosen mode travels in the tensor's count varint (k * 4 + mode), so its bytes are counted.

Section layout:
    per tensor   varint k * 4 + mode
    deltas       varint byte length, then the varints of every delta-mode tensor, in order
    int32        4 bytes per position of every int32-mode tensor, in order
    bitmap       ceil(n / 8) bytes per bitmap-mode tensor, in order (LSB first, padding bits 0)
Grouping streams by mode lets both ends process all tensors of a mode with one vectorized pass.
"""

from __future__ import annotations

import numpy as np

from .entry import Entry, PayloadError
from .wire import Reader, Writer, encode_varints, varint_sizes

DELTAS, INT32, BITMAP, ALL = 0, 1, 2, 3
MODES = 4


def _segment_starts(counts: np.ndarray) -> np.ndarray:
    return np.cumsum(counts) - counts


def write(w: Writer, numels: np.ndarray, counts: np.ndarray, positions: np.ndarray) -> None:
    """positions: every tensor's sorted positions, concatenated in entry order (int64)."""
    starts = _segment_starts(counts)
    gaps = np.empty_like(positions)
    if positions.size:
        gaps[1:] = positions[1:] - positions[:-1] - 1
        first = starts[counts > 0]
        gaps[first] = positions[first]
    sizes = varint_sizes(gaps)
    cum = np.concatenate(([0], np.cumsum(sizes)))
    delta_cost = cum[starts + counts] - cum[starts]

    costs = np.stack(
        [
            delta_cost,
            4 * counts,
            (numels + 7) // 8,
            np.where(counts == numels, 0, np.iinfo(np.int64).max),
        ]
    )
    modes = np.argmin(costs, axis=0).astype(np.int64)  # ties: the earlier (simpler) mode
    w.array(encode_varints(counts * MODES + modes))

    element_mode = np.repeat(modes, counts)
    delta_stream = encode_varints(gaps[element_mode == DELTAS])
    w.varint(delta_stream.size)
    w.array(delta_stream)
    w.array(positions[element_mode == INT32].astype("<u4"))
    bitmap = modes == BITMAP
    if bitmap.any():
        w.array(_pack_bitmaps(numels[bitmap], counts[bitmap], positions[element_mode == BITMAP]))


def _pack_bitmaps(numels: np.ndarray, counts: np.ndarray, positions: np.ndarray) -> np.ndarray:
    padded = (numels + 7) // 8 * 8
    bits = np.zeros(int(padded.sum()), np.uint8)
    bits[positions + np.repeat(_segment_starts(padded), counts)] = 1
    return np.packbits(bits, bitorder="little")


def read(r: Reader, entries: list[Entry]) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Counts per entry and each entry's sorted positions (None: every position)."""
    numels = np.array([e.numel for e in entries], np.int64)
    meta = r.varints(len(entries), "position counts")
    counts, modes = meta // MODES, meta % MODES
    too_many = np.flatnonzero(counts > numels)
    if too_many.size:
        e = entries[too_many[0]]
        raise PayloadError(f"tensor {e.name!r} claims {counts[too_many[0]]} kept entries out of {e.numel}")
    not_all = np.flatnonzero((modes == ALL) & (counts != numels))
    if not_all.size:
        raise PayloadError(f"tensor {entries[not_all[0]].name!r} claims all positions but a partial count")

    result: list[np.ndarray | None] = [None] * len(entries)
    by_mode = {m: np.flatnonzero(modes == m) for m in (DELTAS, INT32, BITMAP)}

    idx = by_mode[DELTAS]
    stream = r.varint("position deltas length")
    data = np.frombuffer(r.take(stream, "position deltas"), np.uint8)
    gaps_reader = Reader(data, "position deltas")
    gaps = gaps_reader.varints(int(counts[idx].sum()), "position deltas")
    gaps_reader.done("position deltas")
    _split_into(result, idx, counts[idx], _positions_from_gaps(gaps, counts[idx], numels[idx], entries, idx))

    idx = by_mode[INT32]
    pos = r.array("<u4", int(counts[idx].sum()), "int32 positions").astype(np.int64)
    _check_sorted(pos, counts[idx], numels[idx], entries, idx)
    _split_into(result, idx, counts[idx], pos)

    idx = by_mode[BITMAP]
    if idx.size:
        _split_into(result, idx, counts[idx], _read_bitmaps(r, counts[idx], numels[idx], entries, idx))
    for i in np.flatnonzero(modes == ALL):
        result[i] = None
    return counts, result


def _split_into(result: list, idx: np.ndarray, counts: np.ndarray, pos: np.ndarray) -> None:
    for i, part in zip(idx.tolist(), np.split(pos, np.cumsum(counts)[:-1]) if idx.size else []):
        result[i] = part


def _positions_from_gaps(gaps, counts, numels, entries, idx) -> np.ndarray:
    if gaps.size == 0:
        return gaps
    # Bound every gap first so the running sums below cannot overflow int64.
    if gaps.max() >= numels.max():
        raise PayloadError("position delta points past the end of its tensor")
    run = np.cumsum(gaps + 1)
    starts = _segment_starts(counts)
    before = np.where(starts > 0, run[np.maximum(starts - 1, 0)], 0)
    pos = run - np.repeat(before, counts) - 1
    _check_last(pos, counts, numels, entries, idx)
    return pos


def _check_sorted(pos, counts, numels, entries, idx) -> None:
    if pos.size == 0:
        return
    rising = np.ones(pos.size, bool)
    rising[1:] = pos[1:] > pos[:-1]
    rising[_segment_starts(counts)[counts > 0]] = True  # a new tensor may start anywhere
    if not rising.all():
        raise PayloadError("int32 positions are not strictly increasing")
    _check_last(pos, counts, numels, entries, idx)


def _check_last(pos, counts, numels, entries, idx) -> None:
    nonempty = counts > 0
    last = pos[(np.cumsum(counts) - 1)[nonempty]]
    bad = np.flatnonzero(last >= numels[nonempty])
    if bad.size:
        e = entries[idx[nonempty][bad[0]]]
        raise PayloadError(f"position {last[bad[0]]} outside tensor {e.name!r} of {e.numel} elements")


def _read_bitmaps(r: Reader, counts, numels, entries, idx) -> np.ndarray:
    nbytes = (numels + 7) // 8
    packed = r.array("u1", int(nbytes.sum()), "position bitmaps")
    bits = np.unpackbits(packed, bitorder="little")
    hits = np.flatnonzero(bits)
    bit_starts = 8 * _segment_starts(nbytes)
    owner = np.searchsorted(bit_starts, hits, side="right") - 1
    local = hits - bit_starts[owner]
    if (local >= numels[owner]).any():
        raise PayloadError("position bitmap has padding bits set")
    found = np.bincount(owner, minlength=len(counts))
    bad = np.flatnonzero(found != counts)
    if bad.size:
        e = entries[idx[bad[0]]]
        raise PayloadError(f"tensor {e.name!r}: bitmap holds {found[bad[0]]} positions, count says {counts[bad[0]]}")
    return local
