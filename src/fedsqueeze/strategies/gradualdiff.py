"""GradualDiff-Fed (FedDelta): only weight deltas travel, both ways.

Up: each client sends ΔW = local - global through a sparsify + quantize chain with error feedback
(the default uplink codec below). Down: the server sends each client the difference between the
current global adapter and the copy that client holds — the aggregated delta of the round for a
client that was there last round, the sum of the deltas it missed for one that was not (one
message, never the history). The server learns exactly what each client decoded (`delivered`),
so a lossy downlink never lets the copies drift: what was lost is in the next difference.
When the dense adapter is smaller on the wire than the difference (a client that missed many
rounds), that is sent instead; the ledger counts whichever was sent.

Late updates from the hybrid mode are folded in with the staleness weight of Method.weights.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..tensors import Tensors, clone, nested, prefixed, unnested, unprefixed
from .base import ClientUpdate, Message, Method, NoParams


class GradualDiffParams(NoParams):
    full_above: float = Field(0.875, gt=0, le=1)
    """Send the whole adapter instead of a difference denser than this. With bitmap positions a
    difference of density d costs about d + 1/8 value-bytes against 1 for the dense adapter, so
    7/8 is where the dense message becomes the cheaper one; 1 never sends it."""


class GradualDiff(Method):
    name = "gradualdiff"
    Params = GradualDiffParams
    # Half the delta: with a small fraction most of each round's update waits in the error-feedback
    # memory, a delay that costs eval loss within 10 rounds (BENCHMARKS, "GradualDiff's uplink fraction").
    default_uplink = "topk(fraction=0.5) > quantize(bits=8) > zstd"
    default_downlink = "sparse > quantize(bits=8) > zstd"
    default_error_feedback = True

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.views: dict[int, Tensors] = {}  # client -> the adapter it holds, while attached

    def _view(self, client: int) -> Tensors:
        return self.views.get(client, self.ctx.init_adapter)

    # ---- server ---------------------------------------------------------------------------------
    def broadcast(self, rnd: int, client: int) -> Message:
        view = self._view(client)
        diff = {k: self.adapter[k] - view[k] for k in self.adapter if not torch.equal(self.adapter[k], view[k])}
        if diff:
            nnz = sum(int(torch.count_nonzero(v)) for v in diff.values())
            if nnz > self.params.full_above * self.ctx.layout.numel:
                return Message(self.adapter, whole=True)  # the adapter itself, not a difference
        return Message(diff)

    def delivered(self, rnd: int, client: int, received: Tensors) -> None:
        self.views[client] = _apply(self._view(client), received)

    # A view is a whole adapter: it waits in the state store while its client is not being sent to.
    def attach_client(self, client: int, state: Tensors) -> None:
        if state:
            self.views[client] = state

    def detach_client(self, client: int) -> Tensors:
        return self.views.pop(client, {})

    def aggregate(self, rnd: int, updates: list[ClientUpdate]) -> dict:
        if not updates:
            return {}
        weights = self.weights(updates)
        for k in updates[0].tensors:
            self.adapter[k] = self.adapter[k] + sum(w * u.tensors[k] for w, u in zip(weights, updates))
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), **nested("view/", self.views)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.views = {c: clone(view) for c, view in unnested("view/", state).items()}

    # ---- client ---------------------------------------------------------------------------------
    def client_receive(self, state: Tensors, message: Tensors) -> Tensors:
        known = unprefixed("global/", state)
        held = _apply({k: known.get(k, v) for k, v in self.ctx.init_adapter.items()}, message)
        state.update(prefixed("global/", held))
        return clone(held)


def _apply(held: Tensors, message: Tensors) -> Tensors:
    if getattr(message, "whole", False):
        return {k: message[k].clone() if k in message else v for k, v in held.items()}
    return {k: held[k] + message[k] if k in message else held[k] for k in held}
