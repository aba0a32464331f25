"""In-process simulation: every client in one process, one base model, adapters swapped.

Every message is encoded to bytes and decoded on the other side, exactly as over a network;
the ledger counts len() of each blob. Only wiring here: the round logic is in roles.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..metrics.memory import merge_peaks
from . import rundir
from .checkpoint import load_checkpoint, prefixed, save_checkpoint, unprefixed
from .clock import NetworkModel, close_time
from .roles import ClientRole, ServerRole
from .session import Session

log = logging.getLogger(__name__)


@dataclass
class InFlight:
    """A client's upload on its way: it reaches the server at simulated time `arrival`."""

    arrival: float
    origin: int  # the round it was trained in
    client: int
    blob: bytes | None
    metrics: dict


class NullProgress:
    def start(self, total_rounds: int, done: int, steps: int) -> None: ...
    def round_start(self, rnd: int, clients: list[int]) -> None: ...
    def client_start(self, rnd: int, client: int, steps: int | None = None) -> None: ...
    def step(self, loss: float) -> None: ...
    def round_end(self, record: dict) -> None: ...
    def log(self, text: str) -> None: ...
    def stop(self) -> None: ...


class LocalRuntime:
    def __init__(self, session: Session, out: Path, progress=None):
        self.s = session
        self.out = out
        self.progress = progress or NullProgress()
        self.server = ServerRole(session)
        self.clients = [ClientRole(session, c) for c in range(session.num_clients)]
        self.network = NetworkModel(session.cfg.network, session.num_clients, session.cfg.seed)
        self.clock = 0.0  # simulated seconds
        self.in_flight: list[InFlight] = []
        self.last_up: dict[int, int] = {}  # client -> bytes of its last upload (sizes partial work)
        self.done = 0
        self.elapsed = 0.0
        self.base_eval: dict | None = None  # held-out loss of the untrained adapter: the reference

    @property
    def client_states(self):
        return [c.state for c in self.clients]

    def run_round(self, rnd: int) -> dict:
        """Clients train as soon as they are sampled; their uploads reach the server at their
        simulated arrival time. The round closes by the hybrid rule (all of them by default);
        what has not arrived stays in flight for a later round, with its staleness."""
        t0 = time.perf_counter()
        hybrid = self.s.cfg.hybrid
        busy = {f.client for f in self.in_flight}
        sampled = self.s.sample_clients(rnd, among=[c for c in range(self.s.num_clients) if c not in busy])
        self.progress.round_start(rnd, sampled)
        blobs = self.server.broadcast(rnd, sampled)
        started, partial = [], {}
        for c in sampled:
            down = len(blobs[c] or b"")
            steps = self.s.local_steps
            if hybrid.partial_work:
                # Sized by the upload this client sent last time (its download's size before that).
                steps = self.network.steps_that_fit(c, hybrid.deadline, down, self.last_up.get(c, down), steps)
            self.progress.client_start(rnd, c, steps)
            up_blob, metrics = self.clients[c].handle(rnd, blobs[c], on_step=self.progress.step, steps=steps)
            self.last_up[c] = len(up_blob or b"")
            if metrics["steps"] < self.s.local_steps:  # what the client reports, as on Flower
                partial[str(c)] = metrics["steps"]
            trip = self.network.round_trip(c, down, metrics["steps"], self.last_up[c])
            started.append(InFlight(self.clock + trip, rnd, c, up_blob, metrics))
        self.in_flight += started
        close = close_time(self.clock, [f.arrival for f in started],
                           [f.arrival for f in self.in_flight if f.origin < rnd], hybrid)
        arrived = sorted((f for f in self.in_flight if f.arrival <= close), key=lambda f: (f.arrival, f.client))
        self.in_flight = [f for f in self.in_flight if f.arrival > close]
        dropped = []
        for f in arrived:
            staleness = rnd - f.origin
            if staleness > hybrid.max_staleness:
                # Too old to help; its bytes crossed the wire all the same.
                log.warning("round %d: dropped client %d's update from round %d (staleness %d > %d)",
                            rnd, f.client, f.origin, staleness, hybrid.max_staleness)
                dropped.append(f.client)
                self.server.count_dropped(rnd, f.client, f.blob, f.metrics)
                continue
            self.server.receive(rnd, f.client, f.blob, f.metrics, staleness)
        record = self.server.finish_round(rnd, sampled, self.client_states, time.perf_counter() - t0)
        record["sim_seconds"] = close - self.clock
        record["late"] = [f.client for f in self.in_flight]
        record["stale"] = {str(f.client): rnd - f.origin for f in arrived if f.origin < rnd and f.client not in dropped}
        if dropped:
            record["dropped"] = dropped
        if hybrid.partial_work:
            record["partial"] = partial  # client -> local steps it had time for
        self.clock = close
        return record

    def run(self, until: int | None = None) -> dict | None:
        rounds = self.s.cfg.train.rounds
        last = min(rounds, until) if until else rounds
        if self.done == 0 and self.base_eval is None:
            evals, ood = self.s.evaluate_all(self.client_states)
            self.base_eval = {"eval_loss": sum(evals.values()) / len(evals), "eval": evals, "ood_eval_loss": ood}
            self.progress.log(f"before training: eval loss {self.base_eval['eval_loss']:.4f}")
        self.progress.start(rounds, self.done, self.s.local_steps)
        try:
            for rnd in range(self.done + 1, last + 1):
                record = self.run_round(rnd)
                self.elapsed += record["seconds"]
                self.done = rnd
                rundir.append_round(self.out, record)
                self.save()
                self.progress.round_end(record)
        finally:
            self.progress.stop()
        if self.done < rounds:
            return None
        return finish(self.s, self.out, self.client_states, self.done, self.elapsed, self.base_eval)

    def save(self) -> None:
        state = prefixed("server/", self.server.state_dict())
        for i, c in enumerate(self.clients):
            state.update(prefixed(f"client/{i}/", c.state_dict()))
        flights = []
        for i, f in enumerate(self.in_flight):
            if f.blob is not None:
                state[f"inflight/{i}"] = torch.from_numpy(np.frombuffer(f.blob, dtype=np.uint8).copy())
            flights.append({"arrival": f.arrival, "origin": f.origin, "client": f.client, "metrics": f.metrics,
                            "has_blob": f.blob is not None})
        meta = {"round": self.done, "seconds": self.elapsed, "clock": self.clock, "in_flight": flights,
                "base_eval": self.base_eval, "last_up": {str(c): n for c, n in self.last_up.items()},
                "placement": self.server.recorded_placement}
        save_checkpoint(self.out, state, meta)

    def restore(self) -> None:
        state, meta = load_checkpoint(self.out)
        self.server.load_state_dict(unprefixed("server/", state))
        for i, c in enumerate(self.clients):
            c.load_state_dict(unprefixed(f"client/{i}/", state))
        self.done = meta["round"]
        self.elapsed = meta["seconds"]
        self.clock = meta.get("clock", 0.0)
        self.base_eval = meta.get("base_eval")
        self.server.recorded_placement = meta.get("placement")
        self.last_up = {int(c): n for c, n in meta.get("last_up", {}).items()}
        self.in_flight = [InFlight(f["arrival"], f["origin"], f["client"],
                                   state[f"inflight/{i}"].numpy().tobytes() if f["has_blob"] else None, f["metrics"])
                          for i, f in enumerate(meta.get("in_flight", []))]
        rundir.truncate_rounds(self.out, self.done)


def finish(s: Session, out: Path, client_states, rounds_done: int, elapsed: float,
           base_eval: dict | None = None) -> dict:
    """Writes adapter/ (and adapters/<client>/ for personalized methods) and summary.json."""
    rows = rundir.read_rounds(out)
    s.adapter.set(s.final_adapter(client_states))
    s.model.save_pretrained(str(out / "adapter"))
    if s.method.personalized:
        for i, name in enumerate(s.federation.eval_sets):
            s.adapter.set(s.method.eval_adapter(i, client_states[i]))
            s.model.save_pretrained(str(out / "adapters" / name))
    last_eval = next(r for r in reversed(rows) if "eval_loss" in r)
    up = sum(r["bytes_up"] for r in rows)
    down = sum(r["bytes_down"] for r in rows)
    summary = {
        "method": s.cfg.method,
        "rounds": rounds_done,
        "bytes_up": up,
        "bytes_down": down,
        "bytes_total": up + down,
        "final_eval_loss": last_eval["eval_loss"],
        "eval": last_eval["eval"],
        "seconds": elapsed,
        "sim_seconds": sum(r.get("sim_seconds", 0.0) for r in rows),
        "uplink_codec": s.uplink_spec,
        "downlink_codec": s.downlink_spec,
        "clients": s.num_clients,
        "adapter_params": s.adapter.layout.numel,
        "device": str(s.placement.device),
        "precision": s.placement.precision,
    }
    peak = merge_peaks(*rows)
    if peak:
        summary.update(peak)
    if "ood_eval_loss" in last_eval:
        summary["ood_eval_loss"] = last_eval["ood_eval_loss"]
    if base_eval is not None:
        summary["base_eval_loss"] = base_eval["eval_loss"]
        if base_eval.get("ood_eval_loss") is not None:
            summary["base_ood_eval_loss"] = base_eval["ood_eval_loss"]
    rundir.write_summary(out, summary)
    return summary
