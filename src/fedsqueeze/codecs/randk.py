"""randk: keep k uniformly random entries per tensor; the positions are not sent.

Both ends regenerate them from an 8-byte message seed (derived from `seed` and a message counter, so
every message picks afresh: with error feedback, everything is sent eventually). The generator is
specified here (splitmix64 hashes, not a library RNG), so any two installs agree on the positions.

Parameters: fraction (default 0.1) or k; seed; scale (multiply kept values by n/k).
Error bound: scale=false: kept entries exact, ||x - x_hat|| <= ||x||. scale=true: unbiased
(E[x_hat] = x), |x_i - x_hat_i| <= max(1, n/k - 1) * |x_i|.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from ..errors import ConfigError
from .base import CODECS, Entry, Param, Plan, Structure, counter_state
from .sparsify import keep_count, scatter_rebuild
from .wire import Reader, Writer

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


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


def sample_positions(message_seed: int, numels: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Sorted distinct positions per entry: counts[i] of range(numels[i]), from the seed alone."""
    keep_most = counts > numels // 2  # then draw the smaller set of dropped positions instead
    need = np.where(keep_most, numels - counts, counts)
    drawn = _draw_distinct(message_seed, numels, need)
    out = []
    for i, picked in enumerate(drawn):
        if keep_most[i]:
            mask = np.ones(int(numels[i]), bool)
            mask[picked] = False
            picked = np.flatnonzero(mask)
        out.append(picked)
    return out


def _draw_distinct(message_seed: int, numels: np.ndarray, need: np.ndarray) -> list[np.ndarray]:
    """Per entry, the first need[i] distinct values of a hash stream mapped onto range(numels[i]).

    The stream of entry i is mix64(key_i + j * GOLDEN), j = 0, 1, ...; taking its first distinct
    values makes the answer independent of how many draws we make, so short entries simply retry
    with more draws and get the same prefix.
    """
    keys = np.array([mix64(message_seed ^ mix64(i + 1)) for i in range(len(numels))], np.uint64)
    result = [np.zeros(0, np.int64) for _ in range(len(numels))]
    todo = np.flatnonzero(need > 0)
    draws = need + need // 2 + 16
    while todo.size:
        d = draws[todo]
        owner = np.repeat(todo, d)
        j = np.arange(int(d.sum()), dtype=np.int64) - np.repeat(np.cumsum(d) - d, d)
        h = mix64_array(keys[owner] + j.astype(np.uint64) * np.uint64(GOLDEN))
        pos = (((h >> np.uint64(32)) * numels[owner].astype(np.uint64)) >> np.uint64(32)).astype(np.int64)
        _, first = np.unique((owner << 32) | pos, return_index=True)
        first.sort()  # back to draw order (draws are grouped by owner, owners ascending)
        own, pos = owner[first], pos[first]
        found = np.bincount(own, minlength=len(numels))
        rank = np.arange(own.size) - np.repeat(np.cumsum(found[todo]) - found[todo], found[todo])
        keep = rank < need[own]
        own, pos = own[keep], pos[keep]
        order = np.lexsort((pos, own))
        own, pos = own[order], pos[order]
        done = todo[found[todo] >= need[todo]]
        starts = np.searchsorted(own, done)
        for i, s in zip(done.tolist(), starts.tolist()):
            result[i] = pos[s : s + int(need[i])]
        todo = todo[found[todo] < need[todo]]
        draws[todo] *= 2
    return result


@CODECS.register("randk")
class RandK(Structure):
    """k seeded random entries, positions not sent; ||x - x_hat|| <= ||x|| (scale: unbiased)."""

    name = "randk"
    params = {
        "fraction": Param(float, 0.1, low=0.0, high=1.0),
        "k": Param(int, None, low=1),
        "seed": Param(int, 0, low=0, high=2**63 - 1),
        "scale": Param(bool, False, help="multiply kept values by n/k (unbiased)"),
    }

    def __init__(self, **values):
        super().__init__(**values)
        self.messages = 0

    def check(self) -> None:
        if "fraction" in self._given and self.k is not None:
            raise ConfigError("codec 'randk': give fraction or k, not both")
        if self.k is not None:
            self.fraction = None
        elif self.fraction <= 0:
            raise ConfigError("codec 'randk': fraction must be > 0")

    def _counts(self, entries: list[Entry]) -> np.ndarray:
        return np.array([keep_count(e.numel, self.fraction, self.k) for e in entries], np.int64)

    def _positions(self, entries: list[Entry], counts: np.ndarray, message_seed: int) -> list[np.ndarray]:
        return sample_positions(message_seed, np.array([e.numel for e in entries], np.int64), counts)

    def encode(self, entries: list[Entry], w: Writer) -> Plan:
        message_seed = mix64(mix64(self.seed) + self.messages + 1)
        self.messages += 1
        w.raw(struct.pack("<Q", message_seed))
        counts = self._counts(entries)
        per_entry = self._positions(entries, counts, message_seed)
        values = [e.array()[p] for e, p in zip(entries, per_entry)]
        if self.scale:
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
