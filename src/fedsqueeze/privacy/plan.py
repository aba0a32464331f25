"""A run's privacy plan: the resolved noise, the accountant, and what the run may claim.

Adjacency and sensitivity (client-level, replace-one): two federations differ in the whole data of
one client. What is clipped is that client's contribution as the server aggregates it (its update,
or for FedSRD / FlexLoRA its full-rank product B_i A_i - B0 A0), to L2 norm C. Two contributions in
the ball of radius C differ by at most 2C, so the L2 sensitivity is

    central: of the round's sum of clipped contributions, 2C (one client replaced; k is fixed);
    local:   of one client's clipped update, 2C.

The Gaussian mechanism adds N(0, (z 2C)^2) per entry to that sum (central) or update (local), z the
accountant's noise multiplier; central mode then divides by the fixed k = clients per round, so
the noise on the mean has std z 2C / k (`noise_std`). Adaptive clipping (central) also releases
the number of unclipped clients with N(0, s^2) noise (sensitivity 1); the pair is one Gaussian
mechanism whose effective multiplier z satisfies 1/z^2 = 1/z_sum^2 + 1/s^2, so the sum gets
z_sum = (z^-2 - s^-2)^-1/2 and the accountant is run with z (as Andrew et al. 2021, for replace-one).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .accountant import NAME, Accounting
from .rules import MethodDP, _calibrated, unproven


@dataclass(frozen=True)
class Plan:
    mode: str
    delta: float
    z: float  # the accountant's noise multiplier
    z_sum: float  # what the sum (central) or update (local) is noised with
    count_std: float | None  # adaptive clipping: noise std on the unclipped count
    clip_norm: float
    accounting: Accounting
    rounds: int
    unproven: tuple[str, ...]
    noise_seed: int | None
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2

    @classmethod
    def of(cls, cfg, num_clients: int, method: MethodDP) -> Plan | None:
        p = cfg.privacy
        if p.mode == "none":
            return None
        k = min(cfg.train.clients_per_round or num_clients, num_clients)
        z = p.noise_multiplier
        if z is None:
            z = _calibrated(p.mode, num_clients, k, p.delta, p.target_epsilon, cfg.train.rounds)
        z_sum, count_std = z, None
        if p.adaptive_clipping:
            count_std = p.clipped_count_stddev if p.clipped_count_stddev is not None else k / 20
            if count_std <= z:
                raise ConfigError(
                    f"config key 'privacy.clipped_count_stddev': {count_std:g} must be above the noise multiplier "
                    f"{z:.4g} for adaptive clipping to fit in the budget (1/z^2 = 1/z_sum^2 + 1/s^2); allowed: "
                    f"> {z:.4g}, or privacy.adaptive_clipping = false"
                )
            z_sum = (z**-2 - count_std**-2) ** -0.5
        accounting = Accounting(p.mode, num_clients, k, p.delta)
        return cls(
            p.mode,
            p.delta,
            z,
            z_sum,
            count_std,
            p.clip_norm,
            accounting,
            cfg.train.rounds,
            tuple(unproven(cfg, method)),
            p.noise_seed,
            p.target_quantile,
            p.clip_learning_rate,
        )

    @property
    def per_round(self) -> int:
        return self.accounting.per_round

    def std(self, clip_norm: float) -> float:
        """Noise std per entry on the noised sum (central) or update (local): z_sum x 2C."""
        return self.z_sum * 2.0 * clip_norm

    def epsilon(self, rounds: int) -> float:
        return self.accounting.epsilon(self.z, rounds)

    @property
    def guarantee(self) -> str:
        if self.unproven:
            return "no formal guarantee: " + "; ".join(self.unproven)
        who = "noise added by the server" if self.mode == "central" else "each client noises its update"
        text = (
            f"client-level ({self.epsilon(self.rounds):.4g}, {self.delta:g})-DP after {self.rounds} rounds, "
            f"replace-one adjacency, {who}"
        )
        if self.noise_seed is not None:
            text += "; the noise comes from privacy.noise_seed, so anyone with the config can remove it (tests only)"
        return text

    def describe(self) -> str:
        where = "central (server noises the mean)"
        if self.mode == "local":
            where = "local (each client noises its update)"
        std = self.std(self.clip_norm) / (self.per_round if self.mode == "central" else 1)
        line = (
            f"privacy: {where} | noise multiplier {self.z:.4g} | clip {self.clip_norm:g} | noise std {std:.3g} "
            f"| ends at epsilon {self.epsilon(self.rounds):.4g} (delta {self.delta:g}, {NAME})"
        )
        if self.mode == "central":
            line += " | uniform weights, server.norm_factor not applied"
        if self.unproven:
            line += " | NO FORMAL GUARANTEE: " + "; ".join(self.unproven)
        return line

    def summary(self, rounds_done: int, clip_norm: float) -> dict:
        out = {
            "mode": self.mode,
            "delta": self.delta,
            "noise_multiplier": self.z,
            "clip_norm": self.clip_norm,
            "epsilon": self.epsilon(rounds_done),
            "accountant": NAME,
            "adjacency": "replace-one client",
            "sensitivity": 2.0 * clip_norm,
            "noise_std": self.std(clip_norm) / (self.per_round if self.mode == "central" else 1),
            "clients_per_round": self.per_round,
            "guarantee": self.guarantee,
            "reproducible_noise": self.noise_seed is not None,
        }
        if self.mode == "central":
            out.update(weighting="uniform", norm_factor_applied=False)
        if self.count_std is not None:
            out.update(final_clip_norm=clip_norm, sum_noise_multiplier=self.z_sum, clipped_count_stddev=self.count_std)
        return out
