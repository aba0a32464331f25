"""GradualDiff-Fed (FedDelta): only weight deltas travel, both ways.

Up: each client sends ΔW = local - global through a sparsify + quantize chain with error feedback
(the default uplink codec below). Down: the server sends each client the difference between the
current global adapter and the copy that client holds — the aggregated delta of the round for a
client that was there last round, the sum of the deltas it missed for one that was not (one
message, never the history). The server learns exactly what each client decoded (`delivered`),
so a lossy downlink never lets the copies drift: what was lost is in the next difference.
When the dense adapter is smaller on the wire than the difference (a client that missed many
rounds), that is sent instead; the ledger counts whichever was sent.

What the server keeps per client is small where it can be. A client whose copy equals the
global adapter of some round (always so over a lossless downlink) is kept as that round's number,
beside one shared snapshot of the adapter per such round, for at most `view_horizon` rounds: past
that its copy is forgotten and it gets the whole adapter (about what a difference that old costs:
BENCHMARKS, "GradualDiff's per-client views"). Memory for 1,000 clients is then that of a few
adapters. Only a copy that a lossy downlink made differ from every global adapter is kept whole,
in the run's state store (attach_client / detach_client), not in memory.

Late updates from the hybrid mode are folded in with the staleness weight of Method.weights.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..tensors import Tensors, clone, nested, prefixed, unnested, unprefixed
from .base import ClientTurn, ClientUpdate, Message, Method, NoParams
from .mixins import MeanOfDeltas


class GradualDiffParams(NoParams):
    full_above: float = Field(0.875, gt=0, le=1)
    """Send the whole adapter instead of a difference denser than this. With bitmap positions a
    difference of density d costs about d + 1/8 value-bytes against 1 for the dense adapter, so
    7/8 is where the dense message becomes the cheaper one; 1 never sends it."""
    view_horizon: int = Field(16, ge=1)
    """Rounds a global adapter snapshot is kept for the clients that hold it; a client whose copy
    is older gets the whole adapter."""


class GradualDiff(MeanOfDeltas, Method):
    name = "gradualdiff"
    Params = GradualDiffParams
    params: GradualDiffParams
    # Half the delta: with a small fraction most of each round's update waits in the error-feedback
    # memory, a delay that costs eval loss within 10 rounds (BENCHMARKS, "GradualDiff's uplink fraction").
    default_uplink = "topk(fraction=0.5) > quantize(bits=8) > zstd"
    default_downlink = "sparse > quantize(bits=8) > zstd"
    default_error_feedback = True

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.views: dict[int, Tensors] = {}  # client -> the adapter it holds, while attached (lossy links)
        self.synced: dict[int, int] = {}  # client -> the round whose global adapter it holds exactly
        # (a client whose round has no snapshot any more is past the horizon)
        self.snapshots: dict[int, Tensors] = {}  # round -> the global adapter sent in it, while held

    def _view(self, client: int) -> Tensors | None:
        """The adapter `client` holds; None: older than view_horizon, forgotten."""
        if client in self.views:
            return self.views[client]
        if client in self.synced:
            return self.snapshots.get(self.synced[client])
        return self.ctx.init_adapter

    # ---- server ---------------------------------------------------------------------------------
    def broadcast(self, rnd: int, client: int) -> Message:
        view = self._view(client)
        if view is None:
            return Message(self.adapter, whole=True)
        diff = {k: self.adapter[k] - view[k] for k in self.adapter if not torch.equal(self.adapter[k], view[k])}
        if diff:
            nnz = sum(int(torch.count_nonzero(v)) for v in diff.values())
            if nnz > self.params.full_above * self.ctx.layout.numel:
                return Message(self.adapter, whole=True)  # the adapter itself, not a difference
        return Message(diff)

    def delivered(self, rnd: int, client: int, received: Message) -> None:
        held = _apply(self._view(client) or self.adapter, received)
        if all(torch.equal(held[k], v) for k, v in self.adapter.items()):
            self.views.pop(client, None)
            self.synced[client] = rnd
            # Aggregation replaces tensors, never writes into them: a shallow copy is the snapshot.
            self.snapshots.setdefault(rnd, dict(self.adapter))
        else:
            self.views[client] = held
            self.synced.pop(client, None)

    # A view is a whole adapter: it waits in the state store while its client is not being sent to.
    def attach_client(self, client: int, state: Tensors) -> None:
        if state:
            self.views[client] = state

    def detach_client(self, client: int) -> Tensors:
        return self.views.pop(client, {})

    def aggregate(self, rnd: int, updates: list[ClientUpdate]) -> dict:
        self._forget(rnd)
        if not updates:
            return {}
        weights = self.weights(updates)
        for k in updates[0].tensors:
            self.adapter[k] = self.adapter[k] + sum(w * u.tensors[k] for w, u in zip(weights, updates))
        return {}

    def dp_aggregate(self, rnd: int, mean: Tensors, updates: list[ClientUpdate]) -> dict:
        self._forget(rnd)
        return super().dp_aggregate(rnd, mean, updates)

    def _forget(self, rnd: int) -> None:
        """Snapshots past the horizon, or that no client holds any more (the clients that hold an
        old one keep its round number: their next message is the whole adapter)."""
        oldest = rnd - self.params.view_horizon + 1
        held = set(self.synced.values())
        self.snapshots = {r: a for r, a in self.snapshots.items() if r in held and r >= oldest}

    def state_dict(self) -> dict[str, torch.Tensor]:
        synced = torch.tensor(sorted(self.synced.items()), dtype=torch.int64).reshape(-1, 2)
        return {
            **super().state_dict(),
            **nested("view/", self.views),
            **nested("snapshot/", self.snapshots),
            "synced": synced,
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.views = {c: clone(view) for c, view in unnested("view/", state).items()}
        self.snapshots = {r: clone(a) for r, a in unnested("snapshot/", state).items()}
        self.synced = {int(c): int(r) for c, r in state["synced"].tolist()} if "synced" in state else {}

    # ---- client ---------------------------------------------------------------------------------
    def client_receive(self, state: Tensors, message: Message | None, turn: ClientTurn | None = None) -> Tensors:
        known = unprefixed("global/", state)
        held = _apply({k: known.get(k, v) for k, v in self.ctx.init_adapter.items()}, message)
        state.update(prefixed("global/", held))
        return clone(held)


def _apply(held: Tensors, message: Message | None) -> Tensors:
    if message is None:
        return held
    if message.whole:
        return {k: message[k].clone() if k in message else v for k, v in held.items()}
    return {k: held[k] + message[k] if k in message else held[k] for k in held}
