"""The resident worker (issue 29): a process per node that keeps the model loaded across rounds,
reached by the node's ClientApp over an owner-only UNIX socket and a per-node secret.

Fast: the shim loads no torch; the channel refuses whoever lacks the secret (both ways); shim +
worker give the very upload bytes of the in-process ClientApp, and the model loads once.
Integration: a loopback deployment of `fedsqueeze flower supernode` nodes whose worker is killed
with SIGKILL in the middle of a round.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from multiprocessing.connection import Client, Listener
from pathlib import Path

import pytest

import fedsqueeze
from fedsqueeze import config as config_mod
from fedsqueeze.runtime import rundir
from fedsqueeze.runtime.flower import channel, wire
from fedsqueeze.runtime.flower.client_work import Job
from fedsqueeze.runtime.flower.supervisor import RESIDENT_DIR, ResidentWorker

from conftest import tiny_config

SRC = str(Path(fedsqueeze.__file__).resolve().parents[1])  # this checkout's sources, for child processes
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {seconds} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A resident worker under its supervisor (one for this file: it imports torch once), its log
    in worker.log; `node.new_log()` is what it wrote since the last call."""
    tmp = tmp_path_factory.mktemp("resident")
    log = tmp / "worker.log"
    node = ResidentWorker(tmp / "node", ENV, log=lambda *_: None, output=log).start()
    text = lambda: log.read_text(errors="replace") if log.is_file() else ""
    _wait_for(lambda: "ready" in text(), 120, "the worker")
    seen = [len(text())]

    def new_log() -> str:
        found = text()[seen[0] :]
        return found

    node.new_log = new_log
    node.mark = lambda: seen.__setitem__(0, len(text()))
    yield node
    node.stop()


def test_the_shim_imports_neither_torch_nor_transformers():
    code = (
        "import sys; import fedsqueeze.runtime.flower.client_app, fedsqueeze.runtime.flower.channel; "
        "print([m for m in ('torch', 'transformers', 'peft', 'safetensors') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_node_directory_and_socket_are_owner_only(worker):
    mode = lambda p: stat.S_IMODE(Path(p).stat().st_mode)
    assert mode(worker.dir) == 0o700
    assert mode(worker.dir / channel.SECRET) == 0o600
    sock = channel.read_address(worker.dir)
    assert stat.S_ISSOCK(Path(sock).stat().st_mode) and mode(sock) == 0o600
    assert len(channel.read_secret(worker.dir)) == 32


def test_a_connection_without_the_node_secret_is_refused(worker, tmp_path):
    worker.mark()
    address = channel.read_address(worker.dir)
    # 1. the wrong secret: refused at the handshake
    conn = Client(address, family="AF_UNIX")
    with pytest.raises(channel.Refused):
        channel.prove(conn, b"\0" * 32)
    conn.close()
    # 2. no handshake at all: a request sent straight away is never read as one
    conn = Client(address, family="AF_UNIX")
    conn.recv_bytes()  # the challenge
    job = Job("x" * 1000, 0, 1, None)
    try:
        channel.send_job(conn, job)  # its header is far larger than a handshake frame may be
        conn.recv_bytes()
        pytest.fail("the worker answered a peer that never proved the secret")
    except (EOFError, OSError):
        pass
    conn.close()
    _wait_for(lambda: worker.new_log().count("refused a connection") == 2, 20, "two refusals in the worker's log")
    assert "message for client" not in worker.new_log()  # nothing reached the client's round
    # 3. the worker is still there for the node's own ClientApp
    channel.connect(worker.dir, wait=5).close()


def test_the_shim_hands_nothing_to_a_socket_without_the_secret(tmp_path):
    """Someone else's socket at the node's address (another user's, or a stale process): it cannot
    prove the secret, so the shim refuses it before sending any of the client's bytes."""
    node = tmp_path / "node"
    sock = channel.prepare_node_dir(node)
    received = []
    with Listener(str(sock), family="AF_UNIX") as impostor:
        import threading

        def serve():
            with impostor.accept() as conn:
                conn.send_bytes(channel.PROTOCOL + b" " + b"n" * channel.NONCE)
                received.append(conn.recv_bytes())
                conn.send_bytes(b"x" * 32)  # cannot answer our challenge
                try:
                    received.append(conn.recv_bytes())
                except EOFError:
                    pass

        thread = threading.Thread(target=serve)
        thread.start()
        with pytest.raises(channel.Refused, match="did not prove"):
            channel.call(node, Job("secret config", 0, 1, b"down blob", state=b"state"), wait=5)
        thread.join(10)
    assert len(received) == 1 and b"secret config" not in received[0] and b"down blob" not in received[0]


def test_a_dead_worker_fails_the_message(tmp_path):
    node = tmp_path / "node"
    channel.prepare_node_dir(node)
    t0 = time.monotonic()
    with pytest.raises(channel.WorkerGone, match="does not answer"):
        channel.call(node, Job("x", 0, 1, None), wait=0.5)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("resident", [True, False])
def test_flower_supernode_starts_a_worker_unless_no_resident(tmp_path, monkeypatch, resident):
    import typer
    from typer.testing import CliRunner

    from fedsqueeze import flower_cli
    from fedsqueeze.runtime.flower import deploy, supervisor

    calls = {}  # what would run: nothing is started

    def supervise(cmd, env, log, max_restarts):
        calls.update(cmd=cmd, max_restarts=max_restarts)
        return 0

    monkeypatch.setattr(deploy, "supervise", supervise)

    class Fake:
        def __init__(self, directory, env, log):
            calls["worker"] = Path(directory)

        def start(self):
            return self

        def stop(self):
            calls["stopped"] = True

    monkeypatch.setattr(supervisor, "ResidentWorker", Fake)
    app = typer.Typer()
    app.add_typer(flower_cli.flower_app, name="flower")
    args = ["flower", "supernode", "--superlink", "127.0.0.1:9093", "--partition-id", "1", "--num-partitions", "3"]
    monkeypatch.setattr(flower_cli, "_exec", lambda cmd, home: pytest.fail("would replace this process"))
    args += ["--port", "9101", "--home", str(tmp_path / "home")]
    res = CliRunner().invoke(app, args + (["--no-restart"] if resident else ["--no-resident"]))
    assert res.exit_code == 0, res.output
    node_config = calls["cmd"][calls["cmd"].index("--node-config") + 1]
    if resident:
        folder = (tmp_path / "home" / "resident" / "node-9101").resolve()
        assert calls["worker"] == folder and calls["stopped"] and calls["max_restarts"] == 0  # --no-restart
        assert node_config == f"partition-id=1 num-partitions=3 {RESIDENT_DIR}='{folder}'"
    else:
        assert "worker" not in calls and node_config == "partition-id=1 num-partitions=3"


class Uploads:
    """Wraps a ClientApp: records each reply's upload blob by (round, partition)."""

    def __init__(self, app):
        self.app, self.blobs = app, {}

    def __call__(self, msg, context):
        reply = self.app(msg, context)
        info = msg.content.config_records.get(wire.INFO)
        if info is not None and not reply.has_error():
            self.blobs[(int(info["round"]), int(info["partition-id"]))] = wire.unpack(reply.content, "up")
        return reply


def _serve(cfg_path: Path, out: Path, resident: Path | None) -> Uploads:
    from fedsqueeze.runtime.flower.client_app import make_client_app
    from fedsqueeze.runtime.flower.server import serve
    from test_flower import InProcessGrid

    cfg = config_mod.load(cfg_path, [])
    rundir.prepare(out, cfg, overwrite=True)
    app = Uploads(make_client_app(cfg.to_toml()))
    grid = InProcessGrid(app, cfg.data.clients)
    if resident is not None:
        for context in grid.contexts.values():
            context.node_config[RESIDENT_DIR] = str(resident)
    serve(grid, cfg, out, log=lambda *_: None)
    return app


def test_shim_and_worker_give_the_in_process_uploads_bit_for_bit(worker, tmp_path, corpus):
    """Lossy uplink with error feedback, so round 2's bytes depend on the state that went to the
    worker and came back through context.state; one thread on both sides."""
    from test_flower import _assert_same_run

    cfg = tiny_config(
        tmp_path,
        corpus,
        **{
            "data.clients": "3",
            "data.partition": '"iid"',
            "uplink.codec": '"fp16"',
            "uplink.error_feedback": "true",
            "train.threads": "1",
        },
    )
    worker.mark()
    local = _serve(cfg, tmp_path / "in-process", None)
    resident = _serve(cfg, tmp_path / "resident", worker.dir)
    assert len(local.blobs) == 6 and all(local.blobs.values())
    assert resident.blobs == local.blobs  # the very bytes, client by client and round by round
    _assert_same_run(tmp_path / "in-process", tmp_path / "resident", exact=True)
    log = worker.new_log()
    assert log.count("model loaded") == 1 and log.count("message for client") == 6, log


def test_a_new_run_keeps_the_model_only_when_model_adapter_and_device_agree(tmp_path, corpus):
    """The worker's Sessions: another learning rate keeps the loaded model, and the kept model
    trains to the very bytes of a fresh load (its adapter back at the initial values, nothing
    left over from the previous run); another rank loads a new model, and only one is held."""
    from fedsqueeze.runtime.flower import client_work

    def text(**overrides) -> str:
        return config_mod.load(tiny_config(tmp_path, corpus, **{"train.threads": "1", **overrides}), []).to_toml()

    first, second, other_rank = text(), text(**{"train.lr": "1e-3"}), text(**{"lora.r": "8"})
    lines: list[str] = []
    kept = client_work.Sessions(lines.append)
    job = lambda cfg: Job(cfg, 1, 1, None)
    model = kept.get(first).model
    assert not client_work.run(kept.get(first), job(first)).error  # trains: the adapter moves
    reused = client_work.run(kept.get(second), job(second))
    assert kept.get(second).model is model and kept.loads == 1
    fresh = client_work.run(client_work.Sessions().get(second), job(second))
    assert reused.up == fresh.up and reused.state == fresh.state and reused.up
    kept.get(other_rank)
    assert kept.loads == 2 and kept.session.model is not model
    assert [line.split(":")[0] for line in lines] == ["model loaded", "model kept", "model loaded"]


# ---- a loopback deployment whose worker dies mid-round -----------------------------------------
@pytest.mark.integration
def test_kill_9_of_the_worker_mid_round_leaves_that_client_out_of_that_round_only(tmp_path, corpus):
    from fedsqueeze.runtime.checkpoint import META, check_resumable
    from fedsqueeze.runtime.flower import deploy
    from test_flower import FLOWER_TIMEOUTS, LoopbackFederation, _rounds, _wait

    cfg_path = tiny_config(
        tmp_path,
        corpus,
        **{"data.clients": "2", "data.partition": '"iid"', "uplink.codec": '"fp16"', "train.rounds": "3"},
        **FLOWER_TIMEOUTS,
    )
    out = tmp_path / "deployed"
    fed = LoopbackFederation(tmp_path, partitions=0)
    fed.env.update({"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "FEDSQUEEZE_RESIDENT_TEST_HOLD": "2"})
    with fed:
        for p in range(2):
            cmd = [sys.executable, "-c", "from fedsqueeze.cli import main; main()", "flower", "supernode"]
            cmd += ["--superlink", f"127.0.0.1:{fed.port}", "--partition-id", str(p), "--num-partitions", "2"]
            fed.start(f"supernode-{p}", [*cmd, "--port", str(deploy.free_port()), "--home", str(fed.home)])
        run = fed.flwr_run(cfg_path, out)
        # Kill node 1's worker once it holds its round-2 message (the shim waits on its reply).
        found = None
        deadline = time.monotonic() + 300
        while found is None:
            found = re.search(r"resident worker (\d+): round 2: message for client 1", fed.log("supernode-1"))
            assert time.monotonic() < deadline and run.poll() is None, fed.logs()
            time.sleep(0.1)
        os.kill(int(found.group(1)), signal.SIGKILL)
        _wait(run, fed, 300)
        assert run.returncode == 0 and (out / "summary.json").is_file(), fed.logs()
        server_log, logs = fed.log("flwr-run"), [fed.log(f"supernode-{p}") for p in range(2)]
    assert "round 2: client 1 failed" in server_log and "resident worker went away" in server_log, server_log
    rows = _rounds(out)
    assert [r["clients"] for r in rows] == [[0, 1], [0], [0, 1]]  # back in round 3
    assert [r["left_out"] for r in rows] == [[], [1], []]
    assert rows[1]["bytes_up"] * 2 == rows[0]["bytes_up"] == rows[2]["bytes_up"]  # fp16: equal blobs
    assert rows[1]["bytes_down"] == rows[2]["bytes_down"] > 0  # node 1 pulled its blob: billed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in rows)
    assert summary["bytes_down"] == sum(r["bytes_down"] for r in rows)
    assert json.loads((out / "checkpoint" / META).read_text())["round"] == 3
    check_resumable(out, config_mod.load(cfg_path, []))  # config and checksums agree
    # The model loads once per node and run; node 1's restarted worker loads it once more.
    assert logs[0].count("model loaded") == 1, logs[0]
    assert logs[1].count("model loaded") == 2 and "resident worker exited with -9" in logs[1], logs[1]
