"""Faults on purpose: every `faults.kind` on fedavg, fedsrd, gradualdiff and cg-fedllm, in-process
and over the Flower message path. The run finishes, the faulty client is rejected (or left out,
for drop / slow), every eval loss is finite, and the global adapter is the one of a run in which
that client's replies were simply lost (`drop`): its uploads never touched the aggregate."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedsqueeze import config as config_mod
from fedsqueeze.config import FAULT_KINDS
from fedsqueeze.runtime import LocalRuntime, Session, rundir

from conftest import tiny_config

METHODS = {
    "fedavg": {},
    "fedsrd": {"method": '"fedsrd"'},
    "gradualdiff": {"method": '"gradualdiff"'},
    "cg-fedllm": {"method": '"cg-fedllm"', "params.tgap_rounds": "1", "params.arch": '"tensor"'},
}
FAULTY = 1
LEFT_OUT = ("drop", "slow")  # no upload arrives: nothing to reject


def _config(tmp_path, corpus, method, kind, **extra):
    overrides = {**METHODS[method], "train.rounds": "3", **extra}
    sets = [f"faults.clients=[{FAULTY}]", f"faults.kind={kind}"] if kind else []
    return config_mod.load(tiny_config(tmp_path, corpus, **overrides), sets)


def _local(cfg, out):
    rundir.prepare(out, cfg, overwrite=True)
    rt = LocalRuntime(Session.build(cfg, log=lambda *_: None), out)
    return rt.run(), [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()], rt


_reference: dict = {}


def _dropped_adapter(tmp_path, corpus, method):
    """The run in which client 1's replies are lost, once per method."""
    if method not in _reference:
        _, _, rt = _local(_config(tmp_path, corpus, method, "drop"), tmp_path / f"ref-{method}")
        _reference[method] = {k: v.clone() for k, v in rt.s.method.global_adapter().items()}
    return _reference[method]


def _assert_survived(rows, summary, kind):
    for r in rows:
        if kind in LEFT_OUT:
            assert FAULTY in r["left_out"] and "rejected" not in r, r
        else:
            assert str(FAULTY) in r.get("rejected", {}), r
        assert FAULTY not in r["clients"]
        assert math.isfinite(r["eval_loss"]) and all(math.isfinite(v) for v in r["eval"].values())
    assert math.isfinite(summary["final_eval_loss"])


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_every_fault_is_survived_in_process(tmp_path, corpus, method, kind):
    summary, rows, rt = _local(_config(tmp_path, corpus, method, kind), tmp_path / "run")
    _assert_survived(rows, summary, kind)
    reference = _dropped_adapter(tmp_path, corpus, method)
    adapter = rt.s.method.global_adapter()
    assert all(torch.equal(adapter[k], reference[k]) for k in reference), kind
    if kind not in LEFT_OUT:  # a rejected upload was received: its bytes are on the bill
        assert all(r["per_client"][str(FAULTY)]["up"] > 0 for r in rows)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS if k != "slow"])
def test_every_fault_is_survived_over_flower_messages(tmp_path, corpus, method, kind):
    """The ServerApp and ClientApps over an in-process grid (no sockets). `slow` needs a real clock
    and is left to the deployment tests of test_flower.py."""
    from fedsqueeze.runtime.flower.client_app import make_client_app
    from fedsqueeze.runtime.flower.server import serve
    from test_flower import InProcessGrid

    cfg = _config(tmp_path, corpus, method, kind)
    out = tmp_path / "grid"
    rundir.prepare(out, cfg, overwrite=True)
    summary = serve(InProcessGrid(make_client_app(cfg.to_toml()), 4), cfg, out, log=lambda *_: None)
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    _assert_survived(rows, summary, kind)


def test_nothing_admitted_leaves_the_global_adapter_unchanged(tmp_path, corpus):
    cfg = config_mod.load(tiny_config(tmp_path, corpus), ["faults.clients=[0, 1, 2, 3]", "faults.kind=nan"])
    summary, rows, rt = _local(cfg, tmp_path / "run")
    init = rt.s.method.ctx.init_adapter
    assert all(len(r["rejected"]) == 4 and r["clients"] == [] for r in rows)
    assert all(torch.equal(v, init[k]) for k, v in rt.s.method.global_adapter().items())
    assert summary["final_eval_loss"] == pytest.approx(summary["base_eval_loss"])


def test_the_command_line_survives_nan_and_huge_uploads(tmp_path, corpus, cli):
    cfg = tiny_config(tmp_path, corpus)
    for i, sets in enumerate([["faults.kind=nan"], ["faults.kind=scale", "faults.scale=1e30", "method=fedsrd"]]):
        out = tmp_path / f"out{i}"
        args = ["run", cfg, "--out", out, "--set", "faults.clients=[1]"]
        for s in sets:
            args += ["--set", s]
        res = cli(*args)
        assert res.exit_code == 0, res.output
        rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
        assert all("1" in r["rejected"] for r in rows)
        assert math.isfinite(json.loads((out / "summary.json").read_text())["final_eval_loss"])


def test_fault_config_is_checked(tmp_path, corpus):
    from fedsqueeze.errors import ConfigError

    with pytest.raises(ConfigError, match="faults.kind"):
        config_mod.load(tiny_config(tmp_path, corpus), ["faults.clients=[1]"])
    with pytest.raises(ConfigError, match="faults.clients"):
        config_mod.load(tiny_config(tmp_path, corpus), ["faults.clients=[9]", "faults.kind=nan"])
