"""The ClientApp: one data owner's side of a round, the very ClientRole of the in-process runtime.

Deployment starts a fresh process per message, so all that survives between rounds is what the
role puts in `context.state` (its method state and uplink error-feedback memory). The partition it
trains on comes from the SuperNode's node config (`partition-id`, `num-partitions`); the Flower
simulation engine sets the same keys for its virtual nodes.
"""

from __future__ import annotations

import time
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from . import wire

PARTITION_ID, NUM_PARTITIONS = "partition-id", "num-partitions"

_sessions: dict[str, object] = {}  # config text -> Session; reused while the process lives (simulation)


def _session(config_toml: str):
    if config_toml not in _sessions:
        from ..session import Session
        from .settings import config_from_toml

        _sessions.clear()  # one run per process at a time; do not keep old models alive
        _sessions[config_toml] = Session.build(config_from_toml(config_toml), log=lambda *_: None)
    return _sessions[config_toml]


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
        from ..roles import ClientRole
        from .settings import AppSettings

        text = config_toml if config_toml is not None else AppSettings.from_run_config(context.run_config).config_toml
        partition, _ = _partition(context)
        info: Any = msg.content.config_records[wire.INFO]  # what the server wrote (wire.train_message)
        if int(info[PARTITION_ID]) != partition:
            raise RuntimeError(f"message for partition {info[PARTITION_ID]} reached the node of partition {partition}")
        role = ClientRole(_session(text), partition)
        role.load_state_dict(wire.load_state(context.state))
        seconds = info.get(wire.TRAIN_SECONDS)
        try:
            reply = role.handle(
                int(info["round"]),
                wire.unpack(msg.content, "down"),
                seconds=float(seconds) if seconds is not None else None,
            )
        finally:  # also when a fault drops the reply: the client did train
            wire.save_state(context.state, role.state_dict())
        if reply.delay_s:  # fault 'slow': answer after the server has stopped waiting
            time.sleep(min(reply.delay_s, role.s.cfg.runtime.round_timeout + 1.0))
        return wire.train_reply(msg, partition, reply)

    return app


app = make_client_app()
