"""What a method's messages weigh from the layout alone: the types `fedsqueeze size` shares with
the methods that declare their rows (mixins.MessageSizes).

sizing.py (a face, above the methods) builds the model on the meta device and hands each method a
`SizingContext`; the method builds its messages from the layout's shapes and encodes them with
the real codec (`blob`), so a row is len() of a real blob, headers included. The types live here,
below sizing.py, because a method may not import the layer above it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..codecs import build_codec
from ..codecs.grid import snap
from ..codecs.wire import Message, message_tensors
from ..tensors import Layout, Tensors
from .lora_math import seeded_drop


@dataclass
class MessageSize:
    """One row of `fedsqueeze size`: one message per client per round, each way."""

    method: str
    """The row's label: the method's registry name first, then what sets this row apart."""
    up: int | None
    """Bytes per client per round; None: nothing travels or it depends on the data."""
    down: int | None
    note: str


@dataclass(frozen=True)
class SizingContext:
    """The run's LoRA layout and what a method needs to build its messages from shapes alone."""

    layout: Layout
    """The run's adapter layout (lora.r, lora.target)."""
    seed: int
    lora_r: int
    lora_alpha: float
    layout_at: Callable[[int, bool], Layout]
    """layout_at(rank, core): the layout at another rank, with an r x r core per layer where `core`
    (what the method's AdapterSpec declares), still built on the meta device."""

    def ones(self, layout: Layout | None = None) -> Tensors:
        """Every tensor of `layout` (default: the run's), all ones: any non-zero value sizes the same."""
        layout = layout or self.layout
        return {n: torch.ones(s) for n, s in zip(layout.names, layout.shapes)}

    def ending(self, suffix: str, layout: Layout | None = None) -> Tensors:
        """The tensors of `ones(layout)` whose names end with `suffix` (lora_math's A_, B_, R_SUFFIX)."""
        return {n: t for n, t in self.ones(layout).items() if n.endswith(suffix)}

    def blob(self, spec: str, tensors: Tensors, layout: Layout | None = None) -> int:
        """len() of the blob codec `spec` writes for `tensors` on `layout` (default: the run's)."""
        return len(build_codec(spec, layout or self.layout).encode(tensors))

    def seeded(self, tensors: Tensors, p: float, bits: int | None = None) -> Tensors:
        """`tensors` with a fraction `p` dropped by the seeded mask (lora_math.seeded_drop, seeded by
        `seed` and each name), snapped to a k-bit grid where `bits`, carrying the mask seed as the
        wire writes it (so the `seeded` stage sends the kept values only)."""
        out = {n: seeded_drop(t, p, self.seed, n) for n, t in tensors.items()}
        if bits:
            out = {n: snap(t, bits) for n, t in out.items()}
        return message_tensors(Message(out, mask_seed=self.seed))
