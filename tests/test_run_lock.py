"""One writer per run directory (issue 27): `run --overwrite` and `resume` hold an exclusive lock;
a second writer exits 2 naming the holder; a lock left by a dead process does not block."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from fedsqueeze import rundir

from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _rounds(out: Path) -> list[int]:
    return [json.loads(line)["round"] for line in (out / "rounds.jsonl").read_text().splitlines() if line.strip()]


def test_a_second_writer_exits_2_naming_the_holder(tmp_path, corpus, cli):
    cfg = tiny_config(tmp_path, corpus)
    out = tmp_path / "run"
    assert cli("run", cfg, "--out", out, "--until", "1").exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    with rundir.lock(out, "run"):
        for args in (["run", cfg, "--out", out, "--overwrite"], ["resume", out]):
            res = cli(*args)
            assert res.exit_code == 2, res.output
            assert f"pid {os.getpid()} on {socket.gethostname()}" in res.output, res.output
            assert "Traceback" not in res.output
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written
    assert not (out / rundir.LOCK).exists()  # released and removed
    assert cli("resume", out).exit_code == 0 and _rounds(out) == [1, 2]


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, corpus, cli):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / rundir.LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": 0}))
    res = cli("run", tiny_config(tmp_path, corpus), "--out", out, "--set", "train.rounds=1")
    assert res.exit_code == 0, res.output
    assert _rounds(out) == [1] and not (out / rundir.LOCK).exists()


def test_a_failed_start_leaves_no_run_directory(tmp_path, corpus, cli):
    out = tmp_path / "never"
    res = cli("run", tiny_config(tmp_path, corpus), "--out", out, "--set", "train.device=cuda:7")
    assert res.exit_code == 2, res.output
    assert not out.exists()


def test_two_writers_started_together_one_runs_the_other_exits_2(tmp_path, corpus):
    """The issue's case: two `fedsqueeze run --out D --overwrite` at once. One runs, the other is
    refused naming the lock's holder, and rounds.jsonl holds one run's rounds."""
    cfg = tiny_config(tmp_path, corpus, **{"train.rounds": "3"})
    out = tmp_path / "D"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from fedsqueeze.cli import main; main()", "run", str(cfg), "--out", str(out)]
    cmd += ["--overwrite", "--set", "train.threads=1"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    loser = next(o for p, o in zip(procs, outputs) if p.returncode == 2)
    winner = next(p for p in procs if p.returncode == 0)
    assert f"pid {winner.pid} on {socket.gethostname()}" in loser, loser
    assert "Traceback" not in loser
    assert _rounds(out) == [1, 2, 3]
