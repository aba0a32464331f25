"""The run directory contract (DESIGN.md §4): config.toml, rounds.jsonl, summary.json, adapter/, checkpoint/."""

from __future__ import annotations

import json
from pathlib import Path

from .config import Config

ROUNDS = "rounds.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.toml"


def check_free(out: Path, overwrite: bool) -> None:
    """Fails before any work if `out` holds a run and --overwrite was not given."""
    from .errors import UserError

    if not overwrite and out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty: use --overwrite, another --out, or `fedsqueeze resume {out}`")


def prepare(out: Path, cfg: Config, overwrite: bool) -> None:
    check_free(out, overwrite)
    if out.exists() and any(out.iterdir()):
        for name in (ROUNDS, SUMMARY, CONFIG):
            (out / name).unlink(missing_ok=True)
        import shutil

        for name in ("adapter", "checkpoint", "checkpoint.tmp", "checkpoint.old"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(cfg.to_toml())


def append_round(out: Path, record: dict) -> None:
    with open(out / ROUNDS, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_rounds(out: Path) -> list[dict]:
    path = out / ROUNDS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_rounds(out: Path, keep: int) -> None:
    """Drops round lines past the checkpoint (a crash after the line, before the checkpoint)."""
    rows = [r for r in read_rounds(out) if r["round"] <= keep]
    (out / ROUNDS).write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_summary(out: Path, summary: dict) -> None:
    (out / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
