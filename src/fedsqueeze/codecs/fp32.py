"""fp32: every value as a 4-byte IEEE float. Error bound: exact (lossless)."""

from __future__ import annotations

import numpy as np

from .base import Values
from .wire import Reader, Writer


class FP32(Values):
    """4-byte IEEE floats; exact."""

    name = "fp32"
    lossless = True

    def encode(self, values: np.ndarray, lengths: np.ndarray, w: Writer, reconstruct: bool):
        w.array(values.astype("<f4", copy=False))
        return values if reconstruct else None

    def decode(self, r: Reader, lengths: np.ndarray) -> np.ndarray:
        return r.array("<f4", int(lengths.sum()), "fp32 values")
