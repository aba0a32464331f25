"""What a client sends back after its round: the uplink blob and the facts the server needs about it.

A `Reply` is written by ClientRole (or by a remote client: runtime/flower/wire.py is its Flower form)
and read by ServerRole.receive, which checks it (`Reply.problem`) before anything else touches it: a
reply whose fields are missing, of the wrong type, non-finite or out of bounds is rejected with the
reason, as an undecodable blob is. Until checked, a reply that crossed a network may hold anything in
any field, so nothing reads a field before `problem` said it is sound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

PEAK_KEYS = ("peak_rss_mb", "peak_gpu_mb")
EVAL = "eval"  # the judged sums, nested in the plain form (Flower: their own MetricRecord)


@dataclass(frozen=True)
class Reply:
    blob: bytes | None
    """The uplink codec's blob; None: the method sent nothing this round."""
    num_examples: int
    """Training examples the client holds (the server checks it against the partition it built)."""
    steps: int
    """Local optimizer steps it ran (fewer than asked: partial work under a deadline)."""
    train_loss: float | None
    """Mean training loss over its steps; None: withheld (a clean statistic of the data under local DP)."""
    down_decode_s: float = 0.0
    up_encode_s: float = 0.0
    up_rel_error: float = 0.0
    """||upload - what the server decodes|| / ||upload||, from the codec's own reconstruction."""
    up_raw_bytes: int = 0
    """fp32 size of the upload before the codec."""
    peaks: dict[str, float] = field(default_factory=dict)
    """The client's memory peaks of the round (PEAK_KEYS)."""
    delay_s: float = 0.0
    """Fault `slow`: how long the reply is held back (never sent; the transport applies it)."""
    eval: dict[str, Any] | None = None
    """The train message asked it to judge (eval.ride): the owner's sums and counts of the adapter it
    received, on its own held-out split, before training (client_eval.score; checked by
    client_eval.sums_problem, apart from this reply's other fields). None: not asked."""

    # ---- the server's check ------------------------------------------------------------------
    def problem(self, local_steps: int, loss_withheld: bool = False) -> str | None:
        """Why this reply cannot be used, or None. local_steps: the most steps a client may run;
        loss_withheld: clients keep their train loss (local DP), so none may come."""
        if self.blob is not None and not isinstance(self.blob, bytes):
            return f"blob is {type(self.blob).__name__}, not bytes"
        why = _count("num_examples", self.num_examples, 0, None) or _count("steps", self.steps, 0, local_steps)
        if why:
            return why
        if loss_withheld:
            if self.train_loss is not None:
                return "sends a train_loss, which clients withhold under local differential privacy"
        elif self.train_loss is None:
            return "missing train_loss"
        else:
            why = _real("train_loss", self.train_loss, None)
        for name in ("down_decode_s", "up_encode_s", "up_rel_error"):
            why = why or _real(name, getattr(self, name), 0.0)
        why = why or _count("up_raw_bytes", self.up_raw_bytes, 0, None)
        if why:
            return why
        if not isinstance(self.peaks, dict):
            return f"peaks is {type(self.peaks).__name__}, not a mapping"
        for key, value in self.peaks.items():
            why = why or _real(str(key), value, 0.0)
        return why

    # ---- a plain form (checkpoints, the wire) -----------------------------------------------
    def fields(self) -> dict[str, Any]:
        """Every field but the blob, flat: peaks as their own keys; a withheld loss left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("blob", "peaks", "delay_s", "eval") or (f.name == "train_loss" and self.train_loss is None):
                continue
            out[f.name] = getattr(self, f.name)
        out.update(self.peaks)
        if self.delay_s:
            out["delay_s"] = self.delay_s
        if self.eval is not None:
            out[EVAL] = dict(self.eval)
        return out

    @classmethod
    def of_fields(cls, blob: bytes | None, values: dict[str, Any]) -> Reply:
        """The reply these fields describe, values as they came (missing counts as None; `problem`
        says what is wrong). The inverse of `fields`."""
        peaks = {k: values[k] for k in PEAK_KEYS if k in values}
        known = {f.name for f in fields(cls)} - {"blob", "peaks", EVAL}
        kwargs: dict[str, Any] = {k: values.get(k) for k in ("num_examples", "steps", "train_loss")}
        kwargs.update({k: values[k] for k in known - set(kwargs) if k in values})
        return cls(blob=blob, peaks=peaks, eval=values.get(EVAL), **kwargs)


def _count(name: str, value: Any, lo: int, hi: int | None) -> str | None:
    if value is None:
        return f"missing {name}"
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{name} is not an integer ({value!r})"
    if value < lo or (hi is not None and value > hi):
        return f"{name} = {value} is out of bounds [{lo}, {'inf' if hi is None else hi}]"
    return None


def _real(name: str, value: Any, lo: float | None) -> str | None:
    if value is None:
        return f"missing {name}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{name} is not a number ({value!r})"
    if not math.isfinite(value):
        return f"{name} is not finite ({value!r})"
    if lo is not None and value < lo:
        return f"{name} = {value!r} is negative"
    return None


@dataclass(frozen=True)
class Upload:
    """A client's reply as a transport delivers it to the server."""

    client: int
    origin: int
    """The round it trained in."""
    reply: Reply | None
    error: str | None = None
    """The client failed: nothing to use, and it is left out (reply None)."""
    gone: bool = False
    """With error: its node went away, maybe before it pulled the downlink."""


@dataclass
class Receipt:
    """What ServerRole.receive made of a round's uploads, for the round's record."""

    arrived: list[int] = field(default_factory=list)
    stale: dict[str, int] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)
    partial: dict[str, int] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
