"""End-to-end runs on the tiny model: the run-directory contract, exact byte counts, resume,
fedavg == centralized with one client, and the saved adapter reproducing the reported loss."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedsqueeze import config as config_mod
from fedsqueeze.codecs import build_codec
from fedsqueeze.codecs.wire import read_message as from_wire
from fedsqueeze.runtime import LocalRuntime, Session

from conftest import MEASURED, tiny_config


def _run(tmp_path, corpus, out_name="run", overrides=None, sets=()):
    cfg_path = tiny_config(tmp_path, corpus, **(overrides or {}))
    cfg = config_mod.load(cfg_path, list(sets))
    out = tmp_path / out_name
    from fedsqueeze.runtime import rundir

    rundir.prepare(out, cfg, overwrite=True)
    rt = LocalRuntime(Session.build(cfg, log=lambda *_: None), out)
    return rt, rt.run(), out


def test_cli_run_writes_contract(tmp_path, corpus, cli):
    cfg = tiny_config(tmp_path, corpus)
    out = tmp_path / "out"
    res = cli("run", cfg, "--set", "train.rounds=2", "--out", out)
    assert res.exit_code == 0, res.output
    assert "final eval loss" in res.output
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("clients", "bytes_up", "bytes_down", "train_loss", "eval_loss", "eval", "seconds"):
            assert key in r
        assert isinstance(r["bytes_up"], int) and isinstance(r["bytes_down"], int)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("method", "rounds", "bytes_up", "bytes_down", "bytes_total", "final_eval_loss", "eval", "seconds"):
        assert key in summary
    assert summary["bytes_total"] == summary["bytes_up"] + summary["bytes_down"]
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in rows)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "checkpoint").is_dir()
    assert (out / "config.toml").is_file()
    rep = cli("report", out)
    assert rep.exit_code == 0 and "| out | fedavg |" in rep.output
    report_dir = tmp_path / "report"  # beside the run, never inside it
    for name in ("report.md", "eval_loss_vs_round.png", "eval_loss_vs_mb.png"):
        assert (report_dir / name).is_file()


@pytest.mark.parametrize("codec", ["fp32", "fp16"])
def test_ledger_bytes_equal_independent_blob_sizes(tmp_path, corpus, codec):
    rt, summary, out = _run(tmp_path, corpus, sets=[f"uplink.codec={codec}", f"downlink.codec={codec}"])
    layout = rt.s.adapter.layout
    # Independently: encode an adapter of this layout with a fresh codec. FedAvg sends the whole
    # adapter down and the whole delta up, one blob per client per round; these codecs' sizes do
    # not depend on the values.
    blob = build_codec(codec, layout).encode({n: torch.randn(s) for n, s in zip(layout.names, layout.shapes)})
    blobs = 4 * 2  # clients x rounds
    assert summary["bytes_up"] == blobs * len(blob)
    # round 1 sends nothing down: everyone builds the initial adapter from the seed
    assert summary["bytes_down"] == (blobs - 4) * len(blob)
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert all(r["per_client"][str(c)]["up"] == len(blob) for r in rows for c in r["clients"])


def test_resume_is_bit_identical(tmp_path, corpus, cli):
    cfg = tiny_config(tmp_path, corpus, **{"train.rounds": "4"})
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli("run", cfg, "--out", full).exit_code == 0
    res = cli("run", cfg, "--out", part, "--until", "2")
    assert res.exit_code == 0 and "stopped after round 2" in res.output
    assert not (part / "summary.json").exists()
    res = cli("resume", part)
    assert res.exit_code == 0, res.output
    a = load_file(str(full / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(part / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = [json.loads(x) for x in (full / "rounds.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (part / "rounds.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in MEASURED} for r in rows]
    assert strip(ra) == strip(rb)


@pytest.mark.parametrize("upload", ["adapter", "delta"])
def test_fedavg_one_client_equals_centralized(tmp_path, corpus, upload):
    one = {"data.partition": '"iid"', "data.clients": "1", "train.rounds": "3"}
    fed, fs, _ = _run(tmp_path, corpus, "fed", overrides=one, sets=[f"params.upload={upload}"])
    cen, cs, _ = _run(tmp_path, corpus, "cen", overrides={**one, "method": '"centralized"'})
    assert cs["bytes_total"] == 0
    rows_f = [json.loads(x) for x in (tmp_path / "fed" / "rounds.jsonl").read_text().splitlines()]
    rows_c = [json.loads(x) for x in (tmp_path / "cen" / "rounds.jsonl").read_text().splitlines()]
    for rf, rc in zip(rows_f, rows_c):
        assert rf["train_loss"] == pytest.approx(rc["train_loss"], rel=1e-5, abs=1e-6)
    a = fed.s.method.final_adapter(fed.client_states)
    b = cen.s.method.final_adapter(cen.client_states)
    if upload == "adapter":  # the client's adapter comes back as it is: bit-identical
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert fs["final_eval_loss"] == cs["final_eval_loss"]
    else:  # start + (trained - start) rounds in fp32; Adam amplifies it a little on tiny gradients
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
        assert fs["final_eval_loss"] == pytest.approx(cs["final_eval_loss"], rel=1e-4)


def test_saved_adapter_reproduces_reported_eval_loss(tmp_path, corpus):
    from peft import PeftModel

    rt, summary, out = _run(tmp_path, corpus)
    s = rt.s
    base, _ = __import__("fedsqueeze.models", fromlist=["load_base"]).load_base("tiny")
    model = PeftModel.from_pretrained(base, str(out / "adapter"))
    from fedsqueeze.client import evaluate

    pad = s.tokenizer.pad_token_id
    for name, ds in s.federation.eval_sets.items():
        idx = list(range(len(ds)))
        loss = evaluate(model, (ds.batch(idx[i : i + 8], pad) for i in range(0, len(idx), 8)))
        assert loss == pytest.approx(summary["eval"][name], rel=1e-5), name


def test_local_method_keeps_per_client_adapters(tmp_path, corpus):
    rt, summary, out = _run(tmp_path, corpus, overrides={"method": '"local"'})
    assert summary["bytes_total"] == 0
    names = list(rt.s.federation.eval_sets)
    assert all((out / "adapters" / n / "adapter_config.json").is_file() for n in names)
    a0 = rt.s.method.eval_adapter(0, rt.client_states[0])
    a1 = rt.s.method.eval_adapter(1, rt.client_states[1])
    assert any(not torch.equal(a0[k], a1[k]) for k in a0)


@pytest.mark.integration
def test_smollm2_federated_round_on_stdlib(tmp_path, cli):
    """The quickstart pipeline on the real model, cut to one short round."""
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    out = tmp_path / "smol"
    res = cli(
        "run",
        root / "examples" / "quickstart.toml",
        "--out",
        out,
        "--set",
        "train.rounds=1",
        "--set",
        "train.local_steps=2",
        "--set",
        "data.eval_examples=4",
        "--set",
        "data.max_examples=32",
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bytes_up"] > 0 and summary["bytes_down"] == 0  # round 1: the seed gives the adapter
    assert 0 < summary["final_eval_loss"] < 10


def test_fedsrd_bf16_broadcast_keeps_every_client_on_the_server_adapter(tmp_path, corpus):
    """download_dtype=bf16 over its default `seeded > narrow` link: the one-factor deltas travel in
    2 bytes a value, the catch-up state of a client that skipped rounds in 4, and every client still
    rebuilds the server's adapter bit for bit."""
    sets = ["method=fedsrd", "train.rounds=4", "train.clients_per_round=2", "params.download_drop=0.5"]
    rt32, s32, _ = _run(tmp_path, corpus, "fp32", sets=sets)
    rt16, s16, _ = _run(tmp_path, corpus, "bf16", sets=[*sets, "params.download_dtype=bf16"])
    assert rt16.s.downlink_spec == "seeded > narrow"  # the mask is random: its positions never travel
    assert 0 < s16["bytes_down"] < s32["bytes_down"]
    method = rt16.server.method
    kinds = set()
    for c, state in enumerate(rt16.transport.client_states()):  # what each rebuilds from the next message
        blob = rt16.server.broadcast(5, [c])[c]
        message = from_wire(rt16.s.downlink_decoder().decode(blob))
        kinds.add("state" if message.whole else "delta")
        start = method.client_receive(state, message)
        for name, value in method.global_adapter().items():
            assert torch.equal(start[name], value), (c, name)
    assert kinds == {"state", "delta"}
