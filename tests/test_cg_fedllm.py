"""cg-fedllm on the tiny model through the in-process runtime: phases and data slices, what the
ledger counts (TGAP dense, the autoencoder's weights once per client, the latent message), the SNR
metrics, the adaptive fallback, resume across the TGAP -> FAF boundary, and parameter checks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedsqueeze import config as config_mod
from fedsqueeze.autoencoder import count_params
from fedsqueeze.codecs import build_codec
from fedsqueeze.errors import ConfigError
from fedsqueeze.runtime import LocalRuntime, Session, rundir
from fedsqueeze.strategies import ClientUpdate, MethodContext, build_method
from fedsqueeze.tensors import Layout

from conftest import MEASURED, tiny_config

FAST = {"method": '"cg-fedllm"', "train.rounds": "3", "params.tgap_rounds": "1"}


def _run(tmp_path, corpus, params: dict, name="run"):
    overrides = dict(FAST)
    overrides.update({f"params.{k}": v for k, v in params.items()})
    cfg = config_mod.load(tiny_config(tmp_path, corpus, **overrides))
    out = tmp_path / name
    rundir.prepare(out, cfg, overwrite=True)
    rt = LocalRuntime(Session.build(cfg, log=lambda *_: None), out)
    summary = rt.run()
    return rt, summary, [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", ["row", "tensor"])
def test_linear_variants_end_to_end(tmp_path, corpus, arch):
    rt, summary, rows = _run(tmp_path, corpus, {"arch": f'"{arch}"', "epochs": "2"})
    method = rt.s.method
    assert [r["phase"] for r in rows] == ["tgap", "faf", "faf"]
    assert method.data_slice(1) == (0.0, 0.3) and method.data_slice(2) == (0.3, 1.0)
    assert rows[0]["ae_samples"] > 0 and "ae_train_loss" in rows[0]
    for r in rows[1:]:
        assert r["snr_db"] == pytest.approx(r["snr_db"]) and -1.0 < r["snr_db"] < 30.0
        assert "snr_paper_db" in r and 0.05 < r["values_sent_fraction"] <= 0.125
    # The encoder and decoder (tensor: tied, the encoder only) go down once per client, in the
    # first FAF round, through the link.
    net = method.net
    weights = 4 * (count_params(net, "encoder") + count_params(net, "decoder"))
    assert (count_params(net, "decoder") == 0) == (arch == "tensor")
    clients = len(rows[0]["clients"])
    assert rows[1]["bytes_down"] - rows[2]["bytes_down"] >= clients * weights
    assert rows[0]["bytes_down"] == 0  # round 1: everyone builds the initial adapter from the seed
    # Uplink: the latent message (1/8 of the values, 8-bit codes) is far below TGAP's dense update.
    assert rows[1]["bytes_up"] * 8 < rows[0]["bytes_up"]
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in rows)
    assert summary["uplink_codec"] == "zstd" and summary["downlink_codec"] == "fp32"


def test_paper_variant_with_adaptive_fallback_end_to_end(tmp_path, corpus):
    # The faithful network carries ~nothing about these updates, so at 6 dB every unit falls back
    # to dense: exact, and the reported SNR is the "lossless" cap.
    rt, summary, rows = _run(tmp_path, corpus, {"epochs": "1", "adaptive_snr_db": "6.0"})
    faf = rows[1:]
    units = len(rt.s.method.view.units) * len(rows[1]["clients"])
    assert all(r["dense_units"] == units and r["snr_db"] == 200.0 for r in faf)
    assert all(r["values_sent_fraction"] == pytest.approx(1.0) for r in faf)


def test_resume_across_the_tgap_faf_boundary_is_bit_identical(tmp_path, corpus, cli):
    cfg = tiny_config(
        tmp_path,
        corpus,
        **FAST,
        **{
            "params.arch": '"tensor"',
            "params.epochs": "2",
            "params.error_feedback": "true",
            "params.adaptive_snr_db": "2.0",
        },
    )
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli("run", cfg, "--out", full).exit_code == 0
    assert cli("run", cfg, "--out", part, "--until", "1").exit_code == 0
    res = cli("resume", part)
    assert res.exit_code == 0, res.output
    a = load_file(str(full / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(part / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda p: [
        {k: v for k, v in json.loads(x).items() if k not in MEASURED and not k.endswith("_seconds")}
        for x in (p / "rounds.jsonl").read_text().splitlines()
    ]
    assert strip(full) == strip(part)


def test_lossy_downlink_server_decodes_with_the_clients_copy_and_keeps_the_snr_floor():
    ctx = _ctx(rounds=4)
    names, shapes = ctx.layout.names, ctx.layout.shapes
    method = build_method("cg-fedllm", {"arch": "row", "tgap_rounds": 1, "epochs": 1, "adaptive_snr_db": 4.0}, ctx)
    g = torch.Generator().manual_seed(0)
    rand = lambda: {n: 1e-3 * torch.randn(s, generator=g) for n, s in zip(names, shapes)}  # noqa: E731
    method.aggregate(1, [ClientUpdate(c, rand(), 10) for c in range(3)])  # TGAP: pool, then training
    assert method.version == 1
    down, up = build_codec("quantize(bits=4)", ctx.layout), build_codec(method.default_uplink, ctx.layout)
    states, updates, sent = {}, [], {}
    for c in range(3):
        blob = down.encode(method.broadcast(2, c))
        received = down.decode(blob)
        method.delivered(2, c, received)
        states[c] = {}
        start = method.client_receive(states[c], received)
        sent[c] = rand()
        trained = {n: start[n] + sent[c][n] for n in names}
        updates.append(ClientUpdate(c, up.decode(up.encode(method.client_upload(states[c], start, trained))), 10))
    assert set(method.client_halves) == {0, 1, 2}  # 4-bit weights differ from the server's
    for u in updates:
        rebuilt = method._compressor_for(u.client).decompress({k: v for k, v in u.tensors.items() if k != "cg.energy"})
        signal = sum(float((sent[u.client][n].double() ** 2).sum()) for n in names)
        noise = sum(float(((sent[u.client][n] - rebuilt[n]).double() ** 2).sum()) for n in names)
        assert noise * 10**0.4 <= signal * (1 + 1e-12)
        assert u.tensors["cg.energy"][1].item() == pytest.approx(noise, rel=1e-6, abs=1e-30)
    metrics = method.aggregate(2, updates)
    assert metrics["snr_db"] >= 4.0
    copy = build_method("cg-fedllm", {"arch": "row", "tgap_rounds": 1, "adaptive_snr_db": 4.0}, ctx)
    copy.load_state_dict(method.state_dict())
    assert all(
        torch.equal(copy.client_halves[c][k], method.client_halves[c][k])
        for c in range(3)
        for k in method.client_halves[c]
    )


def _ctx(rounds=10):
    layout = Layout(("l.q.lora_A.weight", "l.q.lora_B.weight"), ((4, 64), (64, 4)))
    return MethodContext(
        layout=layout,
        init_adapter={n: torch.zeros(s) for n, s in zip(layout.names, layout.shapes)},
        seed=0,
        rounds=rounds,
    )


@pytest.mark.parametrize(
    "params",
    [
        {"adaptive_snr_db": 6.0, "ship_decoder": False},
        {"error_feedback": True, "ship_decoder": False},
        {"arch": "row", "latent": 0.3},
        {"latent_bits": 1},
        {"tgap_fraction": 1.0},
        {"arch": "tensor", "basis": 65},  # more than the tiny layout's shortest rank vector (64)
        {"unknown": 1},
    ],
)
def test_bad_params_are_config_errors(params):
    with pytest.raises(ConfigError):
        build_method("cg-fedllm", params, _ctx())


def test_default_tgap_rounds_follow_the_fraction():
    assert build_method("cg-fedllm", {}, _ctx(10)).tgap_rounds == 3
    assert build_method("cg-fedllm", {}, _ctx(2)).tgap_rounds == 1
    assert build_method("cg-fedllm", {"tgap_rounds": 4}, _ctx(10)).tgap_rounds == 4


def test_tgap_snapshots_span_local_steps_cost_uplink_bytes_and_change_nothing_else(tmp_path, corpus):
    """tgap_snapshots=3 over 3 local steps: the pool gets the updates after steps 1 and 2 as well
    (3x the AE samples), TGAP's uploads carry them (3x the values, on the ledger), and the averaged
    adapter is bit-identical to the run without them."""
    params = {"arch": '"tensor"', "epochs": "2"}
    rt1, _, rows1 = _run(tmp_path, corpus, params, name="one")
    rt3, _, rows3 = _run(tmp_path, corpus, {**params, "tgap_snapshots": "3"}, name="three")
    method = rt3.s.method
    assert method.snapshot_steps(1, 3) == [1, 2] and method.snapshot_steps(2, 3) == []  # FAF: none
    assert method.snapshot_steps(1, 10) == [3, 7] and method.snapshot_steps(1, 2) == [1]
    # (zero rank vectors, such as B's rows that one step has not moved yet, make no samples)
    assert 2 * rows1[0]["ae_samples"] < rows3[0]["ae_samples"] <= 3 * rows1[0]["ae_samples"]
    # 3x the values; zstd packs the first steps' Adam updates (about +-lr each) tighter
    assert 2 * rows1[0]["bytes_up"] < rows3[0]["bytes_up"] < 3.2 * rows1[0]["bytes_up"]
    assert rows3[1]["bytes_up"] == pytest.approx(rows1[1]["bytes_up"], rel=0.2)  # FAF sends latents only
    # capturing snapshots changes neither training nor TGAP's average (FAF then uses each run's own AE)
    assert rows3[0]["train_loss"] == rows1[0]["train_loss"] and rows3[0]["eval_loss"] == rows1[0]["eval_loss"]
    assert not any(k.startswith("snapshot/") for c in rt3.transport.client_states() for k in c)


def test_snapshot_pool_orders_by_round_client_step():
    from fedsqueeze.autoencoder import SnapshotPool

    pool = SnapshotPool()
    for key in [(1, 1, 0), (1, 0, 2), (1, 0, 0), (1, 0, 1)]:
        pool.add(key[0], key[1], {"x": torch.full((2,), float(sum(key)))}, step=key[2])
    state = pool.state_dict()
    again = SnapshotPool()
    again.load_state_dict(state)
    assert sorted(again.snapshots) == [(1, 0, 0), (1, 0, 1), (1, 0, 2), (1, 1, 0)]
    assert torch.equal(again.snapshots[(1, 0, 2)]["x"], torch.full((2,), 3.0))
