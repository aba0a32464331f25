"""The one round loop of every runtime.

Per round the driver samples clients (busy ones skipped), has the ServerRole encode their downlink
blobs, sends them over a Transport and polls the replies until the round's close rule says it closes
(`Driver.exchange`); the ServerRole receives them (checks, bills, decodes, screens, admits:
`ServerRole.receive`) and aggregates; the driver evaluates (a seeded sample of the eval sets, `[eval]`),
writes the record and the checkpoint. Where owners judge on the next round's train message (`eval.ride`,
client_eval.py), round r's record is written with `eval_pending` and completed in round r + 1, before
that round aggregates (rounds.jsonl rewritten, trackers told in round order). A record's `seconds` is
the whole round, with `train_seconds` (the exchange), `aggregate_seconds` and `eval_seconds` beside it;
summary.py writes adapter/ and summary.json at the end. A Transport only sends blobs and says when each
reply arrived: the in-process simulation on its simulated clock (local.py), Flower's Grid on the real
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

    def send(
        self,
        rnd: int,
        blobs: dict[int, bytes | None],
        work_seconds: float | None,
        progress,
        judge: frozenset[int] = frozenset(),
    ) -> None:
        """Delivers round `rnd`'s blobs (None: nothing for that client); the clients start training.
        work_seconds: the partial-work budget of the round, or None. judge: clients that first score
        what they received (eval.ride); passed only to a transport whose `rides_eval` is True."""

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
        self.rides = client_eval.rides(self)  # eval.ride: owners judge on the next train message
        self.pending: int | None = None  # the round whose evaluation rides on the next train messages
        self.judged: tuple[int, dict] | None = None  # (round, fields) the last round completed

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
        pending = self.pending if self.rides else None
        judge = client_eval.riders(self, pending, list(blobs)) if pending is not None else frozenset()
        t_train = time.perf_counter()
        uploads, sim_seconds = self.exchange(rnd, blobs, judge)
        train_seconds = time.perf_counter() - t_train
        late = sorted(self.transport.in_flight())
        got = self.server.receive(rnd, uploads, self.progress.log)
        if not got.arrived and not late:
            raise UserError(
                f"round {rnd}: no client answered; stopped after round {self.done} "
                "(the last finished round is checkpointed)"
            )
        t_pending = time.perf_counter()
        earlier = None
        if self.pending is not None:  # before aggregating: the global adapter is still the judged one
            ridden = {
                u.client: u.reply.eval
                for u in uploads
                if u.origin == rnd and u.client in judge and u.reply is not None and u.reply.eval is not None
            }
            earlier = self.complete_pending(rnd, ridden)
        elif rnd == 1:
            earlier = self.base_eval  # judged before the round: its evaluate messages go on round 1's bill
        t_aggregate = time.perf_counter()
        record = self.server.close_round(rnd)
        if "capped" in record:
            self.progress.log(f"round {rnd}: " + cap_text(record["capped"], self.s.cfg.server.max_client_weight))
        t_eval = time.perf_counter()
        rounds = self.s.cfg.train.rounds
        if rnd % self.s.cfg.eval.every == 0 or rnd == rounds:
            if self.rides and rnd < rounds:
                record["eval_pending"] = True  # judged on round rnd + 1's train messages
                self.pending = rnd
            else:
                record.update(client_eval.judge(self, rnd))  # eval.at: server, clients or both
                client_eval.bill(record, record)  # evaluate messages are downlink
        client_eval.bill(record, earlier)  # an earlier evaluation's evaluate messages (the base model's)
        t_end = time.perf_counter()
        record.update(
            seconds=t_end - t0,
            train_seconds=train_seconds,
            aggregate_seconds=t_eval - t_aggregate,
            eval_seconds=t_end - t_eval + t_aggregate - t_pending,
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

    def complete_pending(self, rnd: int, ridden: dict[int, dict]) -> dict:
        """The pending round's evaluation: the owners' sums that rode on this round's train replies,
        evaluate messages for the others. Written into that round's record (or base_eval) and handed
        to `run` (`judged`); returns the fields, whose evaluate messages this round's record bills."""
        p = self.pending
        assert p is not None
        fields = json.loads(json.dumps(client_eval.judge(self, p, ridden)))
        self.pending = None
        self.judged = (p, fields)
        if p == REFERENCE_ROUND:
            self.base_eval = fields
            return fields
        record = self.records[-1]
        assert record["round"] == p and record.get("eval_pending"), "the pending round's record is the last"
        del record["eval_pending"]
        record.update({k: v for k, v in fields.items() if k != "eval_down"})
        if fields.get("eval_down"):
            record["eval_billed_in"] = rnd  # its evaluate messages are on that round's bill
        return fields

    def exchange(
        self, rnd: int, blobs: dict[int, bytes | None], judge: frozenset[int] = frozenset()
    ) -> tuple[list[Upload], float | None]:
        """Sends the round's blobs and takes replies until the close rule says the round closes:
        `need(sent)` of this round's clients replied, or the rule's deadline (or the transport's
        patience) passed, or nothing is in flight; with nobody sent to, the first reply closes it.
        Returns the replies in the order they are to be applied (arrival order on a simulated clock,
        client order on a real one, where arrival order is not reproducible) and the simulated
        seconds the round took (None on a real clock). Replies that miss the close stay in flight
        when the rule keeps late uploads, until the transport's patience runs out."""
        t, rule = self.transport, self.rule
        start = t.now()
        if judge:  # owners of the pending evaluation score what they receive first (eval.ride)
            t.send(rnd, blobs, rule.work_seconds, self.progress, judge=judge)
        else:
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
        if self.records and self.records[-1].get("eval_pending"):  # a resume: the last round's evaluation
            self.pending = self.records[-1]["round"]
            if not self.rides or self.done >= rounds:  # no train message left to ride on
                self._judge_now()
        if self.done == 0 and self.base_eval is None:
            if self.rides:
                self.pending = REFERENCE_ROUND  # judged on round 1's train messages
            else:
                self.base_eval = client_eval.judge(self, REFERENCE_ROUND)
                self._said(REFERENCE_ROUND, self.base_eval)
        self.progress.start(rounds, self.done, self.s.local_steps)
        tracking = Tracking.open(self.s.cfg, self.out, self.records, self.base_eval)  # [track]: same records
        try:
            for rnd in range(self.done + 1, last + 1):
                record = self.run_round(rnd)
                self.elapsed += record["seconds"]
                self.done = rnd
                self.save(record)
                if self.judged is not None:  # an earlier round's evaluation came in this round
                    earlier, fields = self.judged
                    self.judged = None
                    self._said(earlier, fields, rnd)
                    if earlier == REFERENCE_ROUND:
                        tracking.log_base(fields)
                        rundir.append_round(self.out, record)
                    else:
                        tracking.log(self.records[-2])
                        rundir.write_rounds(self.out, self.records)  # that round's line completed
                else:
                    rundir.append_round(self.out, record)
                if not record.get("eval_pending"):  # else told with its evaluation, in round order
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

    def _judge_now(self) -> None:
        """The pending round's evaluation by evaluate messages alone (a resume with eval.ride off, or
        with no round left), written into its record and billed there."""
        fields = self.complete_pending(self.done, {})  # billed in its own round, as it says
        record = self.records[-1]
        client_eval.bill(record, {"eval_down": fields.get("eval_down", {})})
        self.judged = None
        self._said(record["round"], fields)
        rundir.write_rounds(self.out, self.records)

    def _said(self, rnd: int, fields: dict, during: int | None = None) -> None:
        if "eval_loss" not in fields:
            return
        when = "before training" if rnd == REFERENCE_ROUND else f"round {rnd}"
        rode = during is not None and fields.get("eval_on_train")
        how = f" (judged by its owners with round {during}'s train messages)" if rode else ""
        self.progress.log(f"{when}: eval loss {fields['eval_loss']:.4f}" + _means_text(fields) + how)

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
