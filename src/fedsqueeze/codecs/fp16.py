"""fp16: every value as an IEEE half (round to nearest even).

Error bound: |x - x_hat| <= 2**-11 * |x| for 2**-14 <= |x| <= 65504, <= 2**-25 below that
(subnormals); larger magnitudes saturate at +-65504 (LoRA updates are far below).
"""

from __future__ import annotations

import numpy as np

from .base import Values
from .wire import Reader, Writer

FP16_MAX = 65504.0


class FP16(Values):
    """IEEE half floats; relative error <= 2**-11 (saturates at 65504)."""

    name = "fp16"
    value_bits = 16

    def encode(self, values: np.ndarray, lengths: np.ndarray, w: Writer, reconstruct: bool):
        half = np.clip(values, -FP16_MAX, FP16_MAX).astype("<f2")
        w.array(half)
        return half.astype(np.float32) if reconstruct else None

    def decode(self, r: Reader, lengths: np.ndarray) -> np.ndarray:
        return r.array("<f2", int(lengths.sum()), "fp16 values").astype(np.float32)
