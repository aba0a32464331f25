"""How a run executes: Session (what it is built from), Driver (the round), transports, RUNTIMES.

Names load on first use: the config checks `runtime.kind` against RUNTIMES without importing
the model stack (so a bad config or model name fails before torch and transformers load).
"""

from .. import rundir  # the run directory contract, re-exported for scripts
from ..lazy import lazy_attributes

_LAZY = {
    "Driver": "driver",
    "NullProgress": "progress",
    "Transport": "driver",
    "LocalRuntime": "local",
    "RUNTIMES": "registry",
    "Launch": "registry",
    "in_process": "registry",
    "Session": "session",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


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
