"""In-process simulation: every client in one process, one base model, adapters swapped.

Every message is encoded to bytes and decoded on the other side, exactly as over a network;
the ledger counts len() of each blob. Only wiring here: the round logic is in roles.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import rundir
from .checkpoint import load_checkpoint, prefixed, save_checkpoint, unprefixed
from .roles import ClientRole, ServerRole
from .session import Session


class NullProgress:
    def start(self, total_rounds: int, done: int, steps: int) -> None: ...
    def round_start(self, rnd: int, clients: list[int]) -> None: ...
    def client_start(self, rnd: int, client: int) -> None: ...
    def step(self, loss: float) -> None: ...
    def round_end(self, record: dict) -> None: ...
    def stop(self) -> None: ...


class LocalRuntime:
    def __init__(self, session: Session, out: Path, progress=None):
        self.s = session
        self.out = out
        self.progress = progress or NullProgress()
        self.server = ServerRole(session)
        self.clients = [ClientRole(session, c) for c in range(session.num_clients)]
        self.done = 0
        self.elapsed = 0.0

    @property
    def client_states(self):
        return [c.state for c in self.clients]

    def run_round(self, rnd: int) -> dict:
        t0 = time.perf_counter()
        sampled = self.s.sample_clients(rnd)
        self.progress.round_start(rnd, sampled)
        blobs = self.server.broadcast(rnd, sampled)
        for c in sampled:
            self.progress.client_start(rnd, c)
            up_blob, metrics = self.clients[c].handle(rnd, blobs[c], on_step=self.progress.step)
            self.server.receive(rnd, c, up_blob, metrics)
        return self.server.finish_round(rnd, sampled, self.client_states, time.perf_counter() - t0)

    def run(self, until: int | None = None) -> dict | None:
        rounds = self.s.cfg.train.rounds
        last = min(rounds, until) if until else rounds
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
        return finish(self.s, self.out, self.client_states, self.done, self.elapsed)

    def save(self) -> None:
        state = prefixed("server/", self.server.state_dict())
        for i, c in enumerate(self.clients):
            state.update(prefixed(f"client/{i}/", c.state_dict()))
        save_checkpoint(self.out, state, {"round": self.done, "seconds": self.elapsed})

    def restore(self) -> None:
        state, meta = load_checkpoint(self.out)
        self.server.load_state_dict(unprefixed("server/", state))
        for i, c in enumerate(self.clients):
            c.load_state_dict(unprefixed(f"client/{i}/", state))
        self.done = meta["round"]
        self.elapsed = meta["seconds"]
        rundir.truncate_rounds(self.out, self.done)


def finish(s: Session, out: Path, client_states, rounds_done: int, elapsed: float) -> dict:
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
        "uplink_codec": s.uplink_spec,
        "downlink_codec": s.downlink_spec,
        "clients": s.num_clients,
        "adapter_params": s.adapter.layout.numel,
    }
    if "ood_eval_loss" in last_eval:
        summary["ood_eval_loss"] = last_eval["ood_eval_loss"]
    rundir.write_summary(out, summary)
    return summary
