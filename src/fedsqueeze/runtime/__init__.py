from .driver import Driver, NullProgress, Transport
from .local import LocalRuntime
from .registry import RUNTIMES, in_process
from .session import Session

__all__ = ["Driver", "LocalRuntime", "NullProgress", "RUNTIMES", "Session", "Transport", "in_process"]
