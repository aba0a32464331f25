"""randk: keep k uniformly random entries per tensor; the positions are not sent.

Both ends regenerate them from an 8-byte message seed (derived from `seed` and a message counter, so
every message picks afresh: with error feedback, everything is sent eventually). The generator is
specified here (a splitmix64-keyed Feistel permutation, not a library RNG), so any two installs
agree on the positions.

Parameters: fraction (default 0.1) or k; seed; scale (multiply kept values by n/k).
Error bound: scale=false: kept entries exact, ||x - x_hat|| <= ||x||. scale=true: unbiased
(E[x_hat] = x), |x_i - x_hat_i| <= max(1, n/k - 1) * |x_i|.
"""

from __future__ import annotations

import struct

import numpy as np
import torch
from pydantic import Field

from ..errors import ConfigError
from .base import Entry, Plan, StageParams, Structure, counter_state
from .sparsify import keep_count, scatter_rebuild
from .wire import Reader, Writer

MASK64 = (1 << 64) - 1


def mix64(x: int) -> int:
    """splitmix64's finalizer: a bijection on 64-bit integers."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def mix64_array(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


ROUNDS = 4
SMALL = 256  # up to here, rank hashes (exactly uniform); beyond, a Feistel permutation (O(k) work)


def sample_positions(message_seed: int, numels: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """counts[i] distinct uniformly spread positions of range(numels[i]), from the seed alone.

    Large entries: pi(0), ..., pi(k - 1) for a keyed permutation pi of range(n), a 4-round
    Feistel network on ceil(log2 n)-bit integers, walked until it lands below n (cycle walking
    keeps it a bijection on range(n)): distinct by construction, O(k) work, no sort. Entries of at
    most SMALL elements, where so few bits leave a Feistel network visibly non-uniform, keep the
    k positions with the smallest hashes instead. Pure integer arithmetic: every platform agrees.
    """
    n = np.asarray(numels, np.int64)
    counts = np.asarray(counts, np.int64)
    keys = np.array(
        [[mix64(message_seed ^ mix64((i + 1) * ROUNDS + r)) for r in range(ROUNDS)] for i in range(len(n))],
        np.uint64,
    ).reshape(len(n), ROUNDS)
    out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(n)
    small = np.flatnonzero((n <= SMALL) & (counts > 0))
    large = np.flatnonzero((n > SMALL) & (counts > 0))
    for group, sampler in ((small, _smallest_hashes), (large, _feistel)):
        if group.size:
            parts = sampler(n[group], counts[group], keys[group])
            for i, part in zip(group.tolist(), np.split(parts, np.cumsum(counts[group])[:-1])):
                out[i] = part
    return out


def _smallest_hashes(n: np.ndarray, counts: np.ndarray, keys: np.ndarray) -> np.ndarray:
    owner = np.repeat(np.arange(n.size), n)
    position = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    # mix64 is a bijection, so distinct positions get distinct hashes: no ties to break
    rank_key = mix64_array(keys[owner, 0] ^ position.astype(np.uint64))
    order = np.lexsort((rank_key, owner))
    rank = np.arange(order.size) - np.repeat(np.cumsum(n) - n, n)
    return position[order][rank < counts[owner]]


def _feistel(n: np.ndarray, counts: np.ndarray, keys: np.ndarray) -> np.ndarray:
    owner = np.repeat(np.arange(n.size), counts)
    x = (np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)).astype(np.uint64)
    bits = np.array([max(1, (int(v) - 1).bit_length()) for v in n.tolist()], np.uint64)
    limit = n.astype(np.uint64)[owner]
    x = _permute(x, bits[owner], keys[owner])
    pending = np.flatnonzero(x >= limit)
    while pending.size:
        x[pending] = _permute(x[pending], bits[owner[pending]], keys[owner[pending]])
        pending = pending[x[pending] >= limit[pending]]
    return x.astype(np.int64)


def _permute(x: np.ndarray, bits: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """A bijection on [0, 2**bits) per element: each round maps (hi, lo) to (lo, hi ^ F(lo))."""
    one = np.uint64(1)
    high = bits - bits // np.uint64(2)
    low = bits // np.uint64(2)
    for r in range(ROUNDS):
        hi, lo = x >> low, x & ((one << low) - one)
        f = mix64_array(lo ^ keys[:, r]) & ((one << high) - one)
        x = (lo << high) | (hi ^ f)
        high, low = low, high
    return x


class RandKParams(StageParams):
    fraction: float | None = Field(0.1, ge=0.0, le=1.0, description="share of entries kept")
    k: int | None = Field(None, ge=1, description="entries kept (instead of fraction)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seeds the positions both ends draw")
    scale: bool = Field(False, description="multiply kept values by n/k (unbiased)")


class RandK(Structure):
    """k seeded random entries, positions not sent; ||x - x_hat|| <= ||x|| (scale: unbiased)."""

    name = "randk"
    Params = RandKParams
    params: RandKParams

    def __init__(self, **values):
        super().__init__(**values)
        self.messages = 0

    def check(self) -> None:
        if "fraction" in self.params.model_fields_set and self.params.k is not None:
            raise ConfigError("codec 'randk': give fraction or k, not both")
        if self.params.k is not None:
            self.params.fraction = None
        elif self.params.fraction is None or self.params.fraction <= 0:
            raise ConfigError("codec 'randk': fraction must be > 0")

    def _counts(self, entries: list[Entry]) -> np.ndarray:
        return np.array([keep_count(e.numel, self.params.fraction, self.params.k) for e in entries], np.int64)

    def _positions(self, entries: list[Entry], counts: np.ndarray, message_seed: int) -> list[np.ndarray]:
        return sample_positions(message_seed, np.array([e.numel for e in entries], np.int64), counts)

    def encode(self, entries: list[Entry], w: Writer) -> Plan:
        message_seed = mix64(mix64(self.params.seed) + self.messages + 1)
        self.messages += 1
        w.raw(struct.pack("<Q", message_seed))
        counts = self._counts(entries)
        per_entry = self._positions(entries, counts, message_seed)
        values = [e.array()[p] for e, p in zip(entries, per_entry)]
        if self.params.scale:
            values = [v * np.float32(e.numel / max(len(v), 1)) for e, v in zip(entries, values)]
        flat = np.concatenate(values).astype(np.float32, copy=False) if values else np.zeros(0, np.float32)
        return Plan(counts, scatter_rebuild(entries, counts, per_entry), flat)

    def decode(self, entries: list[Entry], r: Reader) -> Plan:
        (message_seed,) = struct.unpack("<Q", r.take(8, "randk message seed"))
        counts = self._counts(entries)

        def rebuild(values: np.ndarray) -> list[np.ndarray]:
            # Sampling is O(n) work and memory: only once the values section has been validated.
            per_entry = self._positions(entries, counts, message_seed)
            return scatter_rebuild(entries, counts, per_entry)(values)

        return Plan(counts, rebuild)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"messages": counter_state(self.messages)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "messages" in state:
            self.messages = int(state["messages"][0])
