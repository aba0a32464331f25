"""`fedsqueeze flower run` reports how the run ended, not how `flwr run` ended: `flwr run --stream`
exits 0 when the ServerApp fails. A stand-in `flwr` plays the SuperLink's two answers."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time

import pytest

from fedsqueeze.runtime.flower import deploy

FAKE = """import json, os, sys
if sys.argv[1] == "run":
    print("Loading project configuration...")
    print("Successfully started run 7")
    print("INFO : round 1: clients [0, 1]")
else:
    assert sys.argv[1:] == ["ls", "fedsqueeze", "--run-id", "7", "--format", "json"], sys.argv
    row = {"run-id": "7", "status": os.environ["FAKE_STATUS"], "status-details": "ServerApp raised",
           "network-traffic": {"total-bytes": 1234}}
    print(json.dumps({"success": True, "runs": [row]}))
"""


@pytest.fixture
def fake_flwr(tmp_path, monkeypatch):
    script = tmp_path / "flwr"
    script.write_text(f"#!{sys.executable}\n" + FAKE)
    script.chmod(0o755)
    monkeypatch.setattr(deploy, "executable", lambda name: str(script))
    return script


@pytest.mark.parametrize("status, code", [("finished:completed", 0), ("finished:failed", 1), ("finished:stopped", 1)])
def test_the_exit_code_is_the_runs_final_status(tmp_path, fake_flwr, status, code):
    out = io.StringIO()
    env = {"PATH": "/usr/bin:/bin", "FAKE_STATUS": status}
    assert deploy.submit(tmp_path / "run.toml", env, out) == code
    text = out.getvalue()
    assert "round 1: clients" in text  # the stream is passed through
    assert f"run 7: {status}; Flower counted 1234 bytes" in text
    if code:
        assert "error: run 7 ended" in text and "ServerApp raised" in text


def test_an_unreadable_status_is_an_error(tmp_path, fake_flwr):
    out = io.StringIO()
    assert deploy.submit(tmp_path / "run.toml", {"PATH": "/usr/bin:/bin"}, out) == 1  # no FAKE_STATUS: ls fails
    assert "could not read the status of run 7" in out.getvalue()


def test_a_supernode_that_stops_by_itself_is_started_again_with_back_off(tmp_path):
    """A stand-in that fails once, then exits 0 as Flower's SuperNode does after its SuperLink
    restarted (401: it sends itself SIGINT, a "graceful" exit): both are started again, the waits
    double, and only max_restarts ends the loop."""
    counter = tmp_path / "runs"
    script = tmp_path / "node"
    script.write_text(
        f"#!{sys.executable}\nimport pathlib, sys\np = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) if p.exists() else 0\np.write_text(str(n + 1))\nsys.exit(1 if n == 0 else 0)\n"
    )
    script.chmod(0o755)
    waits, lines = [], []
    code = deploy.supervise(
        [str(script)], {"PATH": "/usr/bin:/bin"}, log=lines.append, sleep=waits.append, max_restarts=3
    )
    assert code == 0 and counter.read_text() == "4" and waits == [1.0, 2.0, 4.0]
    assert lines[0].endswith("exited with 1; starting it again in 1 s")
    assert lines[1].endswith("exited with 0; starting it again in 2 s")
    counter.unlink()
    assert deploy.supervise([str(script)], {}, log=lines.append, sleep=waits.append, max_restarts=0) == 1


def test_sigterm_to_the_supervisor_stops_the_supernode_for_good(tmp_path):
    """SIGTERM reaches the child, which exits 0 as Flower's does (a graceful exit); the supervisor
    must not take that for a SuperNode to start again."""
    counter, script = tmp_path / "runs", tmp_path / "node"
    script.write_text(
        f"#!{sys.executable}\nimport pathlib, signal, sys, time\np = pathlib.Path({str(counter)!r})\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "p.write_text(str(int(p.read_text()) + 1 if p.exists() else 1))\ntime.sleep(60)\n"
    )
    script.chmod(0o755)

    def terminate_once_started():
        deadline = time.monotonic() + 30
        while not counter.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_once_started, daemon=True).start()
    before, t0 = signal.getsignal(signal.SIGTERM), time.monotonic()
    code = deploy.supervise([str(script)], {"PATH": "/usr/bin:/bin"}, log=print, sleep=lambda s: None)
    assert code == 143 and counter.read_text() == "1" and time.monotonic() - t0 < 30
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_the_supernode_command_is_supervised_unless_told_not_to(tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from fedsqueeze import flower_cli

    seen = {}
    monkeypatch.setattr(deploy, "supervise", lambda cmd, env, log, **_: seen.setdefault("supervised", cmd) and 0)
    monkeypatch.setattr(flower_cli.os, "execvpe", lambda path, cmd, env: seen.setdefault("exec", cmd))
    app = typer.Typer()
    app.add_typer(flower_cli.flower_app, name="flower")
    args = ["flower", "supernode", "--superlink", "127.0.0.1:9", "--partition-id", "1", "--num-partitions", "3"]
    args.append("--no-resident")  # with a resident worker: tests/test_resident.py
    assert CliRunner().invoke(app, [*args, "--home", str(tmp_path / "h")]).exit_code == 0
    assert "partition-id=1 num-partitions=3" in " ".join(seen["supervised"]) and "exec" not in seen
    CliRunner().invoke(app, [*args, "--home", str(tmp_path / "h"), "--no-restart"])
    assert seen["exec"] == seen["supervised"]


def test_the_superlink_keeps_its_state_in_a_database_when_asked(tmp_path, monkeypatch):
    """With --database the SuperNodes survive a SuperLink restart with their ids
    (benchmarks/superlink_restart.py --database); without it the state is in memory."""
    from typer.testing import CliRunner

    from fedsqueeze import flower_cli

    seen = []
    monkeypatch.setattr(flower_cli.os, "execvpe", lambda path, cmd, env: seen.append(cmd))
    home = ["--home", str(tmp_path / "h")]
    assert CliRunner().invoke(flower_cli.flower_app, ["superlink", *home]).exit_code == 0
    assert CliRunner().invoke(flower_cli.flower_app, ["superlink", "--database", "s.db", *home]).exit_code == 0
    assert "--database" not in seen[0]
    assert seen[1][seen[1].index("--database") + 1] == "s.db" and "--insecure" in seen[1]
