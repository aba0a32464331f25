from .local import LocalRuntime, NullProgress
from .session import Session

__all__ = ["LocalRuntime", "NullProgress", "Session"]
