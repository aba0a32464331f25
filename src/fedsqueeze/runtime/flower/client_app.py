"""The ClientApp: one data owner's side of a round, the very ClientRole of the in-process runtime.

Deployment starts a fresh process per message, so all that survives between rounds is what the
role puts in `context.state` (its method state and uplink error-feedback memory). The partition it
trains on comes from the SuperNode's node config (`partition-id`, `num-partitions`); the Flower
simulation engine sets the same keys for its virtual nodes.

A SuperNode started by `fedsqueeze flower supernode` has a resident worker (worker.py), named by
`resident-dir` in its node config: the ClientApp is then a shim that hands the round to the worker
over the node's channel and imports neither torch nor transformers. Without one (--no-resident,
`flower-supernode` itself, the simulation engine) the round runs in this process, as before.
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from . import client_work, wire

PARTITION_ID, NUM_PARTITIONS = "partition-id", "num-partitions"

_sessions = client_work.Sessions()  # reused while the process lives (simulation: a Ray actor)


def _run(context: Context, job: client_work.Job) -> client_work.Outcome:
    """On the node's resident worker if it has one, else in this process."""
    from . import channel

    resident = context.node_config.get(channel.RESIDENT_DIR)
    if resident:  # a dead worker fails this message (channel.WorkerGone), as a dead node would
        return channel.call(resident, job)
    return client_work.run(_sessions.get(job.config_toml), job)


def _partition(context: Context) -> tuple[int, int]:
    try:
        return int(context.node_config[PARTITION_ID]), int(context.node_config[NUM_PARTITIONS])
    except KeyError as exc:
        raise RuntimeError(
            f"this SuperNode has no {exc.args[0]!r} in its node config: start it with "
            "--node-config 'partition-id=I num-partitions=N'"
        ) from None


def make_client_app(config_toml: str | None = None) -> ClientApp:
    """config_toml: the fedsqueeze config for the simulation engine; None: read it from the run config."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        # Cheap on purpose (no model): the server asks each new node which partition it holds.
        partition, partitions = _partition(context)
        info = ConfigRecord({PARTITION_ID: partition, NUM_PARTITIONS: partitions})
        return Message(content=RecordDict({wire.INFO: info}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        from .settings import AppSettings

        text = config_toml if config_toml is not None else AppSettings.from_run_config(context.run_config).config_toml
        partition, _ = _partition(context)
        info = msg.content.config_records[wire.INFO]
        if int(info[PARTITION_ID]) != partition:
            raise RuntimeError(f"message for partition {info[PARTITION_ID]} reached the node of partition {partition}")
        seconds = info.get(wire.TRAIN_SECONDS)
        job = client_work.Job(
            text,
            partition,
            int(info["round"]),
            wire.unpack(msg.content, "down"),
            float(seconds) if seconds is not None else None,
            wire.state_bytes(context.state),
            dict(context.node_config),
        )
        outcome = _run(context, job)
        wire.put_state_bytes(context.state, outcome.state)  # also when a fault drops the reply: it trained
        if outcome.error:
            raise RuntimeError(outcome.error)
        metrics = dict(outcome.metrics)
        delay = metrics.pop("delay_s", 0.0)
        if delay:  # fault 'slow': answer after the server has stopped waiting
            time.sleep(delay)
        return wire.train_reply(msg, partition, outcome.up, metrics)

    return app


app = make_client_app()
