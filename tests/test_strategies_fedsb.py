"""Fed-SB: the warm-up's truncated SVD, exact averaging of R, what travels, and on the tiny model the
byte bill, the saved adapter reloading in peft, R alone training, and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedsqueeze import config as config_mod
from fedsqueeze.errors import ConfigError
from fedsqueeze.strategies import ClientUpdate, MethodContext, adapter_spec, build_method
from fedsqueeze.strategies.fed_sb import complete_orthonormal
from fedsqueeze.tensors import Layout

from conftest import MEASURED, tiny_config

PREFIXES = ("base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.layers.1.mlp.up_proj")
D_OUT, D_IN = 14, 9


def make_ctx(rank=4, lora_r=2, dtype=torch.float64, cores=True):
    g = torch.Generator().manual_seed(0)
    init = {}
    for prefix in PREFIXES:
        init[f"{prefix}.lora_A.weight"] = (torch.randn(rank, D_IN, generator=g) * 0.3).to(dtype)
        init[f"{prefix}.lora_B.weight"] = torch.zeros(D_OUT, rank, dtype=dtype)
        if cores:
            init[f"{prefix}.lora_R.weight"] = torch.eye(rank, dtype=dtype)
    return MethodContext(layout=Layout.of(init), init_adapter=init, seed=0, lora_r=lora_r)


def names(prefix):
    return f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight", f"{prefix}.lora_R.weight"


def train(method, state, start, client, rnd, scale=0.2):
    """Moves exactly what the client trains this round (its client_trainable), seeded per client."""
    g = torch.Generator().manual_seed(100 * client + rnd)
    keep = method.client_trainable(state)
    return {
        k: v + scale * torch.randn(v.shape, generator=g, dtype=torch.float64).to(v.dtype) if keep(k) else v
        for k, v in start.items()
    }


def warm_up(method, clients=(0, 1, 2), examples=(1, 1, 2)):
    """Round 1 through the API; returns the clients' states and each one's trained adapter."""
    states, trained, updates = {}, {}, []
    for c, n in zip(clients, examples):
        states[c] = {}
        assert method.broadcast(1, c) is None
        start = method.client_receive(states[c], None)
        trained[c] = train(method, states[c], start, c, 1)
        up = method.client_upload(states[c], start, trained[c])
        assert method.check_upload(1, c, up) is None
        updates.append(ClientUpdate(c, up, n))
    metrics = method.aggregate(1, updates)
    return states, trained, updates, metrics


def test_the_models_layer_names_cores_as_the_methods_expect():
    from fedsqueeze.models import adapter
    from fedsqueeze.strategies import lora_math

    assert adapter.R_SUFFIX == lora_math.R_SUFFIX and adapter.B_SUFFIX == lora_math.B_SUFFIX


def test_adapter_spec_keeps_the_warm_up_scaling():
    spec = adapter_spec("fed-sb", {"rank": 12}, 4, 8.0)
    assert (spec.rank, spec.core) == (12, True) and spec.alpha / spec.rank == 8.0 / 4
    assert adapter_spec("fed-sb", {}, 4, 8.0).rank == 4
    assert not adapter_spec("fedavg", {}, 4, 8.0).core


def test_warm_up_trains_a_rank_w_lora_and_fixes_the_truncated_svd_of_the_mean_product():
    ctx = make_ctx(rank=4, lora_r=2)
    method = build_method("fed-sb", {}, ctx)
    states, trained, updates, metrics = warm_up(method)
    assert metrics["phase"] == "warm-up" and 0 < metrics["warmup_energy"] <= 1
    weights = [0.25, 0.25, 0.5]  # examples 1, 1, 2
    glob = method.global_adapter()
    for prefix in PREFIXES:
        a, b, r = names(prefix)
        start = method.warm_init
        assert torch.count_nonzero(start[a][2:]) == 0 and torch.count_nonzero(start[b]) == 0
        assert torch.equal(start[r], torch.eye(4, dtype=torch.float64))
        # uploads: the rank-2 part only, and R never moved in the warm-up
        assert updates[0].tensors[a].shape == (2, D_IN) and updates[0].tensors[b].shape == (D_OUT, 2)
        assert all(torch.equal(trained[c][r], start[r]) for c in trained)
        mean = sum(w * trained[c][b][:, :2] @ trained[c][a][:2] for w, c in zip(weights, (0, 1, 2)))
        u, s, vh = torch.linalg.svd(mean)
        best = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]  # 3 clients x rank 2 = 6 > 4: a real truncation
        torch.testing.assert_close(glob[b] @ glob[r] @ glob[a], best, rtol=0, atol=1e-10)
        torch.testing.assert_close(glob[b].T @ glob[b], torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-10)
        torch.testing.assert_close(glob[a] @ glob[a].T, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-10)
        assert torch.equal(glob[r], torch.diag(torch.diagonal(glob[r])))


def test_a_rank_deficient_warm_up_completes_b_and_a_with_orthonormal_directions():
    """One client at rank 2 gives M of rank 2 < 4: the other two directions are random but
    orthonormal (so R's whole 4 x 4 still trains) and carry zero in R."""
    method = build_method("fed-sb", {}, make_ctx(rank=4, lora_r=2))
    _, trained, _, _ = warm_up(method, clients=(0,), examples=(3,))
    glob = method.global_adapter()
    for prefix in PREFIXES:
        a, b, r = names(prefix)
        eye = torch.eye(4, dtype=torch.float64)
        torch.testing.assert_close(glob[b].T @ glob[b], eye, rtol=0, atol=1e-10)
        torch.testing.assert_close(glob[a] @ glob[a].T, eye, rtol=0, atol=1e-10)
        assert torch.all(torch.diagonal(glob[r])[2:] == 0) and torch.all(torch.diagonal(glob[r])[:2] > 0)
        exact = trained[0][b][:, :2] @ trained[0][a][:2]
        torch.testing.assert_close(glob[b] @ glob[r] @ glob[a], exact, rtol=0, atol=1e-10)


def test_complete_orthonormal_keeps_the_given_columns():
    q, _ = torch.linalg.qr(torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    padded = torch.cat([q, torch.zeros(10, 2, dtype=torch.float64)], dim=1)
    full = complete_orthonormal(padded, 3, torch.Generator().manual_seed(2))
    assert torch.equal(full[:, :3], q)
    torch.testing.assert_close(full.T @ full, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-12)


def test_the_server_averages_r_exactly_hand_computed():
    """R_1, R_2, R_3 with 1, 1, 2 examples: mean R = 0.25 R_1 + 0.25 R_2 + 0.5 R_3, by hand, and the
    new layer update B (mean R) A equals the mean of the clients' own B R_i A."""
    method = build_method("fed-sb", {"rank": 2}, make_ctx(rank=2, lora_r=2))
    states, _, _, _ = warm_up(method)
    hand = {
        0: torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64),
        1: torch.tensor([[0.0, 0.0], [4.0, -4.0]], dtype=torch.float64),
        2: torch.tensor([[2.0, -2.0], [1.0, 0.0]], dtype=torch.float64),
    }
    expected_mean = torch.tensor([[1.25, -0.5], [2.25, 0.0]], dtype=torch.float64)
    updates, starts = [], {}
    for c, n in zip((0, 1, 2), (1, 1, 2)):
        starts[c] = method.client_receive(states[c], method.broadcast(2, c))
        trained = dict(starts[c])
        for prefix in PREFIXES:
            trained[names(prefix)[2]] = hand[c]
        up = method.client_upload(states[c], starts[c], trained)
        assert sorted(up) == sorted(names(p)[2] for p in PREFIXES)
        assert method.check_upload(2, c, up) is None
        updates.append(ClientUpdate(c, up, n))
    method.aggregate(2, updates)
    glob = method.global_adapter()
    for prefix in PREFIXES:
        a, b, r = names(prefix)
        torch.testing.assert_close(glob[r], expected_mean, rtol=0, atol=1e-12)
        clients_mean = 0.25 * (b0 := glob[b]) @ hand[0] @ glob[a] + 0.25 * b0 @ hand[1] @ glob[a]
        clients_mean = clients_mean + 0.5 * b0 @ hand[2] @ glob[a]
        torch.testing.assert_close(glob[b] @ glob[r] @ glob[a], clients_mean, rtol=0, atol=1e-12)
        assert all(torch.equal(glob[k], starts[0][k]) for k in (a, b))  # B and A never move again


def test_b_and_a_go_to_each_client_once_then_r_alone():
    method = build_method("fed-sb", {}, make_ctx(rank=4, lora_r=2))
    states, _, _, _ = warm_up(method)
    r_names = sorted(names(p)[2] for p in PREFIXES)
    for rnd in (2, 3):
        updates = []
        for c in (0, 1):  # client 2 sits rounds 2 and 3 out
            msg = method.broadcast(rnd, c)
            if rnd == 2:
                assert msg.whole and len(msg) == 3 * len(PREFIXES)
            else:
                assert not msg.whole and sorted(msg) == r_names
            start = method.client_receive(states[c], msg)
            assert method.client_trainable(states[c])(r_names[0])
            assert not method.client_trainable(states[c])(names(PREFIXES[0])[0])
            trained = train(method, states[c], start, c, rnd)
            updates.append(ClientUpdate(c, method.client_upload(states[c], start, trained), 1))
        method.aggregate(rnd, updates)
    late = method.broadcast(4, 2)  # it never uploaded an R: the basis again
    assert late.whole and len(late) == 3 * len(PREFIXES)
    with pytest.raises(ValueError, match="holds no B and A"):
        method.client_receive({}, method.broadcast(4, 0))


def test_a_late_warm_up_upload_is_refused_once_b_and_a_are_fixed():
    method = build_method("fed-sb", {}, make_ctx())
    _, _, updates, _ = warm_up(method)
    stale = updates[0].tensors
    assert all(method.accepts(k, tuple(v.shape)) for k, v in stale.items())
    assert "uploads carry R only" in method.check_upload(2, 0, stale)


def test_state_dict_round_trip_continues_identically():
    ctx = make_ctx()
    method = build_method("fed-sb", {}, ctx)
    states, _, _, _ = warm_up(method)
    start = method.client_receive(states[0], method.broadcast(2, 0))
    up = method.client_upload(states[0], start, train(method, states[0], start, 0, 2))
    method.aggregate(2, [ClientUpdate(0, up, 1)])
    again = build_method("fed-sb", {}, ctx)
    again.load_state_dict({k: v.clone() for k, v in method.state_dict().items()})
    for c in (0, 1):
        a, b = method.broadcast(3, c), again.broadcast(3, c)
        assert a.whole == b.whole and sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(method.adapter[k], again.adapter[k]) for k in ctx.layout.names)


def test_bad_rank_and_a_layout_without_cores_are_config_errors():
    with pytest.raises(ConfigError, match="params.rank"):
        build_method("fed-sb", {}, make_ctx(rank=10, lora_r=2))  # D_IN = 9
    with pytest.raises(ConfigError, match="core"):
        build_method("fed-sb", {}, make_ctx(cores=False))
    with pytest.raises(ConfigError, match="params.rank"):
        build_method("fed-sb", {"rank": 0}, make_ctx())


# ---- on the tiny model -------------------------------------------------------------------------
def _run(tmp_path, corpus, name, **overrides):
    from fedsqueeze.runtime import LocalRuntime, Session, rundir

    body = {"method": '"fed-sb"', "params.rank": "6", "train.rounds": "3", **overrides}
    cfg = config_mod.load(tiny_config(tmp_path, corpus, **body), [])
    out = tmp_path / name
    rundir.prepare(out, cfg, overwrite=True)
    rt = LocalRuntime(Session.build(cfg, log=lambda *_: None), out)
    return rt, rt.run(), out


def _varint_len(n: int) -> int:
    return max(1, math.ceil(n.bit_length() / 7))


def test_tiny_run_bills_r_only_from_round_2_and_saves_a_peft_loadable_adapter(tmp_path, corpus):
    from peft import PeftModel

    from fedsqueeze.client import evaluate
    from fedsqueeze.client.training import train_client
    from fedsqueeze.codecs import build_codec
    from fedsqueeze.codecs.wire import message_tensors as to_wire
    from fedsqueeze.models import load_base

    rt, summary, out = _run(tmp_path, corpus, "run")
    s, method = rt.s, rt.s.method
    layout = s.adapter.layout
    rank, layers = 6, len(method.triples)
    assert layers == 14 and all(
        tuple(sh) == (rank, rank) for n, sh in zip(layout.names, layout.shapes) if "lora_R" in n
    )
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    # Wire format v2, layout by fingerprint: magic 4, version 1, flags 1, spec "fp32" (1 + 4),
    # fingerprint 8, presence bitmap, body-size varint, the fp32 values, crc32 4.
    values = layers * rank * rank * 4
    header = 4 + 1 + 1 + 1 + 4 + 8 + math.ceil(len(layout.names) / 8) + _varint_len(values) + 4
    for r in rows[1:]:
        assert all(r["per_client"][str(c)]["up"] == values + header for c in r["clients"])
    assert all(rows[2]["per_client"][str(c)]["down"] == values + header for c in rows[2]["clients"])
    # Round 1 bills the warm-up: a rank-4 LoRA delta from every client (fp32 sizes follow the shapes).
    shapes = method._phase_shapes(False)
    warm = len(build_codec("fp32", layout).encode({n: torch.zeros(sh) for n, sh in shapes.items()}))
    assert rows[0]["bytes_up"] == 4 * warm and rows[0]["bytes_down"] == 0
    assert warm > 4 * sum(math.prod(sh) for sh in shapes.values())  # the warm-up costs FedAvg's bytes at r=4
    # Round 2 sends B, A and R once to each client.
    whole = len(build_codec("fp32", layout).encode(to_wire(method.broadcast(2, 99))))
    assert rows[1]["bytes_down"] == 4 * whole
    # Saved: a standard rank-6 LoRA (R folded into B) that peft loads with the run's eval loss.
    peft_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert peft_cfg["r"] == rank
    base, _ = load_base("tiny")
    model = PeftModel.from_pretrained(base, str(out / "adapter"))
    assert not any("lora_R" in n for n, _ in model.named_parameters())
    pad = s.tokenizer.pad_token_id
    for name, ds in s.federation.eval_sets.items():
        idx = list(range(len(ds)))
        loss = evaluate(model, (ds.batch(idx[i : i + 8], pad) for i in range(0, len(idx), 8)))
        assert loss == pytest.approx(summary["eval"][name], rel=1e-5), name
    assert summary["final_eval_loss"] < summary["base_eval_loss"]
    # Adam trains R itself: a client's round from the global R moves R and leaves B and A bit-identical.
    state = {}
    start = method.client_receive(state, method.broadcast(4, 99))
    trained, _ = train_client(s, 0, 4, start, trainable=method.client_trainable(state))
    for a, b, r in method.triples:
        assert torch.equal(trained[a], start[a]) and torch.equal(trained[b], start[b])
        assert not torch.equal(trained[r], start[r])


def test_tiny_resume_is_bit_identical(tmp_path, corpus, cli):
    from safetensors.torch import load_file

    cfg = tiny_config(tmp_path, corpus, method='"fed-sb"', **{"params.rank": "6", "train.rounds": "3"})
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
    # `fedsqueeze eval` rebuilds the run's model (with cores) and loads the folded adapter into it
    res = cli("eval", full, "--metrics", "loss")
    assert res.exit_code == 0, res.output
    judged = json.loads((full / "eval.json").read_text())["sets"]
    summary = json.loads((full / "summary.json").read_text())
    assert judged and all(row["loss"] == pytest.approx(summary["eval"][n], rel=1e-5) for n, row in judged.items())


# ---- init = "svd-base": no warm-up, B and A from the base weights' SVD -------------------------
def test_svd_base_declares_the_basis_and_trains_r_from_round_1():
    spec = adapter_spec("fed-sb", {"rank": 4, "init": "svd-base"}, 4, 8.0)
    assert (spec.core, spec.basis) == (True, "svd-orthonormal")
    ctx = make_ctx(rank=2, lora_r=2)
    for prefix in PREFIXES:  # as models/ builds it: R = 0
        ctx.init_adapter[names(prefix)[2]].zero_()
    method = build_method("fed-sb", {"init": "svd-base"}, ctx)
    states, updates = {}, []
    hand = {0: torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64), 1: -torch.eye(2, dtype=torch.float64)}
    for c in (0, 1):
        assert method.broadcast(1, c) is None  # everyone holds B, A (the model's) and R = 0
        start = method.client_receive(states.setdefault(c, {}), None)
        assert method.client_trainable(states[c])(names(PREFIXES[0])[2])
        assert not method.client_trainable(states[c])(names(PREFIXES[0])[0])
        trained = {**start, **{names(p)[2]: hand[c] for p in PREFIXES}}
        up = method.client_upload(states[c], start, trained)
        assert sorted(up) == sorted(names(p)[2] for p in PREFIXES) and method.check_upload(1, c, up) is None
        updates.append(ClientUpdate(c, up, 1 + 2 * c))  # weights 0.25, 0.75
    assert method.aggregate(1, updates) == {}
    mean = 0.25 * hand[0] + 0.75 * hand[1]
    for c in (0, 1):
        msg = method.broadcast(2, c)
        assert not msg.whole and sorted(msg) == sorted(names(p)[2] for p in PREFIXES)  # R alone, never B and A
        start = method.client_receive(states[c], msg)
        for prefix in PREFIXES:
            a, b, r = names(prefix)
            assert torch.equal(start[r], mean) and torch.equal(start[a], ctx.init_adapter[a])
            assert torch.equal(start[b], ctx.init_adapter[b])


def test_tiny_svd_base_run_sends_r_alone_from_round_1(tmp_path, corpus):
    rt, summary, out = _run(tmp_path, corpus, "svd", **{"params.init": '"svd-base"', "train.rounds": "2"})
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    layers, rank = len(rt.s.method.triples), 6
    values = layers * rank * rank * 4
    header = 4 + 1 + 1 + 1 + 4 + 8 + math.ceil(len(rt.s.adapter.layout.names) / 8) + _varint_len(values) + 4
    assert all(r["per_client"][str(c)]["up"] == values + header for r in rows for c in r["clients"])
    assert rows[0]["bytes_down"] == 0
    assert all(rows[1]["per_client"][str(c)]["down"] == values + header for c in rows[1]["clients"])
    assert summary["final_eval_loss"] < summary["base_eval_loss"]
