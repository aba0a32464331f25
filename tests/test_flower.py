"""fedsqueeze on Flower: the same ServerRole / ClientRole wired through Flower messages.

Fast tests drive the real ServerApp loop and ClientApp through an in-process Grid (no Ray, no
network): wiring, client state in context.state, failures. The integration tests run Flower's
simulation engine, and a SuperLink with three SuperNodes on 127.0.0.1 (TLS + SuperNode
authentication; and a SuperNode killed mid-round).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config

from fedsqueeze import config as config_mod
from fedsqueeze.runtime import LocalRuntime, Session, rundir
from fedsqueeze.runtime.flower import wire
from fedsqueeze.runtime.flower.settings import AppSettings

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
        assert (x["clients"], x["bytes_up"], x["bytes_down"], x["per_client"]) == \
               (y["clients"], y["bytes_up"], y["bytes_down"], y["per_client"])
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


def test_client_state_round_trips_through_context_state():
    from flwr.app import RecordDict

    state = RecordDict()
    assert wire.load_state(state) == {}
    tensors = {"state/a": torch.randn(3, 4), "sender/memory/b": torch.arange(5), "sender/codec/rng": torch.tensor([7],
                                                                                                    dtype=torch.uint8)}
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
    """A Grid that hands each message straight to a ClientApp with that node's Context, the way a
    SuperNode would (state kept per node). `faults[(round, partition)]` = "error" (the ClientApp
    raises) or "silent" (no reply before the timeout)."""

    def __init__(self, client_app, partitions: int, faults=None):
        from flwr.app import Context, RecordDict
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # as a SuperLink's Grid
        self.app = client_app
        self.faults = faults or {}
        self.contexts = {
            1000 + p: Context(run_id=1, node_id=1000 + p, state=RecordDict(), run_config={},
                              node_config={"partition-id": p, "num-partitions": partitions})
            for p in reversed(range(partitions))  # node order unrelated to partition order
        }

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Error, Message
        from flwr.supercore.task_identity import TaskIdentity

        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            context = self.contexts[node]
            info = msg.content.config_records.get(wire.INFO)
            fault = self.faults.get((int(info["round"]), context.node_config["partition-id"])) if info else None
            TaskIdentity.node_id = node
            try:
                if fault == "silent":
                    continue
                if fault == "error":
                    raise RuntimeError("injected failure")
                replies.append(self.app(msg, context))
            except Exception as exc:  # what a SuperNode reports for a ClientApp that raised
                replies.append(Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg))
            finally:
                TaskIdentity.node_id = 1
        return replies


def _serve_in_process(cfg_path: Path, out: Path, faults=None, sets=()) -> tuple[dict, list[str]]:
    from fedsqueeze.runtime.flower.client_app import make_client_app
    from fedsqueeze.runtime.flower.server import serve

    cfg = config_mod.load(cfg_path, list(sets))
    rundir.prepare(out, cfg, overwrite=True)
    grid = InProcessGrid(make_client_app(cfg.to_toml()), cfg.data.clients, faults)
    lines: list[str] = []
    return serve(grid, cfg, out, log=lines.append), lines


def test_apps_over_a_grid_equal_the_in_process_runtime(tmp_path, corpus):
    # Lossy uplink with error feedback: round 2's upload depends on memory kept in context.state.
    cfg = _config(tmp_path, corpus, **{"uplink.codec": '"fp16"', "uplink.error_feedback": "true"})
    _local_run(cfg, tmp_path / "local")
    summary, _ = _serve_in_process(cfg, tmp_path / "grid")
    _assert_same_run(tmp_path / "local", tmp_path / "grid", exact=True)
    assert summary["rounds"] == 2 and (tmp_path / "grid" / "checkpoint").is_dir()


def test_failed_and_silent_clients_are_left_out(tmp_path, corpus):
    cfg = _config(tmp_path, corpus, **{"train.rounds": "3"})
    summary, lines = _serve_in_process(cfg, tmp_path / "out", faults={(1, 2): "silent", (2, 0): "error"})
    rows = _rounds(tmp_path / "out")
    assert [r["clients"] for r in rows] == [[0, 1], [1, 2], [0, 1, 2]]
    assert [r["left_out"] for r in rows] == [[2], [0], []]
    assert any("client 0 failed" in line and "injected failure" in line for line in lines)
    assert any("no answer from clients [2]" in line for line in lines)
    assert summary["rounds"] == 3
    # Only what arrived is on the uplink bill; the downlink blob to the failed client was sent.
    one_up = rows[2]["bytes_up"] // 3
    assert [r["bytes_up"] for r in rows] == [2 * one_up, 2 * one_up, 3 * one_up]
    assert rows[0]["bytes_down"] == rows[2]["bytes_down"]


def test_methods_without_traffic_are_refused(tmp_path, corpus):
    from fedsqueeze.errors import UserError

    with pytest.raises(UserError, match="runtime.kind"):
        _serve_in_process(_config(tmp_path, corpus, method='"local"'), tmp_path / "out")
