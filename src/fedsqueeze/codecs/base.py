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
from types import UnionType
from typing import Any, ClassVar, Literal, Union, cast, get_args, get_origin

import numpy as np
import torch
from annotated_types import Ge, Le
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from ..errors import ConfigError
from ..registry import CODECS
from .entry import Entry, PayloadError
from .wire import Reader, Writer

__all__ = [
    "CODECS",
    "Bytes",
    "Entry",
    "Knob",
    "PayloadError",
    "Plan",
    "Stage",
    "StageParams",
    "Structure",
    "Values",
    "counter_state",
]

# ---- parameters -------------------------------------------------------------------------------


class StageParams(BaseModel):
    """A stage's parameters, declared as every knob of the project is: a pydantic model whose
    fields carry a default, a description and their bounds (`ge=` / `le=`) or choices (a Literal):

        class TopKParams(StageParams):
            fraction: float | None = Field(0.01, ge=0.0, le=1.0, description="share of entries kept")

    The spec parser, the canonical spec text and `codecs list` read the fields (as `Knob`s), in
    order: the canonical spec text, which every blob carries, lists them so."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Knob:
    """One stage parameter as the spec parser and `codecs list` see it, read off its Params field:
    its type, default and allowed range or choices."""

    kind: type  # int, float, bool or str
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""

    @classmethod
    def of(cls, owner: str, name: str, field: FieldInfo) -> Knob:
        kind: Any = field.annotation
        if get_origin(kind) in (Union, UnionType):  # X | None: None means "not given" (topk's k)
            kind = next(a for a in get_args(kind) if a is not type(None))
        choices: tuple[str, ...] = ()
        if get_origin(kind) is Literal:
            choices, kind = tuple(get_args(kind)), str
        if kind not in (int, float, bool, str) or field.is_required():
            raise TypeError(f"stage {owner!r}: parameter {name!r} needs a default and one of int, float, bool, str")
        low: float | None = None
        high: float | None = None
        for bound in field.metadata:
            if isinstance(bound, Ge):
                low = cast(float, bound.ge)
            elif isinstance(bound, Le):
                high = cast(float, bound.le)
            else:
                raise TypeError(f"stage {owner!r}: parameter {name!r}: declare bounds with ge= and le= only")
        return cls(kind, field.default, low, high, choices, field.description or "")

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
    Params: ClassVar[type[StageParams]] = StageParams
    """Its parameters (a StageParams subclass); `self.params` holds the spec's values."""
    knobs: ClassVar[dict[str, Knob]] = {}
    """Params' fields as the spec parser and `codecs list` read them (derived, never declared)."""
    params: StageParams

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        cls.knobs = {k: Knob.of(cls.__name__, k, f) for k, f in cls.Params.model_fields.items()}

    def __init__(self, **values: Any):
        try:
            self.params = self.Params.model_validate(values)  # what the spec named: params.model_fields_set
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(str(x) for x in e["loc"])
            raise ConfigError(f"codec {self.name!r}: {where}: {e['msg']}") from None
        self.check()

    @classmethod
    def from_params(cls, raw: dict[str, Any]) -> Stage:
        unknown = [k for k in raw if k not in cls.knobs]
        if unknown:
            allowed = ", ".join(cls.knobs) or "none"
            raise ConfigError(f"codec {cls.name!r}: unknown parameter {unknown[0]!r}; allowed: {allowed}")
        return cls(**{k: cls.knobs[k].parse(cls.name, k, v) for k, v in raw.items()})

    def check(self) -> None:
        """Cross-parameter validation (raise ConfigError)."""

    def spec(self) -> str:
        """Canonical text: the name plus every parameter that differs from its default."""
        values = {k: getattr(self.params, k) for k in self.knobs}
        args = [
            f"{k}={knob.format(values[k])}"
            for k, knob in self.knobs.items()
            if values[k] is not None and values[k] != knob.default
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
        return getattr(self.params, "bits", 32)

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
