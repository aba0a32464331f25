"""Fed-SB (Singhal et al. 2025, arXiv 2502.15436) on LoRA-SB (Ponkshe et al., arXiv 2411.19557).

Each LoRA layer adds s B R A x (s = peft's alpha / rank). B (d_out x r) and A (r x d_in) are fixed
for the whole run from an initialisation shared by everyone; only the r x r matrix R trains,
travels and is averaged. Every client trains its R_i against the same B and A, so the server's mean
is exact: sum_i w_i B R_i A = B (sum_i w_i R_i) A, which FedAvg of separate LoRA factors is not.
An upload is r^2 values per layer, whatever the layer's width and the number of clients.

The model: the method declares (AdapterSpec) peft rank `params.rank` (default lora.r) with a core
R in every layer; models/adapter.py builds it (R is `<prefix>.lora_R.weight`). The peft alpha is
lora.alpha * rank / lora.r, so s = lora.alpha / lora.r: the warm-up is ordinary LoRA at lora.r.

Initialisation (LoRA-SB's idea, our variant). LoRA-SB approximates the first full fine-tuning
update, dW ~ -lr sign(sum of a few batches' gradients of W) in its code, takes its rank-r truncated
SVD U S V^T and sets B = U, A = V^T, R = S / s, so that s B R A starts at that approximation and
Adam on R stays in the best rank-r subspace of the first step. Here the approximate first update
is one federated round, the warm-up, billed like any other:
  round 1: every client trains ordinary LoRA (A, B at rank w = min(lora.r, rank), R = I frozen;
    A's rows beyond w are zero, so the layer is a rank-w LoRA inside the rank-r structure) and
    uploads dA, dB (w rows / columns only: FedAvg's bytes at rank w);
  the server forms M = sum_i w_i B_i A_i (kept factored, never a d_out x d_in matrix) and its rank-r
    truncated SVD through QR of the stacked factors (lora_math.truncated_svd_factored), and fixes
    B = U, A = V^T, R = diag(S): s B R A = s trunc_r(M), the truncated mean of what the clients did
    (M excludes s, so R needs no 1/s). Where M has rank k < r (r > clients x w), the missing U and V
    columns are seeded random orthonormal directions orthogonal to the rest (S = 0 there), so all
    r^2 entries of R still train;
  from round 2: a client that the server has no proof of holding B and A (no R upload from it yet)
    gets them with R as one whole message (billed); every other gets R alone. Clients upload
    dR = R_i - R (r x r per layer) and the server applies R += sum_i w_i dR_i.
init = "svd-base" (no warm-up): B = U_r, A = V_r^T of the truncated SVD of each layer's frozen base
weight (AdapterSpec.basis "svd-orthonormal", computed by every party from the model: models/basis.py)
and R = 0, so round 1 already trains and sends R alone and B, A never travel (LoRA-XS's data-free
basis, strategies/lora_xs.py, with Fed-SB's orthonormal factors and its whole-R messages).
Why not LoRA-SB's gradient warm-up: it needs full d_out x d_in gradients of the base weights on
the clients (the method never sees the model) and either dense uploads or a client-side SVD whose
per-client bases would have to be merged; one federated LoRA round gives a multi-step update
direction with the machinery every other method uses, and its cost is on the bill.

Downlink: lossless only (B and A must be bit-identical everywhere for the mean to be exact).
Stale R updates (hybrid) are folded in as deltas, discounted by the runtime's weights; a stale
warm-up upload after the basis is fixed is refused. Saved adapters fold R into B (B' = B R): a
standard peft LoRA of rank `rank` (models/adapter.py).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from ..tensors import Tensors, clone, prefixed, unprefixed
from . import lora_math as lm
from .base import AdapterSpec, ClientTurn, ClientUpdate, Message, Method, MethodContext, layout_mismatch
from .lora_math import R_SUFFIX
from .mixins import Admission, MessageSizes
from .sizes import MessageSize, SizingContext

BASIS = "fed_sb/basis/"
PHASE = "fed_sb/phase"
"""Client state: 0 in the warm-up, 1 once it trains R."""


class FedSBParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int | None = Field(None, ge=1, le=1024, description="r of the r x r matrix R (None: lora.r)")
    init: Literal["warmup", "svd-base"] = Field(
        "warmup", description="warmup: B, A from a LoRA round; svd-base: from the base weights' SVD, no warm-up"
    )


class FedSB(Admission, MessageSizes, Method):
    name = "fed-sb"
    Params = FedSBParams
    params: FedSBParams
    lossless_downlink = True

    @classmethod
    def adapter_spec(cls, params: FedSBParams, lora_r: int, lora_alpha: float) -> AdapterSpec:  # type: ignore[override]
        rank = params.rank or lora_r
        basis = "svd-orthonormal" if params.init == "svd-base" else None
        return AdapterSpec(rank, lora_alpha * rank / lora_r, core=True, basis=basis)

    @classmethod
    def message_sizes(cls, params: FedSBParams, at: SizingContext) -> list[MessageSize]:
        """R (rank x rank per layer) each way, from round 2 (round 1 with init svd-base); the
        one-off messages in the note."""
        spec = cls.adapter_spec(params, at.lora_r, at.lora_alpha)
        layout = at.layout_at(spec.rank, spec.core)
        per_round = at.blob("fp32", at.ending(R_SUFFIX, layout), layout)
        if params.init == "svd-base":
            note = "R only, fp32, from round 1 (init svd-base: B, A from the base weights' SVD, never sent)"
        else:
            basis = at.blob("fp32", at.ones(layout), layout)
            note = (
                f"R only, fp32, from round 2; round 1 uploads a LoRA delta at rank {min(at.lora_r, spec.rank)}, "
                f"round 2 sends B, A and R once ({basis:,} B)"
            )
        return [MessageSize(f"fed-sb (rank {spec.rank})", per_round, per_round, note)]

    def __init__(self, params: FedSBParams, ctx: MethodContext):
        super().__init__(params, ctx)
        self.triples = _triples(ctx.layout.names)
        shapes = dict(zip(ctx.layout.names, ctx.layout.shapes))
        self.rank = shapes[self.triples[0][2]][0]
        narrowest = min(min(shapes[b][0], shapes[a][1]) for a, b, _ in self.triples)
        if self.rank > narrowest:
            raise ConfigError(
                f"config key 'params.rank': {self.rank} is more than the narrowest LoRA layer's "
                f"dimension ({narrowest}), so B and A cannot have orthonormal columns/rows; use at most {narrowest}"
            )
        self.warm_rank = min(ctx.lora_r or self.rank, self.rank)
        self.svd_base = params.init == "svd-base"
        """B and A are the model's own (built by every party), R starts at 0: no warm-up."""
        self.warm_init = clone(ctx.init_adapter) if self.svd_base else self._warm_init()
        self.adapter = clone(self.warm_init)
        self.fixed = self.svd_base
        """Whether the warm-up has fixed B and A."""
        self.holders: set[int] = set()
        """Clients known to hold B and A (an R upload from them arrived)."""

    def _warm_init(self) -> Tensors:
        """The seeded init as a rank-w LoRA: A's rows beyond w zero, B = 0, R = I."""
        out = clone(self.ctx.init_adapter)
        for a, b, r in self.triples:
            out[a][self.warm_rank :] = 0
            out[b].zero_()
            out[r] = torch.eye(self.rank, dtype=out[r].dtype)
        return out

    # ---- what trains and travels ----------------------------------------------------------------
    def trainable(self, name: str) -> bool:
        """After the warm-up only R (the warm-up trains A and B: client_trainable)."""
        return name.endswith(R_SUFFIX)

    def client_trainable(self, state: Tensors):
        if int(state.get(PHASE, torch.tensor(0))) == 1:
            return self.trainable
        return lambda name: not name.endswith(R_SUFFIX)

    def upload_shapes(self) -> dict[str, tuple[int, ...]]:
        return self._phase_shapes(self.fixed)

    def _phase_shapes(self, fixed: bool) -> dict[str, tuple[int, ...]]:
        """What an upload carries: R per layer once B and A are fixed, else the warm-up's dA, dB."""
        if fixed:
            return {r: (self.rank, self.rank) for _, _, r in self.triples}
        shapes = dict(zip(self.ctx.layout.names, self.ctx.layout.shapes))
        out: dict[str, tuple[int, ...]] = {}
        for a, b, _ in self.triples:
            out[a] = (self.warm_rank, shapes[a][1])
            out[b] = (shapes[b][0], self.warm_rank)
        return out

    def accepts(self, name: str, shape: tuple[int, ...]) -> bool:
        # Either phase's tensors may arrive (a late warm-up upload); check_upload says which fits now.
        return any(self._phase_shapes(fixed).get(name) == tuple(shape) for fixed in (False, True))

    def check_upload(self, rnd: int, client: int, tensors: Tensors) -> str | None:
        why = layout_mismatch(tensors, self.upload_shapes())
        if why and self.fixed:
            return f"{why} (fed-sb has fixed B and A: uploads carry R only)"
        return why

    # ---- messages ------------------------------------------------------------------------------
    def broadcast(self, rnd: int, client: int) -> Message | None:
        if not self.fixed:
            return None  # the warm-up starts from the seeded init everyone builds
        r_only = {r: self.adapter[r] for _, _, r in self.triples}
        if self.svd_base:  # every client holds B and A; R = 0 at first, which it holds too
            untouched = all(torch.equal(v, self.warm_init[k]) for k, v in r_only.items())
            return None if untouched else Message(r_only)
        if client in self.holders:
            return Message(r_only)
        basis = {k: self.adapter[k] for a, b, _ in self.triples for k in (a, b)}
        return Message({**basis, **r_only}, whole=True)

    def client_receive(self, state: Tensors, message: Message | None, turn: ClientTurn | None = None) -> Tensors:
        if message is None:
            state[PHASE] = torch.tensor(int(self.svd_base))
            return self.warm_init
        with_basis = message.whole or any(not k.endswith(R_SUFFIX) for k in message)
        dtypes = {k: v.dtype for k, v in self.ctx.init_adapter.items()}
        values = {k: v.to(dtypes[k]) for k, v in message.items()}
        if with_basis:
            for a, b, _ in self.triples:
                state[BASIS + a], state[BASIS + b] = values[a], values[b]
        basis = unprefixed(BASIS, state)
        if self.svd_base:
            basis = {k: v for k, v in self.warm_init.items() if not k.endswith(R_SUFFIX)}
        if not basis:
            raise ValueError("fed-sb: an R-only message reached a client that holds no B and A")
        state[PHASE] = torch.tensor(1)
        return {k: basis[k] if k in basis else values[k] for k in self.ctx.layout.names}

    def client_upload(
        self, state: Tensors, start: Tensors, trained: Tensors, turn: ClientTurn | None = None
    ) -> Tensors:
        if int(state.get(PHASE, torch.tensor(0))) == 1:
            return {r: trained[r] - start[r] for _, _, r in self.triples}
        w = self.warm_rank
        out = {}
        for a, b, _ in self.triples:
            out[a] = (trained[a] - start[a])[:w].contiguous()
            out[b] = (trained[b] - start[b])[:, :w].contiguous()
        return out

    # ---- server --------------------------------------------------------------------------------
    def aggregate(self, rnd: int, updates: list[ClientUpdate]) -> dict:
        if not updates:
            return {}
        if not self.fixed:
            return self._fix_basis(updates)
        weights = self.weights(updates)
        for _, _, r in self.triples:
            self.adapter[r] = self.adapter[r] + sum(
                w * u.tensors[r].to(self.adapter[r].dtype) for w, u in zip(weights, updates)
            )
        self.holders.update(u.client for u in updates)
        return {}

    def _fix_basis(self, updates: list[ClientUpdate]) -> dict:
        """The warm-up's mean product M, truncated to rank r: B = U, A = V^T, R = diag(S)."""
        weights = lm.normalized(self.weights(updates))
        w = self.warm_rank
        kept = []
        for i, (a, b, r) in enumerate(self.triples):
            a0, b0 = self.warm_init[a][:w], self.warm_init[b][:, :w]
            bs = [b0 + u.tensors[b].to(b0.dtype) for u in updates]
            as_ = [a0 + u.tensors[a].to(a0.dtype) for u in updates]
            left, right = lm.stacked_factors(bs, as_, weights)
            u_, s, v = lm.truncated_svd_factored(left, right, self.rank)
            found = int((s > 0).sum())
            u_ = complete_orthonormal(u_, found, lm.generator_for(self.ctx.seed, "fed-sb", i, "U"))
            v = complete_orthonormal(v, found, lm.generator_for(self.ctx.seed, "fed-sb", i, "V"))
            self.adapter[b] = u_.to(self.adapter[b].dtype)
            self.adapter[a] = v.T.contiguous().to(self.adapter[a].dtype)
            self.adapter[r] = torch.diag(s).to(self.adapter[r].dtype)
            total = frobenius_sq(left, right)
            kept.append(float(s.double().pow(2).sum()) / total if total > 0 else 1.0)
        self.fixed = True
        return {"phase": "warm-up", "warmup_energy": sum(kept) / len(kept)}

    # ---- checkpoint ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = prefixed("adapter/", self.adapter)
        state["fixed"] = torch.tensor(int(self.fixed))
        state["holders"] = torch.tensor(sorted(self.holders), dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.adapter = {k: state[f"adapter/{k}"].clone() for k in self.ctx.layout.names}
        self.fixed = bool(int(state["fixed"]))
        self.holders = {int(c) for c in state["holders"].tolist()}


def _triples(names) -> list[tuple[str, str, str]]:
    """(A, B, R) names per layer; ConfigError for a layout without cores (built for another method)."""
    names = list(names)
    cores = [n for n in names if n.endswith(R_SUFFIX)]
    pairs = lm.lora_pairs([n for n in names if not n.endswith(R_SUFFIX)])
    present = set(cores)
    out = []
    for pair in pairs:
        r = pair.prefix + R_SUFFIX
        if r not in present:
            raise ConfigError(f"fed-sb needs an r x r core in every LoRA layer; {pair.prefix!r} has none")
        out.append((pair.a, pair.b, r))
    return out


def complete_orthonormal(q: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """q's first k columns (orthonormal), then seeded random unit columns orthogonal to them and to
    each other in place of the rest (a truncated SVD pads with zeros beyond the matrix's rank)."""
    if k >= q.shape[1]:
        return q
    kept = q[:, :k]
    g = torch.randn(q.shape[0], q.shape[1] - k, generator=generator, dtype=torch.float64).to(q.dtype)
    for _ in range(2):  # twice: one Gram-Schmidt pass leaves fp32 round-off along `kept`
        g = g - kept @ (kept.T @ g)
    extra, _ = torch.linalg.qr(g, mode="reduced")
    return torch.cat([kept, extra], dim=1)


def frobenius_sq(left: torch.Tensor, right: torch.Tensor) -> float:
    """||L R||_F^2 = trace((L^T L)(R R^T)), without forming L R."""
    return float(((left.T @ left) * (right @ right.T).T).sum())
