"""The implicit structure when a chain names none: every value of every tensor, in order."""

from __future__ import annotations

import numpy as np
import torch

from .base import Entry, Plan, Structure
from .wire import Reader, Writer


class Dense(Structure):
    name = "dense"
    lossless = True

    def encode(self, entries: list[Entry], w: Writer) -> Plan:
        flat = torch.cat([e.tensor() for e in entries]).numpy() if entries else np.zeros(0, np.float32)
        return Plan(self._lengths(entries), self._rebuild(entries), flat)

    def decode(self, entries: list[Entry], r: Reader) -> Plan:
        return Plan(self._lengths(entries), self._rebuild(entries))

    @staticmethod
    def _lengths(entries: list[Entry]) -> np.ndarray:
        return np.array([e.numel for e in entries], np.int64)

    @staticmethod
    def _rebuild(entries: list[Entry]):
        def rebuild(values: np.ndarray) -> list[np.ndarray]:
            ends = np.cumsum(Dense._lengths(entries))
            return [np.array(values[end - e.numel : end], np.float32) for e, end in zip(entries, ends.tolist())]

        return rebuild
