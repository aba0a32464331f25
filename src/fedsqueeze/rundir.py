"""The run directory contract (DESIGN.md §4): config.toml, rounds.jsonl, summary.json, adapter/, checkpoint/."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .config import Config

ROUNDS = "rounds.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.toml"
LOCK = ".lock"
"""Held (fcntl.flock, exclusive) by the one process writing the run: `run` and `resume` take it
before anything is written and remove it when done. It holds the writer's pid and host, so a
second writer is told whose it is. A lock file left by a dead process is stale: the kernel
dropped its flock with the process, and the next writer takes it over."""


@contextlib.contextmanager
def lock(out: Path, command: str) -> Iterator[None]:
    """Exclusive hold on run directory `out` for one writer (UserError naming the holder if another
    process holds it). Creates `out` if missing, and removes it again if nothing else was written."""
    import fcntl

    from .errors import UserError

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; name a new or existing run directory")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()
            raise UserError(
                f"{out} is being written by another fedsqueeze process ({holder}); two writers would interleave "
                f"its rounds: wait for it to finish, or use another --out"
            ) from None
        try:  # the file may have been removed by the holder that just released it: lock the current one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(record) + "\n").encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # releases the flock
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty: a run that failed before writing leaves nothing behind


def _holder(fd: int, patience: float = 2.0) -> str:
    """Who holds the lock, from its file. The holder writes its name just after taking the flock, so
    a writer started at the same moment may find the file still empty: it waits up to `patience`
    seconds for the name."""
    deadline = time.monotonic() + patience
    while True:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode())
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
            return f"pid {int(info['pid'])} on {info['host']}, `fedsqueeze {info['command']}` since {since}"
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError):
            if time.monotonic() >= deadline:
                return "its lock file names no holder yet"
            time.sleep(0.05)


def _entries(out: Path) -> list[Path]:
    """What `out` holds, less the lock file of the writer now holding it."""
    return [p for p in out.iterdir() if p.name != LOCK]


def check_free(out: Path, overwrite: bool) -> None:
    """Fails before any work if `out` holds a run and --overwrite was not given."""
    from .errors import UserError

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; name a new or existing run directory")
    if not overwrite and out.exists() and _entries(out):
        raise UserError(f"{out} is not empty: use --overwrite, another --out, or `fedsqueeze resume {out}`")


def prepare(out: Path, cfg: Config, overwrite: bool) -> None:
    check_free(out, overwrite)
    if out.exists() and _entries(out):
        for name in (ROUNDS, SUMMARY, CONFIG):
            (out / name).unlink(missing_ok=True)
        import shutil

        for name in ("adapter", "adapters", "checkpoint", "checkpoint.tmp", "checkpoint.old", "track"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(cfg.to_toml())


def append_round(out: Path, record: dict) -> None:
    with open(out / ROUNDS, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_rounds(out: Path, skipped: list[str] | None = None) -> list[dict]:
    """The round records; a line that is not a JSON object is left out and named in `skipped`."""
    path = out / ROUNDS
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and "round" in row:
            rows.append(row)
        elif skipped is not None:
            skipped.append(f"{path}: line {n} is not a round record ({line[:40]!r}): skipped")
    return rows


def rounds_problem(out: Path, records: list[dict]) -> str | None:
    """What is wrong with rounds.jsonl against the checkpoint's `records` (None: it holds them,
    perhaps with lines past them, from a crash before the checkpoint, or all but the last, from a
    crash between the checkpoint and its line)."""
    path = out / ROUNDS
    if not path.is_file():
        return "missing"
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    for i, record in enumerate(records):
        if i >= len(lines):
            if i == len(records) - 1:
                return None
            return f"holds {len(lines)} rounds, the checkpoint {len(records)}"
        try:
            row = json.loads(lines[i])
        except ValueError:
            return f"line {i + 1} is not JSON ({lines[i][:40]!r})"
        if not isinstance(row, dict):
            return f"line {i + 1} is not a round record ({lines[i][:40]!r})"
        if json.dumps(row, sort_keys=True) != json.dumps(record, sort_keys=True):
            return f"line {i + 1} (round {row.get('round')}) differs from the checkpoint's record"
    return None


def write_rounds(out: Path, records: list[dict]) -> None:
    (out / ROUNDS).write_text("".join(json.dumps(r) + "\n" for r in records))


def truncate_rounds(out: Path, keep: int) -> None:
    """Drops round lines past the checkpoint (a crash after the line, before the checkpoint)."""
    rows = [r for r in read_rounds(out) if r["round"] <= keep]
    (out / ROUNDS).write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_summary(out: Path, summary: dict) -> None:
    (out / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
