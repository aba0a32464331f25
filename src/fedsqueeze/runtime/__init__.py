"""How a run executes: Session (what it is built from), Driver (the round), transports, RUNTIMES.

Names load on first use: the config checks `runtime.kind` against RUNTIMES without importing
the model stack (so a bad config or model name fails before torch and transformers load).
"""

from .. import rundir  # the run directory contract, re-exported for scripts

_LAZY = {
    "Driver": "driver",
    "NullProgress": "driver",
    "Transport": "driver",
    "LocalRuntime": "local",
    "RUNTIMES": "registry",
    "Launch": "registry",
    "in_process": "registry",
    "Session": "session",
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Driver",
    "Launch",
    "LocalRuntime",
    "NullProgress",
    "RUNTIMES",
    "Session",
    "Transport",
    "in_process",
    "rundir",
]
