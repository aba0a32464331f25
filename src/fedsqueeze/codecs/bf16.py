"""bf16: every value as bfloat16 (fp32's range, 8 significant bits, round to nearest even).

Error bound: |x - x_hat| <= 2**-8 * |x| for normal |x| (>= 2**-126), <= 2**-134 below; magnitudes
beyond bf16's largest finite value (3.39e38) saturate there.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Values
from .wire import Reader, Writer

BF16_MAX = float(torch.finfo(torch.bfloat16).max)


class BF16(Values):
    """bfloat16; relative error <= 2**-8."""

    name = "bf16"
    value_bits = 16

    def encode(self, values: np.ndarray, lengths: np.ndarray, w: Writer, reconstruct: bool):
        # numpy has no bfloat16; torch rounds to nearest even, then we keep the 16 raw bits.
        clipped = np.clip(values, -BF16_MAX, BF16_MAX)
        raw = torch.from_numpy(clipped).to(torch.bfloat16).view(torch.int16).numpy().view("<u2")
        w.array(raw)
        return _widen(raw) if reconstruct else None

    def decode(self, r: Reader, lengths: np.ndarray) -> np.ndarray:
        return _widen(r.array("<u2", int(lengths.sum()), "bf16 values"))


def _widen(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)
