"""Which configurations keep the client-level guarantee, said once and enforced before anything
loads (checks.py calls `check`).

Two kinds of problems: a refusal (the combination cannot run under DP at all, or a key needs
another value) is always a ConfigError; an unproven combination (it runs, but some un-noised,
data-dependent information leaves the protected boundary) is a ConfigError unless
`privacy.allow_unproven = true`, and then summary.json says "no formal guarantee: <reasons>".
The reasons per method and codec are tabulated in docs/PRIVACY.md.

Two server settings are overridden rather than refused under central mode (a saved config.toml
names every key, so "set on purpose" cannot be told from a default): the aggregate weighs every
client the same (train.weighting), and server.norm_factor (rejecting an upload by the median of the
others' norms, which makes one client's admission depend on the others' data) is not applied.
The console line and summary.json say so.

What the rules need to know of the configured method is a MethodDP, which checks.py asks of the
method's class (its CentralDP and PrivacyNotes mixins, strategies/mixins.py): this package and
strategies/ sit side by side in the layers and do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..errors import ConfigError


@dataclass(frozen=True)
class MethodDP:
    """What the rules need to know of the configured method (checks.method_dp builds it)."""

    federated: bool
    """False: nothing leaves a client (personalized or pooled), so there is nothing to noise."""
    central_refusal: str | None = None
    """Why central DP cannot run it; None: it can (a CentralDP)."""
    upload_selection: str | None = None
    """How its upload chooses what it sends by the update's own values; None: it does not."""
    local_problem: str | None = None
    """What else, un-noised, leaves a client under local DP; None: nothing."""


def check(cfg, method: MethodDP) -> None:
    """Raises ConfigError for a refused privacy setup, or an unproven one not allowed."""
    refused = refusals(cfg, method)
    if refused:
        raise ConfigError("; ".join(refused))
    why = unproven(cfg, method)
    if why and not cfg.privacy.allow_unproven:
        raise ConfigError(
            f"privacy.mode = {cfg.privacy.mode!r} would give no formal guarantee: "
            + "; ".join(why)
            + " (set privacy.allow_unproven = true to run it anyway, labelled so in summary.json)"
        )
    z = noise_multiplier(cfg)  # an unreachable target_epsilon is a config error too
    p = cfg.privacy
    if p.adaptive_clipping:
        count_std = p.clipped_count_stddev if p.clipped_count_stddev is not None else per_round(cfg) / 20
        if count_std <= z:
            raise ConfigError(
                f"config key 'privacy.clipped_count_stddev': {count_std:g} must be above the noise multiplier "
                f"{z:.4g} for adaptive clipping to fit in the budget (1/z^2 = 1/z_sum^2 + 1/s^2); allowed: "
                f"> {z:.4g}, or privacy.adaptive_clipping = false"
            )


def refusals(cfg, method: MethodDP) -> list[str]:
    p = cfg.privacy
    out = []
    if p.delta is None:
        out.append(f"config key 'privacy.delta' is needed with privacy.mode = {p.mode!r} (e.g. 1e-5, below 1/clients)")
    if (p.noise_multiplier is None) == (p.target_epsilon is None):
        out.append(
            "config keys 'privacy.noise_multiplier' / 'privacy.target_epsilon': set exactly one "
            f"(got noise_multiplier = {p.noise_multiplier}, target_epsilon = {p.target_epsilon})"
        )
    if p.adaptive_clipping and p.mode != "central":
        out.append(
            "config key 'privacy.adaptive_clipping': only with privacy.mode = 'central' (a client adapting its "
            "own bound to its own norms would leak them)"
        )
    if p.order != "noise-first" and p.mode != "local":
        out.append("config key 'privacy.order': only with privacy.mode = 'local'; allowed here: noise-first")
    if not method.federated:
        out.append(
            f"config key 'privacy.mode': method {cfg.method!r} is not federated (nothing leaves a client, so "
            "there is nothing to noise); allowed: none"
        )
        return out
    if p.mode == "central":
        why = method.central_refusal
        if why:
            out.append(f"config key 'privacy.mode': 'central' cannot run method {cfg.method!r}: {why}; allowed: local")
    return out


def unproven(cfg, method: MethodDP) -> list[str]:
    """Why this (otherwise runnable) privacy setup has no formal guarantee; [] when it has one."""
    p = cfg.privacy
    if p.mode == "none":
        return []
    if not method.federated:
        return []
    out = _numbers(cfg)
    if p.mode == "central" and (cfg.hybrid.quorum < 1 or cfg.hybrid.deadline is not None):
        out.append(
            "hybrid.quorum < 1 or hybrid.deadline: late uploads join later rounds and busy clients are not "
            "sampled, so rounds are not the fixed-size uniform samples the accountant assumes"
        )
    if p.mode == "local":
        why = method.local_problem
        if why:
            out.append(why)
        if p.order == "select-first":
            selects = method.upload_selection
            if selects:
                out.append(
                    f"privacy.order = 'select-first': {cfg.method} {selects}, before the noise; only the kept "
                    "values are noised and their positions are sent in the clear"
                )
    return out


def _numbers(cfg) -> list[str]:
    """A guarantee whose own numbers say nothing: delta not below 1/owners (one owner's whole data
    may leak with probability delta), or an infinite epsilon (noise too small to account)."""
    import math
    import warnings

    p = cfg.privacy
    out = []
    owners = cfg.data.clients
    if p.delta is not None and p.delta >= 1 / owners:
        out.append(
            f"config key 'privacy.delta': {p.delta:g} is not below 1/owners (1/{owners} = {1 / owners:.3g}), so "
            "the mechanism may reveal one owner's whole data with probability delta; allowed: < 1/data.clients "
            "(e.g. 1e-5)"
        )
    if p.delta is not None and p.noise_multiplier is not None:
        from .accountant import Accounting

        with warnings.catch_warnings():  # dp-accounting divides by a zero sigma**2 on the way to inf
            warnings.simplefilter("ignore", RuntimeWarning)
            epsilon = Accounting(p.mode, owners, per_round(cfg), p.delta).epsilon(p.noise_multiplier, cfg.train.rounds)
        if not math.isfinite(epsilon):
            out.append(
                f"config key 'privacy.noise_multiplier': {p.noise_multiplier:g} is too small to account: epsilon "
                f"after {cfg.train.rounds} rounds is {epsilon} (no guarantee at all); allowed: a noise multiplier "
                "that gives a finite epsilon, or privacy.target_epsilon"
            )
    return out


def noise_multiplier(cfg) -> float:
    """The accountant's noise multiplier: the configured one, or calibrated to end at target_epsilon."""
    p = cfg.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    return _calibrated(p.mode, cfg.data.clients, per_round(cfg), p.delta, p.target_epsilon, cfg.train.rounds)


def per_round(cfg) -> int:
    k = cfg.train.clients_per_round
    return cfg.data.clients if k is None else k


@lru_cache(maxsize=32)
def _calibrated(mode, clients, k, delta, target, rounds) -> float:
    from .accountant import Accounting

    return Accounting(mode, clients, k, delta).calibrate(target, rounds)
