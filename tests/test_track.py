"""[track]: TensorBoard, W&B (offline) and MLflow sinks fed the records of rounds.jsonl.

Every scalar a tracker holds is read back with the tracker's own reader and checked against
rounds.jsonl (and summary.json's base evaluation for step 0), field by field, by a mapping written
here independently of the sinks' code; W&B runs with its network guarded: any connection to a
non-loopback address fails the test, and its API and proxy URLs point at a local socket that
counts connections.
"""

from __future__ import annotations

import json
import math
import socket
import threading

import pytest

import fedsqueeze
from fedsqueeze.errors import ConfigError

from conftest import tiny_config

pytest.importorskip("tensorboard", reason="the [track] extra (pip install 'fedsqueeze[track]') is not installed")


def expected(tag: str, step: int, rounds: list[dict], summary: dict) -> float:
    """What rounds.jsonl (summary.json for step 0, the base evaluation) says `tag` is at `step`."""
    if step == 0:  # the base evaluation: its means only
        base = {"eval/loss": summary["base_eval_loss"], "eval/ood_loss": summary.get("base_ood_eval_loss")}
        base.update({f"eval/{k}": v for k, v in summary.get("base_eval_means", {}).items()})
        assert tag in base, f"step 0 holds the base evaluation's means, not {tag}"
        return base[tag]
    record = next(r for r in rounds if r["round"] == step)
    before = [r for r in rounds if r["round"] <= step]
    group, _, rest = tag.partition("/")
    if tag.startswith("bytes_by_client/"):
        client, direction = rest.rsplit("/", 1)
        return record["per_client"][client][direction]
    if tag.startswith("eval_by_set/"):
        name, metric = rest.rsplit("/", 1)
        return record["eval"][name] if metric == "loss" else record["eval_metrics"][name][metric]
    fields = {
        "bytes/up": record["bytes_up"],
        "bytes/down": record["bytes_down"],
        "bytes/up_cumulative": sum(r["bytes_up"] for r in before),
        "bytes/down_cumulative": sum(r["bytes_down"] for r in before),
        "bytes/total_cumulative": sum(r["bytes_up"] + r["bytes_down"] for r in before),
        "clients/aggregated": len(record["clients"]),
        "train/loss": record["train_loss"],
        "eval/loss": record.get("eval_loss"),
        "time/round_seconds": record["seconds"],
        "time/train_seconds": record["train_seconds"],
        "time/aggregate_seconds": record["aggregate_seconds"],
        "time/eval_seconds": record["eval_seconds"],
        "time/sim_seconds": record.get("sim_seconds"),
        "privacy/epsilon": record.get("epsilon"),
        "memory/peak_rss_mb": record.get("peak_rss_mb"),
    }
    if tag in fields:
        return fields[tag]
    assert group == "eval", f"unexpected tag {tag}"
    return record["eval_means"][rest]


def check_all(got: dict[str, dict[int, float]], rounds: list[dict], summary: dict, rel: float) -> None:
    """Every scalar equals rounds.jsonl's figure, and every round has its core scalars."""
    for tag, steps in got.items():
        for step, value in steps.items():
            want = expected(tag, step, rounds, summary)
            assert value == pytest.approx(want, rel=rel, abs=1e-12), (tag, step)
    for r in rounds:
        for tag in ("bytes/up_cumulative", "bytes/down_cumulative", "train/loss", "time/round_seconds"):
            assert r["round"] in got[tag], (tag, r["round"])
        if "eval_loss" in r:
            assert r["round"] in got["eval/loss"]
            for name in r["eval"]:
                assert r["round"] in got[f"eval_by_set/{name}/loss"]
    assert 0 in got["eval/loss"]
    for r in rounds:
        for client in r["per_client"]:
            assert r["round"] in got[f"bytes_by_client/{client}/up"]


def tensorboard_scalars(run_dir) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "track" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag}: a step written twice: {steps}"
        out[tag] = {e.step: e.value for e in events}
    return out


def wandb_scalars(run_dir) -> dict[str, dict[int, float]]:
    from fedsqueeze.metrics.track.wandb import offline_history

    out: dict[str, dict[int, float]] = {}
    for row in offline_history(run_dir / "track"):
        step = row["_step"]
        assert row["round"] == step
        for key, value in row.items():
            if key.startswith("_") or key == "round":
                continue
            assert step not in out.setdefault(key, {}), f"{key}: step {step} written twice"
            out[key][step] = value
    return out


@pytest.fixture
def no_network(monkeypatch):
    """Fails any connection to a non-loopback address from this process, and points W&B's API and
    every proxy variable at a local socket that counts the connections made to it (wandb-core, a
    separate process, would go there)."""
    attempts: list = []
    real_connect = socket.socket.connect
    real_create = socket.create_connection

    def local(address) -> bool:
        if not isinstance(address, tuple):
            return True  # AF_UNIX: wandb-core's service socket
        host = str(address[0])
        return host in ("localhost", "::1") or host.startswith("127.")

    def guarded_connect(self, address):
        if not local(address):
            attempts.append(address)
            raise AssertionError(f"network connection attempted: {address}")
        return real_connect(self, address)

    def guarded_create(address, *args, **kwargs):
        if not local(address):
            attempts.append(address)
            raise AssertionError(f"network connection attempted: {address}")
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "create_connection", guarded_create)
    with pytest.raises(AssertionError, match="network connection attempted"):  # the guard itself works
        socket.create_connection(("192.0.2.1", 443), timeout=0.1)
    attempts.clear()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    for var in ("WANDB_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield attempts, accepted
    stop.set()
    thread.join(timeout=2)
    server.close()


def test_tensorboard_and_wandb_hold_exactly_the_records_of_rounds_jsonl(tmp_path, corpus, no_network):
    pytest.importorskip("wandb", reason="the [track] extra is not installed")
    attempts, accepted = no_network
    track = {"track.to": '["tensorboard", "wandb"]', "track.project": '"fsq-test"'}
    cfg = tiny_config(tmp_path, corpus, **track, **{"eval.metrics": '["loss", "choice"]'})
    result = fedsqueeze.run(cfg, out=tmp_path / "run", log=None)
    rounds, summary = result.rounds, result.summary
    tb = tensorboard_scalars(tmp_path / "run")
    assert {0, 1, 2} == set(tb["eval/acc"]) and any(t.startswith("eval_by_set/") and t.endswith("/acc") for t in tb)
    check_all(tb, rounds, summary, rel=1e-6)  # TensorBoard keeps float32
    wb = wandb_scalars(tmp_path / "run")
    check_all(wb, rounds, summary, rel=1e-12)  # W&B keeps the JSON float
    assert set(wb) == set(tb)  # the same scalars in both
    assert attempts == [] and accepted == []  # nothing tried the network

    from fedsqueeze.metrics.track.wandb import offline_config, offline_runs

    (folder,) = offline_runs(tmp_path / "run" / "track")
    state = json.loads((tmp_path / "run" / "track" / "state.json").read_text())
    assert folder.name.endswith(state["run_id"])
    config = offline_config(tmp_path / "run" / "track")
    assert config["train.rounds"] == 2 and config["method"] == "fedavg"  # the resolved config as hyperparameters


def test_a_resumed_run_continues_the_same_tracker_runs_without_repeating_a_step(tmp_path, corpus, no_network):
    pytest.importorskip("wandb", reason="the [track] extra is not installed")
    cfg = tiny_config(tmp_path, corpus, **{"track.to": '["tensorboard", "wandb"]', "train.rounds": "3"})
    fedsqueeze.run(cfg, out=tmp_path / "run", until=1, log=None)
    result = fedsqueeze.resume(tmp_path / "run", log=None)
    tb = tensorboard_scalars(tmp_path / "run")  # asserts no step twice
    wb = wandb_scalars(tmp_path / "run")  # likewise
    for got in (tb, wb):
        assert sorted(got["eval/loss"]) == [0, 1, 2, 3]
        assert sorted(got["bytes/up_cumulative"]) == [1, 2, 3]
        check_all(got, result.rounds, result.summary, rel=1e-6)
    from fedsqueeze.metrics.track.wandb import offline_runs

    runs = offline_runs(tmp_path / "run" / "track")
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # one W&B run id, synced as one


def test_mlflow_file_store_holds_the_same_history(tmp_path, corpus):
    pytest.importorskip("mlflow", reason="mlflow (or mlflow-skinny) is not installed")
    from mlflow.tracking import MlflowClient

    dp = {"privacy.mode": '"central"', "privacy.target_epsilon": "8.0", "privacy.delta": "1e-5"}
    dp["privacy.noise_seed"] = "1"
    cfg = tiny_config(tmp_path, corpus, **{"track.to": '["mlflow"]', **dp})
    result = fedsqueeze.run(cfg, out=tmp_path / "run", log=None)
    run_id = (tmp_path / "run" / "track" / "mlflow_run_id").read_text().strip()
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "track" / "mlruns").as_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.rounds"] == "2"
    got = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in run.data.metrics}
    check_all(got, result.rounds, result.summary, rel=1e-12)
    assert sorted(got["privacy/epsilon"]) == [1, 2]


def test_track_is_off_by_default_and_names_are_checked(tmp_path, corpus, monkeypatch):
    result = fedsqueeze.run(tiny_config(tmp_path, corpus, **{"train.rounds": "1"}), out=tmp_path / "run", log=None)
    assert not (result.paths.out / "track").exists()
    with pytest.raises(ConfigError, match=r"track\.to.*'nope'.*allowed: mlflow, tensorboard, wandb"):
        fedsqueeze.load_config(None, ['track.to=["nope"]'])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"track\.to.*'wandb' needs the 'wandb' package.*fedsqueeze\[track\]"):
        fedsqueeze.load_config(None, ['track.to=["wandb"]'])


def test_record_scalars_skip_what_is_not_a_finite_figure():
    from fedsqueeze.metrics.track.base import record_scalars

    got = record_scalars({"round": 1, "bytes_up": 10, "bytes_down": 0, "train_loss": math.nan, "clients": [0]}, {})
    assert got == {
        "bytes/up": 10.0,
        "bytes/down": 0.0,
        "bytes/up_cumulative": 10.0,
        "bytes/down_cumulative": 0.0,
        "bytes/total_cumulative": 10.0,
        "clients/aggregated": 1.0,
    }


def test_the_flower_server_logs_the_same_through_the_driver(tmp_path, corpus):
    """Flower's ServerApp runs `serve` (the driver over a Grid): its trackers hold its rounds.jsonl,
    per-owner evaluation included. Here over the in-process Grid of test_flower.py."""
    from test_flower import _config, _serve_in_process

    cfg = _config(tmp_path, corpus, **{"track.to": '["tensorboard"]'})
    summary, _ = _serve_in_process(cfg, tmp_path / "grid")
    from fedsqueeze import rundir

    rounds = rundir.read_rounds(tmp_path / "grid")
    got = tensorboard_scalars(tmp_path / "grid")
    check_all(got, rounds, summary, rel=1e-6)
    assert any(tag.startswith("eval_by_set/") for tag in got)


def test_a_wandb_resume_in_the_same_second_waits_for_a_folder_of_its_own(tmp_path):
    """W&B names an offline folder by its start second: a resume that starts within the second of
    the process before it waits (at most a second) instead of writing into that folder."""
    pytest.importorskip("wandb", reason="the [track] extra is not installed")
    from datetime import datetime

    from fedsqueeze.metrics.track.base import RunInfo
    from fedsqueeze.metrics.track.wandb import WandbSink

    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    (tmp_path / "wandb" / f"offline-run-{stamp}-abc").mkdir(parents=True)
    WandbSink(RunInfo(tmp_path, "abc", "n", "p", 1))._wait_for_a_new_second()
    assert datetime.now().strftime("%Y%m%d_%H%M%S") != stamp


def test_a_tracker_added_on_resume_catches_up_from_the_checkpoint(tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus, **{"train.rounds": "3"})
    fedsqueeze.run(cfg, out=tmp_path / "run", until=2, log=None)
    assert not (tmp_path / "run" / "track").exists()
    result = fedsqueeze.resume(tmp_path / "run", ['track.to=["tensorboard"]'], log=None)
    got = tensorboard_scalars(tmp_path / "run")
    assert sorted(got["eval/loss"]) == [0, 1, 2, 3] and sorted(got["bytes/total_cumulative"]) == [1, 2, 3]
    check_all(got, result.rounds, result.summary, rel=1e-6)


def _transaction_log(records) -> bytes:
    """A .wandb log as wandb-core lays it out: a 7-byte header, then 32 KiB blocks of
    [crc 4][length 2][kind 1][data] pieces, a record longer than its block split FIRST/MIDDLE/LAST."""
    import struct

    from fedsqueeze.metrics.track.wandb import BLOCK, FIRST, FULL, LAST, MIDDLE

    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for record in records:
        data, first = record.SerializeToString(), True
        while True:
            left = BLOCK - len(out) % BLOCK
            if left < 7:
                out += bytes(left)  # the block's tail is padding
                continue
            piece, data = data[: left - 7], data[left - 7 :]
            kind = (FULL if first else LAST) if not data else (FIRST if first else MIDDLE)
            out += struct.pack("<IHB", 0, len(piece), kind) + piece
            first = False
            if not data:
                break
    return bytes(out)


def test_a_log_read_while_wandb_core_writes_it_gives_the_whole_records_before_the_cut(tmp_path):
    """CI once read the log between two of wandb-core's writes and met half a record: the reader
    must stop before a record cut short, at any byte, and still refuse a whole record that is garbage."""
    pytest.importorskip("wandb", reason="the [track] extra is not installed")
    from wandb.proto import wandb_internal_pb2

    from fedsqueeze.metrics.track.wandb import read_records

    records = []
    for step in range(6):
        record = wandb_internal_pb2.Record()
        record.history.step.num = step
        item = record.history.item.add()
        item.key, item.value_json = "blob", json.dumps("x" * (40_000 if step == 2 else 40))  # one spans blocks
        records.append(record)
    exit_record = wandb_internal_pb2.Record()
    exit_record.exit.exit_code = 0
    records.append(exit_record)
    log = _transaction_log(records)
    assert len(log) > 32768
    path = tmp_path / "run.wandb"
    path.write_bytes(log)
    assert list(read_records(path)) == records
    cuts = sorted({*range(7, len(log), 211), *(b * 32768 + d for b in (1,) for d in range(-8, 9)), len(log) - 1})
    for cut in cuts:
        path.write_bytes(log[:cut])
        got = list(read_records(path))
        assert got == records[: len(got)] and len(got) < len(records), cut
    path.write_bytes(log[:7] + log[7:11] + log[11:14] + b"\xff" * (len(records[0].SerializeToString())))
    with pytest.raises(ValueError, match="does not parse"):
        list(read_records(path))


def test_evaluations_riding_on_train_messages_reach_the_trackers_in_round_order(tmp_path, corpus):
    """Per-owner data (eval.ride): round r's figures come with round r + 1, and a run stopped while
    one is pending resumes with it; TensorBoard still holds every round once, as rounds.jsonl says."""
    from test_owners import owners_config, write_owners

    owners = write_owners(tmp_path / "owners", corpus)
    cfg = owners_config(tmp_path, corpus, owners, **{"train.rounds": "3", "track.to": '["tensorboard"]'})
    fedsqueeze.run(cfg, out=tmp_path / "run", until=2, log=None)
    got = tensorboard_scalars(tmp_path / "run")
    assert sorted(got["eval/loss"]) == [0, 1] and sorted(got["train/loss"]) == [1]  # round 2's waits
    result = fedsqueeze.resume(tmp_path / "run", log=None)
    got = tensorboard_scalars(tmp_path / "run")
    assert sorted(got["eval/loss"]) == [0, 1, 2, 3] and sorted(got["train/loss"]) == [1, 2, 3]
    assert [r.get("eval_on_train") for r in result.rounds] == [[0, 1, 2], [0, 1, 2], None]
    check_all(got, result.rounds, result.summary, rel=1e-6)
