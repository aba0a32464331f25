"""lowrank: PowerSGD-style rank-r factors P (n x r, orthonormal) and Q (m x r), M_hat = P Q^T.

A tensor of shape (n, ...) is treated as an n x m matrix (m = numel / n). Per message and tensor:
P = orth(M Q), Q = M^T P (repeated `iterations` times), where Q starts from the previous message's
Q for that tensor (warm start, kept in state_dict) or from a seeded Gaussian. Tensors with fewer
than 2 dimensions, or where r (n + m) >= n m (the factors would not be smaller), go dense; both
ends decide that from the shape, so it costs no bytes.

Error bound: M_hat = P P^T M is the orthogonal projection of M onto span(P), so
||M - M_hat||_F <= ||M||_F, exact when rank(M) <= r (with a fresh, generic Q); dense tensors exact.
"""

from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np
import torch
from pydantic import Field

from .base import Entry, Plan, StageParams, Structure
from .wire import Reader, Writer


class LowRankParams(StageParams):
    rank: int = Field(4, ge=1, le=4096, description="rank of the factors (at most the tensor's smaller side)")
    iterations: int = Field(1, ge=1, le=16, description="power iterations per message")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seeds each tensor's first random factor")


class LowRank(Structure):
    """PowerSGD rank-r factors, warm-started; ||M - M_hat||_F <= ||M||_F, small tensors dense."""

    name = "lowrank"
    Params = LowRankParams
    params: LowRankParams

    def __init__(self, **values):
        super().__init__(**values)
        self.warm: dict[str, torch.Tensor] = {}

    def factor_shape(self, e: Entry) -> tuple[int, int, int] | None:
        """(n, m, r) when the tensor is sent as factors, None when it goes dense."""
        if len(e.shape) < 2 or e.numel == 0:
            return None
        n = e.shape[0]
        m = e.numel // n
        r = min(self.params.rank, n, m)
        return (n, m, r) if r * (n + m) < n * m else None

    def _lengths(self, entries: list[Entry]) -> np.ndarray:
        # Two segments per tensor (P and Q, or the dense values and nothing) so that a value stage
        # never puts an orthonormal P and a large-magnitude Q in one quantization block.
        lengths = []
        for e in entries:
            f = self.factor_shape(e)
            lengths += [e.numel, 0] if f is None else [f[0] * f[2], f[1] * f[2]]
        return np.array(lengths, np.int64)

    def encode(self, entries: list[Entry], w: Writer) -> Plan:
        parts: list[list[np.ndarray]] = [[e.array()] for e in entries]
        groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for i, e in enumerate(entries):
            f = self.factor_shape(e)
            if f is not None:
                groups[f].append(i)
        for (n, m, r), members in groups.items():  # batched power iteration per shape
            M = torch.stack([entries[i].tensor().view(n, m) for i in members])
            Q = torch.stack([self._start(entries[i].name, m, r) for i in members])
            for _ in range(self.params.iterations):
                P = torch.linalg.qr(M @ Q).Q
                Q = M.transpose(1, 2) @ P
            for row, i in enumerate(members):
                self.warm[entries[i].name] = Q[row].clone()
                parts[i] = [P[row].reshape(-1).numpy(), Q[row].reshape(-1).numpy()]
        flat = np.concatenate([p for ps in parts for p in ps]) if parts else np.zeros(0, np.float32)
        return Plan(self._lengths(entries), self._rebuild(entries), flat.astype(np.float32, copy=False))

    def decode(self, entries: list[Entry], r: Reader) -> Plan:
        return Plan(self._lengths(entries), self._rebuild(entries))

    def _start(self, name: str, m: int, r: int) -> torch.Tensor:
        q = self.warm.get(name)
        if q is not None and q.shape == (m, r) and bool(q.any()):
            # Only Q's span matters. Unit columns keep M @ Q near ||M|| instead of ||M||^2,
            # which overflows fp32 for large tensors' values.
            norms = q.norm(dim=0, keepdim=True)
            return q / torch.where(norms > 0, norms, 1.0)
        g = torch.Generator().manual_seed((self.params.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
        return torch.randn(m, r, generator=g)

    def _rebuild(self, entries: list[Entry]):
        def rebuild(values: np.ndarray) -> list[np.ndarray]:
            out, offset = [], 0
            for e in entries:
                f = self.factor_shape(e)
                if f is None:
                    out.append(np.array(values[offset : offset + e.numel], np.float32))
                    offset += e.numel
                    continue
                n, m, r = f
                P = values[offset : offset + n * r].reshape(n, r)
                Q = values[offset + n * r : offset + (n + m) * r].reshape(m, r)
                offset += (n + m) * r
                with np.errstate(all="ignore"):  # inf / NaN factors (only from such input) stay quiet
                    out.append(np.ascontiguousarray(P @ Q.T, np.float32).reshape(-1))
            return out

        return rebuild

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"q/{name}": q for name, q in self.warm.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.warm = {k[2:]: v.clone() for k, v in state.items() if k.startswith("q/")}
