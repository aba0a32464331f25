"""`fedsqueeze report`: one markdown row per run directory, plus PNG plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import rundir
from ..errors import UserError

MB = 1e6


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


def markdown_table(runs: list[tuple[str, dict, list[dict]]]) -> str:
    base = next((s for _, s, _ in runs if s["method"] == "fedavg"), None)
    lines = [
        "| run | method | MB up | MB down | MB total | traffic vs fedavg | final eval loss | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s, _ in runs:
        ratio = f"{s['bytes_total'] / base['bytes_total']:.3f}" if base and base["bytes_total"] else "-"
        lines.append(
            f"| {name} | {s['method']} | {s['bytes_up'] / MB:.3f} | {s['bytes_down'] / MB:.3f} | "
            f"{s['bytes_total'] / MB:.3f} | {ratio} | {s['final_eval_loss']:.4f} | {s['seconds']:.1f} |"
        )
    return "\n".join(lines)


def plot(runs: list[tuple[str, dict, list[dict]]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for kind in ("round", "mb"):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for name, _, rows in runs:
            pts, cum = [], 0
            for r in rows:
                cum += r["bytes_up"] + r["bytes_down"]
                if "eval_loss" in r:
                    pts.append((r["round"] if kind == "round" else cum / MB, r["eval_loss"]))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xlabel("round" if kind == "round" else "cumulative MB (up + down)")
        ax.set_ylabel("mean held-out eval loss")
        if kind == "mb":
            ax.set_xscale("symlog")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / f"eval_loss_vs_{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def report(dirs: list[Path], plot_dir: Path | None = None) -> tuple[str, list[Path]]:
    runs = []
    for d in dirs:
        summary, rows = load_run(d)
        runs.append((d.name, summary, rows))
    table = markdown_table(runs)
    target = plot_dir or (dirs[0] if len(dirs) == 1 else dirs[0].parent)
    target.mkdir(parents=True, exist_ok=True)
    return table, plot(runs, target)
