"""What the wire format and every stage share: one tensor of a message, and the error a bad blob raises.

Its own module so that base.py (stages) and wire.py (the blob) both import it and not each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class PayloadError(ValueError):
    """A blob that cannot be decoded safely (truncated, corrupt, lying about sizes, wrong layout)."""


@dataclass
class Entry:
    """One tensor of a message. `data` (flat float32, CPU, contiguous) is set on the encoding side only."""

    name: str
    shape: tuple[int, ...]
    numel: int
    data: torch.Tensor | None = None

    def tensor(self) -> torch.Tensor:
        """`data`, on the encoding side (where it is set)."""
        assert self.data is not None
        return self.data

    def array(self) -> np.ndarray:
        assert self.data is not None
        return self.data.numpy()
