"""LoRA-XS: the data-free SVD basis (the same bits in every build), exact averaging of the cores, what
travels (and on a k-bit grid, with the rounding fed back), and on the tiny model the byte bill from the
wire format, the saved adapter reloading in peft, resume, and the run over Flower messages."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedsqueeze import config as config_mod
from fedsqueeze.codecs.grid import grid_exponent
from fedsqueeze.errors import ConfigError
from fedsqueeze.runtime.admission import admission_of
from fedsqueeze.strategies import ClientUpdate, MethodContext, adapter_spec, build_method
from fedsqueeze.strategies.mixins import CentralDP
from fedsqueeze.tensors import Layout

from conftest import MEASURED, tiny_config

PREFIXES = ("base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.layers.1.mlp.up_proj")
D_OUT, D_IN = 14, 9


def make_ctx(rank=3, dtype=torch.float64, cores=True):
    """A layout as models/ builds it for lora-xs: B, A fixed (any values here), R = 0."""
    g = torch.Generator().manual_seed(0)
    init = {}
    for prefix in PREFIXES:
        init[f"{prefix}.lora_A.weight"] = torch.randn(rank, D_IN, generator=g).to(dtype)
        init[f"{prefix}.lora_B.weight"] = torch.linalg.qr(torch.randn(D_OUT, rank, generator=g))[0].to(dtype)
        if cores:
            init[f"{prefix}.lora_R.weight"] = torch.zeros(rank, rank, dtype=dtype)
    return MethodContext(layout=Layout.of(init), init_adapter=init, seed=0, lora_r=rank)


def names(prefix):
    return f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight", f"{prefix}.lora_R.weight"


def r_names():
    return sorted(names(p)[2] for p in PREFIXES)


def round_trip(method, states, rnd, cores_by_client, examples):
    """One round through the API: each client receives, 'trains' its R to the given value, uploads."""
    updates = []
    for c, n in zip(cores_by_client, examples):
        start = method.client_receive(states.setdefault(c, {}), method.broadcast(rnd, c))
        trained = dict(start)
        for r in r_names():
            trained[r] = cores_by_client[c]
        up = method.client_upload(states[c], start, trained)
        assert sorted(up) == r_names() and admission_of(method).check_upload(rnd, c, up) is None
        updates.append(ClientUpdate(c, up, n))
    return method.aggregate(rnd, updates)


# ---- the basis ---------------------------------------------------------------------------------
def test_the_basis_is_the_weights_truncated_svd_and_the_same_in_two_independent_builds():
    from fedsqueeze.models import LoraAdapter, attach_lora, load_base

    built = []
    for _ in range(2):
        model, _ = load_base("tiny")
        built.append(LoraAdapter(attach_lora(model, 4, 8, 0.0, "all-linear", seed=0, core=True, basis="svd")))
    one, two = (b.get() for b in built)
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    model = built[0].model
    checked = 0
    for module in model.modules():
        if not hasattr(module, "lora_R"):
            continue
        w = module.get_base_layer().weight.double()
        b, a = module.lora_B["default"].weight.double(), module.lora_A["default"].weight.double()
        assert torch.count_nonzero(module.lora_R["default"].weight) == 0  # B R A = 0: the base model
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        torch.testing.assert_close(b.T @ b, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-5)
        torch.testing.assert_close(b @ a, u[:, :4] @ torch.diag(s[:4]) @ vh[:4], rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.linalg.vector_norm(a, dim=1), s[:4], rtol=1e-5, atol=0)
        checked += 1
    assert checked == 14


def test_the_orthonormal_basis_and_signs_fixed_whatever_the_input_sign():
    from fedsqueeze.models.basis import svd_factors

    w = torch.randn(12, 7, generator=torch.Generator().manual_seed(3))
    b, a = svd_factors(w, 3, "svd-orthonormal")
    torch.testing.assert_close(a @ a.T, torch.eye(3), rtol=0, atol=1e-5)
    pivots = b.abs().argmax(dim=0)
    assert torch.all(b[pivots, torch.arange(3)] > 0)
    b2, a2 = svd_factors(-w, 3, "svd-orthonormal")  # the same B, A negated: B (-A) = -W_r
    torch.testing.assert_close(b2, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a2, -a, rtol=0, atol=1e-6)
    wide_b, wide_a = svd_factors(w.T, 3, "svd")  # the wide branch (W W^T) agrees with the tall one
    u, s, vh = torch.linalg.svd(w.T.double(), full_matrices=False)
    torch.testing.assert_close((wide_b.double() @ wide_a.double()), u[:, :3] * s[:3] @ vh[:3], rtol=0, atol=1e-5)


def test_adapter_spec_declares_the_basis():
    spec = adapter_spec("lora-xs", {"rank": 12}, 4, 8.0)
    assert (spec.rank, spec.core, spec.basis) == (12, True, "svd") and spec.alpha / spec.rank == 8.0 / 4
    assert adapter_spec("lora-xs", {"basis": "orthonormal", "alpha": 3.0}, 4, 8.0).basis == "svd-orthonormal"
    assert adapter_spec("lora-xs", {"alpha": 3.0}, 4, 8.0).alpha == 3.0
    assert adapter_spec("fedavg", {}, 4, 8.0).basis is None


# ---- the server's math -------------------------------------------------------------------------
HAND = {
    0: torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64),
    1: torch.tensor([[0.0, 0.0, 0.0], [4.0, -4.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64),
    2: torch.tensor([[2.0, -2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64),
}
HAND_MEAN = torch.tensor([[1.25, -0.5, 0.0], [2.25, 0.0, 0.0], [0.5, 0.0, -0.25]], dtype=torch.float64)


def test_the_server_averages_the_cores_exactly_hand_computed():
    """R_1, R_2, R_3 with 1, 1, 2 examples from R = 0: mean R = 0.25 R_1 + 0.25 R_2 + 0.5 R_3, by hand,
    and the layer's B (mean R) A equals the mean of the clients' own B R_i A; B and A never move."""
    ctx = make_ctx()
    method = build_method("lora-xs", {}, ctx)
    states = {}
    round_trip(method, states, 1, HAND, (1, 1, 2))
    glob = method.global_adapter()
    for prefix in PREFIXES:
        a, b, r = names(prefix)
        assert torch.equal(glob[r], HAND_MEAN)
        clients = sum(w * glob[b] @ HAND[c] @ glob[a] for w, c in zip((0.25, 0.25, 0.5), HAND))
        torch.testing.assert_close(glob[b] @ glob[r] @ glob[a], clients, rtol=0, atol=1e-12)
        assert torch.equal(glob[a], ctx.init_adapter[a]) and torch.equal(glob[b], ctx.init_adapter[b])
    # Round 2: every client holds R_1 after the delta; a second mean adds the clients' changes.
    second = {c: HAND_MEAN + HAND[c] for c in HAND}
    round_trip(method, states, 2, second, (1, 1, 2))
    for c in HAND:
        for r in r_names():
            assert torch.equal(states[c]["lora_xs/R/" + r], HAND_MEAN)  # what it trained from
    assert all(torch.equal(method.global_adapter()[r], 2 * HAND_MEAN) for r in r_names())


def test_messages_none_then_the_delta_then_r_itself_for_a_client_that_missed_a_round():
    method = build_method("lora-xs", {}, make_ctx())
    states = {}
    assert all(method.broadcast(1, c) is None for c in (0, 1, 2))  # everyone holds R = 0
    round_trip(method, states, 1, HAND, (1, 1, 2))
    updates = []
    for c in (0, 1):  # client 2 sits round 2 out
        delta = method.broadcast(2, c)
        assert not delta.whole and sorted(delta) == r_names()
        assert all(torch.equal(delta[r], HAND_MEAN) for r in r_names())
        start = method.client_receive(states[c], delta)
        trained = {**start, **{r: start[r] + HAND[c] for r in r_names()}}
        updates.append(ClientUpdate(c, method.client_upload(states[c], start, trained), 1))
    method.aggregate(2, updates)
    late = method.broadcast(3, 2)  # R itself
    assert late.whole and sorted(late) == r_names()
    start = method.client_receive(states[2], late)
    assert all(torch.equal(start[r], method.global_adapter()[r]) for r in r_names())
    for c in (0, 1):  # the others hold the previous R: the delta brings them to the server's, bit for bit
        msg = method.broadcast(3, c)
        assert not msg.whole
        start = method.client_receive(states[c], msg)
        assert all(torch.equal(start[r], method.global_adapter()[r]) for r in r_names())
    assert method.broadcast(3, 0).whole  # sent again before an upload confirmed the last: R itself


def test_a_k_bit_broadcast_sends_grid_values_and_feeds_the_rounding_back():
    method = build_method("lora-xs", {"download_bits": 3}, make_ctx())
    assert method.default_downlink == "grid(bits=3)"
    states, sent_total = {}, torch.zeros(3, 3, dtype=torch.float64)
    means = torch.zeros(3, 3, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    for rnd in (1, 2, 3):
        base = method.global_adapter()[r_names()[0]]
        cores = {c: base + torch.randn(3, 3, generator=g, dtype=torch.float64) for c in (0, 1)}
        metrics = round_trip(method, states, rnd, cores, (1, 1))
        means += sum(0.5 * (cores[c] - base) for c in cores)
        d = method.last_delta[r_names()[0]]
        assert grid_exponent(d.numpy(), 3) is not None  # 3-bit codes on the wire
        sent_total += d
        assert metrics["broadcast_residual_norm"] > 0
        # nothing lost: what was sent plus what waits on the server is the sum of the clients' means
        torch.testing.assert_close(sent_total + method.residual[r_names()[0]], means, rtol=0, atol=1e-12)
        assert torch.equal(method.global_adapter()[r_names()[0]], sent_total)


def test_state_dict_round_trip_continues_identically():
    ctx = make_ctx()
    method = build_method("lora-xs", {"download_bits": 4}, ctx)
    states = {}
    round_trip(method, states, 1, HAND, (1, 1, 2))
    again = build_method("lora-xs", {"download_bits": 4}, ctx)
    again.load_state_dict({k: v.clone() for k, v in method.state_dict().items()})
    assert all(torch.equal(method.adapter[k], again.adapter[k]) for k in ctx.layout.names)
    for c in (0, 3):
        a, b = method.broadcast(2, c), again.broadcast(2, c)
        assert a.whole == b.whole and sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(method.residual[k], again.residual[k]) for k in method.residual)


def test_central_dp_is_declared_as_a_mean_of_deltas():
    method = build_method("lora-xs", {}, make_ctx())
    assert isinstance(method, CentralDP)
    update = ClientUpdate(0, {r: HAND[0] for r in r_names()}, 1)
    assert method.dp_contribution(update).keys() == update.tensors.keys()
    method.dp_aggregate(1, {r: HAND_MEAN for r in r_names()}, [update])
    assert all(torch.equal(method.global_adapter()[r], HAND_MEAN) for r in r_names())


def test_bad_rank_and_a_layout_without_cores_are_config_errors():
    with pytest.raises(ConfigError, match="params.rank"):
        build_method("lora-xs", {}, make_ctx(rank=10))  # D_IN = 9
    with pytest.raises(ConfigError, match="core"):
        build_method("lora-xs", {}, make_ctx(cores=False))
    with pytest.raises(ConfigError, match="params.basis"):
        build_method("lora-xs", {"basis": "random"}, make_ctx())


# ---- on the tiny model -------------------------------------------------------------------------
def _run(tmp_path, corpus, name, **overrides):
    from fedsqueeze.runtime import LocalRuntime, Session, rundir

    body = {"method": '"lora-xs"', "params.rank": "6", "params.alpha": "64.0", "train.rounds": "3", **overrides}
    cfg = config_mod.load(tiny_config(tmp_path, corpus, **body), [])
    out = tmp_path / name
    rundir.prepare(out, cfg, overwrite=True)
    rt = LocalRuntime(Session.build(cfg, log=lambda *_: None), out)
    return rt, rt.run(), out


def _varint_len(n: int) -> int:
    return max(1, math.ceil(n.bit_length() / 7))


def test_tiny_run_bills_r_only_from_round_1_and_saves_a_peft_loadable_adapter(tmp_path, corpus):
    from peft import PeftModel

    from fedsqueeze.client import evaluate
    from fedsqueeze.models import load_base

    rt, summary, out = _run(tmp_path, corpus, "run")
    s, method = rt.s, rt.s.method
    layout = s.adapter.layout
    rank, layers = 6, len(method.cores)
    assert layers == 14
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    # Wire format v2, layout by fingerprint: magic 4, version 1, flags 1, spec "fp32" (1 + 4),
    # fingerprint 8, presence bitmap, body-size varint, the fp32 values, crc32 4.
    values = layers * rank * rank * 4
    header = 4 + 1 + 1 + 1 + 4 + 8 + math.ceil(len(layout.names) / 8) + _varint_len(values) + 4
    for r in rows:
        assert all(r["per_client"][str(c)]["up"] == values + header for c in r["clients"])
    assert rows[0]["bytes_down"] == 0  # round 1: everyone already holds B, A (the model's) and R = 0
    for r in rows[1:]:  # every client uploaded last round: the delta
        assert all(r["per_client"][str(c)]["down"] == values + header for c in r["clients"])
    # Saved: a standard rank-6 LoRA (R folded into B) that peft loads with the run's eval loss.
    peft_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert peft_cfg["r"] == rank and peft_cfg["lora_alpha"] == 64.0
    base, _ = load_base("tiny")
    model = PeftModel.from_pretrained(base, str(out / "adapter"))
    assert not any("lora_R" in n for n, _ in model.named_parameters())
    pad = s.tokenizer.pad_token_id
    for name, ds in s.federation.eval_sets.items():
        idx = list(range(len(ds)))
        loss = evaluate(model, (ds.batch(idx[i : i + 8], pad) for i in range(0, len(idx), 8)))
        assert loss == pytest.approx(summary["eval"][name], rel=1e-5), name
    assert summary["final_eval_loss"] < summary["base_eval_loss"]


def test_tiny_run_with_4_bit_cores_both_ways(tmp_path, corpus):
    _, summary, out = _run(
        tmp_path,
        corpus,
        "q4",
        **{
            "params.download_bits": "4",
            "uplink.codec": '"quantize(bits=4, rounding=stochastic)"',
            "uplink.error_feedback": "true",
        },
    )
    _, fp32, _ = _run(tmp_path, corpus, "fp32")
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    # 36 values a core here: 4-bit codes plus one 8-byte min/step pair per core upload (a 4.8x cut),
    # 4-bit codes plus a 3-byte tag/exponent per core broadcast
    assert summary["bytes_up"] < fp32["bytes_up"] / 4.5 and summary["bytes_down"] < fp32["bytes_down"] / 5
    assert all("broadcast_residual_norm" in r for r in rows)
    assert summary["final_eval_loss"] < summary["base_eval_loss"]


def test_tiny_resume_is_bit_identical_and_eval_rebuilds_the_basis(tmp_path, corpus, cli):
    from safetensors.torch import load_file

    body = {"method": '"lora-xs"', "params.rank": "6", "params.download_bits": "6", "train.rounds": "3"}
    cfg = tiny_config(tmp_path, corpus, **body)
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli("run", cfg, "--out", full).exit_code == 0
    assert cli("run", cfg, "--out", part, "--until", "2").exit_code == 0
    res = cli("resume", part)
    assert res.exit_code == 0, res.output
    a = load_file(str(full / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(part / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda p: [
        {k: v for k, v in json.loads(x).items() if k not in MEASURED} for x in p.read_text().splitlines()
    ]
    assert strip(full / "rounds.jsonl") == strip(part / "rounds.jsonl")
    # `fedsqueeze eval` rebuilds the run's model (cores, the SVD basis) and loads the folded adapter
    res = cli("eval", full, "--metrics", "loss")
    assert res.exit_code == 0, res.output
    judged = json.loads((full / "eval.json").read_text())["sets"]
    summary = json.loads((full / "summary.json").read_text())
    assert judged and all(row["loss"] == pytest.approx(summary["eval"][n], rel=1e-5) for n, row in judged.items())


def test_a_rank_beyond_the_narrowest_weight_is_a_config_error(tmp_path, corpus, cli):
    cfg = tiny_config(tmp_path, corpus, method='"lora-xs"', **{"params.rank": "65"})  # tiny: hidden 64
    res = cli("run", cfg, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "params.rank" in res.output


def test_runs_the_same_over_flower_messages(tmp_path, corpus):
    """Client hooks that kept anything outside client_state would differ here (3 rounds, a client
    sampled out of one: the catch-up message too)."""
    from test_flower import _assert_same_run, _local_run, _serve_in_process

    body = {"method": '"lora-xs"', "train.rounds": "3", "train.clients_per_round": "2", "params.download_bits": "4"}
    cfg = tiny_config(tmp_path, corpus, **{"data.clients": "3", "data.partition": '"iid"', **body})
    _local_run(cfg, tmp_path / "local")
    _serve_in_process(cfg, tmp_path / "grid")
    _assert_same_run(tmp_path / "local", tmp_path / "grid", exact=True)
    rows = [json.loads(x) for x in (tmp_path / "grid" / "rounds.jsonl").read_text().splitlines()]
    assert len({tuple(r["clients"]) for r in rows}) > 1


# On Flower's simulation engine: tests/test_owners.py runs lora-xs (4-bit cores) on flower-sim.
