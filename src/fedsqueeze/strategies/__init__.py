"""Methods: one file per method, one line in the catalog (registry.py's METHODS)."""

from __future__ import annotations

from pydantic import ValidationError

from ..errors import ConfigError
from ..registry import METHODS
from .base import AdapterSpec, ClientUpdate, Method, MethodContext, RunMode


def build_method(name: str, params: dict, ctx: MethodContext) -> Method:
    return METHODS.get(name)(validated_params(name, params), ctx)


def adapter_spec(name: str, params: dict, lora_r: int, lora_alpha: float) -> AdapterSpec:
    """The LoRA method `name` trains (asked before the model is built)."""
    return METHODS.get(name).adapter_spec(validated_params(name, params), lora_r, lora_alpha)


def validated_params(name: str, params: dict):
    cls = METHODS.get(name)
    try:
        p = cls.Params.model_validate(params)
    except ValidationError as exc:
        e = exc.errors()[0]
        key = "params." + ".".join(str(x) for x in e["loc"])
        allowed = ", ".join(cls.Params.model_fields) or "(none)"
        raise ConfigError(f"config key {key!r} for method {name!r}: {e['msg']}; allowed keys: {allowed}") from None
    return p


__all__ = [
    "METHODS",
    "AdapterSpec",
    "Method",
    "adapter_spec",
    "MethodContext",
    "ClientUpdate",
    "RunMode",
    "build_method",
]
