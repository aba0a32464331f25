"""The Python API does what the CLI does: the same run directory and summary, resume, report,
and a run without a prepared directory; examples/api.py runs as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fedsqueeze
from fedsqueeze.errors import UserError

from conftest import MEASURED, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _numerics(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in MEASURED and k != "sim_seconds"}


def test_api_run_equals_the_cli_summary_and_records(tmp_path, corpus, cli):
    cfg = tiny_config(tmp_path, corpus)
    res = cli("run", cfg, "--out", tmp_path / "cli")
    assert res.exit_code == 0, res.output
    result = fedsqueeze.run(cfg, out=tmp_path / "api", log=None)
    assert result.finished and result.paths.out == tmp_path / "api"
    cli_summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert _numerics(result.summary) == _numerics(cli_summary)
    assert result.summary == json.loads(result.paths.summary.read_text())
    cli_rows = [json.loads(x) for x in (tmp_path / "cli" / "rounds.jsonl").read_text().splitlines()]
    assert [_numerics(r) for r in result.rounds] == [_numerics(r) for r in cli_rows]
    assert (result.paths.adapter / "adapter_config.json").is_file() and result.paths.checkpoint.is_dir()
    with pytest.raises(UserError, match="not empty"):
        fedsqueeze.run(cfg, out=tmp_path / "api", log=None)


def test_a_config_object_runs_without_a_prepared_directory(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    cfg = fedsqueeze.load_config(tiny_config(tmp_path, corpus), ["train.rounds=1"])
    result = fedsqueeze.run(cfg, log=None)  # no out, no rundir.prepare: a fresh folder of its own
    assert result.paths.out.parent == tmp_path and result.paths.out.name.startswith("fedsqueeze-")
    assert [r["round"] for r in result.rounds] == [1] and result.paths.config.is_file()


def test_stop_resume_and_report_through_the_api(tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus, **{"train.rounds": "3"})
    part = fedsqueeze.run(cfg, out=tmp_path / "part", until=1, log=None)
    assert not part.finished and [r["round"] for r in part.rounds] == [1]
    done = fedsqueeze.resume(part.paths.out, log=None)
    full = fedsqueeze.run(cfg, out=tmp_path / "full", log=None)
    assert done.finished and _numerics(done.summary) == _numerics(full.summary)
    rep = fedsqueeze.report([done.paths.out, full.paths.out], out=tmp_path / "rep")
    assert "| part | fedavg |" in rep.table and (tmp_path / "rep" / "eval_loss_vs_mb.png").is_file()
    with pytest.raises(UserError, match="no checkpoint"):
        fedsqueeze.resume(tmp_path / "nowhere")


def test_load_config_takes_a_path_a_mapping_or_a_config():
    base = fedsqueeze.load_config(ROOT / "examples" / "tiny.toml", ["train.rounds=2"])
    assert base.train.rounds == 2 and base.model.name == "tiny"
    again = fedsqueeze.load_config(base, ["method=fedsrd"])
    assert again.method == "fedsrd" and again.train.rounds == 2 and base.method == "fedavg"
    raw = {"method": "fedavg", "model": {"name": "tiny"}, "train": {"rounds": 5}}
    assert fedsqueeze.load_config(raw, ["train.rounds=6"]).train.rounds == 6 and raw["train"]["rounds"] == 5
    with pytest.raises(fedsqueeze.ConfigError, match="train.roundz"):
        fedsqueeze.load_config(raw, ["train.roundz=1"])


def _python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_examples_api_py_runs_two_rounds_and_prints_its_summary(tmp_path):
    done = _python(str(ROOT / "examples" / "api.py"), str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "fedavg: 2 rounds" in done.stdout and "final eval loss" in done.stdout
    assert "round 2:" in done.stdout and "| fedavg | fedavg |" in done.stdout
    assert json.loads((tmp_path / "out" / "fedavg" / "summary.json").read_text())["rounds"] == 2
    assert "Warning" not in done.stderr, done.stderr


def test_a_tiny_cli_run_prints_no_python_warning(tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus, **{"train.rounds": "1"})
    done = _python("-m", "fedsqueeze.cli", "run", str(cfg), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    assert not [line for line in lines if "Warning" in line or "warnings.warn" in line], done.stderr
    assert "Loading weights" not in done.stderr and "final eval loss" in done.stdout
