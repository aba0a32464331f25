"""The ClientApp: one data owner's side of a round, the very ClientRole of the in-process runtime.

Deployment starts a fresh process per message, so all that survives between rounds is what the
role puts in `context.state` (its method state and uplink error-feedback memory). The partition it
trains on comes from the SuperNode's node config (`partition-id`, `num-partitions`); the Flower
simulation engine sets the same keys for its virtual nodes. Under per-owner data the node config
names the owner's own file instead (`data-path`), and the ClientApp reads that file and no other
(node_data.py).
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from . import wire
from .node_data import NUM_PARTITIONS, PARTITION_ID

_sessions: dict[tuple, object] = {}  # (config text, data file) -> Session; reused while the process lives


def _session(config_toml: str, data_file=None):
    key = (config_toml, str(data_file))
    if key not in _sessions:
        from ..session import Session
        from .node_data import owner_data
        from .settings import config_from_toml

        _sessions.clear()  # one run per process at a time; do not keep old models alive
        data = owner_data(data_file) if data_file is not None else None  # this owner's file alone
        _sessions[key] = Session.build(config_from_toml(config_toml), log=lambda *_: None, data=data)
    return _sessions[key]


def _config_text(config_toml: str | None, context: Context) -> str:
    from .settings import AppSettings

    return config_toml if config_toml is not None else AppSettings.from_run_config(context.run_config).config_toml


def _node(config_toml: str | None, context: Context):
    """(client index, clients, own data file or None) of this node (runtime/flower/node_data.py)."""
    from .node_data import node_partition
    from .settings import config_from_toml

    cfg = config_from_toml(_config_text(config_toml, context))
    return node_partition(context, cfg, simulated=config_toml is not None)


def make_client_app(config_toml: str | None = None) -> ClientApp:
    """config_toml: the fedsqueeze config for the simulation engine; None: read it from the run config."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        # Cheap on purpose (no model): the server asks each new node which partition it holds.
        partition, partitions, _ = _node(config_toml, context)
        info = ConfigRecord({PARTITION_ID: partition, NUM_PARTITIONS: partitions})
        return Message(content=RecordDict({wire.INFO: info}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        from ..roles import ClientRole

        text = _config_text(config_toml, context)
        partition, _, data_file = _node(config_toml, context)
        info = msg.content.config_records[wire.INFO]
        if int(info[PARTITION_ID]) != partition:
            raise RuntimeError(f"message for partition {info[PARTITION_ID]} reached the node of partition {partition}")
        role = ClientRole(_session(text, data_file), partition)
        role.load_state_dict(wire.load_state(context.state))
        seconds = info.get(wire.TRAIN_SECONDS)
        try:
            up_blob, metrics = role.handle(
                int(info["round"]),
                wire.unpack(msg.content, "down"),
                seconds=float(seconds) if seconds is not None else None,
            )
        finally:  # also when a fault drops the reply: the client did train
            wire.save_state(context.state, role.state_dict())
        delay = metrics.pop("delay_s", 0.0)
        if delay:  # fault 'slow': answer after the server has stopped waiting
            time.sleep(min(delay, role.s.cfg.runtime.round_timeout + 1.0))
        return wire.train_reply(msg, partition, up_blob, metrics)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        # The owner judges the global adapter on its own held-out split (runtime/client_eval.py).
        from ..client_eval import score_blob

        text = _config_text(config_toml, context)
        partition, _, data_file = _node(config_toml, context)
        info = msg.content.config_records[wire.INFO]
        if int(info[PARTITION_ID]) != partition:
            raise RuntimeError(f"message for partition {info[PARTITION_ID]} reached the node of partition {partition}")
        sums = score_blob(_session(text, data_file), partition, wire.unpack(msg.content, "down"))
        return wire.evaluate_reply(msg, partition, sums)

    return app


app = make_client_app()
