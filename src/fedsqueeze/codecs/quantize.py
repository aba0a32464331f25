"""quantize: b-bit codes (1..8) with a min/step pair per block of values, bit-packed.

Each block (`block` consecutive values of one segment; blocks never straddle two tensors or two
factors) is mapped onto 2**bits - 1 equal steps between its min and max:
    step = (max - min) / (2**bits - 1),  code = round((x - min) / step),  x_hat = min + code * step

Error bound, per value: |x - x_hat| <= step / 2 with rounding="nearest"; < step with
rounding="stochastic", which is also unbiased (E[x_hat] = x) and seeded (the same seed and message
sequence give the same blob). Both up to fp32 arithmetic (a few ulps of the block's magnitude).
Cost: bits/8 bytes per value plus 8 bytes per block.

Section layout: block mins (fp32), block steps (fp32), packed codes (ceil(n * bits / 8) bytes, LSB first).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from .base import PayloadError, StageParams, Values, counter_state
from .wire import Reader, Writer


class QuantizeParams(StageParams):
    bits: int = Field(8, ge=1, le=8, description="bits per code")
    block: int = Field(256, ge=1, le=2**20, description="values per min/step pair")
    rounding: Literal["nearest", "stochastic"] = Field("nearest", description="stochastic: unbiased, seeded")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="stochastic rounding seed")


class Quantize(Values):
    """b-bit codes with per-block min/step; error <= step/2 (nearest) or < step (stochastic, unbiased)."""

    name = "quantize"
    Params = QuantizeParams
    params: QuantizeParams

    def __init__(self, **values):
        super().__init__(**values)
        self.messages = 0  # advances the stochastic-rounding stream, one step per message

    def encode(self, values: np.ndarray, lengths: np.ndarray, w: Writer, reconstruct: bool):
        levels = (1 << self.params.bits) - 1
        block_lengths = split_blocks(lengths, self.params.block)
        if values.size == 0:
            return values if reconstruct else None
        starts = np.cumsum(block_lengths) - block_lengths
        lo = np.minimum.reduceat(values, starts)
        hi = np.maximum.reduceat(values, starts)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):  # free: NaN and inf reach min / max
            raise ValueError("quantize needs finite values; the input holds NaN or infinity")
        step = ((hi.astype(np.float64) - lo) / levels).astype(np.float32)
        # Divide rather than multiply by 1/step: 1/step overflows fp32 for subnormal steps.
        # A zero step (constant block) sends code 0 for every value, which decodes to the min.
        safe_step = np.where(step > 0, step, np.float32(1))

        which = np.repeat(np.arange(block_lengths.size), block_lengths)
        scaled = (values - lo[which]) / safe_step[which]
        if self.params.rounding == "stochastic":
            rng = np.random.Generator(np.random.PCG64([self.params.seed, self.messages]))
            scaled += rng.random(values.size, dtype=np.float32)
            np.floor(scaled, out=scaled)
        else:
            np.rint(scaled, out=scaled)
        self.messages += 1
        codes = np.clip(scaled, 0, levels).astype(np.uint8)

        w.array(lo.astype("<f4", copy=False))
        w.array(step.astype("<f4", copy=False))
        w.array(pack_codes(codes, self.params.bits))
        return lo[which] + codes * step[which] if reconstruct else None

    def decode(self, r: Reader, lengths: np.ndarray) -> np.ndarray:
        block_lengths = split_blocks(lengths, self.params.block)
        count = int(lengths.sum())
        nblocks = block_lengths.size
        # Every size below follows from the structure's (already validated) counts, and each read
        # checks the bytes are present before numpy touches them.
        lo = r.array("<f4", nblocks, "quantization block minima")
        step = r.array("<f4", nblocks, "quantization block steps")
        if not (np.isfinite(lo).all() and np.isfinite(step).all() and (step >= 0).all()):
            raise PayloadError("quantization block scales are not finite and non-negative")
        packed = r.array("u1", (count * self.params.bits + 7) // 8, "quantized codes")
        codes = unpack_codes(packed, self.params.bits, count)
        which = np.repeat(np.arange(nblocks), block_lengths)
        return lo[which] + codes * step[which]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"messages": counter_state(self.messages)} if self.params.rounding == "stochastic" else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "messages" in state:
            self.messages = int(state["messages"][0])


def split_blocks(lengths: np.ndarray, block: int) -> np.ndarray:
    """Block sizes when each segment is cut into blocks of `block` values (last one shorter)."""
    lengths = np.asarray(lengths, np.int64)
    per_segment = (lengths + block - 1) // block
    sizes = np.full(int(per_segment.sum()), block, np.int64)
    nonempty = per_segment > 0
    last = np.cumsum(per_segment)[nonempty] - 1
    sizes[last] = lengths[nonempty] - (per_segment[nonempty] - 1) * block
    return sizes


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return codes
    if 8 % bits == 0:  # 1, 2, 4 bits: whole codes per byte, shift and add
        per = 8 // bits
        padded = np.zeros(-(-codes.size // per) * per, np.uint8)
        padded[: codes.size] = codes
        shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
        return np.bitwise_or.reduce(padded.reshape(-1, per) << shifts, axis=1).astype(np.uint8)
    bit_rows = np.unpackbits(codes[:, None], axis=1, count=bits, bitorder="little")
    return np.packbits(bit_rows.reshape(-1), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    used_bits = count * bits
    if used_bits % 8 and packed[-1] >> (used_bits % 8):
        raise PayloadError("quantized codes have padding bits set")
    if bits == 8:
        return packed
    if 8 % bits == 0:
        per = 8 // bits
        shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
        codes = (packed[:, None] >> shifts) & np.uint8((1 << bits) - 1)
        return codes.reshape(-1)[:count]
    bit_rows = np.unpackbits(packed, count=used_bits, bitorder="little").reshape(count, bits)
    return np.packbits(bit_rows, axis=1, bitorder="little").reshape(-1)
