"""The pieces every codec is made of: stage kinds, declared parameters, the registry, PayloadError.

A codec is a chain of at most three stages, always in this order:

    structure  what to send of each tensor: all of it (implicit), a sparse subset with positions
               (topk, sparse) or with positions both ends draw (randk, seeded), or low-rank
               factors (lowrank). Produces float value segments
               plus the metadata needed to put them back.
    values     how each float is written: fp32 (implicit), fp16, bf16, narrow, grid, quantize.
    bytes      a lossless pass over the whole body: zstd.

So "topk(fraction=0.01) > quantize(bits=8) > zstd" keeps 1% of each tensor, writes those values with
8 bits, and zstd-compresses positions + codes. One stage file = one class + one line in registry.py's
CODECS catalog (so a config's stage names are checked without importing a stage).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ConfigError
from ..registry import CODECS
from .entry import Entry, PayloadError
from .wire import Reader, Writer

__all__ = [
    "CODECS",
    "Bytes",
    "Entry",
    "Param",
    "PayloadError",
    "Plan",
    "Stage",
    "Structure",
    "Values",
    "counter_state",
    "param",
]

# ---- parameters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One declared stage parameter: its type, default and allowed range or choices."""

    kind: type  # int, float, bool or str
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""

    def parse(self, codec: str, name: str, raw: Any) -> Any:
        value = self._convert(codec, name, raw)
        if self.choices and value not in self.choices:
            raise ConfigError(f"codec {codec!r}: {name} must be one of {', '.join(self.choices)}; got {raw!r}")
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            if self.high is None:
                allowed = f">= {self.low}"
            elif self.low is None:
                allowed = f"<= {self.high}"
            else:
                allowed = f"in [{self.low}, {self.high}]"
            raise ConfigError(f"codec {codec!r}: {name} must be {allowed}; got {raw!r}")
        return value

    def _convert(self, codec: str, name: str, raw: Any) -> Any:
        text = str(raw).strip()
        try:
            if self.kind is bool:
                if isinstance(raw, bool):
                    return raw
                if text.lower() in ("true", "1", "yes"):
                    return True
                if text.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            if self.kind is int:
                if isinstance(raw, bool) or isinstance(raw, float) and not raw.is_integer():
                    raise ValueError
                return int(raw) if isinstance(raw, (int, float)) else int(text, 0)
            if self.kind is float:
                value = float(raw) if isinstance(raw, (int, float)) else float(text)
                if not np.isfinite(value):
                    raise ValueError
                return value
            return text
        except ValueError:
            kind = {bool: "true or false", int: "an integer", float: "a number"}.get(self.kind, "a string")
            raise ConfigError(f"codec {codec!r}: {name} must be {kind}; got {raw!r}") from None

    def format(self, value: Any) -> str:
        if self.kind is bool:
            return "true" if value else "false"
        return repr(value) if self.kind is float else str(value)


def param(
    kind: type,
    default: Any,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] = (),
    help: str = "",
) -> Any:
    """Declares a stage parameter as a typed class attribute, the one way to declare one:

        fraction: float | None = param(float, 0.01, low=0.0, high=1.0, help="share of entries kept")

    Stage collects these into `params` (in order: the canonical spec text, which every blob
    carries, lists them so) and sets each on the instance from the spec. Typed as Any, as
    pydantic's Field is, so the annotation states the attribute's type."""
    return Param(kind, default, low, high, choices, help)


# ---- what stages exchange ---------------------------------------------------------------------


@dataclass
class Plan:
    """What a structure stage decided for a message.

    lengths: how many float values each segment holds (a structure may use several segments per
             tensor, e.g. lowrank's two factors, so that quantization blocks never mix them).
    values:  the flat concatenation of those segments (encoding side only).
    rebuild: flat values (possibly lossy) -> one flat float32 array per entry, owning its memory.
    """

    lengths: np.ndarray
    rebuild: Callable[[np.ndarray], list[np.ndarray]]
    values: np.ndarray | None = None


# ---- stages -----------------------------------------------------------------------------------


class Stage:
    name: ClassVar[str]
    kind: ClassVar[str]
    lossless: ClassVar[bool] = False
    params: ClassVar[dict[str, Param]] = {}

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        declared = {k: v for k, v in vars(cls).items() if isinstance(v, Param)}
        if declared:
            cls.params = {**cls.params, **declared}
            for key, p in declared.items():
                setattr(cls, key, p.default)  # the class shows the default; instances their value

    def __init__(self, **values: Any):
        for key, declared in self.params.items():
            setattr(self, key, values.get(key, declared.default))
        self._given = dict(values)  # what the spec named explicitly
        self.check()

    @classmethod
    def from_params(cls, raw: dict[str, Any]) -> Stage:
        unknown = [k for k in raw if k not in cls.params]
        if unknown:
            allowed = ", ".join(cls.params) or "none"
            raise ConfigError(f"codec {cls.name!r}: unknown parameter {unknown[0]!r}; allowed: {allowed}")
        return cls(**{k: cls.params[k].parse(cls.name, k, v) for k, v in raw.items()})

    def check(self) -> None:
        """Cross-parameter validation (raise ConfigError)."""

    def spec(self) -> str:
        """Canonical text: the name plus every parameter that differs from its default."""
        args = [
            f"{k}={p.format(getattr(self, k))}"
            for k, p in self.params.items()
            if getattr(self, k) is not None and getattr(self, k) != p.default
        ]
        return f"{self.name}({','.join(args)})" if args else self.name

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


class Structure(Stage):
    kind = "structure"
    value_bits: int = 32
    """The value stage's Values.value_bits, set by the Codec."""
    keeps_support: ClassVar[bool] = False
    """True: it sends exactly the input's non-zero positions (or a superset the receiver can derive),
    so error feedback must not add memory where the input is zero (sender.py)."""

    def use_markers(self, markers: dict[str, np.ndarray]) -> None:
        """The message's marker tensors (wire.MARKERS), told before each encode and decode; a stage
        that reads one (seeded's mask seed) keeps them for that call. Default: ignored."""

    def encode(self, entries: list[Entry], w: Writer) -> Plan:
        """Write this stage's metadata for all entries; return the values to send."""
        raise NotImplementedError

    def decode(self, entries: list[Entry], r: Reader) -> Plan:
        """Read and validate the metadata (before any allocation that the blob could inflate)."""
        raise NotImplementedError


class Values(Stage):
    kind = "values"

    @property
    def value_bits(self) -> int:
        """About how many bits a value costs (structures weigh values against positions with it)."""
        return getattr(self, "bits", 32)

    def encode(self, values: np.ndarray, lengths: np.ndarray, w: Writer, reconstruct: bool) -> np.ndarray | None:
        """Write `values` (flat float32 made of segments of `lengths`); return what the receiver
        will decode when `reconstruct` is set (error feedback needs it), else None."""
        raise NotImplementedError

    def decode(self, r: Reader, lengths: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Bytes(Stage):
    kind = "bytes"
    lossless = True

    def compress(self, body: bytes) -> bytes:
        raise NotImplementedError

    def decompress(self, data: memoryview, size: int) -> bytes:
        """Exactly `size` bytes or PayloadError; never produce more than `size`."""
        raise NotImplementedError


def counter_state(count: int) -> torch.Tensor:
    return torch.tensor([count], dtype=torch.int64)
