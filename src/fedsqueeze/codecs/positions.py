"""Positions of the entries a sparse structure keeps, each tensor in its cheapest encoding.

Per tensor with n elements and k kept positions (sorted, distinct), the candidates cost:
    deltas  LEB128 varints of the gaps (p[0], p[i] - p[i-1] - 1): about 1 byte each below 1/128 gaps
    int32   4k bytes
    bitmap  ceil(n / 8) bytes: wins above roughly 1 kept entry in 8-12
    all     0 bytes, when k == n
    rice    Golomb-Rice codes of the gaps with a per-tensor parameter b: gap >> b in unary, then its
            low b bits. For positions spread at random (gaps near geometric) this is within a few
            percent of the entropy n * H(k / n) bits; at 12% density it is about 4.8 bits per kept
            entry where the bitmap costs 8.3 and deltas 8.
The chosen mode travels in the tensor's count varint (k * 8 + mode), so its bytes are counted.

Section layout:
    per tensor   varint k * 4 + mode
    deltas       varint byte length, then the varints of every delta-mode tensor, in order
    int32        4 bytes per position of every int32-mode tensor, in order
    bitmap       ceil(n / 8) bytes per bitmap-mode tensor, in order (LSB first, padding bits 0)
    rice         only if a tensor uses it: u8 b per rice-mode tensor; varint byte length of the
                 unary stream (each gap's quotient as that many 1 bits and a 0, LSB first, padding
                 bits 0); then the remainders, b bits per gap, most significant first (bits LSB
                 first in each byte, as everywhere), padding 0.
                 Quotients and remainders in two streams so that both ends decode them vectorized.
Grouping streams by mode lets both ends process all tensors of a mode with one vectorized pass.
"""

from __future__ import annotations

import numpy as np

from .entry import Entry, PayloadError
from .wire import Reader, Writer, encode_varints, varint_sizes

DELTAS, INT32, BITMAP, ALL, RICE = 0, 1, 2, 3, 4
MODES = 8  # room for more; the count varint is k * MODES + mode
MAX_RICE_PARAM = 31
RICE_OVERHEAD_BITS = 32  # its stream's length varint and padding, charged to each rice tensor


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

    params, rice_bits = _rice_params(gaps, counts, numels)
    costs = 8 * np.stack(  # in bits
        [
            delta_cost,
            4 * counts,
            (numels + 7) // 8,
            np.where(counts == numels, 0, np.iinfo(np.int64).max // 16),
        ]
    )
    costs = np.concatenate([costs, rice_bits[None]])
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
    rice = modes == RICE
    if rice.any():
        _write_rice(w, params[rice], counts[rice], gaps[element_mode == RICE])


def _rice_params(gaps: np.ndarray, counts: np.ndarray, numels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per tensor the Rice parameter b with the fewest bits (of the three around the geometric
    optimum log2(mean gap * ln 2)) and that cost in bits (overhead included; huge where empty)."""
    bits = np.full(counts.size, np.iinfo(np.int64).max // 16, np.int64)
    params = np.zeros(counts.size, np.int64)
    nonempty = np.flatnonzero(counts > 0)
    if nonempty.size == 0:
        return params, bits
    c = counts[nonempty]
    mean_gap = (numels[nonempty] - c) / c
    guess = np.floor(np.log2(np.maximum(mean_gap * np.log(2), 1.0))).astype(np.int64)
    for b in (guess - 1, guess, guess + 1):
        b = np.clip(b, 0, MAX_RICE_PARAM)
        shifted = gaps >> np.repeat(b, c)  # `gaps` holds exactly the non-empty tensors' gaps
        unary = np.add.reduceat(shifted + 1, _segment_starts(c))
        cost = unary + b * c + 8 + RICE_OVERHEAD_BITS
        better = cost < bits[nonempty]
        bits[nonempty] = np.where(better, cost, bits[nonempty])
        params[nonempty] = np.where(better, b, params[nonempty])
    return params, bits


def _local_index(counts: np.ndarray) -> np.ndarray:
    """0..count-1 for each segment, concatenated."""
    total = int(counts.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(_segment_starts(counts), counts)


def _write_rice(w: Writer, params: np.ndarray, counts: np.ndarray, gaps: np.ndarray) -> None:
    b = np.repeat(params, counts)
    quotients, remainders = gaps >> b, gaps & ((1 << b) - 1)
    w.array(params.astype(np.uint8))
    unary = np.ones(int((quotients + 1).sum()), np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 0  # each gap's terminating 0
    packed = np.packbits(unary, bitorder="little")
    w.varint(packed.size)
    w.array(packed)
    shift = np.repeat(b, b) - 1 - _local_index(b)
    w.array(np.packbits((np.repeat(remainders, b) >> shift) & 1, bitorder="little"))


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
    unknown = np.flatnonzero(modes > RICE)
    if unknown.size:
        raise PayloadError(f"tensor {entries[unknown[0]].name!r}: unknown position mode {modes[unknown[0]]}")
    not_all = np.flatnonzero((modes == ALL) & (counts != numels))
    if not_all.size:
        raise PayloadError(f"tensor {entries[not_all[0]].name!r} claims all positions but a partial count")

    result: list[np.ndarray | None] = [None] * len(entries)
    by_mode = {m: np.flatnonzero(modes == m) for m in (DELTAS, INT32, BITMAP)}

    idx = by_mode[DELTAS]
    stream = r.varint("position deltas length")
    data = np.frombuffer(r.take(stream, "position deltas"), np.uint8)
    gaps_reader = Reader(data.data, "position deltas")
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

    idx = np.flatnonzero(modes == RICE)
    if idx.size:
        gaps = _read_rice(r, counts[idx], numels[idx])
        _split_into(result, idx, counts[idx], _positions_from_gaps(gaps, counts[idx], numels[idx], entries, idx))
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


def _read_rice(r: Reader, counts: np.ndarray, numels: np.ndarray) -> np.ndarray:
    """The gaps of the rice-mode tensors, validated before anything is sized by them."""
    params = r.array("u1", counts.size, "rice parameters").astype(np.int64)
    if (params > MAX_RICE_PARAM).any():
        raise PayloadError(f"rice parameter {params.max()} above {MAX_RICE_PARAM}")
    n = int(counts.sum())
    length = r.varint("rice quotients length")
    # Quotients sum to at most the tensors' elements: a longer stream is a lie, refused unread.
    if length > (n + int(numels.sum())) // 8 + 1:
        raise PayloadError(f"rice quotient stream of {length} bytes is longer than these tensors can need")
    unary = np.unpackbits(np.frombuffer(r.take(length, "rice quotients"), np.uint8), bitorder="little")
    ends = np.flatnonzero(unary == 0)
    if ends.size < n:
        raise PayloadError(f"rice quotients: {ends.size} codes where the counts say {n}")
    last = int(ends[n - 1]) if n else -1
    if unary.size - last - 1 >= 8 or unary[last + 1 :].any():
        raise PayloadError("rice quotient stream has bits past its last code")
    quotients = np.diff(np.concatenate(([-1], ends[:n]))) - 1
    if quotients.size and quotients.max() >= numels.max():
        raise PayloadError("rice-coded gap points past the end of its tensor")
    b = np.repeat(params, counts)
    nbits = int(b.sum())
    bits = np.unpackbits(np.frombuffer(r.take((nbits + 7) // 8, "rice remainders"), np.uint8), bitorder="little")
    if bits[nbits:].any():
        raise PayloadError("rice remainder stream has padding bits set")
    owner = np.repeat(np.arange(n, dtype=np.int64), b)
    weight = np.left_shift(1, np.repeat(b, b) - 1 - _local_index(b)).astype(np.int64)
    remainders = np.bincount(owner, weights=bits[:nbits] * weight, minlength=n).astype(np.int64)
    return (quotients << b) + remainders


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
