"""FedSRD (Sparsify-Reconstruct-Decompose) and FedSRD-e; DESIGN.md section 5, seed 003.

Client (sparsify): from the round's start (B0, A0) it trains (B', A') and uploads dA = A' - A0,
dB = B' - B0, each with a fraction rho of its entries zeroed, the lowest by importance
    I_A = |dA| * ||B'[:, u]||_2 (row u),   I_B = |dB| * ||A0[v, :]||_2 (column v),
    rho = base_ratio + min(cap, coef * ln(max(kappa, 1))),   kappa = Pearson kurtosis of I,
and the kept entries rescaled so each matrix keeps its L1 norm.

Server (reconstruct): B_i = B0 + dB_i, A_i = A0 + dA_i, W = sum_i w_i B_i A_i (full rank, kept factored).
    fedsrd:   W_r = rank-r truncated SVD of W, through QR of the stacked factors (never a dense SVD).
    fedsrd-e: W_r = W (no SVD).
Server (decompose): dW = W_r - B0 A0; one factor moves per round, alternately
    B-rounds: dB = dW pinv(A0), dA = 0;     A-rounds: dA = pinv(B0) dW, dB = 0     (pinv in fp32),
then a random mask drops `download_drop` of the moved factor's entries (survivors x 1/(1-drop)).
The server applies exactly that sparse delta to the global adapter and broadcasts it.

The download mask (download_mask = "seeded", default) keeps round((1 - drop) n) entries of each
moved tensor, drawn from (seed, round, tensor name) with codecs/seeded.py's generator; the message
carries that seed as a wire marker, so the default downlink `seeded` sends the kept values only and
every client redraws their positions (the same mask for every client: the server applies one delta).
download_mask = "bernoulli" is the earlier draw, each entry dropped independently by torch's
generator, whose positions must travel (downlink `sparse`).

Round 1 (deliberate difference from the reference code). peft starts B at 0, so the reference's
first round, an A-round, computes pinv(0) dW = 0 and wastes the round. `start_factor = "B"` (default)
moves B in round 1 (A0 is random and full rank, so dW pinv(A0) keeps all of dW's row-space part) and
alternates from there: B on odd rounds, A on even rounds. `start_factor = "A"` reproduces the reference.

What the clients hold. Every participant knows the initial adapter (same seed), so a client keeps
only C = global - init (its `global_delta/*` state) and trains from init + C. The server keeps the
same C and computes its adapter the same way, so both are bit-identical as long as the downlink codec
is lossless (the default `sparse` codec is). Messages, told apart by their keys:
  - None: nothing new (round 1 for everyone: the adapter is still the initial one);
  - the moved factors' tensors: the last round's sparse delta, C += message;
  - every tensor of the adapter as a whole Message: C itself, C = message.
A client gets the delta only when the server knows it holds the previous global (its last upload was
trained from it and nothing was sent to it since). A client that skipped rounds, joins late, or whose
state the server cannot vouch for gets C itself: exact, no per-round history on the server, and no
larger than the full adapter (B = C_B; C_A covers only the entries A-rounds touched, the rest of A is
the random init the client already has). Summing the missed deltas would often be smaller but not
bit-identical to applying them one by one (fp32 addition is not associative).

Ablation switches (Params):
  sparsifier: importance (paper) | magnitude (|d|) | random | none. All use the same rho (from the
    importance scores' kurtosis when adaptive_ratio), so only which entries survive changes.
  adaptive_ratio=false: rho = base_ratio for every matrix.
  reconstruct=false: average A and B separately (A_bar = A0 + sum w dA_i, B_bar likewise, as FedAvg),
    then W_r = B_bar A_bar (rank r already: fedsrd and fedsrd-e coincide) and decompose as usual.
  decompose=false: no alternating projection and no download mask: the server's new adapter is
    (U_r S_r^(1/2), S_r^(1/2) V_r^T) of the truncated SVD of W (FlexLoRA's server; also for fedsrd-e,
    which has no rank-r factors otherwise), or (B_bar, A_bar) without reconstruction, and every client
    gets the whole C (dense) each round.
  rescale: both the upload L1 rescale and the download 1/(1-drop) rescale.
Beyond the paper (off by default; docs/BENCHMARKS.md measures them on W4):
  moves="both": after the round's factor, the other one too, projected from what the first (after
    its mask) left of dW, so a round carries dW P_A0 + P_B' dW (I - P_A0) instead of one of the two
    parts; twice the broadcast values at the same drop rate. One factor a round throws away most of
    what the clients learnt in the other (see BENCHMARKS, "FedSRD's loss gap on W4").
  download_dtype="bf16": the server rounds the broadcast delta to bfloat16 before applying it, and
    the default downlink becomes `seeded > narrow`, which writes bf16-exact values in 2 bytes and
    anything else (the catch-up C) in 4, losslessly: clients stay bit-identical, a value costs half.
  download_bits=k (2..8): the same with each moved tensor rounded to the nearest point of a k-bit
    grid c * 2**e (|c| <= 2**(k-1) - 1, e the smallest that holds the tensor's largest entry; nearest,
    deterministic), and the downlink `seeded > grid(bits=k)`: k bits a value, still lossless. The
    rounding error is not lost: the next round's dW is measured from the adapter actually applied.
Uploads through a lossy value stage: uplink.codec = "sparse > quantize(bits=4, rounding=stochastic)"
(2 bits likewise) with uplink.error_feedback = true quantizes the kept values; the error feedback
adds its memory only where the next upload is non-zero (codecs/sender.py), so uploads stay sparse.
  projection_damping=d: pinv(B0) amplifies dW along B0's weak directions by 1/s, and a B trained a
    few steps from zero is badly conditioned; with no download mask (whose noise hides it) the
    A-round moves some rows of A far more than their size and training diverges (see BENCHMARKS).
    d replaces 1/s by s / (s^2 + (d s_max)^2) (0: the paper's plain pinv).
  download_feedback=true: error feedback on the broadcast. The server adds to each moved factor what
    earlier broadcasts of it left out (the dropped entries, and the grid's rounding), masks the sum
    without the 1/(1-drop) rescale, and keeps the rest for the next broadcast of that factor: the
    clients get every part of dW the server meant to send, later instead of as unbiased noise (the
    rescaled mask adds a zero-mean error each round that the adapter keeps: a random walk whose size
    grows with the rounds). A candidate for FedSRD's lag that grows with the rounds, not a measured fix.
Stale updates (staleness > 0) are folded in as if trained from the current global: FedSRD has no
staleness model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..codecs.grid import snap
from ..codecs.wire import message_tensors, read_message
from ..tensors import Tensors, clone, prefixed, unprefixed
from . import lora_math as lm
from .base import ClientTurn, ClientUpdate, Message, Method, MethodContext
from .mixins import CentralDP, MessageSizes, PrivacyNotes
from .sizes import MessageSize, SizingContext

STATE_PREFIX = "global_delta/"
Target = Callable[[lm.LoraPair], tuple[torch.Tensor, torch.Tensor]]
"""A layer's new W_r as factors (L, R), L @ R."""
WIRE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class FedSRDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_ratio: float = Field(0.85, ge=0.0, le=1.0, description="alpha: upload drop ratio before the kurtosis term")
    cap: float = Field(0.11, ge=0.0, le=1.0, description="largest kurtosis term added to base_ratio")
    coef: float = Field(0.1, ge=0.0, description="kurtosis term = coef * ln(max(kappa, 1))")
    download_drop: float = Field(0.8, ge=0.0, lt=1.0, description="fraction of the broadcast delta dropped")
    download_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="precision of the broadcast values (bf16: half the bytes per kept value)"
    )
    download_bits: int | None = Field(
        None, ge=2, le=8, description="round the broadcast to a k-bit grid per tensor (None: download_dtype)"
    )
    download_mask: Literal["seeded", "bernoulli"] = Field(
        "seeded", description="seeded: drawn by both ends, positions not sent; bernoulli: positions sent"
    )
    moves: Literal["one", "both"] = Field(
        "one", description="factors moved per round: one (alternating, the paper) or both (that one, then the other)"
    )
    projection_damping: float = Field(
        0.0, ge=0.0, description="Tikhonov damping of the pinv, relative to the factor's largest singular value"
    )
    rescale: bool = Field(True, description="L1 rescale on upload and 1/(1-drop) on download")
    start_factor: Literal["A", "B"] = Field("B", description="factor moved in round 1 (B: no wasted round)")
    sparsifier: Literal["importance", "magnitude", "random", "none"] = "importance"
    reconstruct: bool = Field(True, description="aggregate sum w_i B_i A_i (false: average A and B apart)")
    decompose: bool = Field(True, description="alternating one-factor sparse broadcast (false: dense SVD factors)")
    adaptive_ratio: bool = Field(True, description="kurtosis-adaptive upload ratio (false: base_ratio)")
    download_feedback: bool = Field(
        False, description="keep what the broadcast mask and grid leave out on the server, add it to the next"
    )

    @model_validator(mode="after")
    def _one_rounding(self):
        if self.download_bits is not None and self.download_dtype != "fp32":
            raise ValueError("download_bits rounds the broadcast itself: leave download_dtype at fp32")
        return self


class FedSRD(CentralDP, PrivacyNotes, MessageSizes, Method):
    name = "fedsrd"
    Params = FedSRDParams
    params: FedSRDParams
    default_uplink = "sparse"
    lossless_downlink = True
    truncate: ClassVar[bool] = True
    """Rank-r truncated SVD of the reconstructed W (False: FedSRD-e, W_r = W)."""

    @classmethod
    def message_sizes(cls, params: FedSRDParams, at: SizingContext) -> list[MessageSize]:
        """The broadcast (one factor with `download_drop` of it dropped; A and B in alternate rounds,
        so a row is their mean) under each download setting; uploads follow the data (importance masks)."""
        drop = params.download_drop
        a_only, b_only = at.ending(lm.A_SUFFIX), at.ending(lm.B_SUFFIX)
        rng = torch.Generator().manual_seed(at.seed)
        dropped = ({n: lm.random_drop(t, drop, rng) for n, t in f.items()} for f in (a_only, b_only))
        srd_a, srd_b = (at.blob("sparse", f) for f in dropped)
        rows = [
            MessageSize(
                "fedsrd (broadcast), download_mask=bernoulli",
                None,
                (srd_a + srd_b) // 2,
                f"one factor, {1 - drop:.0%} kept, positions sent: A rounds {srd_a:,} B, B rounds {srd_b:,} B",
            )
        ]
        for label, spec, bits in (
            ("fedsrd (broadcast)", "seeded", None),
            ("fedsrd (broadcast), download_dtype=bf16", "seeded > narrow", None),
            ("fedsrd (broadcast), download_bits=8", "seeded > grid(bits=8)", 8),
            ("fedsrd (broadcast), download_bits=4", "seeded > grid(bits=4)", 4),
        ):
            a, b = (at.blob(spec, at.seeded(f, drop, bits)) for f in (a_only, b_only))
            note = f"one factor, {1 - drop:.0%} kept (seeded), values only: A rounds {a:,} B, B rounds {b:,} B"
            note += "; uploads follow the data" if spec == "seeded" else ""
            rows.append(MessageSize(label, None, (a + b) // 2, note))
        return rows

    def __init__(self, params: FedSRDParams, ctx: MethodContext):
        super().__init__(params, ctx)
        self.pairs = lm.lora_pairs(ctx.layout.names)
        self.cumulative: Tensors = {k: torch.zeros_like(v) for k, v in ctx.init_adapter.items()}
        self.last_delta = Message()
        self.feedback: Tensors = {}
        """download_feedback: per moved tensor, what its broadcasts have left out so far."""
        self.version = 0
        """Aggregations applied so far; the global adapter is version `version`."""
        self.held: dict[int, int] = {}
        """client -> version its state is known to hold (from its last upload)."""
        self.sent: dict[int, int] = {}
        """client -> version its state holds if our last message reached it."""

    @property
    def default_downlink(self) -> str:  # type: ignore[override]
        p = self.params
        seeded = p.decompose and p.download_drop > 0 and p.download_mask == "seeded"
        structure = "seeded" if seeded else "sparse"
        # narrow / grid: bf16-exact / on-grid values in 2 bytes / k bits, still lossless for the
        # fp32 catch-up message
        if p.download_bits is not None:
            return f"{structure} > grid(bits={p.download_bits})"
        return f"{structure} > narrow" if p.download_dtype == "bf16" else structure

    # ---- messages ------------------------------------------------------------------------------
    def broadcast(self, rnd: int, client: int) -> Message | None:
        """None, the last sparse delta, or the whole C (see the module docstring)."""
        held, sent = self.held.get(client, 0), self.sent.get(client, 0)
        self.sent[client] = self.version
        if held == sent == self.version:
            return None
        if self.params.decompose and held == sent == self.version - 1:
            return self.last_delta.carrying(dict(self.last_delta))
        return Message(self.cumulative, whole=True)  # C itself (a delta may hold every tensor too)

    def client_receive(self, state: Tensors, message: Message | None, turn: ClientTurn | None = None) -> Tensors:
        init = self.ctx.init_adapter
        cumulative = {k: state.get(STATE_PREFIX + k, torch.zeros_like(v)) for k, v in init.items()}
        if message is not None:
            whole = message.whole
            values = {k: v.to(init[k].dtype) for k, v in message.items()}
            if whole:
                cumulative = values
            else:
                cumulative = {k: cumulative[k] + values[k] if k in values else cumulative[k] for k in init}
        for k, v in cumulative.items():
            state[STATE_PREFIX + k] = v
        return _plus(init, cumulative)

    # ---- client: sparsify ----------------------------------------------------------------------
    def client_upload(
        self, state: Tensors, start: Tensors, trained: Tensors, turn: ClientTurn | None = None
    ) -> Tensors:
        p = self.params
        rng = lm.generator_for(lm.content_seed(self.ctx.seed, trained), "upload")
        out: Tensors = {}
        for pair in self.pairs:
            d_a = trained[pair.a] - start[pair.a]
            d_b = trained[pair.b] - start[pair.b]
            if p.sparsifier != "none":
                imp_a, imp_b = lm.importance_scores(d_a, d_b, trained[pair.b], start[pair.a])
                d_a = self._sparsify(d_a, imp_a, rng)
                d_b = self._sparsify(d_b, imp_b, rng)
            out[pair.a], out[pair.b] = d_a, d_b
        return out

    def _sparsify(self, delta: torch.Tensor, importance: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        p = self.params
        ratio = p.base_ratio
        if p.adaptive_ratio:
            ratio = lm.adaptive_ratio(lm.pearson_kurtosis(importance), p.base_ratio, p.cap, p.coef)
        if p.sparsifier == "importance":
            score = importance
        elif p.sparsifier == "magnitude":
            score = delta.abs()
        else:  # random: same count kept, positions drawn uniformly
            score = torch.rand(delta.shape, generator=rng)
        kept = torch.where(lm.keep_mask(score, ratio), delta, torch.zeros((), dtype=delta.dtype))
        return lm.l1_rescale(kept, delta) if p.rescale else kept

    # ---- server: reconstruct + decompose -------------------------------------------------------
    def aggregate(self, rnd: int, updates: list[ClientUpdate]) -> dict:
        if not updates:
            return {}
        weights = lm.normalized(self.weights(updates))  # W is an average of B_i A_i
        return self._finish(rnd, lambda pair: self._target(pair, updates, weights), updates)

    def _finish(self, rnd: int, target: Target, updates: list[ClientUpdate]) -> dict:
        """Decompose (or split) each layer's target(pair) = (L, R), L @ R = the new W_r, and apply it."""
        if self.params.decompose:
            factor = self.moved_factor(rnd)
            delta = self._decomposed_delta(rnd, factor, target)
            self.cumulative = {
                k: self.cumulative[k] + delta[k] if k in delta else self.cumulative[k] for k in self.cumulative
            }
            nonzero = sum(int(v.count_nonzero()) for v in delta.values())
            metrics = {"factor": factor, "broadcast_nonzero": nonzero}
            if self.params.download_feedback:
                held = sum(float(t.double().pow(2).sum()) for t in self.feedback.values()) ** 0.5
                metrics["broadcast_feedback_norm"] = held
            # the mask's seed rides with the delta (and its checkpoint)
            self.last_delta = Message(delta, mask_seed=self._mask_seed(rnd) if self._seeded_mask() else None)
        else:
            new = self._dense_factors(target)
            self.cumulative = {k: new[k] - self.ctx.init_adapter[k] for k in self.cumulative}
            self.last_delta = Message()
            metrics = {}
        self.adapter = _plus(self.ctx.init_adapter, self.cumulative)
        for u in updates:
            self.held[u.client] = self.version - u.staleness
        self.version += 1
        return metrics

    def moved_factor(self, rnd: int) -> str:
        """start_factor on odd rounds (1, 3, ...), the other factor on even rounds."""
        other = "A" if self.params.start_factor == "B" else "B"
        return self.params.start_factor if rnd % 2 == 1 else other

    def _client_factors(self, pair: lm.LoraPair, updates: list[ClientUpdate]):
        """B_i = B0 + dB_i and A_i = A0 + dA_i for every client (a missing tensor = no change)."""
        b0, a0 = self.adapter[pair.b], self.adapter[pair.a]
        bs = [b0 + u.tensors[pair.b].to(b0.dtype) if pair.b in u.tensors else b0 for u in updates]
        as_ = [a0 + u.tensors[pair.a].to(a0.dtype) if pair.a in u.tensors else a0 for u in updates]
        return bs, as_

    def _target(self, pair: lm.LoraPair, updates, weights) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, R) with L @ R = the new full-rank W_r of this layer (never formed densely)."""
        bs, as_ = self._client_factors(pair, updates)
        if not self.params.reconstruct:
            b_bar = sum(w * lm.wide(b) for w, b in zip(weights, bs))
            a_bar = sum(w * lm.wide(a) for w, a in zip(weights, as_))
            return b_bar, a_bar
        left, right = lm.stacked_factors(bs, as_, weights)
        if not self.truncate:
            return left, right
        u, s, v = lm.truncated_svd_factored(left, right, rank=self.adapter[pair.a].shape[0])
        return u * s[None, :], v.T

    def _decomposed_delta(self, rnd: int, factor: str, target: Target) -> Tensors:
        """The sparse broadcast delta of `factor` for every layer (step 8 + the download mask); with
        moves="both", then the other factor's, projected from what the first left of dW."""
        p = self.params
        rng = lm.generator_for(self.ctx.seed, rnd, "broadcast")
        seed = self._mask_seed(rnd)
        order = [factor] + ([{"A": "B", "B": "A"}[factor]] if p.moves == "both" else [])
        delta: Tensors = {}
        for pair in self.pairs:
            layer = target(pair)
            b, a = self.adapter[pair.b], self.adapter[pair.a]
            for moved_factor in order:
                left, right = lm.delta_w_factored(*layer, b, a)  # what is still missing
                if moved_factor == "A":
                    name, moved = pair.a, lm.project_onto_a(b, left, right, p.projection_damping)
                else:
                    name, moved = pair.b, lm.project_onto_b(a, left, right, p.projection_damping)
                if p.download_feedback and name in self.feedback:
                    moved = moved + self.feedback[name].to(moved.dtype)
                meant, rescale = moved, p.rescale and not p.download_feedback
                if self._seeded_mask():
                    moved = lm.seeded_drop(moved, p.download_drop, seed, name, rescale=rescale)
                else:
                    moved = lm.random_drop(moved, p.download_drop, rng, rescale=rescale)
                # Rounded to the wire's precision here, so what the server applies is what clients decode.
                if p.download_bits is not None:
                    delta[name] = snap(moved.to(self.adapter[name].dtype), p.download_bits)
                else:
                    delta[name] = moved.to(WIRE_DTYPES[p.download_dtype]).to(self.adapter[name].dtype)
                if p.download_feedback:
                    self.feedback[name] = (meant - delta[name].to(meant.dtype)).to(self.adapter[name].dtype)
                if moved_factor == "A":
                    a = a + delta[name]
                else:
                    b = b + delta[name]
        return delta

    def _seeded_mask(self) -> bool:
        return self.params.download_mask == "seeded" and self.params.download_drop > 0

    def _mask_seed(self, rnd: int) -> int:
        """The broadcast mask's seed: (seed, round); each tensor's mask then by its name (seeded.py)."""
        return lm.mask_seed(self.ctx.seed, rnd, "broadcast")

    def _dense_factors(self, target) -> Tensors:
        """decompose=false: the new adapter itself, (U_r S_r^(1/2), S_r^(1/2) V_r^T) or (B_bar, A_bar)."""
        new: Tensors = {}
        for pair in self.pairs:
            rank = self.adapter[pair.a].shape[0]
            left, right = target(pair)
            if self.params.reconstruct:
                b, a = lm.balanced_factors(*lm.truncated_svd_factored(left, right, rank))
            else:
                b, a = left, right
            new[pair.b] = b.to(self.adapter[pair.b].dtype)
            new[pair.a] = a.to(self.adapter[pair.a].dtype)
        return new

    # ---- central DP ------------------------------------------------------------------------------
    # The contribution is what reconstruct averages: each layer's B_i A_i - B0 A0 (dense, clipped in
    # Frobenius norm), or dA_i and dB_i without reconstruction. The server's W is B0 A0 + their noised
    # mean; truncation, decomposition and the download mask are post-processing of it.
    def dp_contribution(self, update: ClientUpdate) -> Tensors:
        if not self.params.reconstruct:
            return dict(update.tensors)
        out = {}
        for pair in self.pairs:
            (b,), (a,) = self._client_factors(pair, [update])
            out[pair.prefix + lm.PRODUCT_SUFFIX] = lm.product_delta(self.adapter[pair.b], self.adapter[pair.a], b, a)
        return out

    def dp_aggregate(self, rnd: int, mean: Tensors, updates: list[ClientUpdate]) -> dict:
        def target(pair):
            b0, a0 = self.adapter[pair.b], self.adapter[pair.a]
            if not self.params.reconstruct:
                zero = torch.zeros(())
                return lm.wide(b0) + mean.get(pair.b, zero), lm.wide(a0) + mean.get(pair.a, zero)
            left, right = lm.plus_dense(b0, a0, mean[pair.prefix + lm.PRODUCT_SUFFIX])
            if not self.truncate:
                return left, right
            u, s, v = lm.truncated_svd_factored(left, right, rank=a0.shape[0])
            return u * s[None, :], v.T

        return self._finish(rnd, target, updates)

    @classmethod
    def upload_selection(cls, params) -> str | None:
        if params.sparsifier == "none":
            return None
        return f"zeroes a fraction of each factor's delta by its {params.sparsifier} mask"

    # ---- checkpoint ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        last = message_tensors(self.last_delta)  # its mask seed kept as the wire writes it
        state = {**prefixed("cumulative/", self.cumulative), **prefixed("last_delta/", last)}
        state.update(prefixed("feedback/", self.feedback))
        state["version"] = torch.tensor(self.version)
        state["held"] = torch.tensor(sorted(self.held.items()), dtype=torch.int64).reshape(-1, 2)
        state["sent"] = torch.tensor(sorted(self.sent.items()), dtype=torch.int64).reshape(-1, 2)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.cumulative = {k: state[f"cumulative/{k}"].clone() for k in self.ctx.layout.names}
        self.last_delta = read_message(clone(unprefixed("last_delta/", state)))
        self.feedback = clone(unprefixed("feedback/", state))
        self.version = int(state["version"])
        self.held = {int(c): int(v) for c, v in state["held"].tolist()}
        self.sent = {int(c): int(v) for c, v in state["sent"].tolist()}
        self.adapter = _plus(self.ctx.init_adapter, self.cumulative)


class FedSRDe(FedSRD):
    """FedSRD-e: no SVD; the alternating projection is applied to the full-rank W itself. Its
    messages are FedSRD's, so `fedsqueeze size` shows FedSRD's rows for both (rows are declared,
    never inherited: mixins.MessageSizes)."""

    name = "fedsrd-e"
    truncate = False


def _plus(init: Tensors, cumulative: Tensors) -> Tensors:
    """init + C, in the layout's order; the one formula both the server and the clients use."""
    return {k: init[k] + cumulative[k] for k in init}
