"""`fedsqueeze report`: one markdown row per run directory, written beside two PNG plots.

The files go to `report/` beside the runs unless told otherwise, and an existing file is never
replaced without `overwrite` (`--overwrite`): the error names it before anything is written.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from .. import rundir
from ..errors import UserError
from .plots import ACCURACY_PLOT, KINDS, plot

MB = 1e6
TABLE = "report.md"
FILES = (TABLE, *(f"eval_loss_vs_{kind}.png" for kind in KINDS), ACCURACY_PLOT)


@dataclass
class Run:
    """One run directory as the report reads it: its summary, round records and flat config."""

    name: str
    summary: dict
    rows: list[dict]
    config: dict = field(default_factory=dict)
    finished: bool = True

    @property
    def method(self) -> str:
        return str(self.config.get("method") or self.summary.get("method", "?"))

    @classmethod
    def from_dir(cls, path: Path) -> Run:
        summary, rows = load_run(path)
        return cls(path.name, summary, rows, read_config(path), (path / rundir.SUMMARY).is_file())


def read_config(path: Path) -> dict:
    """config.toml flattened to dotted keys ({} when missing or unreadable)."""
    try:
        raw = tomllib.loads((path / rundir.CONFIG).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    flat: dict = {}

    def walk(tree: dict, prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(raw, "")
    return flat


def load_run(path: Path) -> tuple[dict, list[dict]]:
    summary_file = path / rundir.SUMMARY
    skipped: list[str] = []
    rows = rundir.read_rounds(path, skipped)
    for line in skipped:
        print(f"warning: {line}", file=sys.stderr)
    if not summary_file.is_file():
        if not rows:
            raise UserError(f"{path}: not a fedsqueeze run directory (no {rundir.SUMMARY} or {rundir.ROUNDS})")
        summary = {
            "method": f"{path.name} (unfinished)",
            "rounds": rows[-1]["round"],
            "bytes_up": sum(r["bytes_up"] for r in rows),
            "bytes_down": sum(r["bytes_down"] for r in rows),
            "seconds": sum(r["seconds"] for r in rows),
            "final_eval_loss": next((r["eval_loss"] for r in reversed(rows) if "eval_loss" in r), float("nan")),
        }
        summary["bytes_total"] = summary["bytes_up"] + summary["bytes_down"]
        return summary, rows
    return json.loads(summary_file.read_text()), rows


TASK_COLUMNS = (
    ("acc", "accuracy"),
    ("acc_se", "accuracy SE"),
    ("macro_f1", "macro-F1"),
    ("acc_norm", "acc_norm"),
    ("rougeL", "Rouge-L"),
    ("exact", "exact"),
)


def markdown_table(runs: list[Run]) -> str:
    base = next((r.summary for r in runs if r.summary["method"] == "fedavg"), None)
    tasks = [(k, label) for k, label in TASK_COLUMNS if any(k in r.summary.get("eval_means", {}) for r in runs)]
    lines = [
        "| run | method | MB up | MB down | MB total | traffic vs fedavg | final eval loss |"
        + "".join(f" {label} |" for _, label in tasks)
        + " seconds |",
        "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(tasks) + "---:|",
    ]
    for run in runs:
        s = run.summary
        ratio = f"{s['bytes_total'] / base['bytes_total']:.3f}" if base and base["bytes_total"] else "-"
        lines.append(
            f"| {run.name} | {s['method']} | {s['bytes_up'] / MB:.3f} | {s['bytes_down'] / MB:.3f} | "
            f"{s['bytes_total'] / MB:.3f} | {ratio} | {s['final_eval_loss']:.4f} | "
            + "".join(f"{s['eval_means'][k]:.3f} | " if k in s.get("eval_means", {}) else "- | " for k, _ in tasks)
            + f"{s['seconds']:.1f} |"
        )
    return "\n".join(lines)


def default_out(dirs: list[Path]) -> Path:
    """`report/` in the folder that holds the runs (their common parent)."""
    parents = [str(Path(d).resolve().parent) for d in dirs]
    return Path(os.path.commonpath(parents)) / "report"


@dataclass
class Report:
    """What `report` wrote: the markdown table and the paths of report.md and the PNGs."""

    table: str
    paths: list[Path]
    out: Path


def report(dirs: list[Path], out: Path | None = None, overwrite: bool = False) -> Report:
    if not dirs:
        raise UserError("report: name at least one run directory")
    runs = [Run.from_dir(Path(d)) for d in dirs]
    out = Path(out) if out is not None else default_out(dirs)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    if not overwrite:
        for name in FILES:
            if (out / name).exists():
                raise UserError(f"{out / name} exists: pass --overwrite to replace it, or another --out")
    table = markdown_table(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / TABLE).write_text(table + "\n")
    return Report(table, [out / TABLE, *plot(runs, out)], out)
