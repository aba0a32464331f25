from .. import rundir  # the run directory contract, re-exported for scripts
from .driver import Driver, NullProgress, Transport
from .local import LocalRuntime
from .registry import RUNTIMES, Launch, in_process
from .session import Session

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
