"""Name -> class registries, and the catalog of every method, codec stage and runtime.

A new method, codec stage or runtime is one file plus one line in the catalog below. A catalog line
names its object as "module:attribute" and nothing is imported until the object is asked for, so
checking a config's names (config.py, at the bottom of the layers) imports neither torch nor the
layers above. Tests and plugins may also register an object directly: `REGISTRY.register(name)(obj)`;
`extensions()` collects those registrations for a process that never imported their module (the
Flower simulation's ClientApps), which adds them as lazy entries (`Extensions.install`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, key: str | None = None, entries: dict[str, str] | None = None):
        """key: the config key that names an entry, for the error message; entries: name ->
        "module:attribute", imported on first use."""
        self.kind = kind
        self.key = key
        self._items: dict[str, T | str] = dict(entries or {})
        self._info: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[T], T]:
        """Decorator: `name` -> the object; `info`: facts about it a check may read without importing it."""

        def deco(obj: T) -> T:
            self.add(name, obj, **info)
            return obj

        return deco

    def add(self, name: str, obj: T | str, **info: Any) -> None:
        """`obj`: the object, or "module:attribute" to import on first use."""
        if name in self._items:
            if isinstance(self._items[name], str) and self._items[name] == target_of(obj):
                self._items[name] = obj  # a shipped extension's module, imported now, registering it again
                return
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = obj
        self._info[name] = info

    def check(self, name: str) -> None:
        """Raises ConfigError naming the allowed entries unless `name` is one (imports nothing)."""
        if name not in self._items:
            from .errors import ConfigError

            where = f"config key {self.key!r}: " if self.key else ""
            raise ConfigError(f"{where}unknown {self.kind} {name!r}; allowed: {', '.join(sorted(self._items))}")

    def get(self, name: str) -> T:
        self.check(name)
        obj = self._items[name]
        if isinstance(obj, str):
            module, _, attr = obj.partition(":")
            obj = getattr(import_module(module), attr)
            self._items[name] = obj
        return obj

    def info(self, name: str) -> dict[str, Any]:
        """The facts registered with `name` (imports nothing)."""
        self.check(name)
        return self._info.get(name, {})

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        """Every entry, imported."""
        return [(name, self.get(name)) for name in self.names()]

    def in_order(self) -> list[tuple[str, T]]:
        """Every entry, imported, in registration order (for registries whose order means something)."""
        return [(name, self.get(name)) for name in self._items]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# ---- the catalog --------------------------------------------------------------------------------
# One line per entry. Each target's own `name` equals its key here (tests/test_registry.py checks).

_S = "fedsqueeze.strategies."
METHODS: Registry[Any] = Registry(
    "method",
    key="method",
    entries={
        "fedavg": _S + "fedavg:FedAvg",
        "local": _S + "local:Local",
        "centralized": _S + "local:Centralized",
        "fedsrd": _S + "fedsrd:FedSRD",
        "fedsrd-e": _S + "fedsrd:FedSRDe",
        "ffa-lora": _S + "ffa_lora:FFALoRA",
        "fed-dare": _S + "fed_dare:FedDARE",
        "flexlora": _S + "flexlora:FlexLoRA",
        "cg-fedllm": _S + "cg_fedllm:CGFedLLM",
        "gradualdiff": _S + "gradualdiff:GradualDiff",
        "fed-sb": _S + "fed_sb:FedSB",
        "lora-xs": _S + "lora_xs:LoraXS",
    },
)
"""Method name -> strategies.base.Method subclass."""

_C = "fedsqueeze.codecs."
CODECS: Registry[Any] = Registry(
    "codec",
    entries={
        # structure
        "topk": _C + "topk:TopK",
        "randk": _C + "randk:RandK",
        "lowrank": _C + "lowrank:LowRank",
        "sparse": _C + "sparse:Sparse",
        "seeded": _C + "seeded:Seeded",
        "autoencoder": _C + "autoencoder:Autoencoder",
        # values
        "fp32": _C + "fp32:FP32",
        "fp16": _C + "fp16:FP16",
        "bf16": _C + "bf16:BF16",
        "narrow": _C + "narrow:Narrow",
        "grid": _C + "grid:Grid",
        "quantize": _C + "quantize:Quantize",
        # bytes
        "zstd": _C + "zstd:Zstd",
    },
)
"""Codec stage name -> codecs.base.Stage subclass."""

RUNTIMES: Registry[Any] = Registry("runtime", key="runtime.kind")
"""runtime.kind -> execute(cfg, out, launch) (runtime/registry.py). Info: `remote` (its clients run
elsewhere, so only a federated method can use it) and `until` (it can stop after a round)."""
RUNTIMES.add("local", "fedsqueeze.runtime.registry:run_local", remote=False, until=True)
RUNTIMES.add("flower-sim", "fedsqueeze.runtime.registry:run_flower_sim", remote=True, until=False)

_T = "fedsqueeze.metrics.track."
TRACKERS: Registry[Any] = Registry("tracker", key="track.to")
"""track.to name -> metrics.track Sink class. Info: `needs`, the module (and PyPI package) it imports."""
TRACKERS.add("tensorboard", _T + "tensorboard:TensorBoardSink", needs="tensorboard")
TRACKERS.add("wandb", _T + "wandb:WandbSink", needs="wandb")
TRACKERS.add("mlflow", _T + "mlflow:MlflowSink", needs="mlflow")

_F = "fedsqueeze.runtime.filters."
UPLOAD_FILTERS: Registry[Any] = Registry("upload filter")
"""Filter name -> factory(session, client) -> UploadFilter | None (runtime/filters/). The order is
the order around the upload: snapshots feed client_upload, local DP noises what it sees (or what it
chose), faults spoil what leaves; a filter registered later runs after these."""
UPLOAD_FILTERS.add("snapshots", _F + "snapshots:of")
UPLOAD_FILTERS.add("local-dp", _F + "local_dp:of")
UPLOAD_FILTERS.add("faults", _F + "faults:of")


# ---- extensions: entries registered outside the catalog, carried to another process -------------
REGISTRIES: dict[str, Registry[Any]] = {r.kind: r for r in (METHODS, CODECS, RUNTIMES, TRACKERS, UPLOAD_FILTERS)}
_CATALOG = {kind: set(r._items) for kind, r in REGISTRIES.items()}


def target_of(obj: Any) -> str | None:
    """The "module:attribute" that imports `obj` again in another process, or None (a lambda, a
    class defined inside a function)."""
    if isinstance(obj, str):
        return obj
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not module or module == "__main__" or not qualname.isidentifier():
        return None
    return f"{module}:{qualname}"


@dataclass(frozen=True)
class Extensions:
    """What this process registered beyond the catalog (a test file's method, a plugin's codec
    stage), as lazy entries another process can add: the Flower simulation's ClientApps run in
    other processes, which never imported the module that registered them."""

    entries: tuple[tuple[str, str, str, tuple[tuple[str, Any], ...]], ...] = ()
    """(registry kind, name, "module:attribute", info), in registration order."""
    paths: tuple[str, ...] = ()
    """Where those modules are found (sys.path entries of this process)."""

    def install(self) -> None:
        """Adds the entries not registered here yet (imported on first use, like the catalog's)."""
        for path in self.paths:
            if path not in sys.path:
                sys.path.append(path)
        for kind, name, target, info in self.entries:
            if name not in REGISTRIES[kind]:
                REGISTRIES[kind].add(name, target, **dict(info))


def extensions() -> Extensions:
    """This process's registrations beyond the catalog, for `Extensions.install` elsewhere.
    Entries whose object cannot be imported by name (lambdas, local classes) are left out."""
    entries, paths = [], []
    for kind, registry in REGISTRIES.items():
        for name, obj in registry._items.items():
            target = target_of(obj)
            if name in _CATALOG[kind] or target is None:
                continue
            entries.append((kind, name, target, tuple(registry._info.get(name, {}).items())))
            module = sys.modules.get(target.partition(":")[0])
            file = getattr(module, "__file__", None)
            if file:  # the sys.path entry its top-level package sits in
                depth = target.partition(":")[0].count(".") + (Path(file).name == "__init__.py")
                root = str(Path(file).resolve().parents[depth])
                if root not in paths:
                    paths.append(root)
    return Extensions(tuple(entries), tuple(paths))
