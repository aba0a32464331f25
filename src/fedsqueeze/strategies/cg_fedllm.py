"""CG-FedLLM (seeds 000/001, DESIGN.md section 5): clients upload their update encoded by an
autoencoder's encoder; the server rebuilds it with the decoder and averages as FedAvg does.

Phases (by round):
  TGAP, rounds 1..tgap_rounds: plain FedAvg on the first `tgap_fraction` of each client's data, the
    uploads dense and exact. The server keeps every client's update of every TGAP round (the
    snapshot pool) and, after the last TGAP round, trains the autoencoder on it (MSE, Adam, seeded).
    With tgap_snapshots = k > 1 each TGAP upload also carries the client's update at k - 1 earlier
    local steps (evenly spaced), so the pool spans local steps as well as rounds; those extra
    snapshots travel dense on the uplink and are on the bill, and only the round's update is averaged.
  FAF, the remaining rounds: training on the rest of the data; the client uploads the latent
    message (autoencoder/compressor.py), the server decodes and averages.

What travels, all of it through the link codecs and so on the ledger:
  down, every round:   the global adapter (as FedAvg), except while it is still the initial one,
    which every participant builds from the shared seed.
  down, once per client, in its first FAF round: the encoder's weights (flat fp32) and, unless
    ship_decoder=false, the decoder's (tensor: tied, nothing more): with it a client knows exactly
    what the server will rebuild, which the SNR report, the adaptive mode and error feedback need.
  up, TGAP:  the dense update (and its snapshots).   up, FAF: the latent message, plus (with the decoder) 3 floats: the
    client's ||G||^2, ||G - G_hat||^2 and its paper-style SNR, for the per-round SNR metrics (the
    server cannot compute them: it never sees G).
The default uplink codec is lossless (zstd) so that TGAP is uncompressed and the latent message
arrives exactly as the client measured it; the message's values are small integers (compressor.py),
which zstd packs well. Over a lossy downlink the clients get perturbed weights: the server then
keeps each client's copy (`delivered`) and decodes that client's latents with it, so what the
client measured is still exactly what the server aggregates.

Metrics (rounds.jsonl): phase; at the end of TGAP the training's ae_* numbers (ae_pool_snr_db is
the network's SNR on its own training samples); in FAF snr_db = 10 log10(sum ||G||^2 / sum
||G - G_hat||^2) over the round's clients, snr_paper_db = the clients' mean per-layer SNR
(autoencoder/snr.py), values_sent_fraction (latent + dense values over the adapter's), dense_units.
G is what the client compressed: its update, plus its error-feedback memory when that is on.

The autoencoder is frozen after TGAP. The server cannot adapt it during FAF on its own: it only
ever sees reconstructions, and training on those teaches the network nothing.

Error feedback with the linear networks (row, tensor) is nearly a no-op, and measurably so: a
trained one is close to an orthogonal projection P onto a fixed subspace, so the memory (I - P) G
lies where P never looks and only the latent quantization error comes back. It would need a
subspace that changes from round to round.

Architectures (`arch`), all trained on the same TGAP pool:
  paper   the faithful conv network over [A^T | B] tiles (latent 1/64 of the padded image).
  row     one linear autoencoder shared by all tensors, over fixed-size chunks of the rank vectors
          (rows of A, columns of B); `latent` = the kept fraction of each chunk.
  tensor  one linear autoencoder per tensor over its whole rank vectors, tied weights (only the
          encoder travels); `basis` latent values per rank vector. The variant that works here:
          LoRA rank vectors keep moving in a few per-tensor directions across rounds.
row and tensor have nested latents, which is what the adaptive mode truncates.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..autoencoder import (
    Compressor,
    SnapshotPool,
    build_network,
    build_view,
    count_params,
    half_vector,
    layer_snr_db,
    load_half,
    snr_db,
    train_autoencoder,
)
from ..autoencoder.compressor import CODES, DENSE_VALUES, MESSAGE_KEYS, SIZE, MalformedUpload
from ..autoencoder.networks import row_latent_sizes
from ..errors import ConfigError
from ..tensors import Tensors, clone, nested, prefixed, unnested, unprefixed
from .base import SNAPSHOT, ClientTurn, ClientUpdate, Method, MethodContext, layout_mismatch, trained_shapes
from .mixins import Admission, PrivacyNotes

ENCODER, DECODER, ENERGY = "cg.encoder", "cg.decoder", "cg.energy"
SNAP_UP = "cg.snapshot/"  # + f"{step}/{name}": a TGAP upload's earlier local-step snapshot
STATE_ENCODER, STATE_DECODER, EF_PREFIX = "ae/encoder", "ae/decoder", "ef/"


class CGFedLLMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: Literal["paper", "row", "tensor"] = Field(
        "paper", description="paper: faithful conv AE; row: shared linear AE on chunks; tensor: linear AE per tensor"
    )
    tgap_rounds: int | None = Field(None, ge=1, description="TGAP rounds (default: tgap_fraction of the rounds, >= 1)")
    tgap_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="share of each client's data used in TGAP")
    tgap_snapshots: int = Field(
        1,
        ge=1,
        description="snapshots per client per TGAP round, evenly spaced over "
        "the local steps, the last being the round's update (the others cost uplink bytes)",
    )
    # Few epochs: the paper network's training stays minutes on CPUs at W4 scale, and more epochs do
    # not raise its SNR on unseen updates (see BENCHMARKS); the linear ones converge from PCA.
    epochs: int = Field(10, ge=0, description="autoencoder training epochs over the pool")
    lr: float = Field(2e-4, gt=0.0, description="Adam learning rate of the autoencoder")
    batch_size: int = Field(32, ge=1)
    max_samples: int | None = Field(4000, ge=1, description="paper, row: cap on pool samples (seeded subsample)")
    chunk: int = Field(64, ge=4, le=1024, description="row: chunk length (power of two)")
    latent: float = Field(0.125, gt=0.0, le=1.0, description="row: latent values kept per chunk value")
    basis: int = Field(8, ge=1, le=1024, description="tensor: latent values per rank vector")
    latent_bits: int = Field(8, ge=0, le=16, description="latent quantization bits (0: float latent)")
    adaptive_snr_db: float | None = Field(None, description="per-unit smallest latent keeping SNR >= this, else dense")
    error_feedback: bool = Field(False, description="client adds what the last upload lost to the next")
    ship_decoder: bool = Field(True, description="send the decoder to clients too (SNR, adaptive, error feedback)")
    pca_init: bool = Field(True, description="row, tensor: start from the pool's principal basis")

    @model_validator(mode="after")
    def _consistent(self):
        if self.latent_bits == 1:
            raise ValueError("latent_bits must be 0 (float) or 2..16")
        if self.chunk & (self.chunk - 1):
            raise ValueError("chunk must be a power of two")
        if not self.ship_decoder and (self.adaptive_snr_db is not None or self.error_feedback):
            raise ValueError("adaptive_snr_db and error_feedback need ship_decoder=true (the client must decode)")
        if self.arch == "row":
            sizes = row_latent_sizes(self.chunk)
            if round(self.latent * self.chunk) not in sizes:
                allowed = ", ".join(f"{k / self.chunk:g}" for k in sizes)
                raise ValueError(f"latent must be one of {allowed} for chunk={self.chunk}")
        return self


class CGFedLLM(Admission, PrivacyNotes, Method):
    name = "cg-fedllm"
    Params = CGFedLLMParams
    params: CGFedLLMParams
    default_uplink = "zstd"
    default_downlink = "fp32"

    @classmethod
    def central_dp_refusal(cls, params) -> str | None:
        return (
            "its server trains the autoencoder on the clients' exact TGAP updates and broadcasts its weights "
            "(un-noised client data on the downlink), and decodes each client's latents with that client's copy"
        )

    @classmethod
    def local_dp_problem(cls, params) -> str | None:
        if params.tgap_snapshots > 1:
            return (
                f"params.tgap_snapshots = {params.tgap_snapshots}: TGAP uploads carry the adapter at earlier local "
                "steps, un-noised (use 1)"
            )
        return None

    def __init__(self, params: CGFedLLMParams, ctx: MethodContext):
        super().__init__(params, ctx)
        self.trained = trained_shapes(ctx.layout, self.trainable)  # a dense (TGAP) upload's tensors
        p = params
        default_tgap = max(1, round(p.tgap_fraction * ctx.rounds))
        self.tgap_rounds = p.tgap_rounds or (min(default_tgap, ctx.rounds - 1) if ctx.rounds > 1 else 1)
        self.view = build_view(p.arch, ctx.layout.names, ctx.layout.shapes, p.chunk)
        if p.arch == "tensor":
            shortest = min(self.view.vector_length(u) for u in self.view.units)
            if p.basis > shortest:
                raise ConfigError(
                    f"config key 'params.basis' for method 'cg-fedllm': {p.basis} is more than the "
                    f"shortest rank vector of this adapter ({shortest})"
                )
        self.net = self._fresh_network()
        self.tied = count_params(self.net, "decoder") == 0
        self.compressor = Compressor(self.net, self.view, p.latent_bits)
        self.fixed_latent = {"row": round(p.latent * p.chunk), "tensor": p.basis}.get(p.arch)
        self.pool = SnapshotPool()
        self.version = 0  # 0: not trained yet; +1 each time the weights change
        self.holders: dict[int, int] = {}  # client -> version of the weights it was sent
        self.client_halves: dict[int, Tensors] = {}  # client -> its copy, where a lossy downlink changed it
        self.checked: dict[int, Tensors] = {}  # client -> the delta its latent message decoded to (this round)

    def _fresh_network(self):
        p = self.params
        lengths = [self.view.vector_length(u) for u in self.view.units] if p.arch == "tensor" else None
        return build_network(p.arch, p.chunk, seed=self.ctx.seed, lengths=lengths, basis=p.basis)

    # ---- phases --------------------------------------------------------------------------------
    def in_tgap(self, rnd: int) -> bool:
        return rnd <= self.tgap_rounds

    def snapshot_steps(self, rnd: int, local_steps: int) -> list[int]:
        k = min(self.params.tgap_snapshots, local_steps)
        if not self.in_tgap(rnd) or k < 2:
            return []
        return sorted({max(1, round(local_steps * i / k)) for i in range(1, k)} - {local_steps})

    def data_slice(self, rnd: int) -> tuple[float, float]:
        f = self.params.tgap_fraction
        return (0.0, f) if self.in_tgap(rnd) else (f, 1.0)

    # ---- server --------------------------------------------------------------------------------
    def broadcast(self, rnd: int, client: int) -> Tensors | None:
        initial = all(torch.equal(v, self.ctx.init_adapter[k]) for k, v in self.adapter.items())
        message = {} if initial else dict(self.adapter)
        if self.version and self.holders.get(client) != self.version:
            message.update(self._halves())
            self.holders[client] = self.version
        return message or None

    def _halves(self) -> Tensors:
        halves = {ENCODER: half_vector(self.net, "encoder")}
        if self.params.ship_decoder and not self.tied:
            halves[DECODER] = half_vector(self.net, "decoder")
        return halves

    def delivered(self, rnd: int, client: int, received: Tensors) -> None:
        if ENCODER not in received:
            return
        own = self._halves()
        if all(torch.equal(received[k], own[k]) for k in own):
            self.client_halves.pop(client, None)
        else:
            self.client_halves[client] = {k: received[k].clone() for k in own}

    # ---- admission -------------------------------------------------------------------------------
    def accepts(self, name: str, shape: tuple[int, ...]) -> bool:
        if name in MESSAGE_KEYS or name == ENERGY:  # variable length, bounded by the decoder's limits
            return True
        if name.startswith(SNAP_UP):
            name = name[len(SNAP_UP) :].partition("/")[2]
        return self.trained.get(name) == tuple(shape)

    def check_upload(self, rnd: int, client: int, tensors: Tensors) -> str | None:
        """A latent message must decode with the autoencoder the client holds; a dense one (TGAP)
        is the trained tensors plus, optionally, its snapshots."""
        if SIZE in tensors:
            unknown = set(tensors) - set(MESSAGE_KEYS) - {ENERGY}
            if unknown:
                return f"unexpected tensor(s) {sorted(unknown)[:3]}"
            if ENERGY in tensors and not torch.isfinite(tensors[ENERGY][:2]).all():
                return "non-finite signal / noise energies"
            try:
                message = {k: v for k, v in tensors.items() if k in MESSAGE_KEYS}
                self.checked[client] = self._compressor_for(client).decompress(message)  # aggregate reuses it
            except (MalformedUpload, RuntimeError, ValueError) as exc:
                return f"latent message does not decode: {exc}"
            return None
        layout = self.ctx.layout
        expected = dict(zip(layout.names, layout.shapes))
        snapshots = {k: v for k, v in tensors.items() if k.startswith(SNAP_UP)}
        for name, v in snapshots.items():
            inner = name[len(SNAP_UP) :].partition("/")[2]
            if inner not in expected or tuple(v.shape) != tuple(expected[inner]):
                return f"snapshot {name} does not fit the layout"
        return layout_mismatch({k: v for k, v in tensors.items() if k not in snapshots}, expected)

    def update_values(self, tensors: Tensors) -> Tensors:
        # A latent message's update is its codes and dense values; sizes and exponents are small
        # integers, the energies a report for the SNR column.
        if SIZE in tensors:
            return {k: tensors[k] for k in (CODES, DENSE_VALUES) if k in tensors}
        return tensors

    def _compressor_for(self, client: int) -> Compressor:
        """The server's decoder, or the copy a lossy downlink left this client with."""
        halves = self.client_halves.get(client)
        if halves is None:
            return self.compressor
        net = self._fresh_network()
        load_half(net, "encoder", halves[ENCODER])
        load_half(net, "decoder", halves.get(DECODER, half_vector(self.net, "decoder")))
        return Compressor(net, self.view, self.params.latent_bits)

    def aggregate(self, rnd: int, updates: list[ClientUpdate]) -> dict:
        metrics: dict = {"phase": "tgap" if self.in_tgap(rnd) else "faf"}
        signal = noise = 0.0
        paper, fractions, dense_units = [], [], 0
        for w, u in zip(self.weights(updates), updates):
            if SIZE in u.tensors:
                message = {k: v for k, v in u.tensors.items() if k in MESSAGE_KEYS}
                delta = self.checked.pop(u.client, None) or self._compressor_for(u.client).decompress(message)
                sizes = message[SIZE].tolist()
                dense_units += sum(1 for s in sizes if s < 0)
                sent = sum(self.view.samples_per_unit(unit) * s for unit, s in zip(self.view.units, sizes) if s > 0)
                sent += sum(math.prod(sh) for unit, s in zip(self.view.units, sizes) if s < 0 for sh in unit.shapes)
                fractions.append(sent / self.ctx.layout.numel)
                if ENERGY in u.tensors:
                    e = u.tensors[ENERGY].double().tolist()
                    signal, noise = signal + e[0], noise + e[1]
                    if math.isfinite(e[2]):
                        paper.append(e[2])
            else:
                delta = {k: v for k, v in u.tensors.items() if not k.startswith(SNAP_UP)}
                if not self.version:  # TGAP's, or a late one of TGAP's arriving after it
                    self.pool.add(rnd - u.staleness, u.client, delta)
                    for step, snap in _snapshots(u.tensors, SNAP_UP).items():
                        self.pool.add(rnd - u.staleness, u.client, snap, step)
            for k, d in delta.items():
                self.adapter[k] = self.adapter[k] + w * d
        if fractions:
            metrics["values_sent_fraction"] = sum(fractions) / len(fractions)
            metrics["dense_units"] = dense_units
        if signal > 0.0:
            metrics["snr_db"] = snr_db(signal, noise)
        if paper:
            metrics["snr_paper_db"] = sum(paper) / len(paper)
        if rnd >= self.tgap_rounds and not self.version and len(self.pool):
            metrics.update(self._train())
        self.checked = {}  # those of rejected uploads
        return metrics

    def _train(self) -> dict:
        p = self.params
        samples = self.pool.samples(self.compressor)
        metrics = train_autoencoder(
            self.net,
            samples,
            epochs=p.epochs,
            lr=p.lr,
            batch_size=p.batch_size,
            seed=self.ctx.seed * 1_000_003 + 6,
            max_samples=p.max_samples,
            pca_init=p.pca_init,
            eval_latent=self.fixed_latent,
        )
        self.pool.clear()  # TGAP's snapshots are not needed once the network has learned from them
        self.version += 1
        metrics["ae_encoder_params"] = count_params(self.net, "encoder")
        metrics["ae_decoder_params"] = count_params(self.net, "decoder")
        return metrics

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        state["cg/version"] = torch.tensor([self.version])
        state["cg/holders"] = torch.tensor(sorted(self.holders.items()), dtype=torch.int64).reshape(-1, 2)
        state["cg/encoder"] = half_vector(self.net, "encoder")
        state["cg/decoder"] = half_vector(self.net, "decoder")
        state.update(prefixed("cg/pool/", self.pool.state_dict()))
        state.update(nested("cg/client/", self.client_halves))
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.version = int(state["cg/version"][0])
        self.holders = {int(c): int(v) for c, v in state["cg/holders"].tolist()}
        load_half(self.net, "encoder", state["cg/encoder"])
        load_half(self.net, "decoder", state["cg/decoder"])
        self.pool.load_state_dict(unprefixed("cg/pool/", state))
        self.client_halves = {c: clone(h) for c, h in unnested("cg/client/", state).items()}

    # ---- client --------------------------------------------------------------------------------
    def client_receive(self, state: Tensors, message: Tensors | None, turn: ClientTurn | None = None) -> Tensors:
        message = message or {}
        if ENCODER in message:
            state[STATE_ENCODER] = message[ENCODER].clone()
            state.pop(STATE_DECODER, None)
            if DECODER in message:
                state[STATE_DECODER] = message[DECODER].clone()
        if self.ctx.layout.names[0] not in message:  # the adapter is still the initial one
            return self.ctx.init_adapter
        return {k: message[k] for k in self.ctx.layout.names}

    def client_upload(
        self, state: Tensors, start: Tensors, trained: Tensors, turn: ClientTurn | None = None
    ) -> Tensors:
        update = {k: trained[k] - start[k] for k in trained}
        if STATE_ENCODER not in state:  # TGAP: the exact update, and its earlier snapshots if asked for
            for step, snap in _snapshots(state, SNAPSHOT).items():
                update.update({f"{SNAP_UP}{step}/{k}": v - start[k] for k, v in snap.items()})
            return update
        p = self.params
        if p.error_feedback:
            update = {k: v + state.get(EF_PREFIX + k, torch.zeros_like(v)) for k, v in update.items()}
        net = self._fresh_network()
        load_half(net, "encoder", state[STATE_ENCODER])
        has_decoder = self.tied or STATE_DECODER in state  # tied weights: the encoder is the decoder
        if STATE_DECODER in state:
            load_half(net, "decoder", state[STATE_DECODER])
        encoded = Compressor(net, self.view, p.latent_bits).compress(
            update, latent=self.fixed_latent, min_snr_db=p.adaptive_snr_db, measure=has_decoder
        )
        message = dict(encoded.message)
        if has_decoder:
            paper = layer_snr_db(update, encoded.reconstruction)
            message[ENERGY] = torch.tensor([encoded.signal, encoded.noise, math.nan if paper is None else paper])
        if p.error_feedback:
            for k, v in update.items():
                state[EF_PREFIX + k] = v - encoded.reconstruction[k]
        return message


def _snapshots(tensors: Tensors, prefix: str) -> dict[int, Tensors]:
    """{step: {name: tensor}} from keys f"{prefix}{step}/{name}"."""
    out: dict[int, Tensors] = {}
    for key, v in tensors.items():
        if key.startswith(prefix):
            step, name = key[len(prefix) :].split("/", 1)
            out.setdefault(int(step), {})[name] = v
    return dict(sorted(out.items()))
