"""An update -> the latent message (a few flat tensors) -> the update, lossy; the same code on
both ends, so the sender knows exactly what the receiver will rebuild.

Message (every entry a flat fp32 tensor; absent when it would be empty):
    cg.size   per unit: latent values kept per sample (k), ZERO for an all-zero unit, DENSE for a
              unit sent as is (adaptive fallback)
    cg.norm   per tensor: e such that the tensor / 2**e has max |x| in (1/2, 1] (the paper's decoder
              ends in tanh); ZERO_EXP for an all-zero tensor
    cg.step   per coded unit: e of the latent quantization step 2**e (only when latent_bits > 0)
    cg.codes  the latents, concatenated in unit order: integers in [-q, q], q = 2**(bits-1) - 1
    cg.dense  the DENSE units' values, concatenated
Scales are powers of two, so normalizing is exact and every value but the dense ones and
unquantized latents is a small integer: any lossless link carries the message exactly, and so do
fp16 / bf16 for latent_bits <= 8. Tensor names are not sent: both ends derive the units from the
adapter layout, which keeps the message a handful of named entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..tensors import Tensors
from .views import Unit

SIZE, NORM, STEP, CODES, DENSE_VALUES = "cg.size", "cg.norm", "cg.step", "cg.codes", "cg.dense"
MESSAGE_KEYS = (SIZE, NORM, STEP, CODES, DENSE_VALUES)
ZERO, DENSE = 0, -1
ZERO_EXP = -128
MAX_EXP = 127


class MalformedUpload(ValueError):
    """A cg-fedllm message whose entries do not fit the adapter layout and the network."""


@dataclass
class Encoded:
    message: Tensors
    reconstruction: Tensors
    signal: float
    """||G||^2 of what was compressed."""
    noise: float
    """||G - G_hat||^2, G_hat being exactly what the receiver rebuilds."""
    latent_values: int
    dense_values: int


def norm_exponent(t: torch.Tensor) -> int:
    m = float(t.abs().max()) if t.numel() else 0.0
    if not m > 2.0**-MAX_EXP or not math.isfinite(m):
        return ZERO_EXP
    e = math.ceil(math.log2(m))
    while 2.0**e < m:  # log2 rounding at the boundary
        e += 1
    return min(e, MAX_EXP)


def quantize(z: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """Codes and step exponent: z ~= codes * 2**e, |codes| <= 2**(bits-1) - 1 (bits 0: z as is)."""
    if bits == 0:
        return z.clone(), 0
    q = 2 ** (bits - 1) - 1
    m = float(z.abs().max()) if z.numel() else 0.0
    if m == 0.0:
        return torch.zeros_like(z), 0
    e = max(-MAX_EXP + 1, min(MAX_EXP, math.ceil(math.log2(m / q))))
    return torch.round(z / 2.0**e).clamp_(-q, q), e


class Compressor:
    """Encodes with `net.encode` (client) and rebuilds with `net.decode` (server, and the client
    when it checks its own SNR). `view` maps units to network samples (views.py)."""

    def __init__(self, net, view, latent_bits: int = 8):
        self.net = net
        self.view = view
        self.bits = latent_bits
        self.units: list[Unit] = view.units
        self.names = [n for u in self.units for n in u.names]

    # ---- sender --------------------------------------------------------------------------------
    @torch.no_grad()
    def compress(
        self, update: Tensors, latent: int | None = None, min_snr_db: float | None = None, measure: bool = True
    ) -> Encoded:
        """latent: values per sample to keep (None: the network's full latent).
        measure=False: the sender has no decoder, so nothing is rebuilt (reconstruction is empty and
        noise NaN); the adaptive mode needs it.
        min_snr_db: adaptive mode, per unit the smallest latent of the ladder whose reconstruction
        keeps ||G_u||^2 / ||G_u - G_hat_u||^2 >= 10^(min_snr_db/10), else the unit goes dense. Every
        unit meeting the bound means the whole update meets it."""
        sizes = self.net.latent_sizes
        if min_snr_db is not None:
            ladder = list(sizes) if self.net.nested else [sizes[-1]]
        else:
            ladder = [latent if latent is not None else sizes[-1]]
        ratio = None if min_snr_db is None else 10.0 ** (min_snr_db / 10.0)
        if ratio is not None and not measure:
            raise ValueError("the adaptive mode needs the decoder (measure=True)")
        size_out, norm_out, step_out, codes_out, dense_out = [], [], [], [], []
        recon: Tensors = {}
        signal = noise = 0.0
        latent_values = dense_values = 0
        for index, unit in enumerate(self.units):
            parts = [update[n].detach().float() for n in unit.names]
            exps = [norm_exponent(p) for p in parts]
            norm_out += exps
            unit_signal = sum(float((p.double() ** 2).sum()) for p in parts)
            signal += unit_signal
            if all(e == ZERO_EXP for e in exps):
                size_out.append(ZERO)
                recon.update({n: torch.zeros_like(p) for n, p in zip(unit.names, parts)})
                continue
            x = self.view.to_samples(unit, [_normalize(p, e) for p, e in zip(parts, exps)])
            z = self.net.encode(x, index)
            chosen = None
            for k in ladder:
                codes, step = quantize(z[:, :k], self.bits)
                if not measure:
                    chosen = (k, codes, step, [], math.nan)
                    break
                rebuilt = self._rebuild_unit(index, exps, codes, step)
                unit_noise = sum(float(((p.double() - r.double()) ** 2).sum()) for p, r in zip(parts, rebuilt))
                if ratio is None or unit_noise * ratio <= unit_signal:
                    chosen = (k, codes, step, rebuilt, unit_noise)
                    break
            if chosen is None:  # adaptive fallback: the unit as is (exact over a lossless link)
                size_out.append(DENSE)
                dense_out += [p.reshape(-1) for p in parts]
                dense_values += sum(p.numel() for p in parts)
                recon.update({n: p.clone() for n, p in zip(unit.names, parts)})
                continue
            k, codes, step, rebuilt, unit_noise = chosen
            size_out.append(k)
            if self.bits:
                step_out.append(step)
            codes_out.append(codes.reshape(-1))
            latent_values += codes.numel()
            noise += unit_noise
            recon.update(dict(zip(unit.names, rebuilt)))
        message = {SIZE: _floats(size_out), NORM: _floats(norm_out)}
        if step_out:
            message[STEP] = _floats(step_out)
        if codes_out:
            message[CODES] = torch.cat(codes_out).float()
        if dense_out:
            message[DENSE_VALUES] = torch.cat(dense_out).float()
        return Encoded(message, recon, signal, noise, latent_values, dense_values)

    # ---- receiver ------------------------------------------------------------------------------
    @torch.no_grad()
    def decompress(self, message: Tensors) -> Tensors:
        unknown = set(message) - set(MESSAGE_KEYS)
        if unknown:
            raise MalformedUpload(f"unexpected entries {sorted(unknown)}")
        sizes = _ints(message, SIZE, len(self.units))
        exps = _ints(message, NORM, len(self.names))
        if any(e != ZERO_EXP and not -MAX_EXP <= e <= MAX_EXP for e in exps):
            raise MalformedUpload("a normalization exponent is out of range")
        allowed = set(self.net.latent_sizes) | {ZERO, DENSE}
        if any(s not in allowed for s in sizes):
            raise MalformedUpload(f"latent sizes must be in {sorted(allowed)}")
        coded = sum(1 for s in sizes if s > 0)
        steps = _ints(message, STEP, coded if self.bits else 0)
        codes = _flat(message, CODES)
        dense = _flat(message, DENSE_VALUES)
        need_codes = sum(self.view.samples_per_unit(u) * s for u, s in zip(self.units, sizes) if s > 0)
        need_dense = sum(math.prod(sh) for u, s in zip(self.units, sizes) if s == DENSE for sh in u.shapes)
        if codes.numel() != need_codes or dense.numel() != need_dense:
            raise MalformedUpload(
                f"{codes.numel()} latent and {dense.numel()} dense values where the sizes "
                f"declare {need_codes} and {need_dense}"
            )
        if not (torch.isfinite(codes).all() and torch.isfinite(dense).all()):
            raise MalformedUpload("non-finite values")
        if self.bits and codes.numel() and float(codes.abs().max()) > 2 ** (self.bits - 1) - 1:
            raise MalformedUpload(f"latent codes exceed {self.bits} bits")
        out: Tensors = {}
        pos_exp = pos_code = pos_dense = step_i = 0
        for index, (unit, size) in enumerate(zip(self.units, sizes)):
            unit_exps = exps[pos_exp : pos_exp + len(unit.names)]
            pos_exp += len(unit.names)
            if size == ZERO:
                out.update({n: torch.zeros(sh) for n, sh in zip(unit.names, unit.shapes)})
            elif size == DENSE:
                for n, sh in zip(unit.names, unit.shapes):
                    count = math.prod(sh)
                    out[n] = dense[pos_dense : pos_dense + count].reshape(sh).clone()
                    pos_dense += count
            else:
                count = self.view.samples_per_unit(unit) * size
                unit_codes = codes[pos_code : pos_code + count].reshape(-1, size)
                pos_code += count
                step = steps[step_i] if self.bits else 0
                step_i += 1
                out.update(dict(zip(unit.names, self._rebuild_unit(index, unit_exps, unit_codes, step))))
        return out

    def _rebuild_unit(self, index: int, exps: list[int], codes: torch.Tensor, step: int) -> list[torch.Tensor]:
        z = codes * 2.0**step if self.bits else codes
        samples = self.net.decode(z, index)
        parts = self.view.from_samples(self.units[index], samples)
        return [p * (0.0 if e == ZERO_EXP else 2.0**e) for p, e in zip(parts, exps)]

    # ---- training data -------------------------------------------------------------------------
    def samples(self, update: Tensors) -> dict[int, torch.Tensor]:
        """The normalized network samples of an update per unit index (all-zero units left out)."""
        out = {}
        for index, unit in enumerate(self.units):
            parts = [update[n].detach().float() for n in unit.names]
            exps = [norm_exponent(p) for p in parts]
            if any(e != ZERO_EXP for e in exps):
                out[index] = self.view.to_samples(unit, [_normalize(p, e) for p, e in zip(parts, exps)])
        return out

    def full_latent_values(self) -> int:
        return sum(self.view.samples_per_unit(u) for u in self.units) * self.net.latent_sizes[-1]


def _normalize(t: torch.Tensor, e: int) -> torch.Tensor:
    return torch.zeros_like(t) if e == ZERO_EXP else t / 2.0**e


def _floats(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _flat(message: Tensors, key: str) -> torch.Tensor:
    t = message.get(key)
    return torch.zeros(0) if t is None else t.detach().float().reshape(-1)


def _ints(message: Tensors, key: str, count: int) -> list[int]:
    t = _flat(message, key)
    if t.numel() != count:
        raise MalformedUpload(f"{key} has {t.numel()} values, expected {count}")
    if not torch.isfinite(t).all() or not torch.equal(t, torch.round(t)):
        raise MalformedUpload(f"{key} must hold integers")
    return [int(v) for v in t.tolist()]
