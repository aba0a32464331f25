"""grid: LOSSLESS. Writes each segment (one tensor's values) in `bits`-bit codes when its values lie on
a k-bit grid, c * 2**e with integer |c| <= L = 2**(bits-1) - 1, else in fp32; one tag byte per
segment says which.

For senders that round on purpose: FedSRD with download_bits = k rounds its broadcast delta with
`snap` (nearest, deterministic) and applies the rounded values itself, so clients stay bit-identical
while a value costs k bits; a message that is not on a grid (a catch-up state) still arrives bit for
bit. The scale is a power of two so that c * 2**e is exact in fp32 and this stage finds the grid
from the values alone (the smallest e with max |v| <= L * 2**e; any grid the sender used is a
multiple of it). Against a max/L scale that costs up to one bit of resolution. Error bound: exact
(a -0.0 arrives as 0.0).

Section layout: u8 tag per segment (0 fp32, 1 grid); i16 exponent e per grid segment; the grid
segments' codes c + L, `bits` bits each, packed as quantize packs them (LSB first, padding 0); the
fp32 segments' values.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from .base import PayloadError, StageParams, Values
from .quantize import pack_codes, unpack_codes
from .wire import Reader, Writer

FP32, GRID = 0, 1
MIN_EXPONENT = -160  # below the smallest subnormal (2**-149): every fp32 is a multiple of 2**-160


def max_exponent(bits: int) -> int:
    """The largest e for which L * 2**e is still a finite fp32."""
    return 129 - bits


def grid_exponent(values: np.ndarray, bits: int) -> int | None:
    """The smallest e with every value an integer multiple of 2**e of magnitude <= L * 2**e, or None."""
    levels = (1 << (bits - 1)) - 1
    v = np.asarray(values, np.float64)
    top = float(np.abs(v).max()) if v.size else 0.0
    if not np.isfinite(top):
        return None
    if top == 0.0:
        return 0
    _, e = np.frexp(top / levels)  # top / L in [2**(e-1), 2**e)
    e = int(e)
    while e > MIN_EXPONENT and top <= levels * 2.0 ** (e - 1):
        e -= 1
    while top > levels * 2.0**e:
        e += 1
    e = max(e, MIN_EXPONENT)
    if e > max_exponent(bits):
        return None
    codes = np.ldexp(v, -e)  # exact in float64
    return e if (codes == np.rint(codes)).all() else None


def snap(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x rounded to the nearest point of its own k-bit grid (scale 2**e, e the smallest with
    max |x| <= L * 2**e), in x's dtype: what `grid` then writes exactly."""
    levels = (1 << (bits - 1)) - 1
    flat = x.detach().to("cpu", torch.float64).reshape(-1)
    top = float(flat.abs().max()) if flat.numel() else 0.0
    if top == 0.0 or not np.isfinite(top):
        return x.clone()
    e = int(np.ceil(np.log2(top / levels)))
    while top > levels * 2.0**e:
        e += 1
    while top <= levels * 2.0 ** (e - 1):
        e -= 1
    e = max(e, MIN_EXPONENT)
    codes = torch.clamp(torch.round(flat * 2.0**-e), -levels, levels)
    out = (codes * 2.0**e + 0.0).to(x.dtype)  # + 0.0: no -0.0 (it would arrive as 0.0)
    return out.reshape(x.shape).to(x.device)


class GridParams(StageParams):
    bits: int = Field(8, ge=2, le=8, description="bits per value on the grid")


class Grid(Values):
    """k-bit codes for values on a power-of-two k-bit grid, else fp32; lossless."""

    name = "grid"
    lossless = True
    Params = GridParams
    params: GridParams

    def encode(self, values: np.ndarray, lengths: np.ndarray, w: Writer, reconstruct: bool):
        levels = (1 << (self.params.bits - 1)) - 1
        bounds = np.concatenate(([0], np.cumsum(lengths)))
        segments = [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        exps = [grid_exponent(s, self.params.bits) for s in segments]
        w.array(np.array([FP32 if e is None else GRID for e in exps], np.uint8))
        w.array(np.array([e for e in exps if e is not None], "<i2"))
        on_grid = [np.ldexp(s.astype(np.float64), -e) for s, e in zip(segments, exps) if e is not None]
        codes = np.rint(np.concatenate(on_grid)).astype(np.int64) + levels if on_grid else np.zeros(0, np.int64)
        w.array(pack_codes(codes.astype(np.uint8), self.params.bits))
        rest = [s for s, e in zip(segments, exps) if e is None]
        w.array(np.concatenate(rest).astype("<f4") if rest else np.zeros(0, "<f4"))
        return values if reconstruct else None

    def decode(self, r: Reader, lengths: np.ndarray) -> np.ndarray:
        levels = (1 << (self.params.bits - 1)) - 1
        tags = r.array("u1", lengths.size, "grid tags")
        if (tags > GRID).any():
            raise PayloadError(f"grid: unknown segment tag {int(tags.max())}")
        grid = tags == GRID
        exps = r.array("<i2", int(grid.sum()), "grid exponents").astype(np.int64)
        if exps.size and (exps.min() < MIN_EXPONENT or exps.max() > max_exponent(self.params.bits)):
            raise PayloadError(f"grid exponent outside [{MIN_EXPONENT}, {max_exponent(self.params.bits)}]")
        count = int(lengths[grid].sum())
        codes = unpack_codes(r.array("u1", (count * self.params.bits + 7) // 8, "grid codes"), self.params.bits, count)
        if codes.size and codes.max() > 2 * levels:
            raise PayloadError(f"grid code {int(codes.max())} above {2 * levels}")
        rest = r.array("<f4", int(lengths[~grid].sum()), "fp32 values")
        out = np.empty(int(lengths.sum()), np.float32)
        owner = np.repeat(np.arange(lengths.size), lengths)
        at_grid = grid[owner]
        scale = np.ldexp(1.0, np.repeat(exps, lengths[grid]))
        out[at_grid] = ((codes.astype(np.int64) - levels) * scale).astype(np.float32)
        out[~at_grid] = rest
        return out
