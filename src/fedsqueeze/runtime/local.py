"""In-process simulation: every client in one process, one base model, adapters swapped.

Every message is encoded to bytes and decoded on the other side, exactly as over a network; the
ledger counts len() of each blob. A client trains as soon as its blob is delivered; its upload
reaches the server at the simulated time its round trip (NetworkModel) ends, and the round closes
when the driver's rule says, on that clock. Only moving blobs here: the round is driver.py's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..tensors import Tensors, unnested, unprefixed
from .clock import NetworkModel
from .driver import Driver
from .filters.faults import ClientDropped
from .reply import Reply, Upload
from .roles import ClientRole
from .session import Session
from .state_store import STATE_DIR, StateStore


@dataclass
class InFlight:
    """A client's upload on its way: it reaches the server at simulated time `arrival`."""

    arrival: float
    origin: int  # the round it was trained in
    client: int
    reply: Reply


class StoredStates(Sequence[Tensors]):
    """Every client's method state, read from the store on demand (evaluation of personalized
    adapters; {} for a client that never took part)."""

    def __init__(self, store: StateStore, count: int):
        self.store, self.size = store, count

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, client: int) -> Tensors:  # type: ignore[override]  # no slices
        if not 0 <= client < self.size:
            raise IndexError(client)
        return unprefixed("state/", self.store.get(client))


class InProcessTransport:
    """store: each client's state (ClientRole.state_dict), read when it is sampled, put back after,
    as a Flower SuperNode keeps it in context.state."""

    remote = False
    simulated = True
    patience = math.inf
    rides_eval = True  # a client may judge what it received before training (eval.ride)

    def __init__(self, session: Session, store: StateStore):
        self.s = session
        self.store = store
        self.network = NetworkModel(session.cfg.network, session.num_clients, session.cfg.seed)
        self.clock = 0.0  # simulated seconds
        self.flights: list[InFlight] = []
        self.last_up: dict[int, int] = {}  # client -> bytes of its last upload (sizes partial work)

    def start(self) -> None: ...

    def reachable(self, clients: list[int]) -> list[int]:
        return clients

    def in_flight(self) -> dict[int, int]:
        return {f.client: f.origin for f in self.flights}

    def client_states(self) -> Sequence[Tensors]:
        return StoredStates(self.store, self.s.num_clients)

    def _handle(self, rnd: int, client: int, blob: bytes | None, progress, steps: int, judge: bool):
        role = ClientRole(self.s, client)
        role.load_state_dict(self.store.get(client))
        try:
            return role.handle(rnd, blob, on_step=progress.step, steps=steps, judge=judge)
        finally:  # also when a fault drops the reply: the client did train
            state = role.state_dict()
            if state or client in self.store:
                self.store.put(client, state)

    def now(self) -> float:
        return self.clock

    def send(
        self,
        rnd: int,
        blobs: dict[int, bytes | None],
        work_seconds: float | None,
        progress,
        judge: frozenset[int] = frozenset(),
    ) -> None:
        """Each client trains as soon as its blob is delivered (those in `judge` first score it);
        its reply is in flight until the simulated time its round trip ends."""
        for c, blob in blobs.items():
            down = len(blob or b"")
            steps = self.s.local_steps
            if work_seconds is not None:
                # Sized by the upload this client sent last time (its download's size before that).
                steps = self.network.steps_that_fit(c, work_seconds, down, self.last_up.get(c, down), steps)
            progress.client_start(rnd, c, steps)
            try:
                reply = self._handle(rnd, c, blob, progress, steps, c in judge)
            except ClientDropped:
                continue  # no reply will ever come: the driver counts it left out
            self.last_up[c] = len(reply.blob or b"")
            trip = self.network.round_trip(c, down, reply.steps, self.last_up[c]) + reply.delay_s
            if math.isfinite(trip):
                self.flights.append(InFlight(self.clock + trip, rnd, c, replace(reply, delay_s=0.0)))

    def poll(self, until: float) -> list[Upload]:
        """The next replies to arrive, all of those at that instant, if it is by `until`; the
        simulated clock moves to it (to `until` when none arrives by then)."""
        if not self.flights:
            return []
        first = min(f.arrival for f in self.flights)
        if first > until:
            self.clock = max(self.clock, until)
            return []
        self.clock = max(self.clock, first)
        arrived = sorted((f for f in self.flights if f.arrival <= self.clock), key=lambda f: (f.arrival, f.client))
        self.flights = [f for f in self.flights if f.arrival > self.clock]
        return [Upload(f.client, f.origin, f.reply) for f in arrived]

    def abandon(self, client: int) -> None:
        self.flights = [f for f in self.flights if f.client != client]

    def state_dict(self) -> tuple[Tensors, dict]:
        state: Tensors = {}
        flights = []
        for i, f in enumerate(self.flights):
            if f.reply.blob is not None:
                state[f"inflight/{i}"] = torch.from_numpy(np.frombuffer(f.reply.blob, dtype=np.uint8).copy())
            flights.append(
                {
                    "arrival": f.arrival,
                    "origin": f.origin,
                    "client": f.client,
                    "metrics": f.reply.fields(),
                    "has_blob": f.reply.blob is not None,
                }
            )
        meta = {
            "clock": self.clock,
            "in_flight": flights,
            "last_up": {str(c): n for c, n in self.last_up.items()},
            "client_store": self.store.flush(),
        }
        return state, meta

    def committed(self) -> None:
        self.store.prune()

    def load_state_dict(self, state: Tensors, meta: dict) -> None:
        self.store.load(meta.get("client_store", {}))
        for c, old in unnested("client/", state).items():  # a checkpoint from before the store
            self.store.put(c, old)
        self.clock = meta.get("clock", 0.0)
        self.last_up = {int(c): n for c, n in meta.get("last_up", {}).items()}
        in_flight = meta.get("in_flight", [])
        self.flights = [
            InFlight(
                f["arrival"],
                f["origin"],
                f["client"],
                Reply.of_fields(
                    state[f"inflight/{i}"].numpy().tobytes() if f["has_blob"] else None, _legacy(f["metrics"])
                ),
            )
            for i, f in enumerate(in_flight if isinstance(in_flight, list) else [])
        ]


def _legacy(fields: dict) -> dict:
    """Checkpoints from before the typed Reply wrote a withheld train loss as NaN."""
    loss = fields.get("train_loss")
    if isinstance(loss, float) and math.isnan(loss):
        return {k: v for k, v in fields.items() if k != "train_loss"}
    return fields


def LocalRuntime(session: Session, out: Path, progress=None) -> Driver:
    """The in-process runtime: the driver over an InProcessTransport."""
    return Driver(session, InProcessTransport(session, client_store(session, out)), out, progress)


def client_store(session: Session, out: Path) -> StateStore:
    """The clients' half of the state cache (the server's store has the other half)."""
    return StateStore(out / STATE_DIR / "clients", session.cfg.runtime.state_cache_mb / 2)
