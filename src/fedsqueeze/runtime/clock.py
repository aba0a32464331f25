"""The simulated clock: how long each client's round trip takes under the configured network
(the in-process transport turns these into arrival times; the driver's CloseRule decides)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..config import NetworkConfig
from ..errors import ConfigError


def _per_client(value, n: int, key: str, allow_zero: bool = False) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, list) else [float(value)] * n
    if len(values) != n:
        raise ConfigError(f"config key 'network.{key}': {len(values)} values for {n} clients")
    if any(v < 0 or (v == 0 and not allow_zero) for v in values):
        raise ConfigError(f"config key 'network.{key}': values must be {'>=' if allow_zero else '>'} 0 (got {value})")
    return values


@dataclass
class ClientLink:
    compute: float
    up_bps: float
    down_bps: float
    latency_s: float


class NetworkModel:
    def __init__(self, cfg: NetworkConfig, n_clients: int, seed: int):
        compute = _per_client(cfg.compute, n_clients, "compute")
        up = _per_client(cfg.up_mbps, n_clients, "up_mbps")
        down = _per_client(cfg.down_mbps, n_clients, "down_mbps")
        lat = _per_client(cfg.latency_ms, n_clients, "latency_ms", allow_zero=True)
        rng = random.Random(f"{seed}/network")
        self.step_seconds = cfg.step_seconds
        self.links = []
        for c in range(n_clients):
            f = math.exp(rng.gauss(0.0, cfg.spread)) if cfg.spread else 1.0
            self.links.append(ClientLink(compute[c] * f, up[c] * 1e6 * f, down[c] * 1e6 * f, lat[c] / 1000.0))

    def round_trip(self, client: int, down_bytes: int, steps: int, up_bytes: int) -> float:
        """Download + local compute + upload, in simulated seconds."""
        link = self.links[client]
        seconds = steps * self.step_seconds / link.compute
        if down_bytes:
            seconds += link.latency_s + 8 * down_bytes / link.down_bps
        if up_bytes:
            seconds += link.latency_s + 8 * up_bytes / link.up_bps
        return seconds

    def steps_that_fit(self, client: int, seconds: float, down_bytes: int, up_bytes: int, steps: int) -> int:
        """How many of `steps` local steps let the client's round trip end within `seconds` (at least 1)."""
        spare = seconds - self.round_trip(client, down_bytes, 0, up_bytes)
        fit = math.floor(spare * self.links[client].compute / self.step_seconds + 1e-9)
        return max(1, min(steps, fit))
