"""Package attributes that import their module on first use (PEP 562), so that checking a config
or a model name never pays for importing torch and transformers."""

from __future__ import annotations

from importlib import import_module


def lazy_attributes(package: str, where: dict[str, str]):
    """A module `__getattr__` for `package`: name -> the submodule that defines it."""

    def __getattr__(name: str):
        if name in where:
            return getattr(import_module(f".{where[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
