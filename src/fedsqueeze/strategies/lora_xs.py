"""LoRA-XS in a federation (Balazy et al., arXiv 2405.17604): a data-free fixed basis, an r x r core.

Each LoRA layer adds s B R A x (s = peft's alpha / rank). B and A come from the truncated SVD of the
layer's frozen base weight W = U S V^T, computed by every party from the model it loaded
(models/basis.py, declared through AdapterSpec.basis): B = U_r, A = S_r V_r^T as in the reference
code (`basis = "orthonormal"`: A = V_r^T). Nothing travels for them, not even once: unlike Fed-SB's
warm-up, round 1 already sends r^2 values per layer each way and nothing else. R starts at 0 (the
reference draws it from N(0, 1e-5^2); with B and A fixed and non-zero the gradient of R is non-zero
at 0, so nothing needs breaking, and 0 starts the federation exactly at the base model, which every
party then holds without a message).

Aggregation is exact, as in Fed-SB: every client trains its R_i against the same B and A, so
sum_i w_i B R_i A = B (sum_i w_i R_i) A. Clients upload dR_i = R_i - R (r x r per layer); the server
adds D = sum_i w_i dR_i to R and broadcasts D, which clients add to the R they hold. A client the
server cannot vouch for (it skipped a round, joined late) gets R itself as a whole message instead
(FedSRD's catch-up rule: exact, no history kept).

k-bit cores. Uploads: any lossy uplink (e.g. uplink.codec = "quantize(bits=4, rounding=stochastic)"
with uplink.error_feedback = true: each client keeps what its codec lost and adds it to its next dR).
Broadcast: `download_bits = k` rounds D to the nearest point of a k-bit power-of-two grid per tensor
(codecs/grid.py's snap) before the server applies it, so clients stay bit-identical while a value costs
k bits on the lossless `grid(bits=k)` downlink; the rounding error is kept on the server and added to
the next round's D (error feedback on the broadcast: the server knows exactly what it sent), so no
part of the clients' mean is ever lost, only delayed.

Saved adapters fold R into B (B' = B R, A = S_r V_r^T): a standard peft LoRA of rank r.
Central DP: the contribution is dR_i, the aggregate global R += the noised mean (MeanOfDeltas'
shape); the basis is public (it is the model's), so nothing else leaves a client.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..codecs.grid import snap
from ..errors import ConfigError
from ..tensors import Tensors, clone, prefixed, unprefixed
from .base import AdapterSpec, ClientTurn, ClientUpdate, Message, Method, MethodContext
from .lora_math import A_SUFFIX, B_SUFFIX, R_SUFFIX
from .mixins import CentralDP, MessageSizes
from .sizes import MessageSize, SizingContext

HELD = "lora_xs/R/"
"""Client state: the R it holds (the global R as of the last message it got)."""
BASES = {"scaled": "svd", "orthonormal": "svd-orthonormal"}


class LoraXSParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int | None = Field(None, ge=1, le=1024, description="r of the r x r core R (None: lora.r)")
    alpha: float | None = Field(
        None,
        gt=0,
        description="peft alpha, s = alpha / rank (None: lora.alpha * rank / lora.r, so s = lora.alpha / lora.r)",
    )
    basis: Literal["scaled", "orthonormal"] = Field(
        "scaled", description="scaled: A = S_r V_r^T (LoRA-XS); orthonormal: A = V_r^T (Fed-SB's factors)"
    )
    download_bits: int | None = Field(
        None, ge=2, le=8, description="broadcast D on a k-bit grid per tensor, rounding error fed back (None: fp32)"
    )


class LoraXS(CentralDP, MessageSizes, Method):
    name = "lora-xs"
    Params = LoraXSParams
    params: LoraXSParams
    lossless_downlink = True

    @classmethod
    def adapter_spec(cls, params: LoraXSParams, lora_r: int, lora_alpha: float) -> AdapterSpec:  # type: ignore[override]
        rank = params.rank or lora_r
        alpha = params.alpha if params.alpha is not None else lora_alpha * rank / lora_r
        return AdapterSpec(rank, alpha, core=True, basis=BASES[params.basis])

    @classmethod
    def message_sizes(cls, params: LoraXSParams, at: SizingContext) -> list[MessageSize]:
        """R alone each way from round 1 (B and A from the base weights' SVD, never sent), in fp32
        and with k-bit cores (uploads quantize(bits=k, rounding=stochastic), broadcast grid(bits=k))."""
        spec = cls.adapter_spec(params, at.lora_r, at.lora_alpha)
        layout = at.layout_at(spec.rank, spec.core)
        cores = at.ending(R_SUFFIX, layout)
        values = sum(t.numel() for t in cores.values())
        rows = []
        for bits in (None, 8, 4):
            up = "fp32" if bits is None else f"quantize(bits={bits}, rounding=stochastic)"
            down = "fp32" if bits is None else f"grid(bits={bits})"
            label = f"lora-xs (rank {spec.rank})" + ("" if bits is None else f", {bits}-bit cores")
            note = f"R only ({values:,} values), from round 1; B, A from the base weights' SVD, never sent"
            note += "" if bits is None else f"; up {up}, down {down}"
            on_grid = cores if bits is None else {n: snap(t * 0.5, bits) for n, t in cores.items()}
            rows.append(MessageSize(label, at.blob(up, cores, layout), at.blob(down, on_grid, layout), note))
        return rows

    @property
    def default_downlink(self) -> str:  # type: ignore[override]
        bits = self.params.download_bits
        return "fp32" if bits is None else f"grid(bits={bits})"

    def __init__(self, params: LoraXSParams, ctx: MethodContext):
        super().__init__(params, ctx)
        self.cores = _cores(ctx.layout.names)
        shapes = dict(zip(ctx.layout.names, ctx.layout.shapes))
        self.rank = shapes[self.cores[0]][0]
        narrowest = min(shapes[n][0] if n.endswith(B_SUFFIX) else shapes[n][1] for n in lm_factors(shapes))
        if self.rank > narrowest:
            raise ConfigError(
                f"config key 'params.rank': {self.rank} is more than the narrowest LoRA layer's dimension "
                f"({narrowest}): its base weight has fewer singular vectors; use at most {narrowest}"
            )
        self.residual: Tensors = {}
        """download_bits: what the grid rounding left out of the broadcasts so far (added to the next)."""
        self.last_delta: Tensors = {}
        self.version = 0
        """Aggregations applied so far; the global R is version `version`."""
        self.held: dict[int, int] = {}
        """client -> version its state is known to hold (from its last upload)."""
        self.sent: dict[int, int] = {}
        """client -> version its state holds if our last message reached it."""

    # ---- what trains and travels ----------------------------------------------------------------
    def trainable(self, name: str) -> bool:
        return name.endswith(R_SUFFIX)

    # ---- messages ------------------------------------------------------------------------------
    def broadcast(self, rnd: int, client: int) -> Message | None:
        """None (it holds the global R), D (it holds the one before), or R itself as a whole message."""
        held, sent = self.held.get(client, 0), self.sent.get(client, 0)
        self.sent[client] = self.version
        if held == sent == self.version:
            return None
        if held == sent == self.version - 1:
            return Message(self.last_delta)
        return Message({r: self.adapter[r] for r in self.cores}, whole=True)

    def client_receive(self, state: Tensors, message: Message | None, turn: ClientTurn | None = None) -> Tensors:
        init = self.ctx.init_adapter
        held = {r: state.get(HELD + r, init[r]) for r in self.cores}
        if message is not None:
            values = {k: v.to(init[k].dtype) for k, v in message.items()}
            if message.whole:
                held = values
            else:
                held = {r: held[r] + values[r] if r in values else held[r] for r in self.cores}
        for r, v in held.items():
            state[HELD + r] = v
        return {**init, **held}

    def client_upload(
        self, state: Tensors, start: Tensors, trained: Tensors, turn: ClientTurn | None = None
    ) -> Tensors:
        return {r: trained[r] - start[r] for r in self.cores}

    # ---- server --------------------------------------------------------------------------------
    def aggregate(self, rnd: int, updates: list[ClientUpdate]) -> dict:
        if not updates:
            return {}
        weights = self.weights(updates)  # deltas: a lone stale update counts less
        mean: Tensors = {}
        for r in self.cores:
            total = torch.zeros_like(self.adapter[r])
            for w, u in zip(weights, updates):
                total = total + w * u.tensors[r].to(total.dtype)
            mean[r] = total
        return self._apply(mean, updates)

    def _apply(self, mean: Tensors, updates: list[ClientUpdate]) -> dict:
        """R += D, D = mean (+ the fed-back rounding error, on the k-bit grid when download_bits)."""
        bits = self.params.download_bits
        delta: Tensors = {}
        for r in self.cores:
            target = mean[r] + self.residual[r] if r in self.residual else mean[r]
            if bits is None:
                delta[r] = target
            else:
                delta[r] = snap(target, bits)
                self.residual[r] = target - delta[r]
            self.adapter[r] = self.adapter[r] + delta[r]  # what every client computes from D
        self.last_delta = delta
        for u in updates:
            self.held[u.client] = self.version - u.staleness
        self.version += 1
        metrics: dict = {}
        if bits is not None:
            norm = sum(float(t.double().pow(2).sum()) for t in self.residual.values()) ** 0.5
            metrics["broadcast_residual_norm"] = norm
        return metrics

    # ---- central DP ------------------------------------------------------------------------------
    def dp_contribution(self, update: ClientUpdate) -> Tensors:
        return dict(update.tensors)

    def dp_aggregate(self, rnd: int, mean: Tensors, updates: list[ClientUpdate]) -> dict:
        return self._apply({r: mean[r].to(self.adapter[r].dtype) for r in self.cores}, updates)

    # ---- checkpoint ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {
            **prefixed("adapter/", {r: self.adapter[r] for r in self.cores}),
            **prefixed("residual/", self.residual),
            **prefixed("last_delta/", self.last_delta),
        }
        state["version"] = torch.tensor(self.version)
        state["held"] = torch.tensor(sorted(self.held.items()), dtype=torch.int64).reshape(-1, 2)
        state["sent"] = torch.tensor(sorted(self.sent.items()), dtype=torch.int64).reshape(-1, 2)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.adapter = clone(self.ctx.init_adapter)  # B and A: the model's own, never checkpointed
        for r in self.cores:
            self.adapter[r] = state[f"adapter/{r}"].clone()
        self.residual = clone(unprefixed("residual/", state))
        self.last_delta = clone(unprefixed("last_delta/", state))
        self.version = int(state["version"])
        self.held = {int(c): int(v) for c, v in state["held"].tolist()}
        self.sent = {int(c): int(v) for c, v in state["sent"].tolist()}


def lm_factors(shapes) -> list[str]:
    """The A and B names of a layout."""
    return [n for n in shapes if n.endswith((A_SUFFIX, B_SUFFIX))]


def _cores(names) -> list[str]:
    """The R names, one per LoRA layer; ConfigError for a layout without cores (built for another method)."""
    names = list(names)
    cores = [n for n in names if n.endswith(R_SUFFIX)]
    layers = [n for n in names if n.endswith(A_SUFFIX)]
    if not cores or len(cores) != len(layers):
        raise ConfigError("lora-xs needs an r x r core in every LoRA layer (its AdapterSpec builds them)")
    return cores
