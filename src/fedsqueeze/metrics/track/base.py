"""The one interface every experiment tracker implements, and the scalars all of them get.

A sink is built with where it writes and who it is (`RunInfo`), then `start(config)` once per
process (a fresh run or a resume), `log(scalars, step)` once per step (step 0: the untrained
adapter's evaluation; step N: server round N), and `finish(summary)` when summary.json is written,
or `close()` when the process stops before that (--until, an error): the next resume goes on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class RunInfo:
    """Who the tracker run is: the same `run_id` on every resume (kept in DIR/track/state.json)."""

    folder: Path  # DIR/track: each sink writes under it
    run_id: str
    name: str
    project: str
    resumed_after: int | None  # None: a fresh run; else the last step this sink logged before


class Sink(Protocol):
    name: str

    def start(self, config: dict) -> None:
        """Opens (or reopens) the run with the resolved config as its hyperparameters."""

    def log(self, scalars: dict[str, float], step: int) -> None:
        """One step's scalars; written through (a crash loses nothing logged)."""

    def finish(self, summary: dict) -> None:
        """The run is complete: summary.json's figures, then closed."""

    def close(self) -> None:
        """Stops writing; the run stays open for a resume."""


PER_CLIENT_LIMIT = 16  # bytes per client only for rounds of at most this many clients (a chart each)
# Counts and constants, not figures to plot.
SKIPPED_METRICS = ("choice_n", "generate_n", "chance")


def record_scalars(record: dict, totals: dict[str, int]) -> dict[str, float]:
    """A rounds.jsonl record (or the base evaluation, step 0) as tracker scalars. `totals` holds
    the bytes of the rounds before this one and is updated (cumulative bytes up and down).

    bytes/{up,down}: this round; bytes/{up,down,total}_cumulative: since round 1;
    bytes_by_client/<id>/{up,down}: this round's, per client (rounds of up to 16 clients).
    train/loss; eval/loss (the mean over the sets judged) and eval_by_set/<set>/loss per owner's
    set; eval/<metric> (mean) and eval_by_set/<set>/<metric> for task metrics; eval/ood_loss (no
    name is both a leaf and a folder: MLflow's file store keeps each as a file);
    time/{round,train,aggregate,eval,sim}_seconds; privacy/epsilon; memory/peak_rss_mb;
    clients/aggregated."""
    out: dict[str, float] = {}
    if "bytes_up" in record:
        totals["up"] = totals.get("up", 0) + record["bytes_up"]
        totals["down"] = totals.get("down", 0) + record["bytes_down"]
        out["bytes/up"] = record["bytes_up"]
        out["bytes/down"] = record["bytes_down"]
        out["bytes/up_cumulative"] = totals["up"]
        out["bytes/down_cumulative"] = totals["down"]
        out["bytes/total_cumulative"] = totals["up"] + totals["down"]
    per_client = record.get("per_client") or {}
    if len(per_client) <= PER_CLIENT_LIMIT:
        for client, sent in per_client.items():
            out[f"bytes_by_client/{client}/up"] = sent.get("up", 0)
            out[f"bytes_by_client/{client}/down"] = sent.get("down", 0)
    if "clients" in record:
        out["clients/aggregated"] = len(record["clients"])
    if "train_loss" in record:
        out["train/loss"] = record["train_loss"]
    if "eval_loss" in record:
        out["eval/loss"] = record["eval_loss"]
        for name, loss in (record.get("eval") or {}).items():
            out[f"eval_by_set/{name}/loss"] = loss
    if record.get("ood_eval_loss") is not None:
        out["eval/ood_loss"] = record["ood_eval_loss"]
    for key, value in (record.get("eval_means") or {}).items():
        if key not in SKIPPED_METRICS:
            out[f"eval/{key}"] = value
    for name, metrics in (record.get("eval_metrics") or {}).items():
        for key, value in metrics.items():
            if key not in SKIPPED_METRICS:
                out[f"eval_by_set/{name}/{key}"] = value
    for key, label in (
        ("seconds", "round"),
        ("train_seconds", "train"),
        ("aggregate_seconds", "aggregate"),
        ("eval_seconds", "eval"),
        ("sim_seconds", "sim"),
    ):
        if key in record:
            out[f"time/{label}_seconds"] = record[key]
    if "epsilon" in record:
        out["privacy/epsilon"] = record["epsilon"]
    if "peak_rss_mb" in record:
        out["memory/peak_rss_mb"] = record["peak_rss_mb"]
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def base_scalars(base_eval: dict) -> dict[str, float]:
    """Step 0, the untrained adapter: the means summary.json keeps as base_eval_loss,
    base_eval_means and base_ood_eval_loss (eval/loss, eval/<metric>, eval/ood_loss)."""
    return {k: v for k, v in record_scalars(base_eval, {}).items() if k.startswith("eval/")}


def flat_config(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"train.lr": 5e-4, "lora.target": "['q_proj', 'v_proj']", ...}: scalars as they are, lists
    and empty tables as text (what every tracker's hyperparameter table takes)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[f"{prefix}{key}"] = value if value is not None else "none"
        else:
            out[f"{prefix}{key}"] = str(value)
    return out
