"""autoencoder: each unit of the message (a LoRA layer for arch=paper, a tensor for arch=row) goes as
the latent of an autoencoder (CG-FedLLM): the encoder runs on the sending end, the decoder on the
receiving end. A value stage after it writes the latent, e.g.
    "autoencoder(arch=row, latent=0.125) > quantize(bits=8) > zstd".

The network's weights are this stage's state (`state_dict` / `load_state_dict`, keys encoder and
decoder): both ends must hold the same ones. Without loaded weights both ends build the same seeded,
untrained network, so blobs round-trip but carry almost nothing; the cg-fedllm method trains the
network (TGAP) and distributes it itself (strategies/cg_fedllm.py).

Section: one int8 per tensor, the exponent e of its normalization 2**e (the tensor / 2**e has max
|x| in (1/2, 1]; -128: an all-zero tensor, sent as nothing). Values: one segment per unit, its
latent (samples x kept latent values), so a quantizer never mixes two units in a block.
Both ends derive the units, tiles and chunks from the tensors' names and shapes (autoencoder/views.py).

Error bound: none stated (a learned code); all-zero tensors are exact, and the error is whatever
the network leaves. Measure it: `fedsqueeze codecs bench`, or cg-fedllm's per-round SNR.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import numpy as np
import torch
from pydantic import Field

from ..autoencoder import build_network, build_view, half_vector, load_half
from ..autoencoder.compressor import ZERO_EXP, norm_exponent
from ..autoencoder.networks import row_latent_sizes
from ..errors import ConfigError
from .base import Entry, Plan, StageParams, Structure
from .wire import Reader, Writer


class AutoencoderParams(StageParams):
    # arch=tensor (one network per tensor) is cg-fedllm's alone: its weights depend on the layout.
    arch: Literal["paper", "row"] = Field(
        "paper", description="paper: conv AE on [A^T|B] tiles; row: linear AE on chunks"
    )
    chunk: int = Field(64, ge=4, le=1024, description="row: chunk length (power of two)")
    latent: float = Field(0.125, ge=0.0, le=1.0, description="row: latent values kept per chunk value")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="initial weights (until weights are loaded)")


class Autoencoder(Structure):
    """LoRA layers (paper) or tensors (row) as autoencoder latents; learned, no bound."""

    name = "autoencoder"
    Params = AutoencoderParams
    params: AutoencoderParams

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        p = self.params
        self.net = cast(Any, build_network(p.arch, p.chunk, p.seed))  # the arch's encode / decode
        self.keep: int = self.net.latent_sizes[-1] if p.arch == "paper" else round(p.latent * p.chunk)
        self._views: dict[tuple, object] = {}  # units per message layout, derived once

    def check(self) -> None:
        if self.params.chunk & (self.params.chunk - 1):
            raise ConfigError(f"codec 'autoencoder': chunk must be a power of two; got {self.params.chunk}")
        sizes = row_latent_sizes(self.params.chunk)
        if self.params.arch == "row" and round(self.params.latent * self.params.chunk) not in sizes:
            allowed = ", ".join(f"{k / self.params.chunk:g}" for k in sizes)
            raise ConfigError(f"codec 'autoencoder': latent must be one of {allowed} for chunk={self.params.chunk}")

    def _view(self, entries: list[Entry]):
        key = tuple((e.name, e.shape) for e in entries)
        if key not in self._views:
            self._views[key] = build_view(
                self.params.arch, [e.name for e in entries], [e.shape for e in entries], self.params.chunk
            )
        return self._views[key]

    def _lengths(self, view, exps: dict[str, int]) -> np.ndarray:
        return np.array(
            [
                0 if all(exps[n] == ZERO_EXP for n in u.names) else view.samples_per_unit(u) * self.keep
                for u in view.units
            ],
            np.int64,
        )

    @torch.no_grad()
    def encode(self, entries: list[Entry], w: Writer) -> Plan:
        view = self._view(entries)
        data = {e.name: e.tensor().view(e.shape) for e in entries}
        exps = {e.name: norm_exponent(data[e.name]) for e in entries}
        w.array(np.array([exps[e.name] for e in entries], np.int8))
        segments = []
        for unit in view.units:
            if all(exps[n] == ZERO_EXP for n in unit.names):
                continue
            parts = [torch.zeros_like(data[n]) if exps[n] == ZERO_EXP else data[n] / 2.0 ** exps[n] for n in unit.names]
            segments.append(self.net.encode(view.to_samples(unit, parts))[:, : self.keep].reshape(-1))
        values = torch.cat(segments).numpy() if segments else np.zeros(0, np.float32)
        return Plan(self._lengths(view, exps), self._rebuild(entries, view, exps), values.astype(np.float32))

    def decode(self, entries: list[Entry], r: Reader) -> Plan:
        view = self._view(entries)
        raw = r.array("int8", len(entries), "autoencoder normalization exponents")
        exps = {e.name: int(x) for e, x in zip(entries, raw.tolist())}
        return Plan(self._lengths(view, exps), self._rebuild(entries, view, exps))

    def _rebuild(self, entries: list[Entry], view, exps: dict[str, int]):
        lengths = self._lengths(view, exps)

        @torch.no_grad()
        def rebuild(values: np.ndarray) -> list[np.ndarray]:
            out: dict[str, np.ndarray] = {}
            offset = 0
            for unit, length in zip(view.units, lengths.tolist()):
                if length == 0:
                    out.update({n: np.zeros(int(np.prod(s)), np.float32) for n, s in zip(unit.names, unit.shapes)})
                    continue
                z = torch.from_numpy(np.array(values[offset : offset + length], np.float32)).reshape(-1, self.keep)
                offset += length
                parts = view.from_samples(unit, self.net.decode(z))
                for n, p in zip(unit.names, parts):
                    scale = 0.0 if exps[n] == ZERO_EXP else 2.0 ** exps[n]
                    out[n] = (p * scale).reshape(-1).numpy().astype(np.float32)
            return [out[e.name] for e in entries]

        return rebuild

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"encoder": half_vector(self.net, "encoder"), "decoder": half_vector(self.net, "decoder")}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for half in ("encoder", "decoder"):
            if half in state:
                load_half(self.net, half, state[half])
