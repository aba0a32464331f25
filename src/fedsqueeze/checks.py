"""The one check step above the registries: what needs a method's or a codec stage's class, run
before any model or data loads (the CLI, api.py, the Flower ServerApp and Session.build call it).

config.validate has already checked the schema, every cross-key rule and every name against the
catalog without importing anything; this step adds, in order:
  method    its `params` (the method's Params model), every number in them finite
  runtime   a remote runtime (registry.py's RUNTIMES info) needs a federated method (check_remote,
            which the round driver also asks of a remote transport); --until only
            where the runtime can stop after a round; eval.at = clients / both needs a global adapter
  codecs    each configured chain's stage parameters and order, a lossless downlink where the
            method needs one, no `autoencoder` stage (no method trains its network in a run)
  track     every tracker in track.to registered and its package installed
  privacy   privacy/rules.py: refused and unproven combinations, the numbers a guarantee needs,
            told what it needs of the method by `method_dp` (the method's optional mixins)
Each mistake is a ConfigError (a UserError: exit 2) that names the key.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .config import Config
from .errors import ConfigError, UserError
from .registry import METHODS, RUNTIMES

if TYPE_CHECKING:
    from .privacy.rules import MethodDP


def check(cfg: Config, until: int | None = None) -> Config:
    """Raises ConfigError (or UserError for --until) for the first problem found; returns `cfg`."""
    from .strategies import validated_params

    method = METHODS.get(cfg.method)
    validated_params(cfg.method, cfg.params)
    _finite_params(cfg.params, "params")
    _runtime(cfg, method, until)
    from .data.owners import check_eval_at

    check_eval_at(cfg, method)  # eval.at = clients / both needs a global adapter
    _codecs(cfg, method)
    if cfg.track.to:
        from .metrics.track import check_sinks

        check_sinks(cfg.track.to)  # every tracker named and its package installed
    if cfg.privacy.mode != "none":
        from .privacy.rules import check as privacy_check

        privacy_check(cfg, method_dp(cfg))
    return cfg


def method_dp(cfg: Config) -> MethodDP:
    """What privacy/rules.py needs to know of the configured method, asked of its optional mixins
    (strategies/mixins.py): a CentralDP can run under central DP, PrivacyNotes say the rest."""
    from .privacy.rules import MethodDP
    from .strategies import validated_params
    from .strategies.mixins import CentralDP, PrivacyNotes

    cls = METHODS.get(cfg.method)
    params = validated_params(cfg.method, cfg.params)
    notes = cls if issubclass(cls, PrivacyNotes) else None
    refusal = notes.central_dp_refusal(params) if notes is not None else None
    if refusal is None and not issubclass(cls, CentralDP):
        refusal = "its aggregate is not declared as a function of the mean of per-client contributions"
    return MethodDP(
        federated=cls.mode.federated,
        central_refusal=refusal,
        upload_selection=notes.upload_selection(params) if notes is not None else None,
        local_problem=notes.local_dp_problem(params) if notes is not None else None,
    )


def _finite_params(value: Any, key: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key!r}: must be a finite number (got {value!r})")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite_params(v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite_params(v, f"{key}.{i}")


def _runtime(cfg: Config, method, until: int | None) -> None:
    info = RUNTIMES.info(cfg.runtime.kind)
    if info.get("remote", False):
        check_remote(cfg, method, repr(cfg.runtime.kind))
    if until is not None and not info.get("until", True):
        raise UserError(f'--until works with runtime.kind = "local"; on {cfg.runtime.kind}, stop the run and resume it')


def check_remote(cfg: Config, method, runtime: str) -> None:
    """A runtime whose clients run elsewhere needs a federated method. Config time asks it of a
    remote runtime.kind; the round driver asks it of every remote transport (a Flower Grid serves
    a config whatever its runtime.kind says). `runtime`: what the message calls the runtime."""
    if not method.mode.federated:
        raise ConfigError(
            f"config key 'runtime.kind': method {cfg.method!r} sends nothing over the wire (each client keeps its "
            f'own adapter, or all data is pooled), so {runtime} cannot run it; allowed: "local"'
        )


def _codecs(cfg: Config, method) -> None:
    from .codecs.chain import build_stages

    for link in ("uplink", "downlink"):
        spec = getattr(cfg, link).codec
        if spec is None:
            continue  # the method's default, its own to keep valid (tests/test_registry.py builds each)
        key = f"{link}.codec"
        if "autoencoder" in (name for name, _ in _stage_names(spec)):
            raise ConfigError(
                f"config key {key!r}: the 'autoencoder' stage sends the latents of a network no method trains in a "
                "run (both ends would hold the same untrained seeded network: relative error about 1, the model "
                'learns nothing); method = "cg-fedllm" trains and distributes its own. The stage is for '
                "`fedsqueeze codecs bench` with trained weights"
            )
        try:
            stages = build_stages(spec)
        except ConfigError as exc:
            raise ConfigError(f"config key {key!r}: {exc}") from None
        lossless = all(s.lossless for s in stages if s.kind in ("structure", "values"))
        if link == "downlink" and method.lossless_downlink and not lossless:
            raise ConfigError(
                f"config key 'downlink.codec': {cfg.method} keeps every client's adapter identical to "
                f"the server's, so its downlink must be lossless (got {spec!r}; e.g. sparse, fp32, or either > zstd)"
            )


def _stage_names(spec: str):
    from .codec_spec import parse_spec

    return parse_spec(spec)
