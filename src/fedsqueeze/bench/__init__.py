"""`fedsqueeze bench`: the same pipeline, several methods, one table."""

from .runner import run_suite
from .suites import SUITES

__all__ = ["SUITES", "run_suite"]
