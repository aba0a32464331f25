"""Round-granular checkpoints: everything stateful, so a resumed run is bit-identical.

Written after each finished round into checkpoint/ via a temporary folder + rename, so an
interrupted write never leaves a half checkpoint behind. SHA256SUMS holds a checksum per file:
a truncated, damaged or edited checkpoint is refused with the file named, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import tomllib
import torch
from safetensors.torch import load_file, save_file

from .. import rundir
from ..errors import UserError

STATE = "state.safetensors"
META = "meta.json"
SUMS = "SHA256SUMS"


def save_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], meta) -> None:
    """meta: the JSON metadata, or a function of the state file's size in bytes that returns it."""
    final = run_dir / "checkpoint"
    tmp = run_dir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Unchanged tensors may be shared between states (e.g. a frozen A): safetensors wants each once.
    seen: set[int] = set()
    flat = {}
    for k, v in tensors.items():
        v = v.detach().contiguous()
        ptr = v.untyped_storage().data_ptr()
        flat[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    save_file(flat, str(tmp / STATE))
    if callable(meta):
        meta = meta((tmp / STATE).stat().st_size)
    (tmp / META).write_text(json.dumps(meta, indent=1))
    sums = "".join(f"{_sha256(tmp / name)}  {name}\n" for name in (STATE, META))
    (tmp / SUMS).write_text(sums + f"{_sha256_text(sums)}  {SUMS}\n")  # its own line: damage to it is told apart
    old = run_dir / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_dir(run_dir: Path) -> Path:
    final = run_dir / "checkpoint"
    if not (final / META).is_file():
        old = run_dir / "checkpoint.old"  # crash between the two renames
        final = old if (old / META).is_file() else final
    return final


def read_meta(run_dir: Path) -> dict:
    """The checkpoint's metadata, its checksums verified (UserError naming the file otherwise)."""
    folder = _verified(checkpoint_dir(run_dir))
    try:
        return json.loads((folder / META).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{folder / META}: unreadable checkpoint metadata ({exc}); the checkpoint cannot be resumed"
        ) from None


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    meta = read_meta(run_dir)
    path = checkpoint_dir(run_dir) / STATE
    try:
        return load_file(str(path)), meta
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise UserError(f"{path}: unreadable checkpoint state ({exc})") from None


def _verified(folder: Path) -> Path:
    sums = folder / SUMS
    if not (folder / META).is_file():
        raise UserError(f"{folder}: no checkpoint to resume from ({META} is missing)")
    if not sums.is_file():
        return folder  # written before checksums existed
    for digest, name in _sums(sums):
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path}: missing from the checkpoint")
        if _sha256(path) != digest:
            raise UserError(f"{path}: fails its checksum (truncated or damaged); the checkpoint cannot be resumed")
    return folder


def _sums(path: Path) -> list[tuple[str, str]]:
    """SHA256SUMS's (digest, file) pairs for the state and meta files; UserError naming SHA256SUMS
    when it is itself damaged (a line of another form, a file it does not know, or its own line,
    the checksum of the lines above it, failing; files written before that line have none)."""
    damaged = f"{path}: damaged (%s); the checkpoint's files cannot be verified, so it cannot be resumed"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(damaged % f"unreadable: {exc}") from None
    lines = text.splitlines(keepends=True)
    pairs = []
    for n, line in enumerate(lines, 1):
        digest, _, name = line.rstrip("\n").partition("  ")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or name not in (STATE, META, SUMS):
            raise UserError(damaged % f"line {n} is not a checksum of a checkpoint file: {line.strip()[:80]!r}")
        if name == SUMS:
            if n != len(lines) or _sha256_text("".join(lines[:-1])) != digest:
                raise UserError(damaged % "its own checksum fails")
        else:
            pairs.append((digest, name))
    if sorted(name for _, name in pairs) != sorted((STATE, META)):
        raise UserError(damaged % f"it lists {sorted(name for _, name in pairs)}, not {STATE} and {META} once each")
    return pairs


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_resumable(out: Path, cfg, rebuild_rounds: bool = False) -> None:
    """Refuses, before any work, a resume from a damaged checkpoint, with a config that would
    continue another federation, model or method, or over a rounds.jsonl that lost rounds."""
    from ..config import resume_differences, validate

    meta = read_meta(out)
    if "config" not in meta:
        return  # a checkpoint from before these checks
    diffs = resume_differences(validate(tomllib.loads(meta["config"])), cfg)
    if diffs:
        raise UserError(
            f"{out}: cannot resume with a config that differs from its checkpoint's in "
            + "; ".join(diffs)
            + " (only train.rounds, eval.every, threads, device, precision, runtime.* and track.* may change)"
        )
    problem = rundir.rounds_problem(out, meta["records"])
    if problem and not rebuild_rounds:
        raise UserError(
            f"{out / rundir.ROUNDS}: {problem}; the checkpoint holds all {meta['round']} finished rounds: "
            f"`fedsqueeze resume {out} --rebuild-rounds` rewrites the file from it"
        )
