"""The one round loop of every runtime.

Per round the driver samples clients (busy ones skipped), has the ServerRole encode their
downlink blobs, sends them over a Transport and polls the replies until the round's close rule
says it closes (`Driver.exchange`); the ServerRole receives them (checks, bills, decodes, screens,
admits: `ServerRole.receive`) and aggregates; the driver evaluates (a seeded sample of the eval
sets, `[eval]`), writes the record and the checkpoint. A record's `seconds` is the whole round,
with `train_seconds` (the exchange), `aggregate_seconds` and `eval_seconds` beside it; summary.py
writes adapter/ and summary.json at the end. A Transport only sends blobs and says when each reply
arrived: the in-process simulation on its simulated clock (local.py), Flower's Grid on the real
one (flower/server.py), or anything registered in runtime/registry.py.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .. import rundir
from ..checks import check_remote
from ..config import HybridConfig
from ..errors import UserError
from ..evaluation import REFERENCE_ROUND
from ..metrics.track import Tracking
from ..tensors import Tensors, prefixed, unprefixed
from . import client_eval
from .checkpoint import load_checkpoint, save_checkpoint
from .claims import cap_text
from .progress import NullProgress, _means_text
from .reply import Upload
from .roles import ServerRole
from .session import Session
from .state_store import STATE_DIR, StateStore
from .summary import finish


@dataclass(frozen=True)
class CloseRule:
    """When a round closes (the asynchronous-synchronous hybrid), from `[hybrid]`.

    A round waits for `need(sent)` of its own clients or `deadline` seconds, whichever is first;
    uploads that miss it stay in flight when `keep_late`, and join a later round with their
    staleness. `work_seconds`: the budget a client may spend training (partial work), else None."""

    quorum: float = 1.0
    deadline: float | None = None
    work_seconds: float | None = None

    @classmethod
    def of(cls, hybrid: HybridConfig) -> CloseRule:
        return cls(hybrid.quorum, hybrid.deadline, hybrid.deadline if hybrid.partial_work else None)

    @property
    def keep_late(self) -> bool:
        return self.quorum < 1 or self.deadline is not None

    def need(self, sent: int) -> int:
        """How many of a round's `sent` clients it waits for (all when quorum = 1)."""
        return max(1, math.ceil(self.quorum * sent - 1e-9))

    def close_time(self, start: float, finishes: list[float], pending: list[float]) -> float:
        """On a simulated clock: when the round that started at `start` closes. finishes: arrival
        times of this round's clients; pending: those of late uploads from earlier rounds. With
        nobody sampled, the round waits for the first pending arrival."""
        deadline = start + self.deadline if self.deadline is not None else math.inf
        if finishes:
            quorum_time = sorted(finishes)[self.need(len(finishes)) - 1]
        else:
            quorum_time = min(pending) if pending else start
        return min(quorum_time, deadline)


class Transport(Protocol):
    """Moves blobs between the server and its clients and says when each reply arrived; holds no
    round logic (the driver applies the close rule, `Driver.exchange`)."""

    remote: bool
    """True: clients run elsewhere and only messages reach them (a method that sends nothing
    cannot run on it)."""
    simulated: bool
    """True: `now` is a simulated clock, so arrival order is reproducible (records get sim_seconds)."""
    patience: float
    """Seconds after which a sent message is given up if no reply came (math.inf: never)."""

    def start(self) -> None:
        """Before the first round of this process (e.g. wait for the clients to connect)."""

    def reachable(self, clients: list[int]) -> list[int]:
        """Of the sampled clients, those a message can reach now."""

    def in_flight(self) -> dict[int, int]:
        """Client -> the round it was sent in, for every reply not received yet."""

    def now(self) -> float:
        """The transport's clock, in seconds."""

    def send(self, rnd: int, blobs: dict[int, bytes | None], work_seconds: float | None, progress) -> None:
        """Delivers round `rnd`'s blobs (None: nothing for that client); the clients start training.
        work_seconds: the partial-work budget of the round, or None."""

    def poll(self, until: float) -> list[Upload]:
        """Replies that arrived by `until` on its clock: waits at most until then, and returns all
        that arrived at the same instant together (possibly none)."""

    def abandon(self, client: int) -> None:
        """Stops waiting for `client`'s reply (it will not be returned by poll)."""

    def client_states(self) -> Sequence[Tensors]:
        """What the server may evaluate personalized adapters with (empty dicts where clients keep
        their state themselves)."""

    def state_dict(self) -> tuple[Tensors, dict]:
        """Tensors and JSON metadata for the checkpoint."""

    def load_state_dict(self, tensors: Tensors, meta: dict) -> None: ...

    def committed(self) -> None:
        """The checkpoint that state_dict() was for is written (state files it superseded may go)."""


class Driver:
    def __init__(self, session: Session, transport: Transport, out: Path, progress=None):
        if transport.remote:  # checks.py's rule, asked of the transport (a Grid serves any runtime.kind)
            check_remote(
                session.cfg, session.method, f"a runtime whose clients run elsewhere ({type(transport).__name__})"
            )
        self.s = session
        self.transport = transport
        self.out = out
        self.progress = progress or NullProgress()
        # In-process the clients' store shares the cache (runtime.state_cache_mb) half and half.
        cache_mb = session.cfg.runtime.state_cache_mb / (1 if transport.remote else 2)
        self.server = ServerRole(session, StateStore(out / STATE_DIR / "server", cache_mb))
        self.rule = CloseRule.of(session.cfg.hybrid)
        self.done = 0
        self.elapsed = 0.0
        self.base_eval: dict | None = None  # held-out loss of the untrained adapter: the reference
        self.records: list[dict] = []  # every finished round's record, as in rounds.jsonl
        self.sent_at: dict[int, float] = {}  # round -> when its blobs were sent (transport clock)

    @property
    def client_states(self) -> Sequence[Tensors]:
        return self.transport.client_states()

    def sample(self, rnd: int) -> list[int]:
        """Seeded by (seed, round), among the clients not busy with an earlier round's upload."""
        busy = set(self.transport.in_flight())
        pool = [c for c in range(self.s.num_clients) if c not in busy]
        k = self.s.cfg.train.clients_per_round
        if k is None or k >= len(pool):
            return pool
        # Central DP: the sample must be secret for the accountant's amplification by sampling.
        return sorted(random.Random(f"{self.server.sampling_key()}/sample/{rnd}").sample(pool, k))

    def run_round(self, rnd: int) -> dict:
        t0 = time.perf_counter()
        sampled = self.sample(rnd)
        self.progress.round_start(rnd, sampled)
        reachable = self.transport.reachable(sampled)
        blobs = self.server.broadcast(rnd, reachable)
        t_train = time.perf_counter()
        uploads, sim_seconds = self.exchange(rnd, blobs)
        train_seconds = time.perf_counter() - t_train
        late = sorted(self.transport.in_flight())
        got = self.server.receive(rnd, uploads, self.progress.log)
        if not got.arrived and not late:
            raise UserError(
                f"round {rnd}: no client answered; stopped after round {self.done} "
                "(the last finished round is checkpointed)"
            )
        t_aggregate = time.perf_counter()
        record = self.server.close_round(rnd)
        if "capped" in record:
            self.progress.log(f"round {rnd}: " + cap_text(record["capped"], self.s.cfg.server.max_client_weight))
        t_eval = time.perf_counter()
        if rnd % self.s.cfg.eval.every == 0 or rnd == self.s.cfg.train.rounds:
            record.update(client_eval.judge(self, rnd))  # eval.at: server, clients or both
            client_eval.bill(record, record)  # evaluate messages are downlink
        if rnd == 1:
            client_eval.bill(record, self.base_eval)  # and so are the base model's
        t_end = time.perf_counter()
        record.update(
            seconds=t_end - t0,
            train_seconds=train_seconds,
            aggregate_seconds=t_eval - t_aggregate,
            eval_seconds=t_end - t_eval,
        )
        record.update(self.server.round_peaks())
        record.update(self.server.placement_if_new())
        if sim_seconds is not None:
            record["sim_seconds"] = sim_seconds
        wire_fields = getattr(self.transport, "wire_fields", None)
        if wire_fields is not None:  # Flower: its messages' serialized bytes, beside the blobs' ledger
            record.update(wire_fields())
        record.update(late=late, stale=got.stale, left_out=sorted(set(sampled) - set(got.arrived) - set(late)))
        if got.dropped:
            record["dropped"] = got.dropped
        if got.rejected:
            record["rejected"] = {str(c): why for c, why in sorted(got.rejected.items())}
        if self.rule.work_seconds is not None:
            record["partial"] = got.partial
        return record

    def exchange(self, rnd: int, blobs: dict[int, bytes | None]) -> tuple[list[Upload], float | None]:
        """Sends the round's blobs and takes replies until the close rule says the round closes:
        `need(sent)` of this round's clients replied, or the rule's deadline (or the transport's
        patience) passed, or nothing is in flight; with nobody sent to, the first reply closes it.
        Returns the replies in the order they are to be applied (arrival order on a simulated clock,
        client order on a real one, where arrival order is not reproducible) and the simulated
        seconds the round took (None on a real clock). Replies that miss the close stay in flight
        when the rule keeps late uploads, until the transport's patience runs out."""
        t, rule = self.transport, self.rule
        start = t.now()
        t.send(rnd, blobs, rule.work_seconds, self.progress)
        self.sent_at[rnd] = start
        sent = sum(1 for origin in t.in_flight().values() if origin == rnd)
        need = rule.need(sent)
        limit = start + min(rule.deadline if rule.deadline is not None else math.inf, t.patience)
        got: list[Upload] = []
        while t.in_flight():
            got += t.poll(limit)
            mine = sum(1 for u in got if u.origin == rnd)
            if (mine >= need if sent else bool(got)) or t.now() >= limit:
                break
        now = t.now()
        for client, origin in sorted(t.in_flight().items()):
            if not rule.keep_late or now - self.sent_at.get(origin, start) >= t.patience:
                t.abandon(client)
                self.progress.log(f"round {rnd}: no answer from client {client} within {t.patience:g} s: left out")
        self.sent_at = {r: at for r, at in self.sent_at.items() if r in t.in_flight().values() or r == rnd}
        if not t.simulated:
            got.sort(key=lambda u: u.client)
        return got, (now - start if t.simulated else None)

    def run(self, until: int | None = None) -> dict | None:
        rounds = self.s.cfg.train.rounds
        last = min(rounds, until) if until else rounds
        if self.done < rounds:
            self.transport.start()
        if self.done == 0 and self.base_eval is None:
            self.base_eval = client_eval.judge(self, REFERENCE_ROUND)
            loss = self.base_eval["eval_loss"]
            self.progress.log(f"before training: eval loss {loss:.4f}" + _means_text(self.base_eval))
        self.progress.start(rounds, self.done, self.s.local_steps)
        tracking = Tracking.open(self.s.cfg, self.out, self.records, self.base_eval)  # [track]: same records
        try:
            for rnd in range(self.done + 1, last + 1):
                record = self.run_round(rnd)
                self.elapsed += record["seconds"]
                self.done = rnd
                self.save(record)
                rundir.append_round(self.out, record)
                tracking.log(record)  # [track]
                self.progress.round_end(record)
        finally:
            self.progress.stop()
            if self.done < rounds:
                tracking.close()  # [track]: left open for the resume
        if self.done < rounds:
            return None
        summary = finish(self.s, self.out, self.client_states, self.done, self.elapsed, self.base_eval, self.records)
        tracking.finish(summary)  # [track]
        return summary

    # ---- checkpoints ---------------------------------------------------------------------------
    def save(self, record: dict) -> None:
        """Checkpoints the finished round; `record` gets the bytes this wrote (`checkpoint_bytes`:
        the changed clients' state files and the server's state) and joins the checkpoint's records."""
        tensors, meta = self.transport.state_dict()  # flushes the transport's client store, if any
        server_state, server_meta = self.server.checkpoint()
        state = {**prefixed("server/", server_state), **tensors}
        store_bytes = server_meta["server_store"]["bytes"] + meta.get("client_store", {}).get("bytes", 0)

        def full_meta(state_bytes: int) -> dict:
            record["checkpoint_bytes"] = store_bytes + state_bytes
            self.records.append(json.loads(json.dumps(record)))  # as rounds.jsonl will read it
            return {
                "round": self.done,
                "seconds": self.elapsed,
                "base_eval": self.base_eval,
                "placement": server_meta["placement"],
                "config": self.s.cfg.to_toml(),  # what a resume must match
                "records": self.records,  # the ledger, so a lost rounds.jsonl cannot undercount
                "server_store": server_meta["server_store"],
                **meta,
            }

        save_checkpoint(self.out, state, full_meta)
        self.server.committed()  # only now: the old checkpoint named the files it deletes
        self.transport.committed()

    def restore(self) -> None:
        """Continues from the checkpoint (its checksums verified). Callers run `check_resumable`
        first, before they build anything; rounds.jsonl is then rewritten from the checkpoint."""
        state, meta = load_checkpoint(self.out)
        self.server.restore(unprefixed("server/", state), meta)
        self.transport.load_state_dict(state, meta)
        self.done, self.elapsed = meta["round"], meta["seconds"]
        self.base_eval = meta.get("base_eval")
        if "records" not in meta:  # a checkpoint from before the ledger was kept in it
            rundir.truncate_rounds(self.out, self.done)
            self.records = rundir.read_rounds(self.out)
            return
        self.records = meta["records"]
        rundir.write_rounds(self.out, self.records)  # checked against them, or rebuilt from them
