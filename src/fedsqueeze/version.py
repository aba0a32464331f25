"""The package's version, in the bottom layer so that anything may name it (model cards, trackers)."""

__version__ = "0.1.0"
