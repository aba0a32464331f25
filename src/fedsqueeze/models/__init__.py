"""Base model loading (HF id, folder, .gguf, aliases) and the LoRA adapter we swap per client."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import UserError
from .adapter import LoraAdapter, attach_lora

ALIASES = ("tiny", "smollm2-135m")


def load_base(name: str, log=print):
    """Returns (model, tokenizer) in fp32, eval mode, frozen."""
    if name == "tiny":
        from .tiny import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model(len(tok))
    elif name == "smollm2-135m":
        from .smollm2 import smollm2_dir

        model, tok = _load_pretrained(str(smollm2_dir(log)))
    elif name.endswith(".gguf"):
        from .gguf import load_gguf

        path = Path(name)
        if not path.is_file():
            raise UserError(f"model.name: GGUF file not found: {name}")
        model, tok = load_gguf(path)
    else:
        if ("/" in name and name.startswith((".", "/", "~"))) and not Path(name).expanduser().is_dir():
            raise UserError(f"model.name: folder not found: {name}")
        model, tok = _load_pretrained(str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), tok


def _load_pretrained(name_or_dir: str):
    try:
        tok = AutoTokenizer.from_pretrained(name_or_dir)
        model = AutoModelForCausalLM.from_pretrained(name_or_dir, dtype=torch.float32)
    except OSError as exc:  # hub unreachable, unknown id, missing files
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"model.name {name_or_dir!r}: cannot load ({first}); allowed: a Hugging Face id, "
                        f"a local folder, a .gguf file, or one of {', '.join(ALIASES)}") from None
    return model, tok


__all__ = ["ALIASES", "LoraAdapter", "attach_lora", "load_base"]
