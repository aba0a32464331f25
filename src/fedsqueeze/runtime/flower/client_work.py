"""One client round on a node, as plain data in and out: what the ClientApp runs in its own process
(no resident worker, and Flower's simulation engine) and what the resident worker runs for it.

    Job(config_toml, partition, round, down blob, seconds, state bytes, node config, data file, op, judge)
      -> Outcome(up blob, metrics, state bytes, error)

Bytes and plain numbers only (state: the safetensors bytes kept in `context.state`), so the same
call works in-process and across the worker's channel (channel.py), and a change of the client's
round function touches `run` alone.

`Sessions` keeps one Session per process, rebuilt when the config changes; the base model (with its
adapter at the initial values) is kept across configs that load the same model with the same
adapter layout, seed and placement, so a new run on a resident worker rebuilds only the cheap parts
(data, method, codecs). Never more than one model per process.
"""

from __future__ import annotations

import gc
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ERROR_PREFIX = "client round failed"


@dataclass
class Job:
    config_toml: str
    partition: int
    round: int
    down: bytes | None
    seconds: float | None = None  # partial work: the wall-clock the client may train for
    state: bytes = b""  # the client's state as kept in context.state (b"": none yet)
    node_config: dict = field(default_factory=dict)  # the SuperNode's node config (plain values)
    data_file: str | None = None  # per-owner data: the node's own file (node_data.py), else None
    op: str = "train"  # or "evaluate": score the received adapter on the owner's held-out split
    judge: bool = False  # train: first score the received adapter (eval.ride; Reply.eval)


@dataclass
class Outcome:
    up: bytes | None
    metrics: dict
    state: bytes  # to put back in context.state, also when the round failed (the client did train)
    error: str | None = None  # the round raised: the ClientApp fails the message with this


def run(session, job: Job) -> Outcome:
    """The client's round: ClientRole.handle between its state's load and save (or, for an
    evaluate message, the owner's scores of the adapter it received; its state untouched)."""
    from ..roles import ClientRole
    from . import wire

    if job.op == "evaluate":
        from ..client_eval import score_blob

        if job.down is None:
            return Outcome(None, {}, job.state, "an evaluate message without an adapter")
        return Outcome(None, score_blob(session, job.partition, job.down), job.state)
    role = ClientRole(session, job.partition)
    role.load_state_dict(wire.state_from_bytes(job.state))
    up, metrics, error = None, {}, None
    try:
        reply = role.handle(job.round, job.down, seconds=job.seconds, judge=job.judge)
        up, metrics = reply.blob, reply.fields()  # plain data for the channel (Reply.of_fields reads it back)
    except Exception as exc:  # a fault that drops the reply, a broken config...: the message fails
        from ..filters.faults import ClientDropped

        error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, ClientDropped):  # the node's log keeps the traceback
            traceback.print_exc()
    state = wire.state_to_bytes(role.state_dict())
    delay = metrics.get("delay_s")
    if delay:  # fault 'slow': answer once the server has stopped waiting (never forever)
        metrics["delay_s"] = min(float(delay), session.cfg.runtime.round_timeout + 1.0)
    return Outcome(up, metrics, state, error)


# ---- the process's session ---------------------------------------------------------------------
def model_key(cfg) -> tuple:
    """What the loaded model depends on: which model, how it is loaded, the adapter's layout and
    initial values (rank, alpha, targets, seed), and where it runs. Equal keys: the same model."""
    from ...hardware import Placement
    from ...strategies import adapter_spec

    placement = Placement.resolve(cfg.train.device, cfg.train.precision, cfg.model.dtype)
    spec = adapter_spec(cfg.method, cfg.params, cfg.lora.r, cfg.lora.alpha)
    return (
        repr(cfg.model),
        repr(cfg.lora),
        repr(spec),
        cfg.seed,
        str(placement.device),
        placement.precision,
        str(placement.model_dtype),
        cfg.train.gradient_checkpointing,
    )


class Sessions:
    """One Session at a time, by config text; its model outlives it while the next config loads the
    same one. log: where "model loaded" goes (once per load)."""

    def __init__(self, log=lambda *_: None):
        self.log = log
        self.text: tuple[str, str | None] | None = None  # (config text, data file) of the session
        self.session = None
        self.key: tuple | None = None
        self.initial = None  # the adapter's initial values, to put back before a new session
        self.loads = 0

    def get(self, config_toml: str, data_file: str | None = None):
        if (config_toml, data_file) == self.text:
            return self.session
        from ..session import Session
        from .node_data import owner_data
        from .settings import config_from_toml

        cfg = config_from_toml(config_toml)
        key = model_key(cfg)
        model = None
        if key == self.key and self.session is not None:
            model = (self.session.model, self.session.tokenizer)
            self.session.adapter.set(self.initial)
            self.log(f"model kept: {cfg.model.name} (same model, adapter layout and device)")
        self.drop()  # before the next model loads: one model per process
        t0 = time.perf_counter()
        data = owner_data(Path(data_file)) if data_file is not None else None  # this owner's file alone
        session = Session.build(cfg, log=lambda *_: None, model=model, data=data)
        if model is None:
            self.loads += 1
            self.initial = session.adapter.get()
            self.log(
                f"model loaded: {cfg.model.name} on {session.placement.device} "
                f"({session.placement.precision}) in {time.perf_counter() - t0:.1f} s"
            )
        self.text, self.session, self.key = (config_toml, data_file), session, key
        return session

    def drop(self) -> None:
        """Forgets the session (and its model, unless a caller still holds it)."""
        device = getattr(getattr(self.session, "placement", None), "device", None)
        self.text = self.session = self.key = None
        gc.collect()
        if device is not None and str(device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
