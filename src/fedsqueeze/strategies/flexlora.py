"""FlexLoRA: average the clients' full-rank products, W = sum_i w_i B_i A_i, and split its rank-r
truncated SVD back into B = U_r S_r^(1/2), A = S_r^(1/2) V_r^T; the new adapter is broadcast dense.

Clients upload their delta (dense; as many bytes as the full adapter) and the server rebuilds
B_i = B0 + dB_i, A_i = A0 + dA_i. The SVD goes through the stacked factors (QR + an (m r) x (m r)
core, see lora_math.truncated_svd_factored), never a d_out x d_in matrix."""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import lora_math as lm
from .base import ClientUpdate, Method, MethodContext
from .mixins import CentralDP, MessageSizes
from .sizes import MessageSize, SizingContext


class FlexLoRA(CentralDP, MessageSizes, Method):
    name = "flexlora"

    @classmethod
    def message_sizes(cls, params, at: SizingContext) -> list[MessageSize]:
        """As many bytes as the whole adapter each way."""
        dense = at.blob("fp32", at.ones())
        return [MessageSize("flexlora", dense, dense, "dense delta up, SVD-truncated adapter down")]

    def __init__(self, params, ctx: MethodContext):
        super().__init__(params, ctx)
        self.pairs = lm.lora_pairs(ctx.layout.names)

    def aggregate(self, rnd: int, updates: list[ClientUpdate]) -> dict:
        if not updates:
            return {}
        weights = lm.normalized(self.weights(updates))

        def target(pair):
            b0, a0 = self.adapter[pair.b], self.adapter[pair.a]
            bs = [b0 + u.tensors[pair.b].to(b0.dtype) for u in updates]
            as_ = [a0 + u.tensors[pair.a].to(a0.dtype) for u in updates]
            return lm.stacked_factors(bs, as_, weights)

        return self._split(target)

    def _split(self, target: Callable[[lm.LoraPair], tuple[torch.Tensor, torch.Tensor]]) -> dict:
        """The new adapter: the balanced rank-r SVD factors of each layer's target L @ R."""
        new = {}
        for pair in self.pairs:
            b0, a0 = self.adapter[pair.b], self.adapter[pair.a]
            b, a = lm.balanced_factors(*lm.truncated_svd_factored(*target(pair), rank=a0.shape[0]))
            new[pair.b], new[pair.a] = b.to(b0.dtype), a.to(a0.dtype)
        self.adapter = {k: new[k] for k in self.ctx.layout.names}
        return {}

    # Central DP: a client's contribution is its layer changes B_i A_i - B0 A0 (dense, Frobenius
    # norm clipped); the new W is B0 A0 + their noised mean, split like any other.
    def dp_contribution(self, update: ClientUpdate):
        out = {}
        for pair in self.pairs:
            b0, a0 = self.adapter[pair.b], self.adapter[pair.a]
            b, a = b0 + update.tensors[pair.b].to(b0.dtype), a0 + update.tensors[pair.a].to(a0.dtype)
            out[pair.prefix + lm.PRODUCT_SUFFIX] = lm.product_delta(b0, a0, b, a)
        return out

    def dp_aggregate(self, rnd: int, mean, updates) -> dict:
        def target(pair):
            return lm.plus_dense(self.adapter[pair.b], self.adapter[pair.a], mean[pair.prefix + lm.PRODUCT_SUFFIX])

        return self._split(target)
