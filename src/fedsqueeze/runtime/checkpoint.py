"""Round-granular checkpoints: everything stateful, so a resumed run is bit-identical.

Written after each finished round into checkpoint/ via a temporary folder + rename, so an
interrupted write never leaves a half checkpoint behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE = "state.safetensors"
META = "meta.json"


def save_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
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
    (tmp / META).write_text(json.dumps(meta, indent=1))
    old = run_dir / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    final = run_dir / "checkpoint"
    if not (final / META).is_file():
        old = run_dir / "checkpoint.old"  # crash between the two renames
        final = old if (old / META).is_file() else final
    return load_file(str(final / STATE)), json.loads((final / META).read_text())
