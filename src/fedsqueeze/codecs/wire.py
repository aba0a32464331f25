"""The blob: one self-describing message, validated field by field before anything is allocated.

Format version 2 (integers little-endian; varint = LEB128, at most 5 bytes, so values < 2**35;
version 2 added Golomb-Rice positions, codecs/positions.py):

    magic        4 bytes   b"FSQZ"
    version      u8        2
    flags        u8        bit 0: layout given by fingerprint; bit 1: markers follow the layout;
                           other bits must be 0
    spec         varint length + ASCII   canonical codec spec, e.g. "topk(fraction=0.05)>quantize>zstd"
                                         (parameters at their default are left out; defaults belong to
                                         the format version)
    layout       by fingerprint: 8-byte Layout.fingerprint + presence bitmap, one bit per layout entry
                 (LSB first, padding bits 0); tensors then follow the layout's order.
                 by name: varint count, then per tensor: varint length + UTF-8 name, u8 ndim, ndim varints
    markers      only with flag bit 1: u8 count (1..len(MARKERS)), then per marker u8 id (1-based index
                 in MARKERS, rising), u8 numel (its MARKER_SIZES entry), numel fp32 values
    body size    varint    bytes of the body before the byte stage (if any)
    body         structure section then values section (see the stages), possibly compressed
    crc32        u32       zlib.crc32 of everything before it

Names cost bytes on every message, so when every tensor sent belongs to the shared layout (same
shape) the 8-byte fingerprint and a bitmap replace them; the receiver checks the fingerprint.
Markers are the few reserved one-dimensional tensors (MARKERS) that say something about the message
rather than being part of the model: a whole-state flag, a mask seed. They travel by id, so a
message carrying one still lists its tensors by fingerprint (structure stages may read them).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from ..tensors import Layout, Tensors
from .entry import Entry, PayloadError

MAGIC = b"FSQZ"
VERSION = 2
FLAG_FINGERPRINT = 1
FLAG_MARKERS = 2
MARKERS = ("__full__", "__mask_seed__")
"""Reserved tensor names carried by id (1-based); appending keeps old ids valid."""
MARKER_SIZES = (1, 4)
"""Each marker's number of fp32 values (the whole flag; a 64-bit seed in four 16-bit limbs)."""
WHOLE, MASK_SEED = MARKERS
LIMBS = MARKER_SIZES[1]  # the 64-bit seed as four 16-bit integers: exact in float32
MAX_VARINT_BYTES = 5
MAX_NDIM = 16
MAX_NAME_BYTES = 1024
MAX_DIM = 2**31 - 1
MASK64 = (1 << 64) - 1


class Message(dict):
    """What crosses a link: tensors by name, and side information about them, typed:

    whole: the tensors are the whole of what the receiver should hold (e.g. a catch-up state),
    not a change to add to it. mask_seed: the seed of a random mask both ends draw
    (codecs/seeded.py), so that only the kept values travel.

    On the wire the side information travels as marker entries (MARKERS, by id); this module
    alone writes (`message_tensors`) and reads (`read_message`) them."""

    def __init__(self, tensors: Tensors | None = None, whole: bool = False, mask_seed: int | None = None):
        super().__init__(tensors or {})
        self.whole = whole
        self.mask_seed = mask_seed

    def carrying(self, tensors: Tensors) -> Message:
        """Other tensors with this message's side information (e.g. noised or spoiled values)."""
        return Message(tensors, self.whole, self.mask_seed)


def as_message(tensors: Tensors | Message) -> Message:
    return tensors if isinstance(tensors, Message) else Message(tensors)


def message_tensors(message: Tensors | Message) -> Tensors:
    """What a codec encodes for `message`: its tensors and its side information as marker entries."""
    out = dict(message)
    if isinstance(message, Message):
        if message.whole:
            out[WHOLE] = torch.ones(1)
        if message.mask_seed is not None:
            out[MASK_SEED] = seed_marker(message.mask_seed)
    return out


def read_message(tensors: Tensors) -> Message:
    """The Message a decoded blob holds: its markers read and left out of the tensors
    (PayloadError for a marker that is not one)."""
    seed = marker_seed(tensors[MASK_SEED].numpy()) if MASK_SEED in tensors else None
    return Message({k: v for k, v in tensors.items() if k not in MARKERS}, WHOLE in tensors, seed)


def seed_marker(seed: int) -> torch.Tensor:
    """The MASK_SEED tensor of a 64-bit seed."""
    seed &= MASK64
    return torch.tensor([(seed >> (16 * i)) & 0xFFFF for i in range(LIMBS)], dtype=torch.float32)


def marker_seed(values: np.ndarray) -> int:
    """The seed a MASK_SEED marker holds; PayloadError for anything that is not one."""
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size != LIMBS or not (np.isfinite(v).all() and (v == np.floor(v)).all() and (v >= 0).all()):
        raise PayloadError(f"mask seed marker must be {LIMBS} integers in [0, 65536)")
    if (v >= 1 << 16).any():
        raise PayloadError(f"mask seed marker must be {LIMBS} integers in [0, 65536)")
    return sum(int(x) << (16 * i) for i, x in enumerate(v.tolist()))


@dataclass(frozen=True)
class LayoutRef:
    """What the wire needs of a Layout, computed once per codec (the fingerprint hashes every name)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    numels: tuple[int, ...]
    fingerprint: bytes
    index: dict[str, int]

    @classmethod
    def of(cls, layout: Layout) -> LayoutRef:
        shapes = tuple(tuple(int(d) for d in s) for s in layout.shapes)
        return cls(
            tuple(layout.names),
            shapes,
            tuple(_numel(s) for s in shapes),
            layout.fingerprint,
            {n: i for i, n in enumerate(layout.names)},
        )

    @property
    def numel(self) -> int:
        return sum(self.numels)


@dataclass(frozen=True)
class Limits:
    """Ceilings that a blob's declarations must stay under before the decoder allocates anything.

    max_elements: total elements a blob may declare by name (tensors outside the layout). None:
    4x the layout's size, at least 2**24 (64 MiB of float32).
    """

    max_blob_bytes: int = 2**31
    max_elements: int | None = None

    def elements_cap(self, layout: Layout | LayoutRef) -> int:
        return self.max_elements if self.max_elements is not None else max(4 * layout.numel, 2**24)


# ---- writing ----------------------------------------------------------------------------------


class Writer:
    """Collects chunks; joined once at the end (no repeated concatenation of large buffers)."""

    def __init__(self) -> None:
        self.chunks: list[bytes | memoryview] = []
        self.size = 0

    def raw(self, data: bytes | memoryview) -> None:
        self.chunks.append(data)
        self.size += len(data)

    def array(self, values: np.ndarray) -> None:
        self.raw(np.ascontiguousarray(values).data.cast("B"))

    def u8(self, value: int) -> None:
        self.raw(bytes((value,)))

    def varint(self, value: int) -> None:
        self.raw(varint_bytes(value))

    def getvalue(self) -> bytes:
        return b"".join(self.chunks)


def varint_bytes(value: int) -> bytes:
    if not 0 <= value < 1 << (7 * MAX_VARINT_BYTES):
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_sizes(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.int64, copy=False)
    return 1 + (v >= 1 << 7).astype(np.int64) + (v >= 1 << 14) + (v >= 1 << 21) + (v >= 1 << 28)


def encode_varints(values: np.ndarray) -> np.ndarray:
    """Vectorized LEB128 of non-negative int64 values < 2**35."""
    v = values.astype(np.int64, copy=False)
    if v.size == 0:
        return np.zeros(0, np.uint8)
    sizes = varint_sizes(v)
    if sizes.max() == 1:
        return v.astype(np.uint8)
    starts = np.cumsum(sizes) - sizes
    out = np.empty(int(sizes.sum()), np.uint8)
    for j in range(int(sizes.max())):
        sel = np.flatnonzero(sizes > j)
        more = (sizes[sel] > j + 1).astype(np.int64) << 7
        out[starts[sel] + j] = ((v[sel] >> (7 * j)) & 0x7F) | more
    return out


# ---- reading ----------------------------------------------------------------------------------


class Reader:
    """Bounds-checked cursor over a buffer; every read says what it was reading when it fails."""

    def __init__(self, data: bytes | memoryview, where: str = "blob"):
        self.view = memoryview(data).cast("B")
        self.pos = 0
        self.where = where

    @property
    def remaining(self) -> int:
        return len(self.view) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.remaining:
            raise PayloadError(
                f"truncated {self.where}: {what} needs {n} bytes at offset {self.pos}, {self.remaining} left"
            )
        out = self.view[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def varint(self, what: str) -> int:
        value = 0
        for i in range(MAX_VARINT_BYTES):
            byte = self.u8(what)
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                return value
        raise PayloadError(f"bad {what} in {self.where}: varint longer than {MAX_VARINT_BYTES} bytes")

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        """A read-only view of `count` items (no copy); the size is checked before anything else."""
        itemsize = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(count * itemsize, what), dtype=dtype)

    def varints(self, count: int, what: str) -> np.ndarray:
        values, used = decode_varints(np.frombuffer(self.view[self.pos :], np.uint8), count, what)
        self.pos += used
        return values

    def done(self, what: str) -> None:
        if self.remaining:
            raise PayloadError(f"{self.remaining} unexpected bytes after {what} in {self.where}")


def decode_varints(buf: np.ndarray, count: int, what: str) -> tuple[np.ndarray, int]:
    """The first `count` varints of `buf` and the bytes they use (vectorized)."""
    if count == 0:
        return np.zeros(0, np.int64), 0
    window = buf[: MAX_VARINT_BYTES * count]  # no valid encoding needs more
    ends = np.flatnonzero(window < 0x80)
    if ends.size < count:
        raise PayloadError(f"truncated {what}: expected {count} varints, found {ends.size}")
    ends = ends[:count]
    starts = np.empty(count, np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    sizes = ends - starts + 1
    if sizes.max() > MAX_VARINT_BYTES:
        raise PayloadError(f"bad {what}: varint longer than {MAX_VARINT_BYTES} bytes")
    used = int(ends[-1]) + 1
    digits = window[:used].astype(np.int64) & 0x7F
    shifts = 7 * (np.arange(used) - np.repeat(starts, sizes))
    return np.add.reduceat(digits << shifts, starts), used


# ---- the envelope -----------------------------------------------------------------------------


def pack(
    spec: str,
    layout: LayoutRef,
    entries: list[Entry],
    by_fingerprint: bool,
    body_size: int,
    body: bytes,
    markers: dict[str, np.ndarray] | None = None,
) -> bytes:
    head = Writer()
    head.raw(MAGIC)
    head.u8(VERSION)
    head.u8((FLAG_FINGERPRINT if by_fingerprint else 0) | (FLAG_MARKERS if markers else 0))
    spec_bytes = spec.encode("ascii")
    head.varint(len(spec_bytes))
    head.raw(spec_bytes)
    if by_fingerprint:
        head.raw(layout.fingerprint)
        present = np.zeros(len(layout.names), np.uint8)
        present[[layout.index[e.name] for e in entries]] = 1
        head.array(np.packbits(present, bitorder="little"))
    else:
        head.varint(len(entries))
        for e in entries:
            name = e.name.encode("utf-8")
            head.varint(len(name))
            head.raw(name)
            head.u8(len(e.shape))
            for d in e.shape:
                head.varint(d)
    if markers:
        head.u8(len(markers))
        for marker in sorted(markers, key=MARKERS.index):
            values = np.asarray(markers[marker], "<f4").reshape(-1)
            head.u8(MARKERS.index(marker) + 1)
            head.u8(values.size)
            head.array(values)
    head.varint(body_size)
    head.raw(body)
    crc = 0
    for chunk in head.chunks:
        crc = zlib.crc32(chunk, crc)
    head.raw(struct.pack("<I", crc))
    return head.getvalue()


@dataclass
class Envelope:
    spec: str
    entries: list[Entry]
    body_size: int
    body: memoryview
    markers: dict[str, np.ndarray]


def unpack(blob: bytes | bytearray | memoryview, layout: LayoutRef, limits: Limits) -> Envelope:
    view = memoryview(blob).cast("B")
    if len(view) > limits.max_blob_bytes:
        raise PayloadError(f"blob of {len(view)} bytes exceeds the limit of {limits.max_blob_bytes}")
    if len(view) < len(MAGIC) + 2 + 4:
        raise PayloadError(f"truncated blob: {len(view)} bytes is shorter than any valid message")
    if bytes(view[:4]) != MAGIC:
        raise PayloadError(f"not a fedsqueeze payload (magic {bytes(view[:4])!r}, expected {MAGIC!r})")
    if view[4] != VERSION:
        raise PayloadError(f"unsupported payload format version {view[4]} (this build reads version {VERSION})")
    (stored,) = struct.unpack("<I", view[-4:])
    if zlib.crc32(view[:-4]) != stored:
        raise PayloadError("checksum mismatch: the blob was truncated or corrupted in transit")

    r = Reader(view[:-4])
    r.take(5, "magic and version")
    flags = r.u8("flags")
    if flags & ~(FLAG_FINGERPRINT | FLAG_MARKERS):
        raise PayloadError(f"unknown flags 0x{flags:02x}")
    spec_len = r.varint("spec length")
    try:
        spec = bytes(r.take(spec_len, "codec spec")).decode("ascii")
    except UnicodeDecodeError:
        raise PayloadError("codec spec is not ASCII") from None
    if flags & FLAG_FINGERPRINT:
        entries = _read_fingerprint_layout(r, layout)
    else:
        entries = _read_named_layout(r, limits.elements_cap(layout))
    markers = _read_markers(r) if flags & FLAG_MARKERS else {}
    body_size = r.varint("body size")
    return Envelope(spec, entries, body_size, r.take(r.remaining, "body"), markers)


def _read_markers(r: Reader) -> dict[str, np.ndarray]:
    count = r.u8("marker count")
    if not 0 < count <= len(MARKERS):
        raise PayloadError(f"marker count {count} outside 1..{len(MARKERS)}")
    markers: dict[str, np.ndarray] = {}
    last = 0
    for _ in range(count):
        ident = r.u8("marker id")
        if not last < ident <= len(MARKERS):
            raise PayloadError(f"marker id {ident} unknown or out of order")
        last = ident
        numel = r.u8("marker size")
        if numel != MARKER_SIZES[ident - 1]:
            raise PayloadError(f"marker {MARKERS[ident - 1]!r} declares {numel} values, not {MARKER_SIZES[ident - 1]}")
        markers[MARKERS[ident - 1]] = r.array("<f4", numel, "marker values").copy()
    return markers


def _read_fingerprint_layout(r: Reader, layout: LayoutRef) -> list[Entry]:
    fingerprint = bytes(r.take(8, "layout fingerprint"))
    if fingerprint != layout.fingerprint:
        raise PayloadError(
            f"layout fingerprint {fingerprint.hex()} does not match this end's adapter layout "
            f"{layout.fingerprint.hex()}: the peers built different adapters"
        )
    count = len(layout.names)
    packed = np.frombuffer(r.take((count + 7) // 8, "presence bitmap"), np.uint8)
    bits = np.unpackbits(packed, bitorder="little")
    if bits[count:].any():
        raise PayloadError("presence bitmap has bits set past the layout's end")
    return [Entry(layout.names[i], layout.shapes[i], layout.numels[i]) for i in np.flatnonzero(bits[:count]).tolist()]


def _read_named_layout(r: Reader, elements_cap: int) -> list[Entry]:
    count = r.varint("tensor count")
    if count * 3 > r.remaining:  # each entry takes at least 3 bytes: name length, ndim, one name byte
        raise PayloadError(f"tensor count {count} is more than the blob can hold")
    entries: list[Entry] = []
    seen: set[str] = set()
    total = 0
    for i in range(count):
        length = r.varint(f"name length of tensor {i}")
        if not 0 < length <= MAX_NAME_BYTES:
            raise PayloadError(f"name length {length} of tensor {i} outside 1..{MAX_NAME_BYTES}")
        try:
            name = bytes(r.take(length, f"name of tensor {i}")).decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError(f"name of tensor {i} is not UTF-8") from None
        if name in seen:
            raise PayloadError(f"tensor {name!r} appears twice")
        seen.add(name)
        ndim = r.u8(f"ndim of {name!r}")
        if ndim > MAX_NDIM:
            raise PayloadError(f"tensor {name!r} declares {ndim} dimensions (max {MAX_NDIM})")
        shape = tuple(r.varint(f"shape of {name!r}") for _ in range(ndim))
        if any(d > MAX_DIM for d in shape):
            raise PayloadError(f"tensor {name!r} declares dimension {max(shape)} (max {MAX_DIM})")
        numel = _numel(shape)
        total += numel
        if total > elements_cap:
            raise PayloadError(f"tensors declare more than {elements_cap} elements in total (the decode limit)")
        entries.append(Entry(name, shape, numel))
    return entries


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def max_body_size(entries: list[Entry]) -> int:
    """The largest body any codec can legitimately produce for these tensors (a decompression-bomb
    ceiling): int32 position + fp32 value + a block header per value, with room for small headers."""
    return 16 * sum(e.numel for e in entries) + 64 * len(entries) + 256
