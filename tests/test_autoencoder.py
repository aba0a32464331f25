"""The autoencoder pieces on their own: the paper network's 1/64 latent, exact views, the latent
message (round trip, malformed input), the adaptive mode's SNR floor, a deterministic TGAP pool, and
the `autoencoder` codec stage through the wire format (round trip, corrupt blobs)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsqueeze.autoencoder import (
    Compressor,
    MalformedUpload,
    SnapshotPool,
    build_network,
    build_view,
    snr_db,
    train_autoencoder,
)
from fedsqueeze.autoencoder.networks import PaperConvAutoencoder
from fedsqueeze.codecs import PayloadError, build_codec
from fedsqueeze.errors import ConfigError
from fedsqueeze.tensors import Layout

P = "base_model.model.model.layers.{}.{}.lora_{}.weight"


def lora_layout(d_in=64, d_out=64, r=4, layers=2, modules=("q_proj", "up_proj")) -> Layout:
    names, shapes = [], []
    for i in range(layers):
        for m in modules:
            out = 2 * d_out if m == "up_proj" else d_out
            names += [P.format(i, m, "A"), P.format(i, m, "B")]
            shapes += [(r, d_in), (out, r)]
    return Layout(tuple(names), tuple(shapes))


def random_update(layout: Layout, seed: int, zero: str | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for _i, (n, s) in enumerate(zip(layout.names, layout.shapes)):
        scale = 10.0 ** (-4 + 3 * torch.rand(1, generator=g).item())  # tensors of very different sizes
        out[n] = scale * torch.randn(s, generator=g).sign() * torch.rand(s, generator=g)  # LoRA-like: flat-ish
    if zero:
        out[zero] = torch.zeros_like(out[zero])
    return out


def compressor(arch: str, layout: Layout, bits: int = 8, seed: int = 0) -> Compressor:
    view = build_view(arch, layout.names, layout.shapes, 64)
    lengths = [view.vector_length(u) for u in view.units] if arch == "tensor" else None
    return Compressor(build_network(arch, 64, seed, lengths=lengths, basis=16), view, bits)


# ---- the paper's network ---------------------------------------------------------------------


def test_paper_network_is_six_stride2_convs_three_residual_blocks_and_a_1_64_latent():
    net = build_network("paper")
    convs = [m for m in net.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2)] * 6 and convs[0].in_channels == 1 and convs[-1].out_channels == 64
    assert sum(type(m).__name__ == "_Residual" for m in net.encoder) == 3
    assert sum(type(m).__name__ == "_Residual" for m in net.decoder) == 3
    assert isinstance(net.decoder[-1], torch.nn.Tanh)
    x = torch.rand(3, *PaperConvAutoencoder.sample_shape) * 2 - 1
    z = net.encode(x)
    assert z.shape == (3, x[0].numel() // 64)
    y = net.decode(z)
    assert y.shape == x.shape and y.abs().max() < 1


def test_paper_latent_is_one_64th_of_a_layers_update_when_dims_fill_the_tiles():
    layout = lora_layout(d_in=512, d_out=512, r=16, modules=("q_proj",))  # [A^T|B] = 512 x 32 -> 256 x 64
    comp = compressor("paper", layout)
    assert comp.full_latent_values() * 64 == layout.numel
    enc = comp.compress(random_update(layout, 0))
    assert enc.latent_values * 64 == layout.numel


# ---- views and the latent message ------------------------------------------------------------


@pytest.mark.parametrize("arch", ["paper", "row", "tensor"])
def test_views_are_exact_inverses(arch):
    layout = Layout(
        ("x.lora_A.weight", "x.lora_B.weight", "lone.bias", "y.lora_B.weight"), ((3, 70), (130, 3), (10,), (5, 2))
    )
    upd = random_update(layout, 1)
    view = build_view(arch, layout.names, layout.shapes, 64)
    for unit in view.units:
        samples = view.to_samples(unit, [upd[n] for n in unit.names])
        assert len(samples) == view.samples_per_unit(unit)
        for n, back in zip(unit.names, view.from_samples(unit, samples)):
            assert torch.equal(back, upd[n])


@pytest.mark.parametrize("arch,bits", [("paper", 8), ("row", 8), ("row", 0), ("row", 4), ("tensor", 8)])
def test_message_round_trip_through_lossless_and_half_links(arch, bits):
    layout = lora_layout()
    comp = compressor(arch, layout, bits)
    upd = random_update(layout, 2, zero=layout.names[1])
    enc = comp.compress(upd, latent=None if arch == "paper" else 8)
    assert enc.reconstruction[layout.names[1]].abs().max() == 0
    specs = ["zstd", "fp32"] + (["bf16"] if 0 < bits <= 8 else [])  # integer codes <= 127 are exact in bf16
    for spec in specs:
        codec = build_codec(spec, layout)
        arrived = codec.decode(codec.encode(enc.message))
        rebuilt = comp.decompress(arrived)
        for n in layout.names:
            assert torch.equal(rebuilt[n], enc.reconstruction[n]), (spec, n)


def test_malformed_messages_raise_one_error_type():
    layout = lora_layout()
    comp = compressor("row", layout)
    good = comp.compress(random_update(layout, 3), latent=8).message

    def broken(**change):
        m = dict(good)
        m.update(change)
        return {k: v for k, v in m.items() if v is not None}

    cases = [
        broken(**{"cg.codes": good["cg.codes"][:-1]}),
        broken(**{"cg.codes": None}),
        broken(**{"cg.size": good["cg.size"] + 1}),  # a latent size the network does not have
        broken(**{"cg.size": good["cg.size"][:-1]}),
        broken(**{"cg.norm": good["cg.norm"] + 0.5}),
        broken(**{"cg.norm": torch.full_like(good["cg.norm"], 500.0)}),
        broken(**{"cg.codes": good["cg.codes"] * 1000}),
        broken(**{"cg.codes": good["cg.codes"].clone().index_fill_(0, torch.tensor([0]), math.nan)}),
        broken(**{"cg.step": None}),
        broken(extra=torch.zeros(1)),
    ]
    for m in cases:
        with pytest.raises(MalformedUpload):
            comp.decompress(m)


# ---- the adaptive mode -----------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    threshold=st.floats(-5.0, 45.0),
    arch=st.sampled_from(["row", "tensor", "paper"]),
    bits=st.sampled_from([0, 3, 8]),
)
def test_adaptive_mode_never_sends_below_the_threshold(seed, threshold, arch, bits):
    layout = lora_layout(d_in=64, d_out=32, layers=1)
    comp = compressor(arch, layout, bits, seed=seed % 3)
    if arch != "paper":  # a network that knows something, so the ladder is exercised
        train_autoencoder(
            comp.net, comp.samples(random_update(layout, seed + 1)), epochs=1, lr=2e-4, batch_size=16, seed=0
        )
    upd = random_update(layout, seed, zero=layout.names[random.Random(seed).randrange(len(layout.names))])
    enc = comp.compress(upd, min_snr_db=threshold)
    codec = build_codec("zstd", layout)
    rebuilt = comp.decompress(codec.decode(codec.encode(enc.message)))  # what the server aggregates
    signal = sum(float((upd[n].double() ** 2).sum()) for n in layout.names)
    noise = sum(float(((upd[n].double() - rebuilt[n].double()) ** 2).sum()) for n in layout.names)
    assert noise * 10 ** (threshold / 10) <= signal * (1 + 1e-12)
    assert snr_db(signal, noise) >= threshold - 1e-9
    # per unit too, and the fallback is only taken when needed
    for unit in comp.units:
        s = sum(float((upd[n].double() ** 2).sum()) for n in unit.names)
        e = sum(float(((upd[n].double() - rebuilt[n].double()) ** 2).sum()) for n in unit.names)
        assert e * 10 ** (threshold / 10) <= s * (1 + 1e-12)


def test_adaptive_mode_takes_the_smallest_latent_that_meets_the_threshold():
    layout = lora_layout(layers=1, modules=("q_proj",))
    comp = compressor("row", layout)
    upd = random_update(layout, 5)
    train_autoencoder(comp.net, comp.samples(upd), epochs=0, lr=2e-4, batch_size=16, seed=0)  # PCA of this update
    loose, tight = comp.compress(upd, min_snr_db=0.5), comp.compress(upd, min_snr_db=20.0)
    assert 0 < loose.latent_values < tight.latent_values + tight.dense_values
    ladder = list(comp.net.latent_sizes)
    for unit, k in zip(comp.units, loose.message["cg.size"].int().tolist()):
        assert k in ladder
        if k == ladder[0]:
            continue
        smaller = comp.compress(
            {n: upd[n] for n in unit.names} | {n: torch.zeros_like(upd[n]) for n in upd if n not in unit.names},
            latent=ladder[ladder.index(k) - 1],
        )
        assert snr_db(smaller.signal, smaller.noise) < 0.5  # the next smaller latent would not have done


# ---- TGAP pool and training ------------------------------------------------------------------


def _trained(arch: str, seed: int, layout: Layout):
    comp = compressor(arch, layout, seed=0)
    pool = SnapshotPool()
    for rnd in (1, 2):
        for client in (2, 0, 1):  # arrival order must not matter
            pool.add(rnd, client, random_update(layout, 100 * rnd + client))
    samples = pool.samples(comp)
    metrics = train_autoencoder(comp.net, samples, epochs=2, lr=2e-4, batch_size=8, seed=seed, max_samples=40)
    return samples, comp.net, metrics


@pytest.mark.parametrize("arch", ["row", "tensor", "paper"])
def test_tgap_pool_and_training_are_deterministic_given_the_seed(arch):
    layout = lora_layout(layers=1)
    s1, n1, m1 = _trained(arch, 7, layout)
    s2, n2, m2 = _trained(arch, 7, layout)
    _, n3, _ = _trained(arch, 8, layout)
    assert s1.keys() == s2.keys() and all(torch.equal(s1[u], s2[u]) for u in s1)
    pooled = sum(len(x) for x in s1.values())
    assert m1["ae_samples"] == (pooled if arch == "tensor" else min(40, pooled))
    assert m1["ae_train_loss"] == m2["ae_train_loss"]
    w1, w2, w3 = (torch.nn.utils.parameters_to_vector(n.parameters()) for n in (n1, n2, n3))
    assert torch.equal(w1, w2)
    assert not torch.equal(w1, w3)


def test_pool_state_round_trip():
    layout = lora_layout(layers=1)
    pool = SnapshotPool()
    pool.add(1, 3, random_update(layout, 1))
    copy = SnapshotPool()
    copy.load_state_dict(pool.state_dict())
    comp = compressor("row", layout)
    a, b = pool.samples(comp), copy.samples(comp)
    assert a.keys() == b.keys() and all(torch.equal(a[u], b[u]) for u in a)


# ---- the codec stage -------------------------------------------------------------------------

CODEC_SPECS = [
    "autoencoder",
    "autoencoder > fp16 > zstd",
    "autoencoder(arch=row, latent=0.25) > quantize(bits=8) > zstd",
]


@pytest.mark.parametrize("spec", CODEC_SPECS)
def test_codec_round_trips_through_the_wire_format(spec):
    layout = lora_layout()
    upd = random_update(layout, 9, zero=layout.names[0])
    sender = build_codec(spec, layout)
    if "row" in spec:  # trained weights, then handed to the receiver as stage state
        comp = compressor("row", layout)
        train_autoencoder(sender.structure.net, comp.samples(upd), epochs=1, lr=2e-4, batch_size=16, seed=0)
    receiver = build_codec(spec, layout)
    receiver.load_state_dict(sender.state_dict())
    blob, expected = sender.encode_and_reconstruct(upd)
    assert blob[:4] == b"FSQZ"
    got = receiver.decode(blob)
    assert list(got) == list(layout.names)
    for n in layout.names:
        assert torch.equal(got[n], expected[n])
    assert got[layout.names[0]].abs().max() == 0
    if "row" in spec:
        assert snr_db(*_energies(upd, got)) > 0.5
    assert len(blob) < 4 * layout.numel / 3


def _energies(a, b):
    return (sum(float((a[n] ** 2).sum()) for n in a), sum(float(((a[n] - b[n]) ** 2).sum()) for n in a))


@pytest.mark.parametrize("spec", CODEC_SPECS)
def test_codec_rejects_corrupt_blobs(spec):
    layout = lora_layout(layers=1)
    codec = build_codec(spec, layout)
    blob = codec.encode(random_update(layout, 11))
    rng = random.Random(0)
    mutants = [blob[:cut] for cut in range(0, len(blob), max(1, len(blob) // 40))]
    for _ in range(150):
        b = bytearray(blob)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        mutants.append(bytes(b))
    mutants += [bytes(rng.randrange(256) for _ in range(len(blob))), blob + b"\0", b""]
    mutants.append(build_codec("fp32", layout).encode(random_update(layout, 11)))  # another codec's blob
    for m in mutants:
        with pytest.raises(PayloadError):
            codec.decode(m)


@pytest.mark.parametrize(
    "spec", ["autoencoder(arch=row, latent=0.3)", "autoencoder(arch=row, chunk=48)", "autoencoder(arch=conv)"]
)
def test_codec_rejects_bad_parameters(spec):
    with pytest.raises(ConfigError):
        build_codec(spec, lora_layout())
