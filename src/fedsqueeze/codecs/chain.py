"""Codec: a chain of stages behind one encode / decode pair, plus the blob envelope."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..codec_spec import parse_spec
from ..errors import ConfigError
from ..tensors import Layout, Tensors
from . import wire
from .base import CODECS, Bytes, Entry, PayloadError, Stage, Structure, Values
from .dense import Dense
from .fp32 import FP32

Accepts = Callable[[str, tuple[int, ...]], bool]

ORDER = ("structure", "values", "bytes")
ROLE = {"structure": "sparsifier / low-rank", "values": "value encoding", "bytes": "byte compression"}


class Codec:
    """Tensors -> one blob -> tensors. Build with `build_codec(spec, layout)`.

    Stateful stages (lowrank's warm start, seeded streams' message counters) keep their state here;
    use one Codec per link end (Sender does) and save it with state_dict().
    """

    lossless: bool = False
    """True when the structure and value stages are both lossless."""

    def __init__(self, stages: list[Stage], layout: Layout, limits: wire.Limits | None = None):
        self.layout = layout
        self.limits = limits or wire.Limits()
        # Computed once (fingerprint hashing, name -> (index, shape)): per-message work over ~400
        # tensors adds up.
        self._layout_ref = wire.LayoutRef.of(layout)
        self._slots = {name: (i, tuple(shape)) for i, (name, shape) in enumerate(zip(layout.names, layout.shapes))}
        structure: Structure | None = None
        values: Values | None = None
        compressor: Bytes | None = None
        check_order(stages)
        for stage in stages:
            if isinstance(stage, Structure):
                structure = stage
            elif isinstance(stage, Values):
                values = stage
            else:
                assert isinstance(stage, Bytes)
                compressor = stage
        self.structure = structure or Dense()
        self.values = values or FP32()
        self.structure.value_bits = self.values.value_bits
        self.compressor = compressor
        self.spec = " > ".join(s.spec() for s in stages)
        self.wire_spec = ">".join(s.spec() for s in stages)
        self.name = self.spec
        self.lossless = all(s.lossless for s in (self.structure, self.values))

    def __repr__(self) -> str:
        return f"Codec({self.spec!r})"

    # ---- encoding -----------------------------------------------------------------------------
    def encode(self, tensors: Tensors) -> bytes:
        return self._encode(tensors, reconstruct=False)[0]

    def encode_and_reconstruct(self, tensors: Tensors) -> tuple[bytes, Tensors]:
        """The blob plus what decode(blob) will return, without decoding it (error feedback)."""
        blob, decoded = self._encode(tensors, reconstruct=True)
        assert decoded is not None
        return blob, decoded

    def _encode(self, tensors: Tensors, reconstruct: bool) -> tuple[bytes, Tensors | None]:
        markers = _markers(tensors)
        entries, by_fingerprint = self._entries({k: v for k, v in tensors.items() if k not in markers})
        body = wire.Writer()
        self.structure.use_markers(markers)
        plan = self.structure.encode(entries, body)
        assert plan.values is not None and plan.values.size == int(plan.lengths.sum())
        sent = self.values.encode(plan.values, plan.lengths, body, reconstruct)
        raw = body.getvalue()
        packed = self.compressor.compress(raw) if self.compressor else raw
        blob = wire.pack(self.wire_spec, self._layout_ref, entries, by_fingerprint, len(raw), packed, markers)
        if not reconstruct:
            return blob, None
        assert sent is not None  # Values.encode returns what is sent when asked to reconstruct
        return blob, self._tensors(entries, plan.rebuild(sent), markers)

    def _entries(self, tensors: Tensors) -> tuple[list[Entry], bool]:
        entries = []
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"tensor {name!r}: expected a floating-point torch.Tensor, got {type(t).__name__}")
            if not isinstance(name, str) or not 0 < len(name.encode()) <= wire.MAX_NAME_BYTES:
                raise ValueError(f"tensor name {name!r} must be a string of 1..{wire.MAX_NAME_BYTES} UTF-8 bytes")
            if t.ndim > wire.MAX_NDIM or t.numel() > wire.MAX_DIM:
                raise ValueError(f"tensor {name!r} of shape {tuple(t.shape)} is too large for one payload")
            data = t.detach().reshape(-1).to(device="cpu", dtype=torch.float32).contiguous()
            entries.append(Entry(name, tuple(t.shape), t.numel(), data))
        slots = self._slots
        by_fingerprint = all(e.name in slots and slots[e.name][1] == e.shape for e in entries)
        if by_fingerprint:  # the receiver will list them in layout order; so must we
            entries.sort(key=lambda e: slots[e.name][0])
        return entries, by_fingerprint

    # ---- decoding -----------------------------------------------------------------------------
    def decode(self, blob: bytes | bytearray | memoryview, accepts: Accepts | None = None) -> Tensors:
        """The tensors of `blob` (float32, CPU), or PayloadError saying what is wrong with it.
        accepts(name, shape): the tensors this end takes at all (e.g. the shared layout's); any
        other declared in the blob is refused before anything is allocated."""
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise TypeError(f"decode expects bytes, got {type(blob).__name__}")
        env = wire.unpack(blob, self._layout_ref, self.limits)
        if env.spec != self.wire_spec:
            raise PayloadError(f"blob was encoded with codec {env.spec!r}; this end decodes {self.wire_spec!r}")
        for e in env.entries:
            if e.numel > wire.MAX_DIM:
                raise PayloadError(f"tensor {e.name!r} declares {e.numel} elements (max {wire.MAX_DIM} per tensor)")
            if accepts is not None and not accepts(e.name, e.shape):
                raise PayloadError(f"tensor {e.name!r} of shape {e.shape} is not one this end accepts")
        ceiling = min(wire.max_body_size(env.entries), self.limits.max_blob_bytes)
        body: bytes | memoryview
        if self.compressor:
            if env.body_size > ceiling:
                raise PayloadError(f"body declares {env.body_size} bytes, more than these tensors can need ({ceiling})")
            body = self.compressor.decompress(env.body, env.body_size)
        else:
            if env.body_size != len(env.body):
                raise PayloadError(f"body declares {env.body_size} bytes but holds {len(env.body)}")
            body = env.body
        r = wire.Reader(body, "body")
        self.structure.use_markers(env.markers)
        plan = self.structure.decode(env.entries, r)
        values = self.values.decode(r, plan.lengths)
        r.done("the values")
        return self._tensors(env.entries, plan.rebuild(values), env.markers)

    @staticmethod
    def _tensors(entries: list[Entry], arrays: list[np.ndarray], markers: dict[str, np.ndarray]) -> Tensors:
        out = {e.name: torch.from_numpy(a).view(e.shape) for e, a in zip(entries, arrays)}
        out.update({name: torch.from_numpy(np.array(v, np.float32)) for name, v in markers.items()})
        return out

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {}
        for stage in (self.structure, self.values):
            state.update({f"{stage.name}/{k}": v for k, v in stage.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for stage in (self.structure, self.values):
            prefix = f"{stage.name}/"
            stage.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def _markers(tensors: Tensors) -> dict[str, np.ndarray]:
    """The reserved marker tensors of a message (wire.MARKERS), as flat float32 arrays."""
    out = {}
    for name, size in zip(wire.MARKERS, wire.MARKER_SIZES):
        t = tensors.get(name)
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.ndim != 1:
            raise ValueError(f"marker {name!r} must be a one-dimensional floating-point tensor")
        if t.numel() != size:
            raise ValueError(f"marker {name!r} holds {t.numel()} values, not {size}")
        out[name] = t.detach().to("cpu", torch.float32).numpy().copy()
    return out


def check_order(stages: list[Stage]) -> None:
    """ConfigError unless the stages come as sparsifier / low-rank > values > bytes, one of each at most."""
    for prev, stage in zip(stages, stages[1:]):
        if ORDER.index(stage.kind) <= ORDER.index(prev.kind):
            chain = " > ".join(s.spec() for s in stages)
            raise ConfigError(
                f"codec chain {chain!r}: {stage.name!r} ({ROLE[stage.kind]}) cannot follow {prev.name!r} "
                f"({ROLE[prev.kind]}); the order is sparsifier / low-rank > value encoding > byte compression, "
                f"at most one of each"
            )


def build_stages(spec: str) -> list[Stage]:
    """The stages of `spec` (codec_spec.py's grammar), each parameter and their order checked;
    needs no layout, so a config is checked before any model loads (checks.py)."""
    stages = [CODECS.get(name).from_params(params) for name, params in parse_spec(spec)]
    check_order(stages)
    return stages


def build_codec(spec: str, layout: Layout, limits: wire.Limits | None = None) -> Codec:
    """Parse `spec` (see codec_spec.py) into a Codec for `layout`; ConfigError names any mistake."""
    return Codec(build_stages(spec), layout, limits)
