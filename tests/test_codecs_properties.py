"""Property tests: every codec keeps its documented error bound on random tensors, the bytes counted
are the bytes sent, seeded codecs repeat themselves, and error feedback loses nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsqueeze.codecs import Sender, build_codec, measure
from fedsqueeze.codecs.grid import grid_exponent, snap
from fedsqueeze.codecs.quantize import split_blocks
from fedsqueeze.codecs.seeded import MASK_SEED, marker_seed, seed_marker, seeded_positions
from fedsqueeze.codecs.sparsify import keep_count
from fedsqueeze.tensors import Layout

from conftest import every_stage

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=24)
# fp32 values from subnormal to large, plus exact zeros and repeats (ties) that hypothesis favours.
finite = st.floats(min_value=-(2.0**100), max_value=2.0**100, allow_nan=False, width=32)


@st.composite
def updates(draw, max_tensors: int = 4, elements=finite, max_magnitude: float = 1e30):
    """1-4 named tensors: either hypothesis arrays (edge cases: ties, subnormals, huge ranges) or
    seeded Gaussian arrays of a random scale with some exact zeros (generic values)."""
    count = draw(st.integers(1, max_tensors))
    tensors = {}
    for i in range(count):
        shape = draw(shapes)
        if draw(st.booleans()):
            array = draw(hnp.arrays(np.float32, shape, elements=elements))
        else:
            rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
            scale = 10.0 ** draw(st.floats(-30, math.log10(max_magnitude) - 1))
            array = (rng.standard_normal(shape) * scale * (rng.random(shape) > 0.1)).astype(np.float32)
        tensors[f"layer.{i}.w"] = torch.from_numpy(np.ascontiguousarray(array))
    if all(not bool(t.any()) for t in tensors.values()):  # never only zeros
        name = next(iter(tensors))
        tensors[name] = torch.ones(7) if tensors[name].numel() == 0 else tensors[name] + 1.5
    return tensors


def roundtrip(spec: str, tensors: dict, layout: Layout | None = None):
    codec = build_codec(spec, layout or Layout.of(tensors))
    blob = codec.encode(tensors)
    return blob, codec.decode(blob)


def assert_same_structure(tensors, decoded):
    assert set(decoded) == set(tensors)
    for name, t in tensors.items():
        assert decoded[name].shape == t.shape and decoded[name].dtype == torch.float32


def flat64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().reshape(-1).numpy()


# ---- lossless codecs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "fp32",
        "zstd",
        "zstd(level=19)",
        "sparse",
        "sparse > zstd",
        "narrow",
        "sparse > narrow > zstd",
        "seeded",
        "grid(bits=4)",
        "seeded > grid(bits=8) > zstd",
    ],
)
@SETTINGS
@given(tensors=updates())
def test_lossless_codecs_are_exact(spec, tensors):
    blob, decoded = roundtrip(spec, tensors)
    assert_same_structure(tensors, decoded)
    for name, t in tensors.items():
        assert torch.equal(decoded[name], t), name
    assert len(blob) == measure(build_codec(spec, Layout.of(tensors)), tensors)["wire_bytes"]


@SETTINGS
@given(tensors=updates())
def test_narrow_sends_bf16_exact_values_in_two_bytes(tensors):
    rounded = {k: v.to(torch.bfloat16).float() for k, v in tensors.items()}
    blob, decoded = roundtrip("narrow", rounded)
    for name, t in rounded.items():
        assert torch.equal(decoded[name], t), name
    if any(not torch.equal(t, rounded[k]) for k, t in tensors.items()):  # else both are the same blob
        count = sum(t.numel() for t in tensors.values())
        assert len(roundtrip("narrow", tensors)[0]) - len(blob) >= 2 * count


def seeded_message(tensors: dict, seed: int, fraction: float) -> dict:
    """tensors masked at the seeded positions of (seed, name), plus the seed marker."""
    out = {}
    for name, t in tensors.items():
        keep = torch.zeros(t.numel(), dtype=torch.bool)
        keep[torch.from_numpy(seeded_positions(seed, name, t.numel(), keep_count(t.numel(), fraction, None)))] = True
        out[name] = torch.where(keep.view(t.shape), t, torch.zeros(()))
    return {**out, MASK_SEED: seed_marker(seed)}


@SETTINGS
@given(tensors=updates(), seed=st.integers(0, 2**64 - 1), fraction=st.floats(0.01, 1.0))
def test_seeded_is_exact_and_sends_no_positions_for_a_seeded_mask(tensors, seed, fraction):
    """Exact; a tensor masked at its seeded positions costs its prefix's values and no positions, so
    its share of the blob is never more than sparse's; the marker comes back bit for bit."""
    message = seeded_message(tensors, seed, fraction)
    blob, decoded = roundtrip("seeded", message, Layout.of(tensors))
    assert set(decoded) == set(message) and torch.equal(decoded[MASK_SEED], message[MASK_SEED])
    for name, t in message.items():
        assert torch.equal(decoded[name], t), name
    sparse_blob = roundtrip("sparse", message, Layout.of(tensors))[0]
    assert len(blob) <= len(sparse_blob) + len(tensors)  # never worse than sparse (but a count byte)
    # at most the mask's values (zeros of the input inside it included), header, marker and counts:
    # positions only where they cost less than the zeros the mask would send
    kept = sum(keep_count(t.numel(), fraction, None) for t in tensors.values())
    assert len(blob) <= 4 * kept + 64 + 16 * len(tensors)
    assert marker_seed(seed_marker(seed).numpy()) == seed


@SETTINGS
@given(tensors=updates(), bits=st.integers(2, 8))
def test_grid_writes_snapped_values_in_k_bits_and_anything_else_exactly(tensors, bits):
    snapped = {k: snap(v, bits) for k, v in tensors.items()}
    for t in snapped.values():  # on the grid: integers c * 2**e with |c| <= 2**(bits-1) - 1
        e = grid_exponent(t.numpy().reshape(-1), bits)
        assert e is not None
        codes = np.ldexp(t.double().numpy(), -e)
        assert (np.abs(codes) <= 2 ** (bits - 1) - 1).all()
    for t, x in zip(snapped.values(), tensors.values()):  # nearest point of its grid: error <= 2**e / 2
        top = float(x.abs().max()) if x.numel() else 0.0
        step = 2.0 ** math.ceil(math.log2(top / (2 ** (bits - 1) - 1))) if top > 0 else 0.0
        assert float((t.double() - x.double()).abs().max() if x.numel() else 0) <= step / 2 + 1e-6 * top
    blob, decoded = roundtrip(f"grid(bits={bits})", snapped)
    for name, t in snapped.items():
        assert torch.equal(decoded[name], t), name
    count = sum(t.numel() for t in tensors.values())
    assert len(blob) <= 64 + 3 * len(tensors) + (count * bits + 7) // 8 + 32 * len(tensors)


# ---- float formats ----------------------------------------------------------------------------------


@SETTINGS
@given(tensors=updates())
def test_fp16_error_bound(tensors):
    _, decoded = roundtrip("fp16", tensors)
    assert_same_structure(tensors, decoded)
    for name, t in tensors.items():
        x, y = flat64(t), flat64(decoded[name])
        # relative 2**-11 in the normal range, 2**-25 absolute among subnormals, saturation beyond.
        bound = np.maximum(2.0**-11 * np.abs(x), 2.0**-25) + np.maximum(np.abs(x) - 65504.0, 0)
        assert (np.abs(x - y) <= bound).all(), name


@SETTINGS
@given(tensors=updates())
def test_bf16_error_bound(tensors):
    _, decoded = roundtrip("bf16", tensors)
    assert_same_structure(tensors, decoded)
    for name, t in tensors.items():
        x, y = flat64(t), flat64(decoded[name])
        assert (np.abs(x - y) <= np.maximum(2.0**-8 * np.abs(x), 2.0**-134)).all(), name


# ---- quantize ---------------------------------------------------------------------------------------


def quantization_bound(x: np.ndarray, bits: int, block: int, stochastic: bool) -> np.ndarray:
    """Per-value bound of the docstring: step/2 (nearest) or step (stochastic), blocks of `block`,
    plus fp32 arithmetic slack (a few ulps of the block's magnitude, the subnormal spacing)."""
    sizes = split_blocks(np.array([x.size]), block)
    bound = np.empty(x.size)
    start = 0
    for size in sizes.tolist():
        part = x[start : start + size]
        lo, hi = part.min(), part.max()
        step = (hi - lo) / (2**bits - 1)
        slack = 8 * np.spacing(np.float32(max(abs(lo), abs(hi)))) + 2.0**-140
        # (1 + 1e-3): fp32 error of (x - min) / step can move a rounding decision by ~5e-5 steps
        bound[start : start + size] = (step if stochastic else step / 2) * (1 + 1e-3) + slack
        start += size
    return bound


@SETTINGS
@given(
    tensors=updates(),
    bits=st.integers(1, 8),
    block=st.sampled_from([1, 7, 64, 256]),
    rounding=st.sampled_from(["nearest", "stochastic"]),
)
def test_quantize_error_bound(tensors, bits, block, rounding):
    spec = f"quantize(bits={bits}, block={block}, rounding={rounding})"
    _, decoded = roundtrip(spec, tensors)
    assert_same_structure(tensors, decoded)
    for name, t in tensors.items():
        x, y = flat64(t), flat64(decoded[name])
        if x.size:
            assert (np.abs(x - y) <= quantization_bound(x, bits, block, rounding == "stochastic")).all(), name


def test_stochastic_rounding_is_unbiased_where_nearest_is_not():
    # 1 bit per value, block [0, 1]: nearest sends 0.3 as 0 every time; stochastic as 1 30% of the time.
    w = torch.full((4, 256), 0.3)
    w[:, 0], w[:, 1] = 0.0, 1.0
    x = {"w": w}
    nearest = build_codec("quantize(bits=1)", Layout.of(x))
    assert float(nearest.decode(nearest.encode(x))["w"][:, 2:].mean()) == 0.0
    codec = build_codec("quantize(bits=1, rounding=stochastic, seed=3)", Layout.of(x))
    mean = sum(codec.decode(codec.encode(x))["w"][:, 2:].mean() for _ in range(100)) / 100
    assert abs(float(mean) - 0.3) < 0.01


# ---- sparsifiers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["fraction=0.05", "fraction=0.3", "k=3", "fraction=1.0"])
@SETTINGS
@given(tensors=updates())
def test_topk_per_tensor_bound(param, tensors):
    spec = f"topk({param})"
    codec = build_codec(spec, Layout.of(tensors))
    decoded = codec.decode(codec.encode(tensors))
    assert_same_structure(tensors, decoded)
    frac = float(param.split("=")[1]) if param.startswith("fraction") else None
    k_param = int(param.split("=")[1]) if param.startswith("k") else None
    for name, t in tensors.items():
        x, y = flat64(t), flat64(decoded[name])
        if not x.size:
            continue
        k = keep_count(x.size, frac, k_param)
        kept = y != 0
        assert (y[kept] == x[kept]).all()  # kept values exact
        assert kept.sum() <= k
        dropped = ~kept
        if kept.any() and dropped.any():
            assert np.abs(x[dropped]).max() <= np.abs(x[kept]).min()
        err2, norm2 = ((x - y) ** 2).sum(), (x**2).sum()
        assert err2 <= (1 - k / x.size) * norm2 * (1 + 1e-9) + 1e-300


@SETTINGS
@given(tensors=updates(), k=st.integers(1, 50))
def test_topk_global_bound(tensors, k):
    _, decoded = roundtrip(f"topk(k={k}, scope=global)", tensors)
    assert_same_structure(tensors, decoded)
    x = np.concatenate([flat64(t) for t in tensors.values()])
    y = np.concatenate([flat64(decoded[n]) for n in tensors])
    kept = y != 0
    assert (y[kept] == x[kept]).all() and kept.sum() <= k
    if kept.any() and (~kept).any():
        assert np.abs(x[~kept]).max() <= np.abs(x[kept]).min()
    k = min(k, x.size)
    assert ((x - y) ** 2).sum() <= (1 - k / x.size) * (x**2).sum() * (1 + 1e-9) + 1e-300


@pytest.mark.parametrize("scale", [False, True])
@SETTINGS
@given(tensors=updates(), fraction=st.sampled_from([0.1, 0.5, 0.9]))
def test_randk_bound(tensors, scale, fraction):
    spec = f"randk(fraction={fraction}, scale={str(scale).lower()}, seed=11)"
    _, decoded = roundtrip(spec, tensors)
    assert_same_structure(tensors, decoded)
    for name, t in tensors.items():
        x, y = flat64(t), flat64(decoded[name])
        if not x.size:
            continue
        k = keep_count(x.size, fraction, None)
        factor = x.size / k if scale else 1.0
        sent = y != 0
        # every entry arrives either dropped or (scaled) exactly
        np.testing.assert_allclose(y[sent], (x * np.float32(factor))[sent], rtol=1e-6, atol=2.0**-149)
        bound = np.maximum(1.0, factor - 1.0) * np.abs(x) * (1 + 1e-6)
        assert (np.abs(x - y) <= bound + 2.0**-149).all()  # fp32 subnormal spacing


def test_randk_keeps_exactly_k_and_changes_positions_per_message():
    x = {"w": torch.arange(1, 1001, dtype=torch.float32)}  # no zeros: kept == non-zero
    codec = build_codec("randk(fraction=0.1)", Layout.of(x))
    first = codec.decode(codec.encode(x))["w"] != 0
    second = codec.decode(codec.encode(x))["w"] != 0
    assert int(first.sum()) == int(second.sum()) == 100
    assert not torch.equal(first, second)


# ---- low rank ---------------------------------------------------------------------------------------


@SETTINGS
@given(tensors=updates(elements=st.floats(-(2.0**20), 2.0**20, width=32), max_magnitude=1e6), rank=st.integers(1, 4))
def test_lowrank_bound(tensors, rank):
    _, decoded = roundtrip(f"lowrank(rank={rank})", tensors)
    assert_same_structure(tensors, decoded)
    for name, t in tensors.items():
        x, y = flat64(t), flat64(decoded[name])
        norm = np.linalg.norm(x)
        assert np.linalg.norm(x - y) <= norm * (1 + 1e-4) + 1e-30, name


def test_lowrank_exact_on_low_rank_input_and_warm_start_state():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(40, 3, generator=g) @ torch.randn(3, 30, generator=g)
    x = {"m": m, "v": torch.randn(5, generator=g), "small": torch.randn(2, 2, generator=g)}
    codec = build_codec("lowrank(rank=3)", Layout.of(x))
    blob = codec.encode(x)
    y = codec.decode(blob)
    assert float((y["m"] - m).norm() / m.norm()) < 1e-4
    assert torch.equal(y["v"], x["v"]) and torch.equal(y["small"], x["small"])  # would not shrink: dense
    assert len(blob) < 4 * (40 + 30) * 3 + 4 * 9 + 100
    state = codec.state_dict()
    assert set(state) == {"lowrank/q/m"}
    clone = build_codec("lowrank(rank=3)", Layout.of(x))
    clone.load_state_dict(state)
    nxt = {k: v * 2 for k, v in x.items()}
    assert clone.encode(nxt) == codec.encode(nxt)


# ---- chains -----------------------------------------------------------------------------------------


nonzero = st.floats(-(2.0**20), 2.0**20, width=32).filter(lambda v: v != 0)


@SETTINGS
@given(
    tensors=updates(elements=nonzero, max_magnitude=1e6).map(
        lambda ts: {k: torch.where(v == 0, 1.0, v) for k, v in ts.items()}
    ),
    bits=st.sampled_from([2, 4, 8]),
)
def test_topk_then_quantize_composes_both_bounds(tensors, bits):
    """Chained, the quantizer's bound applies to exactly the values topk keeps."""
    layout = Layout.of(tensors)
    kept = build_codec("topk(fraction=0.2)", layout)
    reference = kept.decode(kept.encode(tensors))
    chain = build_codec(f"topk(fraction=0.2) > quantize(bits={bits}, block=16) > zstd", layout)
    decoded = chain.decode(chain.encode(tensors))
    assert_same_structure(tensors, decoded)
    for name in tensors:
        ref, y = flat64(reference[name]), flat64(decoded[name])
        positions = np.flatnonzero(ref)  # inputs hold no zeros, so these are exactly the kept ones
        assert (np.delete(y, positions) == 0).all()
        if positions.size:
            bound = quantization_bound(ref[positions], bits, 16, stochastic=False)
            assert (np.abs(ref[positions] - y[positions]) <= bound).all()


# ---- bytes, determinism, error feedback -------------------------------------------------------------

ALL_SPECS = every_stage(
    [
        "fp32",
        "fp16",
        "bf16",
        "quantize(bits=3)",
        "quantize(bits=4, rounding=stochastic, seed=5)",
        "topk(fraction=0.1)",
        "topk(k=4, scope=global) > fp16",
        "randk(fraction=0.25, seed=9)",
        "randk(k=3, scale=true) > bf16",
        "lowrank(rank=2, seed=4)",
        "lowrank(rank=2) > quantize(bits=6) > zstd",
        "sparse",
        "zstd",
        "topk(fraction=0.01) > quantize(bits=8) > zstd",
        "seeded > quantize(bits=4, rounding=stochastic)",
        "sparse > grid(bits=4)",
    ],
    leave_out=("autoencoder",),  # learned units of LoRA shape; tests/test_autoencoder.py
)


@pytest.mark.parametrize("spec", ALL_SPECS)
@settings(max_examples=15, deadline=None)
@given(tensors=updates())
def test_wire_bytes_determinism_and_reconstruction(spec, tensors):
    layout = Layout.of(tensors)
    a, b = build_codec(spec, layout), build_codec(spec, layout)
    stats = measure(a, tensors)
    blob = b.encode(tensors)
    assert len(blob) == stats["wire_bytes"]
    assert stats["raw_bytes"] == 4 * sum(t.numel() for t in tensors.values())
    assert math.isclose(stats["ratio"], len(blob) / stats["raw_bytes"]) if stats["raw_bytes"] else True
    # seeded codecs are deterministic over a sequence of messages, not just the first
    assert a.encode(tensors) == b.encode(tensors)
    # what the sender believes arrives is what arrives
    blob, predicted = a.encode_and_reconstruct(tensors)
    decoded = b.decode(blob)
    for name in tensors:
        torch.testing.assert_close(predicted[name], decoded[name], rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize(
    "spec",
    [
        "topk(fraction=0.1)",
        "quantize(bits=2)",
        "randk(fraction=0.3) > fp16",
        "lowrank(rank=1) > zstd",
        "sparse > quantize(bits=2, rounding=stochastic)",
    ],
)
@settings(max_examples=15, deadline=None)
@given(
    messages=st.lists(
        updates(max_tensors=3, elements=st.floats(-1024.0, 1024.0, width=32), max_magnitude=1e3), min_size=1, max_size=4
    ),
    data=st.data(),
)
def test_error_feedback_invariant(spec, messages, data):
    """sum of inputs == sum of what the peer decoded + the sender's residual, per tensor name; the
    messages may carry different subsets of the tensors."""
    base = messages[0]
    layout = Layout.of(base)
    sender = Sender(build_codec(spec, layout), error_feedback=True)
    receiver = build_codec(spec, layout)
    sent = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in base.items()}
    got = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in base.items()}
    for i, msg in enumerate(messages):
        names = data.draw(st.lists(st.sampled_from(sorted(base)), min_size=1, unique=True), label=f"names {i}")
        # reuse each drawn message's values where shapes fit, else fresh ones, so shapes stay stable
        chunk = {n: (msg[n] if n in msg and msg[n].shape == base[n].shape else base[n] * (i + 1)) for n in names}
        decoded = receiver.decode(sender.encode(chunk))
        assert set(decoded) == set(chunk)
        for n in names:
            sent[n] += chunk[n].double()
            got[n] += decoded[n].double()
    for n in base:
        residual = sender.memory.get(n, torch.zeros_like(base[n])).double()
        scale = float(sent[n].abs().max()) if sent[n].numel() else 0.0
        torch.testing.assert_close(got[n] + residual, sent[n], rtol=0, atol=1e-5 * scale + 1e-30)
