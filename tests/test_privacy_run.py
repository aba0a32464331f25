"""Differential privacy end to end on the tiny model: epsilon per round and in the summary, a
voiding config refused (exit 2) or labelled, resume bit-exact, and the same noise over Flower's
messages (the ClientApp noises in local mode, the ServerApp's driver in central mode)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from fedsqueeze import config as config_mod
from fedsqueeze import rundir
from fedsqueeze.api import resume
from fedsqueeze.runtime import LocalRuntime, Session

from conftest import MEASURED, tiny_config

CENTRAL = ["privacy.mode=central", "privacy.target_epsilon=8", "privacy.delta=1e-5"]


def _rows(out):
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def _adapter(out):
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def _run(cfg_path, out, sets=(), until=None):
    cfg = config_mod.load(cfg_path, list(sets))
    rundir.prepare(out, cfg, overwrite=True)
    return LocalRuntime(Session.build(cfg, log=lambda *_: None), out).run(until=until)


def test_central_target_epsilon_is_accounted_per_round_and_in_the_summary(tmp_path, corpus, cli):
    cfg = tiny_config(tmp_path, corpus, **{"train.rounds": "3"})
    out = tmp_path / "central"
    res = cli("run", cfg, *[a for s in CENTRAL for a in ("--set", s)], "--out", out)
    assert res.exit_code == 0, res.output
    assert "privacy: central" in res.output and "ends at epsilon 7.99" in res.output
    eps = [r["epsilon"] for r in _rows(out)]
    assert eps == sorted(eps) and eps[0] > 0 and len(eps) == 3
    privacy = _summary(out)["privacy"]
    assert privacy["epsilon"] <= 8 and privacy["epsilon"] == eps[-1]
    assert privacy["guarantee"].startswith("client-level (") and privacy["delta"] == 1e-5
    assert privacy["accountant"].startswith("dp-accounting") and not privacy["reproducible_noise"]


def test_a_voiding_config_exits_2_naming_why_and_runs_labelled_when_allowed(tmp_path, corpus, cli):
    cfg = tiny_config(tmp_path, corpus, method='"fedsrd"')
    sets = ["privacy.mode=local", "privacy.noise_multiplier=1.0", "privacy.delta=1e-5", "privacy.order=select-first"]
    args = [a for s in sets for a in ("--set", s)]
    res = cli("run", cfg, *args, "--out", tmp_path / "refused")
    assert res.exit_code == 2
    assert "no formal guarantee" in res.output and "positions are sent in the clear" in res.output
    assert "privacy.allow_unproven" in res.output
    out = tmp_path / "allowed"
    res = cli("run", cfg, *args, "--set", "privacy.allow_unproven=true", "--out", out)
    assert res.exit_code == 0, res.output
    assert _summary(out)["privacy"]["guarantee"].startswith("no formal guarantee: privacy.order = 'select-first'")
    assert all(r["train_loss"] != r["train_loss"] for r in _rows(out))  # withheld by the clients (NaN)


def test_local_noise_with_a_topk_uplink_runs_with_the_guarantee(tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus)
    sets = [
        "privacy.mode=local",
        "privacy.target_epsilon=8",
        "privacy.delta=1e-5",
        'uplink.codec="topk(fraction=0.25) > quantize(bits=8) > zstd"',
        "uplink.error_feedback=true",
    ]
    summary = _run(cfg, tmp_path / "out", sets)
    assert summary["privacy"]["guarantee"].startswith("client-level (")
    assert summary["privacy"]["epsilon"] <= 8


@pytest.mark.parametrize("method", ["ffa-lora", "fed-dare", "fedsrd", "flexlora", "gradualdiff"])
def test_central_mode_runs_every_declared_method(tmp_path, corpus, method):
    cfg = tiny_config(tmp_path, corpus, method=f'"{method}"', **{"train.rounds": "2"})
    summary = _run(cfg, tmp_path / "out", CENTRAL + ["train.clients_per_round=2"])
    assert summary["privacy"]["epsilon"] <= 8 and summary["final_eval_loss"] == summary["final_eval_loss"]


@pytest.mark.parametrize("mode", ["central", "local"])
def test_resume_with_privacy_is_bit_exact(tmp_path, corpus, mode):
    cfg = tiny_config(tmp_path, corpus, **{"train.rounds": "3"})
    sets = [f"privacy.mode={mode}", "privacy.noise_multiplier=2.0", "privacy.delta=1e-5", "train.clients_per_round=2"]
    _run(cfg, tmp_path / "straight", sets + ["privacy.noise_seed=5"])
    _run(cfg, tmp_path / "resumed", sets + ["privacy.noise_seed=5"], until=2)
    resume(tmp_path / "resumed", log=None)
    assert _numbers(tmp_path / "straight") == _numbers(tmp_path / "resumed")
    for k, v in _adapter(tmp_path / "straight").items():
        assert torch.equal(v, _adapter(tmp_path / "resumed")[k]), k
    # With secret noise (os.urandom) the checkpoint carries the secrets: two resumes agree ...
    _run(cfg, tmp_path / "a", sets, until=2)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for d in ("a", "b"):
        resume(tmp_path / d, log=None)
    for k, v in _adapter(tmp_path / "a").items():
        assert torch.equal(v, _adapter(tmp_path / "b")[k]), k
    # ... and a second run of the same config draws other noise.
    _run(cfg, tmp_path / "c", sets)
    assert any(not torch.equal(v, _adapter(tmp_path / "c")[k]) for k, v in _adapter(tmp_path / "a").items())


def _numbers(out) -> str:
    """The records less what measures the machine, as text (a withheld train loss is NaN)."""
    return json.dumps([{k: v for k, v in r.items() if k not in MEASURED} for r in _rows(out)], sort_keys=True)


@pytest.mark.parametrize("mode", ["central", "local"])
def test_the_apps_over_flower_messages_draw_the_same_noise(tmp_path, corpus, mode):
    from test_flower import _config, _local_run, _serve_in_process

    sets = [f"privacy.mode={mode}", "privacy.noise_multiplier=1.0", "privacy.delta=1e-5", "privacy.noise_seed=3"]
    cfg = _config(tmp_path, corpus, **{"train.clients_per_round": "2"})
    _local_run(cfg, tmp_path / "local", sets)
    summary, lines = _serve_in_process(cfg, tmp_path / "grid", sets=sets)
    keep = ("round", "clients", "bytes_up", "bytes_down", "per_client", "eval_loss", "epsilon", "dp_noise_std")
    same = lambda out: [{k: r.get(k) for k in keep} for r in _rows(out)]
    assert same(tmp_path / "local") == same(tmp_path / "grid")
    for k, v in _adapter(tmp_path / "local").items():
        assert torch.equal(v, _adapter(tmp_path / "grid")[k]), k
    assert summary["privacy"]["mode"] == mode and any(line.startswith("privacy: ") for line in lines)
    assert [r["epsilon"] for r in _rows(tmp_path / "grid")] == [r["epsilon"] for r in _rows(tmp_path / "local")]


# Local noise in Flower's simulation engine: tests/test_flower.py, test_flower_simulation_matches_in_process_runtime.


def test_adaptive_clipping_moves_the_bound_between_rounds(tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus, **{"train.rounds": "3"})
    sets = [
        "privacy.mode=central",
        "privacy.noise_multiplier=1.0",
        "privacy.delta=1e-5",
        "privacy.adaptive_clipping=true",
        "privacy.clipped_count_stddev=2.0",
        "privacy.clip_norm=0.01",
    ]
    summary = _run(cfg, tmp_path / "out", sets)
    bounds = [r["dp_clip_norm"] for r in _rows(tmp_path / "out")]
    assert bounds[0] == 0.01 and len(set(bounds)) == 3  # it moves every round (noised count)
    assert summary["privacy"]["sum_noise_multiplier"] > 1.0 and summary["privacy"]["final_clip_norm"] == bounds[-1]
