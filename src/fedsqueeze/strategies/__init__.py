"""Method registry: name -> Method class. One file per method, one line here."""

from __future__ import annotations

from pydantic import ValidationError

from ..errors import ConfigError
from ..registry import Registry
from .base import ClientUpdate, Method, MethodContext, RunMode

METHODS: Registry[type[Method]] = Registry("method")


def _register() -> None:
    from .cg_fedllm import CGFedLLM
    from .fed_dare import FedDARE
    from .fedavg import FedAvg
    from .fedsrd import FedSRD, FedSRDe
    from .ffa_lora import FFALoRA
    from .flexlora import FlexLoRA
    from .gradualdiff import GradualDiff
    from .local import Centralized, Local

    for cls in (FedAvg, Local, Centralized, FedSRD, FedSRDe, FFALoRA, FedDARE, FlexLoRA, CGFedLLM, GradualDiff):
        METHODS.register(cls.name)(cls)


_register()


def build_method(name: str, params: dict, ctx: MethodContext) -> Method:
    cls = METHODS.get(name)
    try:
        p = cls.Params.model_validate(params)
    except ValidationError as exc:
        e = exc.errors()[0]
        key = "params." + ".".join(str(x) for x in e["loc"])
        allowed = ", ".join(cls.Params.model_fields) or "(none)"
        raise ConfigError(f"config key {key!r} for method {name!r}: {e['msg']}; allowed keys: {allowed}") from None
    return cls(p, ctx)


__all__ = ["METHODS", "Method", "MethodContext", "ClientUpdate", "RunMode", "build_method"]
