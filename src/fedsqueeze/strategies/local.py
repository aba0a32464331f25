"""Non-federated references: each client alone (`local`), or all data pooled (`centralized`).

Nothing crosses the wire. The client's adapter lives in its own state across rounds, and the
optimizer restarts each round exactly as in the federated methods, so `centralized` with one
client equals `fedavg` with one client step for step.
"""

from __future__ import annotations

from ..tensors import Tensors
from .base import ClientTurn, ClientUpdate, Message, Method, RunMode


class Local(Method):
    name = "local"
    mode = RunMode(personalized=True)

    def broadcast(self, rnd: int, client: int) -> None:
        return None

    def client_receive(self, state: Tensors, message: Message | None, turn: ClientTurn | None = None) -> Tensors:
        return {k: state.get(f"adapter/{k}", v) for k, v in self.ctx.init_adapter.items()}

    def client_upload(self, state: Tensors, start: Tensors, trained: Tensors, turn: ClientTurn | None = None) -> None:
        for k, v in trained.items():
            state[f"adapter/{k}"] = v.detach().clone()
        return None

    def aggregate(self, rnd: int, updates: list[ClientUpdate]) -> dict:
        return {}

    def eval_adapter(self, client: int, state: Tensors) -> Tensors:
        return self.client_receive(state, None)


class Centralized(Local):
    """One pooled 'client' holding everyone's data, trained for the same total optimizer steps.
    The runtime evaluates (and saves) that client's adapter for every eval set."""

    name = "centralized"
    mode = RunMode(pooled=True)

    def final_adapter(self, client_states: list[Tensors]) -> Tensors:
        return self.eval_adapter(0, client_states[0])
