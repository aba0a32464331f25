"""Privacy accounting with dp-accounting's RDP accountant (Google), never a formula of our own.

Adjacency: replace-one at the client level, i.e. two federations that differ in the whole data of
one client; the number of clients is public. That is the relation under which dp-accounting
analyses sampling without replacement (Wang, Balle and Kasiviswanathan 2019, Theorem 27), which is
how the driver samples: `train.clients_per_round` of `data.clients`, uniformly, without replacement
(all of them when clients_per_round is unset: q = 1).

central: one round = SampledWithoutReplacement(N, k, Gaussian(z)); `rounds` of them composed.
local:   one round a client takes part in = Gaussian(z) with no sampling amplification (the server
         knows whom it asked); the epsilon after t rounds is that of t of them, a bound for every
         client (one sampled in each round reaches it).
z is dp-accounting's noise multiplier: noise std over the L2 sensitivity of what is noised.
"""

from __future__ import annotations

from dataclasses import dataclass

import dp_accounting as dpa
from dp_accounting import mechanism_calibration as calib
from dp_accounting.rdp import rdp_privacy_accountant as rdp

from ..errors import ConfigError

NAME = "dp-accounting RDP (replace-one)"


@dataclass(frozen=True)
class Accounting:
    mode: str  # "central" | "local"
    clients: int
    per_round: int
    delta: float

    def event(self, z: float, rounds: int) -> dpa.DpEvent:
        one = dpa.GaussianDpEvent(z)
        if self.mode == "central":
            one = dpa.SampledWithoutReplacementDpEvent(self.clients, self.per_round, one)
        return dpa.SelfComposedDpEvent(one, rounds)

    def epsilon(self, z: float, rounds: int) -> float:
        """Epsilon at `delta` after `rounds` rounds (0 before the first)."""
        if rounds <= 0:
            return 0.0
        accountant = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
        return float(accountant.compose(self.event(z, rounds)).get_epsilon(self.delta))

    def calibrate(self, target: float, rounds: int) -> float:
        """The smallest noise multiplier (to 0.1%) whose epsilon after `rounds` is at most `target`:
        dp-accounting's own search (Brent's method over fresh accountants)."""

        def fresh():
            return rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)

        try:
            z = calib.calibrate_dp_mechanism(
                fresh,
                lambda z: self.event(z, rounds),
                target,
                self.delta,
                calib.LowerEndpointAndGuess(1e-3, 1.0),
                tol=1e-4,
            )
        except (calib.NoBracketIntervalFoundError, ValueError) as exc:
            raise ConfigError(
                f"config key 'privacy.target_epsilon': {target:g} cannot be reached for delta {self.delta:g} "
                f"after {rounds} rounds ({exc}); allowed: a larger epsilon or delta, or fewer rounds"
            ) from None
        while self.epsilon(z, rounds) > target:  # the search's tolerance may land just above
            z *= 1.001
        return float(z)
