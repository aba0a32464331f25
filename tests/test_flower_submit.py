"""`fedsqueeze flower run` reports how the run ended, not how `flwr run` ended: `flwr run --stream`
exits 0 when the ServerApp fails. A stand-in `flwr` plays the SuperLink's two answers."""

from __future__ import annotations

import io
import sys

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
