"""fedsqueeze on Flower: the same ServerRole / ClientRole wired through Flower messages.

Fast tests drive the real ServerApp loop and ClientApp through an in-process Grid (no Ray, no
network): wiring, client state in context.state, failures. The integration tests run Flower's
simulation engine, and a SuperLink with three SuperNodes on 127.0.0.1 (TLS + SuperNode
authentication; and a SuperNode killed mid-round).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedsqueeze import config as config_mod
from fedsqueeze.runtime import LocalRuntime, Session, rundir
from fedsqueeze.runtime.flower import wire
from fedsqueeze.runtime.flower.deploy import free_port, wait_for_port
from fedsqueeze.runtime.flower.settings import AppSettings

from conftest import tiny_config

THREE_CLIENTS = {"data.clients": "3", "data.partition": '"iid"'}


def _config(tmp_path, corpus, **overrides) -> Path:
    return tiny_config(tmp_path, corpus, **{**THREE_CLIENTS, **overrides})


def _local_run(cfg_path: Path, out: Path, sets=()) -> dict:
    cfg = config_mod.load(cfg_path, list(sets))
    rundir.prepare(out, cfg, overwrite=True)
    return LocalRuntime(Session.build(cfg, log=lambda *_: None), out).run()


def _adapter(out: Path) -> dict:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def _rounds(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def _assert_same_run(a: Path, b: Path, exact: bool = False) -> None:
    """Same final adapter (float tolerance: other processes may use other thread counts) and the
    same bytes, round by round and client by client."""
    ra, rb = _rounds(a), _rounds(b)
    assert [r["round"] for r in ra] == [r["round"] for r in rb]
    for x, y in zip(ra, rb):
        assert (x["clients"], x["bytes_up"], x["bytes_down"], x["per_client"]) == (
            y["clients"],
            y["bytes_up"],
            y["bytes_down"],
            y["per_client"],
        )
        for link in ("codec_up", "codec_down"):
            assert [x.get(link, {}).get(k) for k in ("blobs", "raw_bytes")] == [
                y.get(link, {}).get(k) for k in ("blobs", "raw_bytes")
            ]
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5, nan_ok=True)  # nan: local DP
        assert x["eval_loss"] == pytest.approx(y["eval_loss"], rel=1e-5)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert (sa["bytes_up"], sa["bytes_down"]) == (sb["bytes_up"], sb["bytes_down"])
    wa, wb = _adapter(a), _adapter(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if exact:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


# ---- wire format -----------------------------------------------------------------------------
def test_blob_travels_as_one_uint8_array():
    blob = bytes(range(256)) * 3
    record = wire.pack(blob)
    assert list(record) == [wire.BLOB]
    assert record[wire.BLOB].dtype == "uint8" and tuple(record[wire.BLOB].shape) == (len(blob),)
    from flwr.app import RecordDict

    assert wire.unpack(RecordDict({"up": record}), "up") == blob
    assert wire.unpack(RecordDict({}), "up") is None


def test_a_messages_wire_bytes_are_its_blob_and_a_fixed_envelope():
    """wire.fleet_bytes: an empty blob and one of N bytes differ by N (and the digits of its length)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    sizes = {}
    for n in (0, 1000, 100_000):
        msg = wire.evaluate_message(1234, 3, 2, bytes(n))
        msg.metadata.__dict__["_message_id"] = "f" * 64  # as a Grid stamps it
        sizes[n] = wire.fleet_bytes(msg, to_node=True)
        assert sizes[n][1] == sizes[0][1]  # the node's requests: one per object, whatever the blob
    fixed = sizes[0][0]
    assert 0 <= sizes[1000][0] - fixed - 1000 <= 8 and 0 <= sizes[100_000][0] - fixed - 100_000 <= 8
    assert 1200 < fixed < 3000  # metadata, object ids, array header, 8 Fleet calls' HTTP heads
    reply = wire.evaluate_reply(msg, 2, {"eval_loss_sum": 1.5, "eval_tokens": 3, "eval_examples": 1})
    down, up = wire.fleet_bytes(reply, to_node=False)
    assert up > wire.message_bytes(reply) > 0 and down > 0


def test_a_train_message_asks_for_a_judgement_and_its_reply_carries_it_in_a_record_of_its_own():
    """eval.ride over Flower: the flag in the train message's config, the sums in the reply's own
    MetricRecord (counts stay ints), read back as Reply.eval; a reply without them has None, and
    sums smuggled into the plain metrics are not taken for them."""
    from flwr.supercore.task_identity import TaskIdentity

    from fedsqueeze.runtime.reply import Reply

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    msg = wire.train_message(1234, 3, 2, b"xyz", judge=True)
    assert msg.content.config_records[wire.INFO][wire.JUDGE] is True
    assert wire.JUDGE not in wire.train_message(1234, 3, 2, b"xyz").content.config_records[wire.INFO]
    sums = {"eval_loss_sum": 1.5, "eval_tokens": 3, "eval_examples": 1, "confusion_0_1": 1, "classify_n": 1}
    reply = Reply(b"up", 10, 2, 0.5, eval=sums)
    back = wire.reply_of(wire.train_reply(msg, 2, reply).content)
    assert back == reply and all(type(back.eval[k]) is type(v) for k, v in sums.items())
    plain = Reply(b"up", 10, 2, 0.5)
    assert wire.reply_of(wire.train_reply(msg, 2, plain).content).eval is None
    assert Reply.of_fields(b"up", reply.fields()) == reply  # the resident worker's channel form


def test_client_state_round_trips_through_context_state():
    from flwr.app import RecordDict

    state = RecordDict()
    assert wire.load_state(state) == {}
    tensors = {
        "state/a": torch.randn(3, 4),
        "sender/memory/b": torch.arange(5),
        "sender/codec/rng": torch.tensor([7], dtype=torch.uint8),
    }
    wire.save_state(state, tensors)
    back = wire.load_state(state)
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in tensors.items())


def test_run_config_carries_the_config_text(tmp_path):
    from flwr.common.config import parse_config_args

    text = 'method = "fedavg"\n[train]\nrounds = 2\n'
    path = tmp_path / "run.toml"
    path.write_text(AppSettings(text, tmp_path / "out").to_run_config_toml())
    settings = AppSettings.from_run_config(parse_config_args([str(path)]))  # what `flwr run -c FILE` sends
    assert settings.config_toml == text and settings.out == tmp_path / "out"
    with pytest.raises(Exception, match="config-toml"):
        AppSettings.from_run_config({})


# ---- the apps over an in-process Grid ----------------------------------------------------------
class InProcessGrid:
    """A Grid that hands each pushed message straight to a ClientApp with that node's Context, the
    way a SuperNode would (state kept per node). `faults[(round, partition)]`: "error" (the
    ClientApp raises), "silent" (no reply before the timeout), "gone" (the SuperLink answers
    that the node is offline, as it does for a dead SuperNode) or ("late", k): the reply is
    withheld from the next k pulls that ask for it (a slow client, without sleeping); ("reply", f):
    f(content) rewrites the reply's records as a remote client might send them."""

    SUPERLINK = 1

    def __init__(self, client_app, partitions: int, faults=None):
        from flwr.app import Context, RecordDict
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, self.SUPERLINK
        self.app = client_app
        self.faults = faults or {}
        self.replies = {}
        self.withheld: dict[str, int] = {}
        self.contexts = {
            1000 + p: Context(
                run_id=1,
                node_id=1000 + p,
                state=RecordDict(),
                run_config={},
                node_config={"partition-id": p, "num-partitions": partitions},
            )
            for p in reversed(range(partitions))  # node order unrelated to partition order
        }

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        from flwr.app import Error, Message
        from flwr.common.constant import ErrorCode
        from flwr.supercore.task_identity import TaskIdentity

        ids = []
        for n, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{len(self.replies)}-{n}"  # as Flower's grids do
            ids.append(msg.metadata.message_id)
            node = msg.metadata.dst_node_id
            context = self.contexts[node]
            info = msg.content.config_records.get(wire.INFO)
            rnd = int(info["round"]) if info else 0  # round 0: the query for the node's partition
            fault = self.faults.get((rnd, context.node_config.get("partition-id")))
            if fault == "silent":
                continue
            TaskIdentity.node_id = self.SUPERLINK if fault == "gone" else node
            try:
                if fault == "gone":
                    reply = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node unavailable"), reply_to=msg)
                elif fault == "error":
                    raise RuntimeError("injected failure")
                else:
                    reply = self.app(msg, context)
                    if isinstance(fault, tuple) and fault[0] == "reply":
                        fault[1](reply.content)
            except Exception as exc:  # what a SuperNode reports for a ClientApp that raised
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            finally:
                TaskIdentity.node_id = self.SUPERLINK
            self.replies[msg.metadata.message_id] = reply
            if isinstance(fault, tuple) and fault[0] == "late":
                self.withheld[msg.metadata.message_id] = fault[1]
        return ids

    def pull_messages(self, message_ids):
        out = []
        for i in list(message_ids):
            if self.withheld.get(i, 0) > 0:
                self.withheld[i] -= 1
            elif i in self.replies:
                out.append(self.replies.pop(i))
        return out


def _serve_in_process(cfg_path: Path, out: Path, faults=None, sets=(), resume=False) -> tuple[dict, list[str]]:
    from fedsqueeze.runtime.flower.client_app import make_client_app
    from fedsqueeze.runtime.flower.server import serve

    cfg = config_mod.load(cfg_path, list(sets))
    if not resume:
        rundir.prepare(out, cfg, overwrite=True)
    grid = InProcessGrid(make_client_app(cfg.to_toml()), cfg.data.clients, faults)
    lines: list[str] = []
    return serve(grid, cfg, out, log=lines.append, resume=resume), lines


def test_apps_over_a_grid_equal_the_in_process_runtime(tmp_path, corpus):
    # Lossy uplink with error feedback: round 2's upload depends on memory kept in context.state.
    cfg = _config(tmp_path, corpus, **{"uplink.codec": '"fp16"', "uplink.error_feedback": "true"})
    _local_run(cfg, tmp_path / "local")
    summary, _ = _serve_in_process(cfg, tmp_path / "grid")
    _assert_same_run(tmp_path / "local", tmp_path / "grid", exact=True)
    assert summary["rounds"] == 2 and (tmp_path / "grid" / "checkpoint").is_dir()
    # Beside the blobs' ledger, Flower's own bytes: each round's messages, serialized, and their calls.
    grid, local = _rounds(tmp_path / "grid"), _rounds(tmp_path / "local")
    assert all("wire_down" not in r for r in local)
    for r in grid:  # per client a train message and its reply (round 1: the partition queries too)
        assert r["bytes_down"] < r["wire_down"] < r["bytes_down"] + 8000 * len(r["per_client"])
        assert r["bytes_up"] < r["wire_up"]
    assert summary["wire_down"] == sum(r["wire_down"] for r in grid)


def test_the_eval_sample_is_the_same_over_flower_messages(tmp_path, corpus):
    from fedsqueeze.evaluation import eval_sample

    cfg = _config(tmp_path, corpus, **{"train.rounds": "3", "eval.clients": "2"})  # 2 of 3 sets
    local = _local_run(cfg, tmp_path / "local")
    grid, _ = _serve_in_process(cfg, tmp_path / "grid")
    rows = _rounds(tmp_path / "local")
    assert [r["eval_sets"] for r in rows] == [[f"client-{i}" for i in eval_sample(0, rnd, 3, 2)] for rnd in (1, 2, 3)]
    assert len({tuple(r["eval_sets"]) for r in rows}) > 1  # the sample moves from round to round
    judged = lambda rows: [(r["eval_sets"], r["eval"]) for r in rows]
    assert judged(rows) == judged(_rounds(tmp_path / "grid"))
    for key in ("eval_sets", "eval", "final_eval_loss", "base_eval_loss", "eval_sets_evaluated", "eval_sets_total"):
        assert local[key] == grid[key], key


@pytest.mark.integration
@pytest.mark.parametrize(
    "method",
    ["fed-dare", "ffa-lora", "flexlora", "fedsrd", "fedsrd-e", "gradualdiff", "cg-fedllm", "fed-sb", "lora-xs"],
)
def test_every_method_runs_the_same_over_flower_messages(tmp_path, corpus, method):
    """A method whose client hooks kept anything outside client_state would differ here."""
    from fedsqueeze.strategies import METHODS

    if method not in METHODS.names():
        pytest.skip(f"{method} is not registered")
    rounds = {"train.rounds": "3"} if method == "fed-sb" else {}  # round 3: R alone both ways
    cfg = _config(tmp_path, corpus, method=f'"{method}"', **rounds)
    _local_run(cfg, tmp_path / "local")
    _serve_in_process(cfg, tmp_path / "grid")
    _assert_same_run(tmp_path / "local", tmp_path / "grid", exact=True)


def test_failed_silent_and_gone_clients_are_left_out(tmp_path, corpus):
    cfg = _config(tmp_path, corpus, **{"train.rounds": "4", "runtime.round_timeout": "0.2"})
    faults = {(1, 2): "silent", (2, 0): "error", (3, 1): "gone"}
    summary, lines = _serve_in_process(cfg, tmp_path / "out", faults=faults)
    rows = _rounds(tmp_path / "out")
    assert [r["clients"] for r in rows] == [[0, 1], [1, 2], [0, 2], [0, 1, 2]]
    assert [r["left_out"] for r in rows] == [[2], [0], [1], []]
    assert any("no answer from client 2 within 0.2 s" in line for line in lines)
    assert any("client 0 failed" in line and "injected failure" in line for line in lines)
    assert any("client 1 failed" in line and "node unavailable" in line for line in lines)
    assert summary["rounds"] == 4
    # Only what arrived is on the uplink bill; the downlink blob to the failed client was sent.
    one_up = rows[3]["bytes_up"] // 3
    assert [r["bytes_up"] for r in rows] == [2 * one_up] * 3 + [3 * one_up]
    assert rows[1]["bytes_down"] == rows[3]["bytes_down"]
    assert rows[1]["per_client"]["0"]["up"] == 0 and rows[1]["per_client"]["0"]["down"] > 0
    # The gone node may never have pulled its blob: listed apart, off bytes_down.
    one_down = rows[3]["bytes_down"] // 3
    assert rows[2]["undelivered"] == {"1": one_down} and rows[2]["bytes_down"] == 2 * one_down
    assert "1" not in rows[2]["per_client"]
    assert all("undelivered" not in r for i, r in enumerate(rows) if i != 2)
    assert summary["bytes_undelivered"] == one_down
    assert summary["bytes_down"] == sum(r["bytes_down"] for r in rows)


def _metrics(record_type=None, **changes):
    """A reply rewrite: the METRICS record with `changes` (None: the key left out), as `record_type`."""
    from flwr.app import MetricRecord

    def rewrite(content) -> None:
        values = {**dict(content[wire.METRICS]), **changes}
        values = {k: v for k, v in values.items() if v is not None}
        content[wire.METRICS] = (record_type or MetricRecord)(values)

    return ("reply", rewrite)


def _no_metrics(content) -> None:
    del content[wire.METRICS]


def test_bad_reply_fields_over_flower_messages_are_rejected(tmp_path, corpus):
    """Issue 27: what a remote client puts in its reply is checked where the server receives it."""
    import math

    from flwr.app import ConfigRecord

    cfg = _config(tmp_path, corpus, **{"train.rounds": "3"})
    faults = {
        (1, 1): _metrics(num_examples=math.nan),
        (1, 2): _metrics(ConfigRecord, num_examples="24"),  # a string only a ConfigRecord can carry
        (2, 1): _metrics(train_loss=None),
        (2, 2): _metrics(train_loss=math.inf),
        (3, 1): _metrics(steps=-2),
        (3, 2): ("reply", _no_metrics),
    }
    summary, lines = _serve_in_process(cfg, tmp_path / "out", faults=faults)
    rows = _rounds(tmp_path / "out")
    assert [r["rejected"] for r in rows] == [
        {
            "1": "bad reply: num_examples is not an integer (nan)",
            "2": "bad reply: num_examples is not an integer ('24')",
        },
        {"1": "bad reply: missing train_loss", "2": "bad reply: train_loss is not finite (inf)"},
        {"1": "bad reply: steps = -2 is out of bounds [0, 3]", "2": "bad reply: missing num_examples"},
    ]
    assert [r["clients"] for r in rows] == [[0]] * 3
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("train_loss", "eval_loss", "bytes_up", "bytes_down"))
        assert r["per_client"]["1"]["up"] > 0 and r["per_client"]["2"]["up"] > 0  # billed all the same
    assert summary["rounds"] == 3 and math.isfinite(summary["final_eval_loss"])


def test_hybrid_on_flower_closes_at_the_quorum_and_folds_a_late_reply_in_once(tmp_path, corpus):
    """Quorum 2 of 3; client 2's round-1 reply shows up two pulls late (one pull per round here,
    since the quorum answers at once), so it joins round 3 with staleness 2, and client 2 is not
    sampled while its reply is on the way."""
    cfg = _config(tmp_path, corpus, **{"train.rounds": "4", "hybrid.quorum": "0.6", "hybrid.max_staleness": "2"})
    summary, lines = _serve_in_process(cfg, tmp_path / "out", faults={(1, 2): ("late", 2)})
    rows = _rounds(tmp_path / "out")
    assert [r["clients"] for r in rows] == [[0, 1], [0, 1], [0, 1, 2], [0, 1, 2]]
    assert [r["late"] for r in rows] == [[2], [2], [], []]
    assert [r["stale"] for r in rows] == [{}, {}, {"2": 2}, {}]
    assert [r["left_out"] for r in rows] == [[]] * 4
    assert any("quorum of 0.6" in line for line in lines)
    # client 2 trained in rounds 1 and 4 only, and each upload is on the bill once, when it arrived
    ups = [r["per_client"].get("2", {}).get("up", 0) for r in rows]
    assert ups[0] == ups[1] == 0 and ups[2] > 0 and ups[3] > 0
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in rows)


def test_hybrid_on_flower_drops_a_reply_past_max_staleness_but_bills_it(tmp_path, corpus):
    cfg = _config(tmp_path, corpus, **{"train.rounds": "3", "hybrid.quorum": "0.6", "hybrid.max_staleness": "1"})
    _, lines = _serve_in_process(cfg, tmp_path / "out", faults={(1, 2): ("late", 2)})
    rows = _rounds(tmp_path / "out")
    assert rows[2]["clients"] == [0, 1] and rows[2]["dropped"] == [2]
    assert rows[2]["per_client"]["2"]["up"] > 0  # it crossed the wire: it is on the bill
    assert any("dropped client 2's update from round 1 (staleness 2 > 1)" in line for line in lines)


def test_partial_work_on_flower_sends_the_time_budget(tmp_path, corpus):
    """Partial work on the real clock: the server gives each client 80% of the deadline to train
    in; a budget shorter than one step still gets one step, and the round still closes in time."""
    cfg = _config(tmp_path, corpus, **{"hybrid.deadline": "0.001", "hybrid.partial_work": "true"})
    summary, _ = _serve_in_process(cfg, tmp_path / "out")
    rows = _rounds(tmp_path / "out")
    assert [r["partial"] for r in rows] == [{"0": 1, "1": 1, "2": 1}] * 2
    assert [r["clients"] for r in rows] == [[0, 1, 2]] * 2
    assert summary["rounds"] == 2


def test_a_node_that_cannot_say_its_partition_is_ignored(tmp_path, corpus):
    cfg = _config(tmp_path, corpus, **{"runtime.connect_timeout": "0"})
    summary, lines = _serve_in_process(cfg, tmp_path / "out", faults={(0, 1): "error"})
    assert [r["clients"] for r in _rounds(tmp_path / "out")] == [[0, 2], [0, 2]]
    assert any("did not say which partition" in line and "ignored" in line for line in lines)
    assert any("2 of 3 clients connected; missing partitions [1]" in line for line in lines)


def test_resume_extends_a_flower_run_exactly(tmp_path, corpus):
    cfg = _config(tmp_path, corpus)
    _serve_in_process(cfg, tmp_path / "straight", sets=["train.rounds=3"])
    _serve_in_process(cfg, tmp_path / "resumed", sets=["train.rounds=2"])
    summary, _ = _serve_in_process(cfg, tmp_path / "resumed", sets=["train.rounds=3"], resume=True)
    assert summary["rounds"] == 3 and [r["round"] for r in _rounds(tmp_path / "resumed")] == [1, 2, 3]
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed", exact=True)


def test_methods_without_traffic_are_refused(tmp_path, corpus):
    from fedsqueeze.errors import UserError

    with pytest.raises(UserError, match="runtime.kind"):
        _serve_in_process(_config(tmp_path, corpus, method='"local"'), tmp_path / "out")


# ---- Flower's simulation engine ---------------------------------------------------------------
@pytest.mark.integration
def test_flower_simulation_matches_in_process_runtime(tmp_path, corpus, cli):
    """Flower's simulation engine (Ray actors, client state in context.state) against the in-process
    run: error feedback carries each client's memory across rounds, and local DP noise (seeded per
    client and round) is drawn the same in the actors. One simulation for both: each start costs Ray."""
    cfg = _config(tmp_path, corpus, **{"uplink.codec": '"fp16"', "uplink.error_feedback": "true"})
    noise = ["privacy.mode=local", "privacy.noise_multiplier=1.0", "privacy.delta=1e-5", "privacy.noise_seed=3"]
    args = [a for s in noise for a in ("--set", s)]
    local, sim = tmp_path / "local", tmp_path / "sim"
    assert cli("run", cfg, *args, "--out", local).exit_code == 0
    res = cli("run", cfg, *args, "--out", sim, "--set", 'runtime.kind="flower-sim"')
    assert res.exit_code == 0, res.output
    _assert_same_run(local, sim)
    epsilon = [json.loads((d / "summary.json").read_text())["privacy"]["epsilon"] for d in (local, sim)]
    assert epsilon[0] == epsilon[1] and epsilon[0] > 0
    assert (sim / "adapter" / "adapter_config.json").is_file() and (sim / "checkpoint").is_dir()
    assert (sim / "config.toml").is_file()


# ---- a SuperLink and SuperNodes on 127.0.0.1 --------------------------------------------------


class LoopbackFederation:
    """A SuperLink and one SuperNode per partition on 127.0.0.1, with Flower's state in `tmp`.
    Every process it starts (and everything those start) is killed on exit."""

    def __init__(self, tmp: Path, partitions: int, secure: bool = False):
        from fedsqueeze.runtime.flower import certs, deploy

        self.deploy, self.certs = deploy, certs
        self.tmp, self.partitions, self.secure = tmp, partitions, secure
        self.home = tmp / "flwr-home"
        self.env = deploy.flower_env(self.home)
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.tls = certs.make_tls(tmp / "tls", ["127.0.0.1", "localhost"]) if secure else None

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(
            cmd, env=self.env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def __enter__(self) -> LoopbackFederation:
        d = self.deploy
        try:
            self.start("superlink", d.superlink_command(self.port, tls=self.tls, auth=self.secure))
            wait_for_port(self.port)
            d.write_connection(self.home, f"127.0.0.1:{self.port}", self.tls.ca if self.tls else None)
            for p in range(self.partitions):
                key = None
                if self.secure:  # only registered public keys may join
                    key, public = self.certs.make_supernode_key(self.tmp / "keys", f"supernode-{p}")
                    reg = subprocess.run(
                        d.register_command(public),
                        env=self.env,
                        cwd=self.tmp,
                        capture_output=True,
                        text=True,
                        timeout=120,
                    )
                    assert reg.returncode == 0, reg.stdout + reg.stderr
                self.start(
                    f"supernode-{p}",
                    d.supernode_command(
                        f"127.0.0.1:{self.port}",
                        p,
                        self.partitions,
                        free_port(),
                        root_cert=self.tls.ca if self.tls else None,
                        auth_key=key,
                    ),
                )
        except BaseException:
            self.__exit__()
            raise
        return self

    def flwr_run(self, cfg_path: Path, out: Path) -> subprocess.Popen:
        run_config = self.deploy.write_run_config(self.tmp / "run.toml", cfg_path.read_text(), out)
        return self.start("flwr-run", self.deploy.run_command(run_config))

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)[-3000:]}" for name in self.procs)

    def kill(self, name: str) -> None:
        self.deploy.kill_tree(self.procs[name].pid)
        self.procs[name].wait()

    def __exit__(self, *exc) -> None:
        for proc in self.procs.values():
            self.deploy.kill_tree(proc.pid)
        for proc in self.procs.values():
            proc.wait()


def _wait(proc: subprocess.Popen, fed: LoopbackFederation, seconds: float) -> None:
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"flwr run did not finish in {seconds} s\n{fed.logs()}")


def _lossy_method() -> dict:
    """FedSRD when it is registered (sparse both ways); otherwise FedAvg with an fp16 uplink."""
    from fedsqueeze.strategies import METHODS

    if "fedsrd" in METHODS.names():
        return {"method": '"fedsrd"'}
    return {"uplink.codec": '"fp16"'}


FLOWER_TIMEOUTS = {"runtime.round_timeout": "150", "runtime.connect_timeout": "120"}


@pytest.mark.integration
def test_secure_deployment_matches_in_process_and_goes_on_when_a_supernode_dies(tmp_path, corpus):
    """TLS and SuperNode authentication, three SuperNodes, a lossy method; SuperNode 2 is killed once it
    holds its round-2 message (its ClientApp is running). The run finishes without it, and every
    byte (client by client), every loss and the adapter equal the in-process run in which client 2's
    round-2 reply is lost (faults.kind = "drop"). One deployment for both: each costs a minute."""
    cfg = _config(tmp_path, corpus, **_lossy_method(), **FLOWER_TIMEOUTS)
    out = tmp_path / "deployed"
    with LoopbackFederation(tmp_path, partitions=3, secure=True) as fed:
        run = fed.flwr_run(cfg, out)
        deadline = time.monotonic() + 300
        while fed.log("supernode-2").count("Receiving: train message") < 2:
            assert time.monotonic() < deadline and run.poll() is None, fed.logs()
            time.sleep(0.2)
        fed.kill("supernode-2")
        _wait(run, fed, 420)
        assert run.returncode == 0 and (out / "summary.json").is_file(), fed.logs()
        server_log = fed.log("flwr-run")
    # The SuperLink reports the dead node's message as failed once the node misses its heartbeats.
    assert "round 2: client 2 failed" in server_log or "round 2: no answer from client 2" in server_log
    rows = _rounds(out)
    assert [r["clients"] for r in rows] == [[0, 1, 2], [0, 1]] and rows[1]["left_out"] == [2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["bytes_up"] == rows[0]["bytes_up"] + rows[1]["bytes_up"]
    _local_run(cfg, tmp_path / "local", ["faults.kind=drop", "faults.clients=[2]", "faults.rounds=[2]"])
    local = _rounds(tmp_path / "local")
    assert [r["clients"] for r in local] == [r["clients"] for r in rows]

    def billed(r: dict) -> dict:
        # The one difference: the dead node's round-2 message may not have reached it, so the deployment
        # takes it off the bill (ledger "undelivered"); in-process the dropped client surely got its own.
        return {c: v for c, v in r["per_client"].items() if r["round"] == 1 or c != "2"}

    for x, y in zip(local, rows):
        assert (x["bytes_up"], billed(x)) == (y["bytes_up"], billed(y))
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
        assert x["eval_loss"] == pytest.approx(y["eval_loss"], rel=1e-5)
    assert local[0]["bytes_down"] == rows[0]["bytes_down"]
    wa, wb = _adapter(tmp_path / "local"), _adapter(out)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "checkpoint").is_dir()


# ---- helpers for a deployment ----------------------------------------------------------------
def test_flower_cli_makes_keys_that_flower_accepts(tmp_path):
    import typer
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
    from typer.testing import CliRunner

    from fedsqueeze.flower_cli import flower_app

    app = typer.Typer()
    app.add_typer(flower_app, name="flower")
    res = CliRunner().invoke(
        app, ["flower", "keys", str(tmp_path), "--host", "10.0.0.5", "--host", "fl.example", "--supernodes", "2"]
    )
    assert res.exit_code == 0, res.output
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert san.get_values_for_type(x509.DNSName) == ["fl.example"]
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    for i in range(2):  # the formats flower-supernode and `flwr supernode register` read
        load_ssh_private_key((tmp_path / f"supernode-{i}").read_bytes(), password=None)
        load_ssh_public_key((tmp_path / f"supernode-{i}.pub").read_bytes())


def test_deploy_commands_never_install_packages_and_pass_partition_ids(tmp_path):
    from fedsqueeze.runtime.flower import deploy

    link = deploy.superlink_command(9093)
    assert "--disable-runtime-dependency-installation" in link and "--insecure" in link
    tls = deploy.Tls(tmp_path / "ca.crt", tmp_path / "server.pem", tmp_path / "server.key")
    secure = deploy.superlink_command(9093, tls=tls, auth=True)
    assert "--insecure" not in secure and "--enable-supernode-auth" in secure
    node = deploy.supernode_command("10.0.0.5:9093", 2, 4, 9100, root_cert=tls.ca, auth_key=tmp_path / "k")
    assert node[node.index("--node-config") + 1] == "partition-id=2 num-partitions=4"
    assert "--insecure" not in node and str(tls.ca) in node and "--allow-runtime-dependency-installation" not in node
    env = deploy.flower_env(tmp_path / "home", base={"PATH": "/usr/bin"})
    assert env["FLWR_HOME"] == str((tmp_path / "home").resolve()) and env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert (deploy.project_dir() / "pyproject.toml").is_file()


def test_flower_cli_run_submits_the_resolved_config(tmp_path, corpus, monkeypatch):
    import tomllib
    import typer
    from typer.testing import CliRunner

    from fedsqueeze import flower_cli
    from fedsqueeze.runtime.flower import deploy
    from fedsqueeze.runtime.flower.deploy import project_dir

    calls = []  # what would be run: nothing leaves this machine
    monkeypatch.setattr(
        deploy, "submit", lambda run_config, env: calls.append((deploy.run_command(run_config), env)) or 0
    )
    app = typer.Typer()
    app.add_typer(flower_cli.flower_app, name="flower")
    home = tmp_path / "home"
    res = CliRunner().invoke(
        app,
        [
            "flower",
            "run",
            str(_config(tmp_path, corpus)),
            "--superlink",
            "10.0.0.5:9093",
            "--out",
            "/srv/runs/x",
            "--set",
            "train.rounds=7",
            "--home",
            str(home),
            "--root-cert",
            str(tmp_path / "ca.crt"),
        ],
    )
    assert res.exit_code == 0, res.output
    ((cmd, env),) = calls
    assert cmd[1:3] == ["run", str(project_dir())] and cmd[-1] == "--stream"
    assert env["FLWR_HOME"] == str(home.resolve())
    run_config = tomllib.loads(Path(cmd[cmd.index("--run-config") + 1]).read_text())
    assert run_config["out-dir"] == "/srv/runs/x" and run_config["resume"] is False
    assert config_mod.validate(tomllib.loads(run_config["config-toml"])).train.rounds == 7
    conn = tomllib.loads((home / "config.toml").read_text())["superlink"]
    assert conn["fedsqueeze"] == {"address": "10.0.0.5:9093", "root-certificates": str((tmp_path / "ca.crt").resolve())}
