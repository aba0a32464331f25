"""Fuzzing decode: more than 10,000 mutated blobs (truncated, extended, bit-flipped, overwritten, wrong
version / magic / flags, lying lengths, shapes and counts with a valid checksum, random bytes) over
several codecs. Each must raise PayloadError: no other exception, no hang, and no allocation far
beyond the blob (decode validates declared sizes against limits first)."""

from __future__ import annotations

import random
import struct
import time
import tracemalloc
import zlib

import numpy as np
import torch

from fedsqueeze.codecs import Limits, PayloadError, build_codec, wire
from fedsqueeze.codecs.base import Entry
from fedsqueeze.codecs.grid import snap
from fedsqueeze.codecs.seeded import MASK_SEED, seed_marker, seeded_positions
from fedsqueeze.tensors import Layout

SPECS = [
    "fp32",
    "fp16",
    "bf16",
    "quantize(bits=3)",
    "quantize(bits=8, rounding=stochastic)",
    "topk(fraction=0.2) > quantize(bits=4) > zstd",
    "topk(k=3, scope=global)",
    "randk(fraction=0.5) > bf16",
    "lowrank(rank=2) > fp16",
    "sparse > zstd",
    "sparse",
    "zstd(level=5)",
    "sparse > narrow",
    "narrow",
    "seeded",
    "seeded > grid(bits=4)",
    "sparse > grid(bits=8)",
    "seeded > quantize(bits=2, rounding=stochastic)",
]
SEED = 0x1234_5678_9ABC_DEF0
DENSE_SPECS = ["fp32", "fp16", "bf16"]  # value count = element count: any shape lie must show
COUNTED_SPECS = ["sparse", "topk(k=3, scope=global)"]  # raw body starting with the per-tensor counts
SEEDED_SPECS = [s for s in SPECS if s.startswith("seeded")]  # raw body starting with k * 2 + 1 per tensor
LIMITS = Limits(max_elements=4096)
MAX_SECONDS_PER_DECODE = 2.0  # generous: the machine is shared; a hang would take far longer


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = {
        "blk.0.a": torch.randn(6, 10, generator=g),
        "blk.0.b": torch.randn(10, 6, generator=g),
        "blk.1.c": torch.randn(25, generator=g),
        "scale": torch.randn((), generator=g),
        "blk.2.d": torch.randn(3, 4, 5, generator=g),
    }
    # half zeros, so that sparse picks both delta and bitmap positions; 5% kept: Golomb-Rice positions
    out = {k: v * (torch.rand(v.shape, generator=g) > 0.5) + (k == "scale") for k, v in x.items()}
    rare = torch.randn(800, generator=g)
    out["blk.3.e"] = rare * (torch.rand(800, generator=g) > 0.95)
    return out


LAYOUT = Layout.of(_tensors(0))
REF = wire.LayoutRef.of(LAYOUT)
CODECS = {spec: build_codec(spec, LAYOUT, LIMITS) for spec in SPECS}


def _seeded_message(seed: int = SEED) -> dict[str, torch.Tensor]:
    """20% of each tensor kept at the seeded positions (a mask both ends draw), values snapped to a
    4-bit grid, with the seed marker: what FedSRD broadcasts with download_bits=4."""
    out = {}
    for k, v in _tensors(2).items():
        keep = torch.zeros(v.numel())
        keep[torch.from_numpy(seeded_positions(seed, k, v.numel(), max(1, v.numel() // 5)))] = 1
        out[k] = snap(torch.randn(v.shape, generator=torch.Generator().manual_seed(5)) * keep.view(v.shape), 4)
    return {**out, MASK_SEED: seed_marker(seed)}


def _base_blobs() -> list[tuple[str, bytes]]:
    out = []
    for spec in SPECS:
        codec = build_codec(spec, LAYOUT, LIMITS)
        full = _tensors(1)
        out.append((spec, codec.encode(_seeded_message())))  # with a marker
        out.append((spec, codec.encode(full)))  # by fingerprint, every tensor
        out.append((spec, codec.encode({k: full[k] for k in ("blk.0.b", "scale")})))  # by fingerprint, a subset
        out.append((spec, codec.encode({"blk.0.a": full["blk.0.a"], "foreign.w": torch.randn(4, 3)})))  # by name
    return out


def _fix_crc(blob: bytes) -> bytes:
    return blob[:-4] + struct.pack("<I", zlib.crc32(blob[:-4]))


def _repack(blob: bytes, spec: str | None = None, entries=None, body_size=None, body=None, markers=None) -> bytes:
    """Rebuild a blob with some fields replaced, and a valid checksum: lies the CRC cannot catch."""
    env = wire.unpack(blob, REF, LIMITS)
    by_fingerprint = bool(blob[5] & wire.FLAG_FINGERPRINT) and entries is None
    body = bytes(env.body) if body is None else body
    return wire.pack(
        env.spec if spec is None else spec,
        REF,
        env.entries if entries is None else entries,
        by_fingerprint,
        env.body_size if body_size is None else body_size,
        body,
        env.markers if markers is None else markers,
    )


def _must_raise(rng: random.Random):
    """(category, spec to decode with, mutated blob), every one malformed."""
    bases = _base_blobs()
    for spec, blob in bases:
        n = len(blob)
        for _ in range(70):
            yield "truncated", spec, blob[: rng.randrange(n)]
        for _ in range(10):
            yield "extended", spec, blob + rng.randbytes(rng.randint(1, 16))
        for _ in range(70):
            b = bytearray(blob)
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(n)] ^= 1 << rng.randrange(8)
            if bytes(b) != blob:
                yield "bit flips", spec, bytes(b)
        for _ in range(40):
            b = bytearray(blob)
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(n)
                b[i] = (b[i] + rng.randint(1, 255)) % 256
            yield "overwritten bytes", spec, bytes(b)
        for version in rng.sample([v for v in range(256) if v != wire.VERSION], 8):
            b = bytearray(blob)
            b[4] = version
            yield "wrong version", spec, _fix_crc(bytes(b))
            yield "wrong version, stale crc", spec, bytes(b)
        for _ in range(4):
            b = bytearray(blob)
            b[rng.randrange(4)] ^= 1 << rng.randrange(8)
            yield "wrong magic", spec, _fix_crc(bytes(b))
        for _ in range(4):
            b = bytearray(blob)
            b[5] |= 1 << rng.randint(2, 7)
            yield "unknown flags", spec, _fix_crc(bytes(b))

        env = wire.unpack(blob, REF, LIMITS)
        if env.markers:  # lying or malformed markers, behind a valid checksum
            if spec in SEEDED_SPECS:
                yield "seeded counts without a seed", spec, _repack(blob, markers={"__full__": np.ones(1, "f4")})
            for bad in ([1.5, 0, 0, 0], [70000, 0, 0, 0], [-1, 0, 0, 0], [np.nan, 0, 0, 0], [1, 2, 3]):
                markers = {**env.markers, MASK_SEED: np.array(bad, "f4")}
                if spec in SEEDED_SPECS or len(bad) != 4:
                    yield "malformed seed marker", spec, _repack(blob, markers=markers)
            start = blob.index(bytes([len(env.markers)]), 7 + blob[6])  # the marker count byte
            for lie, name in ((0, "marker count 0"), (3, "marker count 3"), (9, "marker count 9")):
                b = bytearray(blob)
                b[start] = lie
                yield name, spec, _fix_crc(bytes(b))
        else:
            b = bytearray(blob)
            b[5] |= wire.FLAG_MARKERS
            yield "marker flag without markers", spec, _fix_crc(bytes(b))
        for delta in rng.sample([1, 2, 3, 7, 100, 5000], 4) + [2**34]:
            for sign in (1, -1):
                size = env.body_size + sign * delta
                if 0 <= size < 2**35:
                    yield "lying body size", spec, _repack(blob, body_size=size)
        others = [s.replace(" ", "") for s in rng.sample([s for s in SPECS if s != spec], 4)]
        for other in others + [CODECS[spec].wire_spec + " ", "x" * rng.randint(0, 60)]:
            yield "lying codec spec", spec, _repack(blob, spec=other)
        if blob[5] & wire.FLAG_FINGERPRINT:
            for _ in range(3):
                b = bytearray(blob)
                start = 7 + blob[6]  # magic, version, flags, spec length (one byte here), spec
                b[start + rng.randrange(8)] ^= 1 << rng.randrange(8)
                yield "wrong fingerprint", spec, _fix_crc(bytes(b))
                b = bytearray(blob)
                b[start + 8] |= 1 << rng.randint(len(LAYOUT.names), 7)  # bits past the layout are padding
                yield "presence padding", spec, _fix_crc(bytes(b))
        # A body cut short or extended, with the size field and checksum agreeing: the parser reads
        # the same fields as before, so it must run out of bytes or find some left over.
        body = bytes(env.body)
        compressed = "zstd" in spec
        for _ in range(20):
            cut = rng.randrange(len(body)) if body else 0
            if body:
                yield (
                    "short body, valid crc",
                    spec,
                    _repack(blob, body=body[:cut], body_size=None if compressed else cut),
                )
            extra = rng.randbytes(rng.randint(1, 9))
            yield (
                "long body, valid crc",
                spec,
                _repack(blob, body=body + extra, body_size=None if compressed else len(body) + len(extra)),
            )
        # tensors that claim more than the limits allow, or appear twice
        huge = [Entry("w", (rng.randint(65, 2**20), rng.randint(65, 2**20)), 0)]
        yield "declared size over limit", spec, _repack(blob, entries=huge)
        yield "dimension over 2**31", spec, _repack(blob, entries=[Entry("w", (2**31 + rng.randrange(99),), 0)])
        yield "too many dimensions", spec, _repack(blob, entries=[Entry("w", (1,) * 17, 1)])
        if env.entries:
            yield "duplicate names", spec, _repack(blob, entries=[env.entries[0], env.entries[0]])
        if spec in DENSE_SPECS and env.entries:
            for _ in range(8):
                entries = [Entry(e.name, e.shape, e.numel) for e in env.entries]
                i = rng.randrange(len(entries))
                shape = list(entries[i].shape) or [1]
                d = rng.randrange(len(shape))
                shape[d] = max(0, shape[d] + rng.choice([-2, -1, 1, 2, 9]))
                if tuple(shape) != entries[i].shape and int(np.prod(shape)) != entries[i].numel:
                    entries[i] = Entry(entries[i].name, tuple(shape), int(np.prod(shape)))
                    yield "lying shape", spec, _repack(blob, entries=entries)
        if spec in COUNTED_SPECS and env.entries:
            body = bytes(env.body)
            counts = wire.Reader(body).varints(len(env.entries), "counts")
            used = len(wire.encode_varints(counts))
            for _ in range(15):
                lie = counts.copy()
                i = rng.randrange(lie.size)
                lie[i] = max(0, lie[i] + 4 * rng.choice([-3, -1, 1, 2, 50]))  # count * 4 + mode
                if (lie != counts).any():
                    new_body = wire.encode_varints(lie).tobytes() + body[used:]
                    yield "lying kept count", spec, _repack(blob, body_size=len(new_body), body=new_body)
        if spec == "seeded" and env.entries and env.markers:  # fp32 values: any count lie shows
            body = bytes(env.body)
            meta = wire.Reader(body).varints(len(env.entries), "counts")
            used = len(wire.encode_varints(meta))
            for _ in range(15):
                lie = meta.copy()
                i = rng.randrange(lie.size)
                lie[i] = max(0, lie[i] + rng.choice([-4, -2, 1, 2, 8, 2 * 10**6]))  # k * 2 + 1
                if (lie != meta).any():
                    new_body = wire.encode_varints(lie).tobytes() + body[used:]
                    yield "lying seeded count", spec, _repack(blob, body_size=len(new_body), body=new_body)

    for _ in range(800):
        spec = rng.choice(SPECS)
        yield "random bytes", spec, rng.randbytes(rng.randint(0, 300))
        head = wire.MAGIC + bytes([wire.VERSION, rng.randint(0, 1)])
        yield "random body, valid header and crc", spec, _fix_crc(head + rng.randbytes(rng.randint(4, 300)))


def _decode_expecting_error(spec: str, blob: bytes) -> str | None:
    start = time.perf_counter()
    try:
        CODECS[spec].decode(blob)
    except PayloadError:
        outcome = None
    except Exception as exc:  # noqa: BLE001 - the point is to catch anything else
        outcome = f"{type(exc).__name__}: {exc}"
    else:
        outcome = "decoded without error"
    elapsed = time.perf_counter() - start
    if elapsed > MAX_SECONDS_PER_DECODE:
        outcome = f"took {elapsed:.1f}s"
    return outcome


def test_every_mutated_blob_raises_payload_error():
    rng = random.Random(20261122)
    total, failures, per_category = 0, [], {}
    for category, spec, blob in _must_raise(rng):
        total += 1
        per_category[category] = per_category.get(category, 0) + 1
        problem = _decode_expecting_error(spec, blob)
        if problem:
            failures.append(f"{category} / {spec}: {problem}")
    assert not failures, f"{len(failures)} of {total} mutated blobs misbehaved, e.g.:\n" + "\n".join(failures[:8])
    assert total >= 10_000, per_category
    print(f"{total} mutated blobs, all refused:", per_category)


def test_checksum_fixed_random_edits_raise_or_decode_cleanly():
    """Byte edits behind a recomputed checksum may still form a valid blob (e.g. a changed value);
    then decode must return well-formed tensors. Anything else must be PayloadError."""
    rng = random.Random(7)
    decoded_ok = 0
    for spec, blob in _base_blobs():
        for _ in range(150):
            b = bytearray(blob)
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(len(b) - 4)] = rng.randrange(256)
            try:
                out = CODECS[spec].decode(_fix_crc(bytes(b)))
            except PayloadError:
                continue
            decoded_ok += 1
            for _name, t in out.items():
                assert t.dtype == torch.float32 and t.is_contiguous()
                assert t.numel() <= LIMITS.max_elements
    assert decoded_ok > 0  # the category is not vacuous: value edits do decode


def test_a_wrong_seed_decodes_to_other_positions_and_never_crashes():
    """A seed is 8 bytes with no redundancy: a valid but wrong one (behind a fixed checksum) cannot
    be told from the right one. It must decode to the same values at other positions, in bounds."""
    message = _seeded_message()
    for spec in SEEDED_SPECS:
        blob = CODECS[spec].encode(message)
        for wrong in (SEED ^ 1, 0, 2**64 - 1):
            out = CODECS[spec].decode(_repack(blob, markers={MASK_SEED: seed_marker(wrong).numpy()}))
            right = CODECS[spec].decode(blob)
            for k, v in right.items():
                assert out[k].shape == v.shape and out[k].dtype == torch.float32
            moved = [k for k in right if k != MASK_SEED and not torch.equal(out[k] != 0, right[k] != 0)]
            assert moved  # the positions follow the seed


def test_decode_allocates_little_beyond_blob_and_layout():
    """Peak traced memory (numpy buffers and Python objects) of decoding malformed blobs stays
    within a small multiple of the blob plus the legitimate output, under the configured limits."""
    rng = random.Random(99)
    legit = 4 * LIMITS.max_elements * 4  # the most any blob may make us hold as float32, with copies
    worst = 0.0
    tracemalloc.start()
    try:
        for i, (category, spec, blob) in enumerate(_must_raise(rng)):
            if i % 7:
                continue
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            try:
                CODECS[spec].decode(blob)
            except PayloadError:
                pass
            peak = tracemalloc.get_traced_memory()[1] - base
            allowed = 32 * len(blob) + legit + 256 * 1024
            worst = max(worst, peak / allowed)
            assert peak <= allowed, f"{category} / {spec}: decoding {len(blob)} bytes peaked at {peak} bytes"
    finally:
        tracemalloc.stop()
    assert worst > 0


def test_a_receiver_that_names_what_it_accepts_refuses_foreign_tensors_before_allocating():
    """A 2 KB zstd blob may declare 16.7M elements under the default element cap; a decoder told
    which tensors it accepts (the server: the method's upload layout) refuses it from the header."""
    codec = build_codec("zstd", LAYOUT)
    bomb = codec.encode({"foreign.w": torch.zeros(4096, 4096)})
    assert len(bomb) < 20_000
    assert codec.decode(bomb)["foreign.w"].numel() == 4096 * 4096  # what the cap alone allows

    shapes = {n: tuple(s) for n, s in zip(LAYOUT.names, LAYOUT.shapes)}
    accepts = lambda name, shape: shapes.get(name) == tuple(shape)  # noqa: E731
    tracemalloc.start()
    try:
        codec.decode(bomb, accepts)
        raise AssertionError("accepted a tensor outside the layout")
    except PayloadError as exc:
        assert "'foreign.w'" in str(exc) and "accepts" in str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 1_000_000  # refused from the header: nothing near 64 MiB was allocated
    honest = _tensors(3)
    assert set(codec.decode(codec.encode(honest), accepts)) == set(honest)
    wrong_shape = codec.encode({"blk.0.a": torch.ones(10, 6)})
    try:
        codec.decode(wrong_shape, accepts)
        raise AssertionError("accepted a layout name in another shape")
    except PayloadError as exc:
        assert "(10, 6)" in str(exc)
