"""FedSRD / FedSRD-e driven through the Method API with synthetic 'trained' adapters."""

import math

import numpy as np
import pytest
import torch

from fedsqueeze.codecs import Sender, build_codec, positions
from fedsqueeze.codecs.wire import MARKERS, Writer
from fedsqueeze.codecs.wire import message_tensors as to_wire
from fedsqueeze.codecs.wire import read_message as from_wire
from fedsqueeze.errors import ConfigError
from fedsqueeze.strategies import ClientUpdate, MethodContext, build_method
from fedsqueeze.tensors import Layout

PREFIXES = ("base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.layers.0.mlp.up_proj")
SHAPES = {PREFIXES[0]: (12, 10), PREFIXES[1]: (16, 10)}  # (d_out, d_in)
R = 3


def make_ctx(seed=0, weighting="examples"):
    g = torch.Generator().manual_seed(seed)
    init = {}
    for prefix in PREFIXES:
        d_out, d_in = SHAPES[prefix]
        init[f"{prefix}.lora_A.weight"] = torch.randn(R, d_in, generator=g) * 0.3
        init[f"{prefix}.lora_B.weight"] = torch.zeros(d_out, R)  # peft: B starts at 0
    return MethodContext(layout=Layout.of(init), init_adapter=init, seed=seed, weighting=weighting)


def fake_training(start, client, rnd, scale=0.05):
    """A deterministic stand-in for K local steps: start + a client- and round-specific step."""
    g = torch.Generator().manual_seed(1000 * client + rnd)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in start.items()}


def wire(message, ctx, spec="sparse"):
    """What the other side decodes: a codec's round trip (default: the lossless `sparse` link)."""
    if message is None:
        return None
    codec = build_codec(spec, ctx.layout)
    return from_wire(codec.decode(codec.encode(to_wire(message))))


def without_markers(tensors):
    """Tensors less the wire's marker entries (side information travels as markers)."""
    return {k: v for k, v in tensors.items() if k not in MARKERS}


def run_rounds(method, ctx, schedule, states=None, on_receive=None):
    """Drives broadcast -> client_receive -> (train) -> client_upload -> aggregate over `schedule`
    (a list of client lists, round 1 first). Returns the client states."""
    states = {} if states is None else states
    for rnd, clients in schedule:
        updates = []
        for c in clients:
            msg = method.broadcast(rnd, c)
            state = states.setdefault(c, {})
            start = method.client_receive(state, wire(msg, ctx, method.default_downlink))
            if on_receive:
                on_receive(rnd, c, msg, start)
            trained = fake_training(start, c, rnd)
            up = wire(method.client_upload(state, start, trained), ctx)
            updates.append(ClientUpdate(c, up, num_examples=10 + c))
        method.aggregate(rnd, updates)
    return states


SCHEDULE = list(enumerate([[0, 1, 2], [0, 1], [0, 2], [1, 3], [0, 1, 2, 3], [2], [0, 1, 2, 3]], start=1))
VARIANTS = [
    ("fedsrd", {}),
    ("fedsrd-e", {}),
    ("fedsrd", {"start_factor": "A"}),
    ("fedsrd", {"reconstruct": False}),
    ("fedsrd", {"decompose": False}),
    ("fedsrd-e", {"decompose": False, "reconstruct": False}),
    ("fedsrd", {"sparsifier": "random", "adaptive_ratio": False}),
    ("fedsrd", {"sparsifier": "magnitude", "rescale": False}),
    ("fedsrd-e", {"sparsifier": "none", "download_drop": 0.0}),
    ("fedsrd", {"download_dtype": "bf16", "download_drop": 0.5}),  # over `sparse > narrow`
    ("fedsrd", {"projection_damping": 0.05, "download_drop": 0.0}),
    ("fedsrd", {"moves": "both", "download_dtype": "bf16"}),
    ("fedsrd-e", {"moves": "both", "start_factor": "A"}),
    ("fedsrd", {"download_bits": 8}),  # over `seeded > grid(bits=8)`
    ("fedsrd", {"download_bits": 4, "moves": "both"}),
    ("fedsrd-e", {"download_bits": 2, "download_drop": 0.0}),  # over `sparse > grid(bits=2)`
    ("fedsrd", {"download_mask": "bernoulli"}),  # the earlier draw, over `sparse`
    ("fedsrd", {"download_feedback": True}),
    ("fedsrd", {"download_feedback": True, "download_bits": 4, "moves": "both"}),
]


@pytest.mark.parametrize("name, params", VARIANTS)
def test_server_and_clients_hold_identical_adapters(name, params):
    ctx = make_ctx()
    method = build_method(name, params, ctx)
    kinds = []

    def check(rnd, client, msg, start):
        glob = method.global_adapter()
        assert list(start) == list(ctx.layout.names)
        for k in ctx.layout.names:
            assert torch.equal(start[k], glob[k]), (rnd, client, k)
        kinds.append((rnd, client, "none" if msg is None else "all" if msg.whole else "delta"))

    run_rounds(method, ctx, SCHEDULE, on_receive=check)
    assert all(kind == "none" for rnd, _, kind in kinds if rnd == 1)
    if params.get("decompose", True):
        # a client that took part in the last round gets the one-factor delta; one that skipped a
        # round (2 in round 2, 1 in round 3, 0/1/3 in round 6) or joins late (3, version 0 < 3) gets C
        assert (2, 0, "delta") in kinds and (3, 0, "delta") in kinds and (5, 3, "delta") in kinds
        assert (3, 2, "all") in kinds and (4, 1, "all") in kinds and (4, 3, "all") in kinds
        assert (6, 2, "delta") in kinds and (7, 0, "all") in kinds and (7, 2, "delta") in kinds
    else:
        assert all(kind == "all" for rnd, _, kind in kinds if rnd > 1)
    # the global moved
    glob = method.global_adapter()
    assert any(not torch.equal(glob[k], ctx.init_adapter[k]) for k in ctx.layout.names)


def test_broadcast_is_one_sparse_factor_and_round_one_moves_b():
    ctx = make_ctx()
    method = build_method("fedsrd", {}, ctx)
    assert method.broadcast(1, 0) is None  # everyone starts from the shared init
    run_rounds(method, ctx, [(1, [0, 1])])
    b_names = [n for n in ctx.layout.names if n.endswith("lora_B.weight")]
    a_names = [n for n in ctx.layout.names if n.endswith("lora_A.weight")]
    msg = method.broadcast(2, 0)
    assert sorted(msg) == sorted(b_names) and msg.mask_seed is not None  # the seed of its mask rides along
    density = sum(int(v.count_nonzero()) for v in msg.values()) / sum(v.numel() for v in msg.values())
    assert 0.05 < density < 0.4  # about 1 - download_drop = 0.2 kept
    assert all(torch.count_nonzero(method.global_adapter()[b]) > 0 for b in b_names)  # round 1 not wasted
    assert all(torch.equal(method.global_adapter()[a], ctx.init_adapter[a]) for a in a_names)
    run_rounds(method, ctx, [(2, [0, 1])])
    assert sorted(without_markers(method.broadcast(3, 0))) == sorted(a_names)  # then A


def test_reference_order_wastes_round_one():
    """start_factor='A' reproduces the reference: pinv(B0 = 0) dW = 0, nothing moves in round 1."""
    ctx = make_ctx()
    method = build_method("fedsrd", {"start_factor": "A"}, ctx)
    run_rounds(method, ctx, [(1, [0, 1])])
    for k in ctx.layout.names:
        assert torch.equal(method.global_adapter()[k], ctx.init_adapter[k])


def test_broadcast_mask_and_rescale():
    """Without the download mask the B step applies dW pinv(A0) exactly; with it, 80% is dropped and
    the survivors are x 5."""
    ctx = make_ctx()
    dense = build_method("fedsrd", {"download_drop": 0.0}, ctx)
    masked = build_method("fedsrd", {}, ctx)
    run_rounds(dense, ctx, [(1, [0, 1])])
    run_rounds(masked, ctx, [(1, [0, 1])])
    for name, d in dense.broadcast(2, 0).items():
        m = masked.broadcast(2, 0)[name]
        kept = m != 0
        assert torch.allclose(m[kept], 5 * d[kept], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bits", [None, 3])
def test_broadcast_feedback_keeps_what_the_mask_and_grid_left_out(bits):
    """download_feedback: the survivors are sent as they are (no x 5) and the server keeps the rest;
    sent + kept = the unmasked move, and the next broadcast of that factor starts with it."""
    ctx = make_ctx()
    extra = {} if bits is None else {"download_bits": bits}
    dense = build_method("fedsrd", {"download_drop": 0.0}, ctx)
    fed = build_method("fedsrd", {"download_feedback": True, **extra}, ctx)
    run_rounds(dense, ctx, [(1, [0, 1])])
    run_rounds(fed, ctx, [(1, [0, 1])])
    meant = without_markers(dense.broadcast(2, 0))
    sent = without_markers(fed.broadcast(2, 0))
    assert sorted(sent) == sorted(fed.feedback) == sorted(meant)
    for name, d in meant.items():
        torch.testing.assert_close(sent[name] + fed.feedback[name], d, rtol=0, atol=1e-6)
        if bits is None:
            kept = sent[name] != 0
            assert torch.equal(sent[name][kept], d[kept]) and kept.any()  # as they are, not x 5
    saved = {k: v.clone() for k, v in fed.state_dict().items()}
    again = build_method("fedsrd", {"download_feedback": True, **extra}, ctx)
    again.load_state_dict(saved)
    assert all(torch.equal(again.feedback[k], fed.feedback[k]) for k in fed.feedback)
    # rounds 2 (A) and 3 (B): the B broadcast of round 3 carries round 1's held-back part
    states = run_rounds(fed, ctx, [(2, [0, 1]), (3, [0, 1])])
    metrics = fed.aggregate(4, [ClientUpdate(c, {}, 1) for c in states])
    assert metrics["broadcast_feedback_norm"] > 0


def test_bf16_broadcast_is_the_rounded_fp32_one_at_half_the_value_bytes():
    ctx = make_ctx()
    fp32 = build_method("fedsrd", {}, ctx)
    bf16 = build_method("fedsrd", {"download_dtype": "bf16"}, ctx)
    assert (fp32.default_downlink, bf16.default_downlink) == ("seeded", "seeded > narrow")
    run_rounds(fp32, ctx, [(1, [0, 1])])
    run_rounds(bf16, ctx, [(1, [0, 1])])
    full, half = fp32.broadcast(2, 0), bf16.broadcast(2, 0)
    assert sorted(full) == sorted(half)
    assert full.mask_seed == half.mask_seed is not None  # the same mask: only the precision differs
    for name in without_markers(full):
        assert torch.equal(half[name], full[name].to(torch.bfloat16).float()), name  # same mask, rounded
        assert torch.count_nonzero(half[name]) > 0
    nonzero = sum(int(v.count_nonzero()) for v in without_markers(full).values())
    link = build_codec(bf16.default_downlink, ctx.layout)  # the fp32 delta is not bf16-exact: 4 bytes a value
    assert len(link.encode(to_wire(full))) - len(link.encode(to_wire(half))) == 2 * nonzero


def test_upload_is_sparse_and_keeps_l1_norm():
    ctx = make_ctx()
    method = build_method("fedsrd", {}, ctx)
    start = fake_training(ctx.init_adapter, 9, 9, scale=1.0)  # a start with B != 0
    trained = fake_training(start, 1, 1)
    up = method.client_upload({}, start, trained)
    for k, v in up.items():
        dense = trained[k] - start[k]
        assert 0.0 < v.count_nonzero() / v.numel() <= 0.15 + 1 / v.numel()  # rho >= 0.85
        assert torch.allclose(v.abs().sum(), dense.abs().sum(), rtol=1e-5)
        kept = v != 0
        assert torch.allclose(v[kept] / dense[kept], (v[kept] / dense[kept])[0].expand(int(kept.sum())))
    none = build_method("fedsrd", {"sparsifier": "none"}, ctx).client_upload({}, start, trained)
    assert all(torch.equal(none[k], trained[k] - start[k]) for k in none)


def test_fedsrd_e_without_mask_reaches_projected_full_rank_w():
    """FedSRD-e, B round, no mask: B0 A0 + dB A0 = W pinv(A0) A0 with W = sum w_i B_i A_i."""
    ctx = make_ctx(weighting="uniform")
    method = build_method("fedsrd-e", {"download_drop": 0.0, "sparsifier": "none"}, ctx)
    starts, trained = {}, {}

    def keep(rnd, c, msg, start):
        starts[c] = start
        trained[c] = fake_training(start, c, rnd)

    run_rounds(method, ctx, [(1, [0, 1, 2])], on_receive=keep)
    for prefix in PREFIXES:
        a, b = f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"
        a0 = ctx.init_adapter[a].double()
        w = sum(trained[c][b].double() @ trained[c][a].double() for c in range(3)) / 3
        expected = w @ torch.linalg.pinv(a0) @ a0
        got = method.global_adapter()[b].double() @ method.global_adapter()[a].double()
        assert torch.allclose(got, expected, atol=1e-5)


def test_both_moves_add_the_other_factors_share_of_what_the_first_left():
    """moves=both, no mask: B' = B0 + dW pinv(A0), then A' = A0 + pinv(B') (W - B' A0), so
    B' A' = W P_A0 + P_B' W (I - P_A0): strictly closer to W than the B step alone."""
    ctx = make_ctx(weighting="uniform")
    method = build_method("fedsrd-e", {"download_drop": 0.0, "sparsifier": "none", "moves": "both"}, ctx)
    trained = {}
    run_rounds(
        method,
        ctx,
        [(1, [0, 1, 2])],
        on_receive=lambda rnd, c, msg, start: trained.__setitem__(c, fake_training(start, c, rnd)),
    )
    glob = method.global_adapter()
    for prefix in PREFIXES:
        a, b = f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"
        a0 = ctx.init_adapter[a].double()
        w = sum(trained[c][b].double() @ trained[c][a].double() for c in range(3)) / 3
        p_a = torch.linalg.pinv(a0) @ a0
        b1 = glob[b].double()
        assert torch.allclose(b1, w @ torch.linalg.pinv(a0), atol=1e-5)
        p_b = b1 @ torch.linalg.pinv(b1)
        expected = w @ p_a + p_b @ w @ (torch.eye(p_a.shape[0], dtype=torch.float64) - p_a)
        got = b1 @ glob[a].double()
        assert torch.allclose(got, expected, atol=1e-5)
        assert torch.dist(got, w) < 0.9 * torch.dist(w @ p_a, w)


def test_never_forms_a_dense_svd(monkeypatch):
    ctx = make_ctx()
    method = build_method("fedsrd", {}, ctx)
    shapes = []
    real_svd = torch.linalg.svd

    def spy(x, *args, **kwargs):
        shapes.append(tuple(x.shape))
        return real_svd(x, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", spy)
    run_rounds(method, ctx, [(1, [0, 1, 2]), (2, [0, 1, 2])])
    assert shapes and all(max(s) <= 3 * R for s in shapes)


def test_state_dict_resumes_exactly():
    ctx = make_ctx()
    first = build_method("fedsrd", {}, ctx)
    states = run_rounds(first, ctx, SCHEDULE[:3])
    saved = {k: v.clone() for k, v in first.state_dict().items()}
    saved_states = {c: {k: v.clone() for k, v in s.items()} for c, s in states.items()}
    second = build_method("fedsrd", {}, ctx)
    second.load_state_dict(saved)
    run_rounds(first, ctx, SCHEDULE[3:], states=states)
    run_rounds(second, ctx, SCHEDULE[3:], states=saved_states)
    for k in ctx.layout.names:
        assert torch.equal(first.global_adapter()[k], second.global_adapter()[k])


def test_lost_message_is_never_applied_twice():
    """A broadcast whose upload never arrives: the server cannot tell whether the client applied it,
    so it sends C next time instead of a delta."""
    ctx = make_ctx()
    method = build_method("fedsrd", {}, ctx)
    states = run_rounds(method, ctx, [(1, [0, 1])])
    method.client_receive(states[0], wire(method.broadcast(2, 0), ctx))  # 0 applies, its upload is lost
    run_rounds(method, ctx, [(2, [1])], states=states)
    msg = method.broadcast(3, 0)
    assert set(msg) == set(ctx.layout.names) and msg.whole
    start = method.client_receive(states[0], wire(msg, ctx))
    assert all(torch.equal(start[k], method.global_adapter()[k]) for k in start)


def test_params_are_validated():
    ctx = make_ctx()
    with pytest.raises(ConfigError, match="allowed keys"):
        build_method("fedsrd", {"ratio": 0.9}, ctx)
    with pytest.raises(ConfigError):
        build_method("fedsrd", {"sparsifier": "topk"}, ctx)
    with pytest.raises(ConfigError):
        build_method("fedsrd-e", {"download_drop": 1.0}, ctx)
    with pytest.raises(ConfigError, match="download_dtype"):
        build_method("fedsrd", {"download_dtype": "fp16"}, ctx)
    m = build_method("fedsrd", {"base_ratio": 0.5, "start_factor": "A"}, ctx)
    assert m.params.base_ratio == 0.5 and m.default_uplink == "sparse" and m.default_downlink == "seeded"
    with pytest.raises(ConfigError, match="download_bits"):
        build_method("fedsrd", {"download_bits": 16}, ctx)
    with pytest.raises(ConfigError, match="download_bits"):
        build_method("fedsrd", {"download_bits": 8, "download_dtype": "bf16"}, ctx)
    defaults = {
        "seeded": {},
        "seeded > grid(bits=4)": {"download_bits": 4},
        "sparse": {"download_mask": "bernoulli"},
        "sparse > grid(bits=8)": {"download_drop": 0.0, "download_bits": 8},
    }
    for spec, params in defaults.items():
        assert build_method("fedsrd", params, ctx).default_downlink == spec


# ---- coding: seeded masks, k-bit broadcasts, quantized uploads ---------------------------------------
def test_seeded_broadcast_drops_the_positions_share_of_the_bytes():
    """Same delta values, once with positions (sparse) and once without (seeded): the broadcast
    shrinks by what its positions cost, and every client redraws the same mask."""
    ctx = make_ctx()
    params = {"sparsifier": "none"}  # dense uploads: a dense dW, so the mask is all that zeroes entries
    method = build_method("fedsrd", params, ctx)
    run_rounds(method, ctx, [(1, [0, 1])])
    msg = to_wire(method.broadcast(2, 0))
    values = without_markers(msg)
    nonzero = sum(int(v.count_nonzero()) for v in values.values())
    expected = sum(round(0.2 * v.numel()) for v in values.values())
    assert nonzero == expected  # round((1 - drop) n) kept of each tensor, seeded by (seed, round, name)
    seeded, sparse = build_codec("seeded", ctx.layout), build_codec("sparse", ctx.layout)
    a, b = seeded.encode(msg), sparse.encode(msg)
    numels = np.array([v.numel() for v in values.values()], np.int64)
    counts = np.array([int(v.count_nonzero()) for v in values.values()], np.int64)
    kept = np.concatenate([np.flatnonzero(v.reshape(-1).numpy()) for v in values.values()]).astype(np.int64)
    w = Writer()
    positions.write(w, numels, counts, kept)
    # the positions section, less seeded's own count byte per tensor and its empty positions section
    assert len(b) - len(a) >= w.size - len(values) - 1
    assert len(a) <= 4 * nonzero + 64  # values, header, marker, counts
    assert all(torch.equal(seeded.decode(a)[k], msg[k]) for k in msg)
    other = build_method("fedsrd", params, ctx)  # a fresh server over the same round draws the same mask
    run_rounds(other, ctx, [(1, [0, 1])])
    again = other.broadcast(2, 1)
    assert again.mask_seed == method.broadcast(2, 1).mask_seed and all(torch.equal(again[k], msg[k]) for k in again)


def test_k_bit_broadcast_is_on_its_grid_and_costs_k_bits_a_value():
    ctx = make_ctx()
    full = build_method("fedsrd", {}, ctx)
    runs = {bits: build_method("fedsrd", {"download_bits": bits}, ctx) for bits in (8, 4)}
    for m in (full, *runs.values()):
        run_rounds(m, ctx, [(1, [0, 1])])
    exact = without_markers(full.broadcast(2, 0))
    for bits, m in runs.items():
        msg = m.broadcast(2, 0)
        levels = 2 ** (bits - 1) - 1
        for name, v in without_markers(msg).items():
            top = float(exact[name].abs().max())
            e = math.ceil(math.log2(top / levels))
            codes = v.double() / 2.0**e
            assert torch.equal(codes, codes.round()) and codes.abs().max() <= levels  # c * 2**e, |c| <= L
            assert (v.double() - exact[name].double()).abs().max() <= 2.0**e / 2 * (1 + 1e-6)  # nearest
            assert torch.equal(v != 0, (exact[name] != 0) & (codes != 0))  # same mask, small ones rounded to 0
        link = build_codec(m.default_downlink, ctx.layout)
        assert m.default_downlink == f"seeded > grid(bits={bits})"
        blob = link.encode(to_wire(msg))
        assert all(torch.equal(link.decode(blob)[k], msg[k]) for k in msg)  # lossless: clients identical
        values = sum(round(0.2 * v.numel()) for v in without_markers(msg).values())
        assert len(blob) <= values * bits / 8 + 8 * (len(msg) + 1) + 64  # + 1: the seed's marker


def quantized_uploads(bits, rounding, rounds, error_feedback=True, seed=3, params=None):
    """FedSRD uploads of one client over `rounds` rounds through sparse > quantize(bits) with a
    Sender: (inputs, what the server decoded, the sender)."""
    ctx = make_ctx()
    method = build_method("fedsrd", params or {}, ctx)
    spec = f"sparse > quantize(bits={bits}, rounding={rounding}, seed={seed})"
    sender, receiver = Sender(build_codec(spec, ctx.layout), error_feedback), build_codec(spec, ctx.layout)
    start = fake_training(ctx.init_adapter, 9, 9, scale=1.0)
    inputs, decoded = [], []
    for rnd in range(1, rounds + 1):
        up = method.client_upload({}, start, fake_training(start, 1, rnd))
        inputs.append(up)
        decoded.append(receiver.decode(sender.encode(up)))
    return inputs, decoded, sender


def block_steps(kept: torch.Tensor, bits: int, block: int = 256) -> torch.Tensor:
    """The quantizer's step for each kept value (its block's (max - min) / (2**bits - 1))."""
    steps = []
    for chunk in kept.split(block):
        steps.append(torch.full_like(chunk, float(chunk.max() - chunk.min()) / (2**bits - 1)))
    return torch.cat(steps) if steps else kept


@pytest.mark.parametrize("bits", [4, 2])
def test_quantized_upload_stays_sparse_and_within_the_quantizers_bound(bits):
    """No error feedback: each decoded upload has the upload's support and every kept value within
    one step of its block (stochastic rounding's bound, quantize.py)."""
    inputs, decoded, _ = quantized_uploads(bits, "stochastic", 1, error_feedback=False)
    for name, up in inputs[0].items():
        got = decoded[0][name]
        kept = up != 0
        assert torch.equal(got[~kept], torch.zeros_like(got[~kept]))  # positions exact (sparse)
        x, y = up.reshape(-1)[kept.reshape(-1)], got.reshape(-1)[kept.reshape(-1)]
        assert ((y - x).abs() <= block_steps(x, bits) * (1 + 1e-5) + 1e-7).all()


@pytest.mark.parametrize("bits", [4, 2])
def test_error_feedback_tracks_the_unquantized_sum_and_keeps_uploads_sparse(bits):
    """With error feedback the server's running sum stays within one residual of the clients' (the
    residual is bounded by about one step per entry, not growing with the rounds); without it the
    gap grows. Memory is added only where the next upload is non-zero, so uploads never densify."""
    rounds = 12
    # half of each delta kept, so that positions recur across rounds and the memory gets used
    params = {"adaptive_ratio": False, "base_ratio": 0.5}
    inputs, decoded, sender = quantized_uploads(bits, "stochastic", rounds, params=params)
    _, plain, _ = quantized_uploads(bits, "stochastic", rounds, error_feedback=False, params=params)
    max_step = max(float(block_steps(v[v != 0], bits).max()) for up in inputs for v in up.values())
    for name in inputs[0]:
        for up, got in zip(inputs, decoded):
            assert int(got[name].count_nonzero()) <= int(up[name].count_nonzero())  # never denser
        total_in = sum(up[name].double() for up in inputs)
        total_ef = sum(d[name].double() for d in decoded)
        total_plain = sum(d[name].double() for d in plain)
        residual = sender.memory[name].double()
        assert torch.allclose(total_ef + residual, total_in, atol=1e-5)  # nothing lost
        # bounded, not growing: one step of a block whose range the memory widens, r <= step of
        # (range + 2 r), i.e. r <= max_step * L / (L - 2) with L = 2**bits - 1 levels
        levels = 2**bits - 1
        assert residual.abs().max() <= max_step * levels / (levels - 2) * (1 + 1e-5)
        gap_ef, gap_plain = (total_ef - total_in).norm(), (total_plain - total_in).norm()
        assert gap_ef < gap_plain


@pytest.mark.parametrize("bits, rounding", [(4, "nearest"), (4, "stochastic"), (2, "stochastic")])
def test_quantizing_after_the_l1_rescale_keeps_the_l1_norm_within_the_quantizers_error(bits, rounding):
    """What holds: the upload's L1 norm equals the dense delta's (the rescale); after quantizing it
    moves by at most the L1 norm of the quantization error, sum_i |err_i| <= sum_i step_i (/2 when
    nearest). It is not kept exactly; stochastic rounding keeps the signed sum unbiased, not the L1."""
    ctx = make_ctx()
    method = build_method("fedsrd", {}, ctx)
    start = fake_training(ctx.init_adapter, 9, 9, scale=1.0)
    trained = fake_training(start, 1, 1)
    up = method.client_upload({}, start, trained)
    codec = build_codec(f"sparse > quantize(bits={bits}, rounding={rounding})", ctx.layout)
    got = codec.decode(codec.encode(up))
    moved = 0.0
    for name, v in up.items():
        dense = (trained[name] - start[name]).double()
        assert math.isclose(float(v.double().abs().sum()), float(dense.abs().sum()), rel_tol=1e-5)  # the rescale
        kept = v.reshape(-1)[v.reshape(-1) != 0]
        bound = float(block_steps(kept, bits).sum()) * (0.5 if rounding == "nearest" else 1.0)
        change = abs(float(got[name].double().abs().sum() - v.double().abs().sum()))
        err = float((got[name].double() - v.double()).abs().sum())
        assert change <= err * (1 + 1e-6) + 1e-9 and err <= bound * (1 + 1e-5) + 1e-7
        moved += change
    assert moved > 0  # not exact: the statement above is the one that holds
