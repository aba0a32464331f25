"""Codec library: spec grammar, wire format, position encodings, limits, Sender, stats and bench."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze.codecs import CODECS, Limits, PayloadError, Sender, blob_stats, build_codec, measure, positions, wire
from fedsqueeze.codecs.base import Entry
from fedsqueeze.codecs.bench import DEFAULT_CONFIGS, KEYS, run_bench
from fedsqueeze.errors import ConfigError
from fedsqueeze.tensors import Layout

from conftest import every_stage


def adapter(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "l0.q.lora_A": torch.randn(4, 32, generator=g),
        "l0.q.lora_B": torch.randn(48, 4, generator=g),
        "l0.v.lora_A": torch.randn(4, 32, generator=g),
        "l0.v.lora_B": torch.randn(16, 4, generator=g),
        "norm": torch.randn(32, generator=g),
    }


LAYOUT = Layout.of(adapter())


# ---- spec grammar -----------------------------------------------------------------------------------


def test_registry_lists_every_codec():
    assert set(CODECS.names()) >= {
        "fp32",
        "fp16",
        "bf16",
        "quantize",
        "topk",
        "randk",
        "lowrank",
        "sparse",
        "zstd",
        "narrow",
    }


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("fp32", "fp32"),
        (
            "  topk( fraction = 0.05 )>quantize(bits=4,rounding='stochastic') >  zstd(level=9) ",
            "topk(fraction=0.05) > quantize(bits=4,rounding=stochastic) > zstd(level=9)",
        ),
        ("topk(fraction=0.01) > quantize(bits=8) > zstd", "topk > quantize > zstd"),  # defaults left out
        ("randk(k=10, scale=True)", "randk(k=10,scale=true)"),
        ("quantize(block=0x40)", "quantize(block=64)"),
        ("lowrank()", "lowrank"),
    ],
)
def test_spec_grammar_and_canonical_form(spec, canonical):
    assert build_codec(spec, LAYOUT).spec == canonical


@pytest.mark.parametrize(
    "spec, words",
    [
        ("topkk", ["unknown codec 'topkk'", "allowed:", "topk", "quantize"]),
        ("topk(frac=0.1)", ["codec 'topk'", "unknown parameter 'frac'", "allowed: fraction, k, scope"]),
        ("fp16(bits=3)", ["codec 'fp16'", "unknown parameter 'bits'", "allowed: none"]),
        ("quantize(bits=9)", ["codec 'quantize'", "bits", "[1, 8]"]),
        ("quantize(bits=2.5)", ["bits must be an integer"]),
        ("quantize(rounding=up)", ["rounding must be one of nearest, stochastic"]),
        ("topk(fraction=0.1, k=3)", ["fraction or k"]),
        ("topk(fraction=0)", ["fraction must be > 0"]),
        ("topk(fraction=0.1, fraction=0.2)", ["given twice"]),
        ("zstd > topk", ["'topk'", "cannot follow 'zstd'", "order is"]),
        ("fp16 > quantize", ["cannot follow 'fp16'"]),
        ("topk > randk", ["cannot follow 'topk'"]),
        ("", ["empty codec spec"]),
        ("topk(", ["cannot parse codec stage"]),
        ("topk(fraction)", ["cannot parse parameter 'fraction'"]),
        ("fp16 >", ["cannot parse codec stage ''"]),
    ],
)
def test_spec_mistakes_are_one_line_config_errors(spec, words):
    with pytest.raises(ConfigError) as info:
        build_codec(spec, LAYOUT)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


# ---- round trips and the wire -----------------------------------------------------------------------

# autoencoder: its units are LoRA layers / fixed-size tensor chunks; tests/test_autoencoder.py round-trips it.
SPECS = every_stage(
    [
        "fp32",
        "fp16",
        "bf16",
        "quantize(bits=5)",
        "topk(fraction=0.2) > quantize > zstd",
        "randk(k=7)",
        "lowrank(rank=2) > bf16",
        "sparse > zstd",
        "zstd",
        "topk(k=9, scope=global)",
        "sparse > narrow",
    ],
    leave_out=("autoencoder",),
)


@pytest.mark.parametrize("spec", SPECS)
def test_any_subset_foreign_names_and_bf16_inputs_round_trip(spec):
    full = adapter()
    cases = [
        full,
        {},
        {k: v for k, v in full.items() if k.endswith("lora_B")},
        {"l0.q.lora_A": full["l0.q.lora_A"], "extra.bias": torch.randn(3, 2, 2), "scalar": torch.tensor(2.5)},
        {k: v.bfloat16() for k, v in full.items()},
        {"l0.q.lora_A": torch.randn(7, 7)},  # a layout name with another shape travels by name
        {"empty": torch.zeros(0, 3), "norm": full["norm"]},
    ]
    codec = build_codec(spec, LAYOUT)
    for tensors in cases:
        decoded = codec.decode(codec.encode(tensors))
        assert set(decoded) == set(tensors)
        for name, t in tensors.items():
            d = decoded[name]
            assert d.shape == t.shape and d.dtype == torch.float32 and d.device.type == "cpu"
            assert d.is_contiguous()
            d.add_(1.0)  # writable and independent of the blob


def test_fp32_blob_size_is_exactly_header_plus_values():
    tensors = adapter()
    n = sum(t.numel() for t in tensors.values())
    body = 4 * n
    expected = 4 + 1 + 1 + 1 + len("fp32") + 8 + 1 + len(wire.varint_bytes(body)) + body + 4
    assert len(build_codec("fp32", LAYOUT).encode(tensors)) == expected


def test_narrow_is_half_the_value_bytes_on_bf16_values_and_rejects_a_bad_width_tag():
    tensors = {k: v.bfloat16().float() for k, v in adapter().items()}
    n = sum(t.numel() for t in tensors.values())
    body = 1 + 2 * n  # width tag + 2 bytes a value
    expected = 4 + 1 + 1 + 1 + len("narrow") + 8 + 1 + len(wire.varint_bytes(body)) + body + 4
    codec = build_codec("narrow", LAYOUT)
    blob = codec.encode(tensors)
    assert len(blob) == expected
    assert len(codec.encode(adapter())) == expected + 2 * n  # not bf16-exact: fp32
    tag_at = expected - 4 - body  # the body starts with the tag; the checksum ends the blob
    bad = bytearray(blob)
    bad[tag_at] = 7
    bad[-4:] = struct.pack("<I", zlib.crc32(bad[:-4]))  # a well-formed blob with a tag nobody wrote
    with pytest.raises(PayloadError, match="width tag"):
        codec.decode(bytes(bad))


def test_fingerprint_replaces_names_and_is_checked():
    tensors = adapter()
    codec = build_codec("topk(fraction=0.1) > quantize > zstd", LAYOUT)
    by_fingerprint = codec.encode(tensors)
    by_name = codec.encode({**tensors, "not.in.layout": torch.ones(1)})
    names = sum(len(k) + 2 for k in tensors)  # name bytes at least, saved by the fingerprint
    assert len(by_name) > len(by_fingerprint) + names - 8
    other = Layout.of({**tensors, "another": torch.zeros(2)})
    with pytest.raises(PayloadError, match="fingerprint"):
        build_codec("topk(fraction=0.1) > quantize > zstd", other).decode(by_fingerprint)
    # by-name blobs do not depend on the receiver's layout
    assert set(build_codec("topk(fraction=0.1) > quantize > zstd", other).decode(by_name)) == set(tensors) | {
        "not.in.layout"
    }


def test_blob_of_another_codec_is_refused():
    blob = build_codec("fp32", LAYOUT).encode(adapter())
    with pytest.raises(PayloadError, match="encoded with codec 'fp32'"):
        build_codec("fp16", LAYOUT).decode(blob)
    with pytest.raises(PayloadError, match="quantize\\(bits=4\\)"):
        build_codec("quantize", LAYOUT).decode(build_codec("quantize(bits=4)", LAYOUT).encode(adapter()))


def test_decode_rejects_non_bytes():
    with pytest.raises(TypeError):
        build_codec("fp32", LAYOUT).decode("not bytes")  # type: ignore[arg-type]


def test_lossy_quantize_refuses_non_finite_input():
    with pytest.raises(ValueError, match="finite"):
        build_codec("quantize", LAYOUT).encode({"norm": torch.tensor([1.0, float("nan")])})
    # a lossless codec carries them faithfully
    out = build_codec("fp32", LAYOUT).decode(build_codec("fp32", LAYOUT).encode({"x": torch.tensor([float("inf")])}))
    assert torch.isinf(out["x"]).all()


# ---- position encodings -----------------------------------------------------------------------------


def _section(numels, counts, pos):
    w = wire.Writer()
    positions.write(w, np.array(numels), np.array(counts), np.array(pos, np.int64))
    return w.getvalue()


def test_positions_pick_the_cheapest_mode_and_count_it():
    n = 1000
    sparse = np.arange(0, n, 100)  # 10 positions: 10 one-byte deltas beat a 125-byte bitmap
    dense = np.arange(0, n, 2)  # 500 positions: the bitmap wins
    full = np.arange(n)  # all: no bytes at all
    section = _section([n, n, n], [10, 500, n], np.concatenate([sparse, dense, full]))
    meta = wire.Reader(section).varints(3, "meta")
    assert (meta % positions.MODES).tolist() == [positions.DELTAS, positions.BITMAP, positions.ALL]
    # meta varints, delta stream length + 10 deltas, then the 125-byte bitmap
    assert len(section) == len(wire.encode_varints(meta)) + 1 + 10 + 125
    counts, decoded = positions.read(wire.Reader(section), [Entry(f"t{i}", (n,), n) for i in range(3)])
    assert counts.tolist() == [10, 500, n]
    assert decoded[0].tolist() == sparse.tolist() and decoded[1].tolist() == dense.tolist() and decoded[2] is None


def test_int32_positions_decode_and_are_validated():
    # int32 only wins past 2**28 elements; build its section by hand to cover the decoder.
    entries = [Entry("a", (50,), 50)]
    good = (
        bytes(wire.encode_varints(np.array([3 * positions.MODES + positions.INT32])))
        + b"\x00"
        + np.array([1, 7, 49], "<u4").tobytes()
    )
    counts, decoded = positions.read(wire.Reader(good), entries)
    assert decoded[0].tolist() == [1, 7, 49]
    for bad in ([7, 1, 49], [1, 7, 50], [1, 1, 2]):
        section = good[:-12] + np.array(bad, "<u4").tobytes()
        with pytest.raises(PayloadError):
            positions.read(wire.Reader(section), entries)


def test_sparse_sends_exactly_the_non_zeros():
    x = torch.zeros(64, 64)
    x[3, 5], x[40, 1], x[63, 63] = 1.5, -2.0, 3.0
    codec = build_codec("sparse", LAYOUT)
    blob = codec.encode({"x": x})
    assert torch.equal(codec.decode(blob)["x"], x)
    dense = build_codec("fp32", LAYOUT).encode({"x": x})
    assert len(blob) < len(dense) - 4 * 4096 + 40


@pytest.mark.parametrize("values", [[0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**28, 2**35 - 1], []])
def test_varints_round_trip(values):
    v = np.array(values, np.int64)
    encoded = wire.encode_varints(v)
    assert encoded.tobytes() == b"".join(wire.varint_bytes(int(x)) for x in values)
    decoded, used = wire.decode_varints(encoded, len(values), "test")
    assert decoded.tolist() == values and used == len(encoded)


# ---- limits -----------------------------------------------------------------------------------------


def _named_blob(shape, body=b"", spec="fp32", body_size=None):
    entries = [Entry("huge", shape, int(np.prod(shape, dtype=object)))]
    ref = wire.LayoutRef.of(LAYOUT)
    return wire.pack(spec, ref, entries, False, len(body) if body_size is None else body_size, body)


def test_declared_sizes_are_capped_before_allocation():
    codec = build_codec("fp32", LAYOUT, Limits(max_elements=10_000))
    with pytest.raises(PayloadError, match="decode limit"):
        codec.decode(_named_blob((100, 101)))
    with pytest.raises(PayloadError, match="declares dimension"):
        codec.decode(_named_blob((2**33,)))
    with pytest.raises(PayloadError, match="truncated body: fp32 values needs 40000 bytes"):
        codec.decode(_named_blob((100, 100), body=bytes(100)))  # within limits, values missing
    with pytest.raises(PayloadError, match="body declares 40000 bytes but holds 0"):
        codec.decode(_named_blob((100, 100), body_size=40_000))
    with pytest.raises(PayloadError, match="exceeds the limit"):
        build_codec("fp32", LAYOUT, Limits(max_blob_bytes=64)).decode(build_codec("fp32", LAYOUT).encode(adapter()))


@pytest.mark.parametrize("spec", ["sparse", "topk(k=2)", "randk(k=2)", "zstd"])
def test_element_cap_stops_small_blobs_that_expand(spec):
    """A valid blob can be tiny and still decode to a large tensor (all zeros, or k of n): the
    receiver's element cap decides how much a blob naming its own tensors may make it allocate."""
    big = {"outside.layout": torch.zeros(300, 400)}
    blob = build_codec(spec, LAYOUT).encode(big)
    assert len(blob) < 4 * 300 * 400 / 20 or spec == "zstd"
    with pytest.raises(PayloadError, match="decode limit"):
        build_codec(spec, LAYOUT, Limits(max_elements=100_000)).decode(blob)
    assert build_codec(spec, LAYOUT).decode(blob)["outside.layout"].shape == (300, 400)


def test_zstd_bomb_is_refused():
    bomb = __import__("zstandard").ZstdCompressor().compress(bytes(50_000_000))
    codec = build_codec("zstd", LAYOUT)
    with pytest.raises(PayloadError, match="more than these tensors can need"):
        codec.decode(_named_blob((10,), body=bomb, spec="zstd", body_size=50_000_000))
    with pytest.raises(PayloadError, match="zstd frame declares"):
        codec.decode(_named_blob((10,), body=bomb, spec="zstd", body_size=40))


# ---- sender, state, stats, bench --------------------------------------------------------------------


def test_sender_state_round_trip_reproduces_the_next_blob():
    for spec in ["randk(fraction=0.2, seed=3)", "lowrank(rank=1) > quantize(rounding=stochastic)"]:
        a = Sender(build_codec(spec, LAYOUT), error_feedback=True)
        a.encode(adapter(1))
        a.encode({k: v for k, v in adapter(2).items() if "lora_A" in k})
        state = a.state_dict()
        assert any(k.startswith("memory/") for k in state) and any(k.startswith("codec/") for k in state)
        b = Sender(build_codec(spec, LAYOUT), error_feedback=True)
        b.load_state_dict(state)
        assert a.encode(adapter(3)) == b.encode(adapter(3))


def test_sender_keeps_memory_of_tensors_a_message_leaves_out():
    sender = Sender(build_codec("topk(k=1)", LAYOUT), error_feedback=True)
    sender.encode(adapter())
    before = sender.memory["norm"].clone()
    sender.encode({"l0.q.lora_A": torch.zeros(4, 32)})
    assert torch.equal(sender.memory["norm"], before)
    with pytest.raises(ValueError, match="changed shape"):
        sender.encode({"norm": torch.zeros(5)})


def test_sender_without_loss_keeps_no_memory():
    sender = Sender(build_codec("sparse > zstd", LAYOUT), error_feedback=True)
    assert not sender.error_feedback
    sender.encode(adapter())
    assert sender.memory == {} and sender.state_dict() == {}


def test_measure_and_blob_stats():
    tensors = adapter()
    stats = measure(build_codec("quantize(bits=4)", LAYOUT), tensors)
    assert set(stats) == {"raw_bytes", "wire_bytes", "ratio", "rel_error", "encode_s", "decode_s"}
    assert stats["raw_bytes"] == 4 * sum(t.numel() for t in tensors.values())
    assert 0 < stats["rel_error"] < 0.2 and stats["ratio"] < 0.2
    exact = blob_stats(tensors, b"xx", tensors, 0.0, 0.0)
    assert exact["rel_error"] == 0.0 and exact["wire_bytes"] == 2


def test_bench_rows_have_exactly_the_promised_keys():
    for required in [
        "fp32",
        "fp16",
        "bf16",
        "quantize(bits=8)",
        "quantize(bits=4)",
        "topk(fraction=0.1)",
        "topk(fraction=0.01) > quantize(bits=8) > zstd",
        "randk(fraction=0.1)",
        "lowrank(rank=4)",
        "zstd",
    ]:
        assert required in DEFAULT_CONFIGS
    rows = run_bench(adapter(), LAYOUT, ["fp32", "topk(fraction=0.1) > quantize > zstd"], repeats=2)
    assert [r["codec"] for r in rows] == ["fp32", "topk(fraction=0.1) > quantize > zstd"]
    for row in rows:
        assert tuple(row) == KEYS
    assert rows[0]["rel_error"] == 0.0 and rows[0]["ratio"] > 1.0  # fp32 pays a small header
    assert rows[1]["ratio"] < 0.2


# ---- Golomb-Rice positions ----------------------------------------------------------------------


def _entropy_bits(n: int, k: int) -> float:
    d = k / n
    return n * -(d * np.log2(d) + (1 - d) * np.log2(1 - d))


@pytest.mark.parametrize("density", [0.005, 0.02, 0.12, 0.3])
def test_random_positions_cost_within_three_percent_of_their_entropy(density):
    rng = np.random.default_rng(7)
    n = 100_000
    pos = np.sort(rng.choice(n, int(n * density), replace=False)).astype(np.int64)
    section = _section([n], [pos.size], pos)
    assert wire.Reader(section).varints(1, "meta")[0] % positions.MODES == positions.RICE
    assert len(section) * 8 <= 1.03 * _entropy_bits(n, pos.size) + 64
    gaps = np.diff(np.concatenate(([-1], pos))) - 1
    assert len(section) < min((n + 7) // 8, wire.encode_varints(gaps).size)  # beats bitmap and deltas
    counts, decoded = positions.read(wire.Reader(section), [Entry("t", (n,), n)])
    assert decoded[0].tolist() == pos.tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.floats(0.0, 1.0), st.integers(0, 2**31)), min_size=1, max_size=6))
def test_any_mix_of_tensors_round_trips_through_the_cheapest_modes(specs):
    numels, counts, chosen = [], [], []
    for n, density, seed in specs:
        rng = np.random.default_rng(seed)
        k = int(round(n * density))
        numels.append(n)
        counts.append(k)
        chosen.append(np.sort(rng.choice(n, k, replace=False)).astype(np.int64))
    section = _section(numels, counts, np.concatenate(chosen))
    entries = [Entry(f"t{i}", (n,), n) for i, n in enumerate(numels)]
    got_counts, decoded = positions.read(wire.Reader(section), entries)
    assert got_counts.tolist() == counts
    for want, got, n in zip(chosen, decoded, numels):
        assert (np.arange(n) if got is None else got).tolist() == want.tolist()
    # never more than the bitmaps (plus the count varints and the delta stream's length byte)
    meta = len(wire.encode_varints(np.array(counts) * positions.MODES))
    assert len(section) <= sum((n + 7) // 8 for n in numels) + meta + 1


def _rice_section(n: int, pos: np.ndarray) -> bytes:
    section = _section([n], [pos.size], pos)
    assert wire.Reader(section).varints(1, "meta")[0] % positions.MODES == positions.RICE
    return section


def test_hostile_rice_sections_are_refused():
    n = 10_000
    pos = np.arange(0, n, 37, dtype=np.int64)
    good = _rice_section(n, pos)
    entries = [Entry("t", (n,), n)]
    # the count varint, the empty delta stream's length, then the u8 rice parameter
    at = len(wire.encode_varints(np.array([pos.size * positions.MODES + positions.RICE]))) + 1
    length = wire.Reader(good[at + 1 :]).varint("length")
    unary_at = at + 1 + len(wire.varint_bytes(length))
    bad_param = bytearray(good)
    bad_param[at] = 40
    lying = good[: at + 1] + wire.varint_bytes(10**9) + good[unary_at:]
    lost_code = bytearray(good)  # a terminating 0 turned to 1: one code too few
    first = np.frombuffer(good[unary_at : unary_at + 1], np.uint8)[0]
    lost_code[unary_at] = first | (~first & (first + 1)) & 0xFF  # sets the lowest 0 bit
    for section, why in [
        (bytes(bad_param), "rice parameter"),
        (good[:-3], None),
        (lying, "longer than"),
        (bytes(lost_code), None),  # caught by whichever check it breaks first
    ]:
        with pytest.raises(PayloadError, match=why):
            positions.read(wire.Reader(section), entries)
    counts, decoded = positions.read(wire.Reader(good), entries)
    assert decoded[0].tolist() == pos.tolist()
