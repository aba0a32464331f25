"""The ClientApp: one data owner's side of a round, the very ClientRole of the in-process runtime.

Deployment starts a fresh process per message, so all that survives between rounds is what the
role puts in `context.state` (its method state and uplink error-feedback memory). The partition it
trains on comes from the SuperNode's node config (`partition-id`, `num-partitions`); the Flower
simulation engine sets the same keys for its virtual nodes. Under per-owner data the node config
names the owner's own file instead (`data-path`), and the ClientApp reads that file and no other
(node_data.py).

A SuperNode started by `fedsqueeze flower supernode` has a resident worker (worker.py), named by
`resident-dir` in its node config: the ClientApp is then a shim that hands the round to the worker
over the node's channel and imports neither torch nor transformers. Without one (--no-resident,
`flower-supernode` itself, the simulation engine) the round runs in this process, as before.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from ...registry import Extensions
from ..reply import Reply  # plain data, no torch
from . import client_work, wire
from .node_data import NUM_PARTITIONS, PARTITION_ID

_sessions = client_work.Sessions()  # reused while the process lives (simulation: a Ray actor)


def _run(context: Context, job: client_work.Job) -> client_work.Outcome:
    """On the node's resident worker if it has one, else in this process."""
    from . import channel

    resident = context.node_config.get(channel.RESIDENT_DIR)
    if resident:  # a dead worker fails this message (channel.WorkerGone), as a dead node would
        return channel.call(Path(str(resident)), job)
    return client_work.run(_sessions.get(job.config_toml, job.data_file), job)


def _config_text(config_toml: str | None, context: Context) -> str:
    from .settings import AppSettings

    return config_toml if config_toml is not None else AppSettings.from_run_config(context.run_config).config_toml


def _node(config_toml: str | None, context: Context):
    """(client index, clients, own data file or None) of this node (runtime/flower/node_data.py)."""
    from .node_data import node_partition
    from .settings import config_from_toml

    cfg = config_from_toml(_config_text(config_toml, context))
    return node_partition(context, cfg, simulated=config_toml is not None)


def _job(msg: Message, context: Context, config_toml: str | None, op: str) -> client_work.Job:
    text = _config_text(config_toml, context)
    partition, _, data_file = _node(config_toml, context)
    info: Any = msg.content.config_records[wire.INFO]  # what the server wrote (wire.train_message)
    if int(info[PARTITION_ID]) != partition:
        raise RuntimeError(f"message for partition {info[PARTITION_ID]} reached the node of partition {partition}")
    seconds = info.get(wire.TRAIN_SECONDS)
    return client_work.Job(
        text,
        partition,
        int(info.get("round", 0)),
        wire.unpack(msg.content, "down"),
        float(seconds) if seconds is not None else None,
        wire.state_bytes(context.state),
        dict(context.node_config),
        str(data_file) if data_file is not None else None,
        op,
        info.get(wire.JUDGE) is True,
    )


def make_client_app(config_toml: str | None = None, extensions: Extensions | None = None) -> ClientApp:
    """config_toml: the fedsqueeze config for the simulation engine; None: read it from the run config.
    extensions: what the process that made the app registered beyond the catalog (a test file's
    method, codec stage, upload filter), added before each message where the app runs elsewhere."""
    app = ClientApp()
    install = extensions.install if extensions is not None else (lambda: None)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        install()
        # Cheap on purpose (no model): the server asks each new node which partition it holds.
        partition, partitions, _ = _node(config_toml, context)
        info = ConfigRecord({PARTITION_ID: partition, NUM_PARTITIONS: partitions})
        return Message(content=RecordDict({wire.INFO: info}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        install()
        job = _job(msg, context, config_toml, "train")
        outcome = _run(context, job)
        wire.put_state_bytes(context.state, outcome.state)  # also when a fault drops the reply: it trained
        if outcome.error:
            raise RuntimeError(outcome.error)
        reply = Reply.of_fields(outcome.up, outcome.metrics)
        if reply.delay_s:  # fault 'slow': answer after the server has stopped waiting
            time.sleep(reply.delay_s)
        return wire.train_reply(msg, job.partition, reply)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        install()
        # The owner judges the global adapter on its own held-out split (runtime/client_eval.py).
        job = _job(msg, context, config_toml, "evaluate")
        outcome = _run(context, job)
        if outcome.error:
            raise RuntimeError(outcome.error)
        return wire.evaluate_reply(msg, job.partition, outcome.metrics)

    return app


app = make_client_app()
