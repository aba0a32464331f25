"""narrow: LOSSLESS. Writes the values as bfloat16 (2 bytes) when every one of them is a bfloat16
value, else as fp32 (4 bytes); one tag byte says which.

For senders that round on purpose and want exactness kept: FedSRD with download_dtype="bf16" rounds
its broadcast delta to bfloat16 and applies the rounded values itself, so its deltas travel at 2
bytes per value while a message that is not bf16-exact (a late client's catch-up state) still
arrives bit for bit. Error bound: exact.
"""

from __future__ import annotations

import numpy as np

from .base import PayloadError, Values
from .wire import Reader, Writer

FP32, BF16 = 0, 1


class Narrow(Values):
    """bf16 when that is exact, else fp32; lossless."""

    name = "narrow"
    value_bits = 16
    lossless = True

    def encode(self, values: np.ndarray, lengths: np.ndarray, w: Writer, reconstruct: bool):
        bits = np.ascontiguousarray(values, "<f4").view("<u4")
        if not (bits & 0xFFFF).any():  # the low 16 bits of a bfloat16 value are zero
            w.u8(BF16)
            w.array((bits >> 16).astype("<u2"))
        else:
            w.u8(FP32)
            w.array(bits.view("<f4"))
        return values if reconstruct else None

    def decode(self, r: Reader, lengths: np.ndarray) -> np.ndarray:
        tag, count = r.u8("narrow value width"), int(lengths.sum())
        if tag == BF16:
            return (r.array("<u2", count, "bf16 values").astype(np.uint32) << 16).view(np.float32)
        if tag == FP32:
            return r.array("<f4", count, "fp32 values")
        raise PayloadError(f"narrow: unknown value width tag {tag}")
