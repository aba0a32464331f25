"""Optional mixins: what a method declares only where it differs from what the runtime assumes.

`Method` (base.py) is the required surface: the server half, the client half and the model. The
runtime asks `isinstance(method, Mixin)` (or `issubclass` on the class, before anything is built)
for each of these and otherwise uses its own default:

  CentralDP, MeanOfDeltas  central DP can run its aggregate (privacy/central.py clips each
                           contribution, noises their sum and hands the method the noised mean);
                           without it privacy.mode = "central" is refused (privacy/rules.py)
  Admission                its uploads are not exactly the trained tensors of the layout; without
                           it the server admits those (runtime/admission.py's TrainedTensors)
  PrivacyNotes             what privacy/rules.py should know about its uploads: values chosen by
                           their own size, un-noised extras, why central DP cannot run it
  MessageSizes             its messages' bytes from the layout alone, as rows of `fedsqueeze size`
                           (sizing.py asks every registered method that defines them itself);
                           without it no row (nothing travels, or the bytes follow the data)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from ..tensors import Tensors

if TYPE_CHECKING:
    from .base import ClientUpdate
    from .sizes import MessageSize, SizingContext


class CentralDP(ABC):
    """A method whose aggregate central DP can run."""

    @abstractmethod
    def dp_contribution(self, update: ClientUpdate) -> Tensors:
        """The tensors of one client's contribution, such that this round's aggregate is a function
        of their uniform mean alone (clipped and noised by the server in between)."""

    @abstractmethod
    def dp_aggregate(self, rnd: int, mean: Tensors, updates: list[ClientUpdate]) -> dict:
        """The new global state from the noised mean of the contributions (`updates` only for who
        took part, never their values). Returns metrics for rounds.jsonl."""


class MeanOfDeltas(CentralDP):
    """Central DP for methods whose aggregate is global += the mean of the uploaded deltas."""

    adapter: Tensors

    def dp_contribution(self, update: ClientUpdate) -> Tensors:
        return dict(update.tensors)

    def dp_aggregate(self, rnd: int, mean: Tensors, updates: list[ClientUpdate]) -> dict:
        for k, v in mean.items():
            self.adapter[k] = self.adapter[k] + v.to(self.adapter[k].dtype)
        return {}


class Admission(ABC):
    """A method whose uploads the server checks its own way (the server checks every decoded upload
    before aggregate sees it; runtime/admission.py). Without this mixin an upload must be exactly
    the trained tensors of the layout, in their shapes (what the default `client_upload` sends)."""

    @abstractmethod
    def accepts(self, name: str, shape: tuple[int, ...]) -> bool:
        """Whether an upload may carry this tensor at all: the uplink decoder refuses any other
        before it allocates anything."""

    @abstractmethod
    def check_upload(self, rnd: int, client: int, tensors: Tensors) -> str | None:
        """Why this decoded upload cannot be aggregated, or None."""

    def update_values(self, tensors: Tensors) -> Tensors:
        """The tensors whose values are the update (checked finite, and their norm bounded).
        Default: all of them."""
        return tensors


class PrivacyNotes:
    """A method that tells privacy/rules.py more than whether it is a CentralDP. Class methods: the
    rules ask before anything is built, from the method's validated params."""

    @classmethod
    def central_dp_refusal(cls, params) -> str | None:
        """Why central DP cannot run this method (its own words; a method that is no CentralDP and
        says nothing here gets a generic reason), or None."""
        return None

    @classmethod
    def upload_selection(cls, params) -> str | None:
        """How client_upload chooses what it sends by the update's own values (say so: local DP's
        select-first order then leaks the positions); None: it sends all of it, or chooses blind."""
        return None

    @classmethod
    def local_dp_problem(cls, params) -> str | None:
        """What else, un-noised, leaves a client under local DP (noise-first), or None."""
        return None


class MessageSizes(ABC):
    """A method whose messages' size follows from the LoRA layout alone. `fedsqueeze size`
    (sizing.py) asks every registered method that is one, in the catalog's order, and prints the
    rows it returns; nothing else in the code names a method's rows."""

    @classmethod
    @abstractmethod
    def message_sizes(cls, params, at: SizingContext) -> list[MessageSize]:
        """One row per message variant worth showing, each labelled with the method's name first,
        built from `at`'s layout (or `at.layout_at(rank, core)` for another LoRA structure) and
        sized by the real codec (`at.blob`). `params`: the method's validated params (the run's
        own where the run is this method, else the defaults).

        Declared, never inherited: sizing.py asks only a class that defines `message_sizes` itself
        (`declares_sizes`), since a parent's rows carry the parent's name (FFA-LoRA, a FedAvg,
        declares its own; FedSRD-e, a FedSRD with the same messages, none)."""

    @classmethod
    def declares_sizes(cls) -> bool:
        """Whether this class itself defines `message_sizes` (its rows are its own)."""
        return "message_sizes" in vars(cls)
