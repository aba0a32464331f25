"""The one round loop of every runtime.

Per round the driver samples clients (busy ones skipped), has the ServerRole encode their
downlink blobs, hands them to a Transport, and takes back the uploads that arrived by the round's
close; it applies the close rule's consequences (staleness, dropping, partial work, who is late
or left out), aggregates, evaluates (a seeded sample of the eval sets, `[eval]`), writes the
record and the checkpoint. A record's `seconds` is the whole round, with `train_seconds` (the
exchange), `aggregate_seconds` and `eval_seconds` beside it. `finish` writes adapter/ and
summary.json. A Transport only moves blobs and says when each arrived: the
in-process simulation on its simulated clock (local.py), Flower's Grid on the real one
(flower/server.py), or anything registered in runtime/registry.py.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import tomllib

from .. import rundir
from ..codecs import PayloadError
from ..config import HybridConfig
from ..errors import UserError
from ..evaluation import REFERENCE_ROUND, evaluate_round, evaluate_sets, sampled_sets
from ..metrics.memory import merge_peaks
from ..tensors import Tensors, prefixed, unprefixed
from .admission import Candidate, screen
from .checkpoint import load_checkpoint, read_meta, save_checkpoint
from .roles import ServerRole
from .session import Session
from .state_store import STATE_DIR, StateStore


@dataclass(frozen=True)
class Upload:
    """A client's reply as a transport delivers it."""

    client: int
    origin: int  # the round it trained in
    blob: bytes | None
    metrics: dict
    error: str | None = None  # the client failed: nothing to use, and it is left out
    gone: bool = False  # with error: its node went away, maybe before it pulled the downlink


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
    """Moves one round's blobs between the server and its clients; holds no round logic."""

    remote: bool
    """True: clients run elsewhere and only messages reach them (a method that sends nothing
    cannot run on it)."""

    def start(self) -> None:
        """Before the first round of this process (e.g. wait for the clients to connect)."""

    def reachable(self, clients: list[int]) -> list[int]:
        """Of the sampled clients, those a message can reach now."""

    def in_flight(self) -> set[int]:
        """Clients whose upload has not arrived yet."""

    def exchange(
        self, rnd: int, blobs: dict[int, bytes | None], rule: CloseRule, progress
    ) -> tuple[list[Upload], float | None]:
        """Delivers the blobs, lets the clients train and returns the uploads that arrived by the
        close (late ones from earlier rounds included) in the order they are to be applied, and the
        simulated seconds the round took (None on a real clock)."""

    def client_states(self) -> list[Tensors]:
        """What the server may evaluate personalized adapters with (empty dicts where clients keep
        their state themselves)."""

    def state_dict(self) -> tuple[Tensors, dict]:
        """Tensors and JSON metadata for the checkpoint."""

    def load_state_dict(self, tensors: Tensors, meta: dict) -> None: ...

    def committed(self) -> None:
        """The checkpoint that state_dict() was for is written (state files it superseded may go)."""


class NullProgress:
    def start(self, total_rounds: int, done: int, steps: int) -> None: ...
    def round_start(self, rnd: int, clients: list[int]) -> None: ...
    def client_start(self, rnd: int, client: int, steps: int | None = None) -> None: ...
    def step(self, loss: float) -> None: ...
    def round_end(self, record: dict) -> None: ...
    def log(self, text: str) -> None: ...
    def stop(self) -> None: ...


class LogProgress(NullProgress):
    """One line per round through `log` (Flower's logger, a test's list)."""

    def __init__(self, log):
        self.log = log

    def round_end(self, r: dict) -> None:
        line = (
            f"round {r['round']}: clients {r['clients']} | up {r['bytes_up']:,} B | down {r['bytes_down']:,} B | "
            f"train loss {r['train_loss']:.4f}"
        )
        if "eval_loss" in r:
            line += f" | eval loss {r['eval_loss']:.4f}" + _means_text(r)
        self.log(line + f" | {r['seconds']:.1f} s")


def _means_text(fields: dict) -> str:
    """' | acc 0.31 (chance 0.25) | rougeL 0.12' for a record with task metrics, else ''."""
    m = fields.get("eval_means") or {}
    text = ""
    if "macro_f1" in m:
        text += f" | acc {m['acc']:.3f} +- {m['acc_se']:.3f} / macro-F1 {m['macro_f1']:.3f} (chance {m['chance']:.3f})"
    elif "acc" in m:
        text += f" | acc {m['acc']:.3f} / norm {m.get('acc_norm', float('nan')):.3f} (chance {m['chance']:.3f})"
    for key in ("rougeL", "exact"):
        if key in m:
            text += f" | {key} {m[key]:.3f}"
    return text


class Driver:
    def __init__(self, session: Session, transport: Transport, out: Path, progress=None):
        if transport.remote and not session.method.mode.federated:
            raise UserError(
                f"method {session.cfg.method!r} sends nothing over the wire (each client keeps its "
                'own adapter, or all data is pooled): run it with runtime.kind = "local"'
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

    @property
    def client_states(self) -> list[Tensors]:
        return self.transport.client_states()

    def sample(self, rnd: int) -> list[int]:
        """Seeded by (seed, round), among the clients not busy with an earlier round's upload."""
        busy = self.transport.in_flight()
        pool = [c for c in range(self.s.num_clients) if c not in busy]
        k = self.s.cfg.train.clients_per_round
        if k is None or k >= len(pool):
            return pool
        # Central DP: the sample must be secret for the accountant's amplification by sampling.
        key = self.server.noise.sampling_seed if self.server.noise is not None else self.s.cfg.seed
        return sorted(random.Random(f"{key}/sample/{rnd}").sample(pool, k))

    def run_round(self, rnd: int) -> dict:
        t0 = time.perf_counter()
        sampled = self.sample(rnd)
        self.progress.round_start(rnd, sampled)
        reachable = self.transport.reachable(sampled)
        blobs = self.server.broadcast(rnd, reachable)
        t_train = time.perf_counter()
        uploads, sim_seconds = self.transport.exchange(rnd, blobs, self.rule, self.progress)
        train_seconds = time.perf_counter() - t_train
        late = sorted(self.transport.in_flight())
        arrived, stale, dropped, partial, rejected, decoded = [], {}, [], {}, {}, []
        for up in uploads:
            if up.error is not None:
                self.progress.log(f"round {rnd}: client {up.client} failed ({up.error}): left out")
                if up.gone and up.origin == rnd:
                    self.server.ledger.mark_undelivered(rnd, up.client)
                continue
            arrived.append(up.client)
            if up.metrics.get("steps", self.s.local_steps) < self.s.local_steps:
                partial[str(up.client)] = int(up.metrics["steps"])  # the steps it had time for
            staleness = rnd - up.origin
            if staleness > self.s.cfg.hybrid.max_staleness:
                # Too old to help; its bytes crossed the wire all the same.
                self.progress.log(
                    f"round {rnd}: dropped client {up.client}'s update from round {up.origin} "
                    f"(staleness {staleness} > {self.s.cfg.hybrid.max_staleness})"
                )
                self.server.count_dropped(rnd, up.client, up.blob, up.metrics)
                dropped.append(up.client)
                continue
            decoded.append((up, staleness, self._decode(rnd, up, rejected)))
        self._admit(rnd, decoded, rejected, stale)
        if not arrived and not late:
            raise UserError(
                f"round {rnd}: no client answered; stopped after round {self.done} "
                "(the last finished round is checkpointed)"
            )
        t_aggregate = time.perf_counter()
        record = self.server.close_round(rnd)
        t_eval = time.perf_counter()
        if rnd % self.s.cfg.eval.every == 0 or rnd == self.s.cfg.train.rounds:
            record.update(evaluate_round(self.s, self.client_states, rnd))
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
        record.update(late=late, stale=stale, left_out=sorted(set(sampled) - set(arrived) - set(late)))
        if dropped:
            record["dropped"] = dropped
        if rejected:
            record["rejected"] = {str(c): why for c, why in sorted(rejected.items())}
        if self.rule.work_seconds is not None:
            record["partial"] = partial
        return record

    def _decode(self, rnd: int, up: Upload, rejected: dict) -> Tensors | None:
        """The upload's tensors (None: nothing sent, or rejected as undecodable); billed either way."""
        if up.blob is None:
            return None
        try:
            return self.server.decode(rnd, up.client, up.blob, up.metrics)
        except PayloadError as exc:
            rejected[up.client] = f"undecodable: {exc}"
            return None

    def _admit(self, rnd: int, decoded: list, rejected: dict, stale: dict) -> None:
        """Screens the round's decoded uploads together (norms are judged against each other) and
        takes in those that pass; the others are logged and stay out of the aggregate."""
        known = self.s.federation.clients
        candidates = [
            Candidate(up.client, tensors, int(up.metrics.get("num_examples", -1)), known[up.client].num_examples)
            for up, _, tensors in decoded
            if tensors is not None
        ]
        server = self.s.cfg.server
        if self.server.noise is not None:  # one client's admission may not depend on the others' data
            server = server.model_copy(update={"norm_factor": None})
        rejected.update(screen(self.s.method, rnd, candidates, server))
        for up, staleness, tensors in decoded:
            if up.client in rejected:
                self.progress.log(f"round {rnd}: rejected client {up.client}'s upload: {rejected[up.client]}")
                continue
            if staleness:
                stale[str(up.client)] = staleness
            self.server.admit(up.client, tensors, up.metrics, staleness)

    def run(self, until: int | None = None) -> dict | None:
        rounds = self.s.cfg.train.rounds
        last = min(rounds, until) if until else rounds
        if self.done < rounds:
            self.transport.start()
        if self.done == 0 and self.base_eval is None:
            self.base_eval = evaluate_round(self.s, self.client_states, REFERENCE_ROUND)
            loss = self.base_eval["eval_loss"]
            self.progress.log(f"before training: eval loss {loss:.4f}" + _means_text(self.base_eval))
        self.progress.start(rounds, self.done, self.s.local_steps)
        try:
            for rnd in range(self.done + 1, last + 1):
                record = self.run_round(rnd)
                self.elapsed += record["seconds"]
                self.done = rnd
                self.save(record)
                rundir.append_round(self.out, record)
                self.progress.round_end(record)
        finally:
            self.progress.stop()
        if self.done < rounds:
            return None
        return finish(self.s, self.out, self.client_states, self.done, self.elapsed, self.base_eval, self.records)

    # ---- checkpoints ---------------------------------------------------------------------------
    def save(self, record: dict) -> None:
        """Checkpoints the finished round; `record` gets the bytes this wrote (`checkpoint_bytes`:
        the changed clients' state files and the server's state) and joins the checkpoint's records."""
        tensors, meta = self.transport.state_dict()  # flushes the transport's client store, if any
        server_store = self.server.store.flush()
        state = {**prefixed("server/", self.server.state_dict()), **tensors}
        store_bytes = server_store["bytes"] + meta.get("client_store", {}).get("bytes", 0)

        def full_meta(state_bytes: int) -> dict:
            record["checkpoint_bytes"] = store_bytes + state_bytes
            self.records.append(json.loads(json.dumps(record)))  # as rounds.jsonl will read it
            return {
                "round": self.done,
                "seconds": self.elapsed,
                "base_eval": self.base_eval,
                "placement": self.server.recorded_placement,
                "config": self.s.cfg.to_toml(),  # what a resume must match
                "records": self.records,  # the ledger, so a lost rounds.jsonl cannot undercount
                "server_store": server_store,
                **meta,
            }

        save_checkpoint(self.out, state, full_meta)
        self.server.store.prune()  # only now: the old checkpoint named the files it deletes
        self.transport.committed()

    def restore(self) -> None:
        """Continues from the checkpoint (its checksums verified). Callers run `check_resumable`
        first, before they build anything; rounds.jsonl is then rewritten from the checkpoint."""
        state, meta = load_checkpoint(self.out)
        self.server.store.load(meta.get("server_store", {}))
        self.server.load_state_dict(unprefixed("server/", state))
        self.transport.load_state_dict(state, meta)
        self.done, self.elapsed = meta["round"], meta["seconds"]
        self.base_eval = meta.get("base_eval")
        self.server.recorded_placement = meta.get("placement")
        if "records" not in meta:  # a checkpoint from before the ledger was kept in it
            rundir.truncate_rounds(self.out, self.done)
            self.records = rundir.read_rounds(self.out)
            return
        self.records = meta["records"]
        rundir.write_rounds(self.out, self.records)  # checked against them, or rebuilt from them


def check_resumable(out: Path, cfg, rebuild_rounds: bool = False) -> None:
    """Refuses, before any work, a resume from a damaged checkpoint, with a config that would
    continue another federation, model or method, or over a rounds.jsonl that lost rounds."""
    from ..config import resume_differences, validate

    meta = read_meta(out)
    if "config" not in meta:
        return  # a checkpoint from before these checks
    diffs = resume_differences(validate(tomllib.loads(meta["config"])), cfg)
    if diffs:
        raise UserError(
            f"{out}: cannot resume with a config that differs from its checkpoint's in "
            + "; ".join(diffs)
            + " (only train.rounds, eval.every, threads, device, precision and runtime.* may change)"
        )
    problem = rundir.rounds_problem(out, meta["records"])
    if problem and not rebuild_rounds:
        raise UserError(
            f"{out / rundir.ROUNDS}: {problem}; the checkpoint holds all {meta['round']} finished rounds: "
            f"`fedsqueeze resume {out} --rebuild-rounds` rewrites the file from it"
        )


def describe(s: Session, log) -> None:
    """The console header every runtime prints before its first round."""
    log(s.federation.summary())
    numel = s.adapter.layout.numel
    log(
        f"method {s.cfg.method} | uplink {s.uplink_spec} | downlink {s.downlink_spec} | "
        f"adapter {numel:,} params ({numel * 4 / 1e6:.2f} MB fp32)"
    )
    log(s.placement.describe())
    if s.privacy is not None:
        log(s.privacy.describe())
    rule = CloseRule.of(s.cfg.hybrid)
    if rule.keep_late:
        log(
            f"a round closes at a quorum of {rule.quorum:g} of its clients"
            + (f" or after {rule.deadline:g} s" if rule.deadline is not None else "")
            + "; late uploads join the round in which they arrive"
        )


def finish(
    s: Session,
    out: Path,
    client_states,
    rounds_done: int,
    elapsed: float,
    base_eval: dict | None = None,
    rows: list[dict] | None = None,
) -> dict:
    """Writes adapter/ (and adapters/<client>/ for personalized methods) and summary.json.

    The summary judges the final adapter on the reference round's eval sets, those the untrained
    adapter was judged on before round 1 (`final_evaluation`), and says how many of how many sets
    that was. Its `seconds` are the rounds' whole seconds plus that evaluation's, if it ran."""
    rows = rundir.read_rounds(out) if rows is None else rows
    final, final_seconds = final_evaluation(s, client_states, next(r for r in reversed(rows) if "eval_loss" in r))
    s.adapter.set(s.method.final_adapter(client_states))
    s.adapter.save(out / "adapter")
    if s.method.mode.personalized:
        for i, name in enumerate(s.federation.eval_sets):
            s.adapter.set(s.method.eval_adapter(i, client_states[i]))
            s.adapter.save(out / "adapters" / name)
    up = sum(r["bytes_up"] for r in rows)
    down = sum(r["bytes_down"] for r in rows)
    undelivered = sum(sum(r.get("undelivered", {}).values()) for r in rows)
    summary = {
        "method": s.cfg.method,
        "rounds": rounds_done,
        "bytes_up": up,
        "bytes_down": down,
        "bytes_total": up + down,
        "final_eval_loss": final["eval_loss"],
        "eval": final["eval"],
        "eval_sets_evaluated": len(final.get("eval_sets", s.federation.eval_sets)),
        "eval_sets_total": len(s.federation.eval_sets),
        "eval_sets": final.get("eval_sets", list(s.federation.eval_sets)),
        "seconds": elapsed + final_seconds,
        **{key: sum(r.get(key, 0.0) for r in rows) for key in ("train_seconds", "aggregate_seconds")},
        "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in rows) + final_seconds,
        "sim_seconds": sum(r.get("sim_seconds", 0.0) for r in rows),
        "uplink_codec": s.uplink_spec,
        "downlink_codec": s.downlink_spec,
        "clients": s.num_clients,
        "adapter_params": s.adapter.layout.numel,
        "device": str(s.placement.device),
        "precision": s.placement.precision,
        "federation_seconds": s.federation.build_seconds,
        **merge_peaks(*rows),
    }
    if undelivered:
        summary["bytes_undelivered"] = undelivered
    if s.privacy is not None:
        clip_norm = next((r["dp_clip_norm"] for r in reversed(rows) if "dp_clip_norm" in r), s.privacy.clip_norm)
        summary["privacy"] = s.privacy.summary(rounds_done, clip_norm)
    if "eval_by" in final:
        summary["eval_by"] = final["eval_by"]
    if "ood_eval_loss" in final:
        summary["ood_eval_loss"] = final["ood_eval_loss"]
    if "eval_metrics" in final:
        summary["eval_metrics"], summary["eval_means"] = final["eval_metrics"], final["eval_means"]
    if "eval_classify" in final:
        summary["eval_classify"] = final["eval_classify"]
    if base_eval is not None:
        summary["base_eval_loss"] = base_eval["eval_loss"]
        if "eval_means" in base_eval:
            summary["base_eval_means"] = base_eval["eval_means"]
        if base_eval.get("ood_eval_loss") is not None:
            summary["base_ood_eval_loss"] = base_eval["ood_eval_loss"]
    rundir.write_summary(out, summary)
    return summary


def final_evaluation(s: Session, client_states, last_eval: dict) -> tuple[dict, float]:
    """The final adapter's eval fields on the reference round's sets, and the seconds it took:
    the last round's evaluation where it judged those very sets (always so when every set is
    judged: 16 or fewer under eval.clients = "auto"), else one more evaluation of them. One more
    sample-sized pass, so a large federation's summary still costs what a round's evaluation does."""
    names = list(s.federation.eval_sets)
    reference = sampled_sets(s, REFERENCE_ROUND)
    if last_eval.get("eval_sets", names) == [names[i] for i in reference]:
        return last_eval, 0.0
    t0 = time.perf_counter()
    fields = evaluate_sets(s, client_states, reference)
    return fields, time.perf_counter() - t0
