"""GGUF -> dequantized fp32 transformers model, and its one-time conversion to safetensors."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def load_gguf(path: Path, dtype=torch.float32):
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tok


def convert_gguf(path: Path, out: Path) -> None:
    model, tok = load_gguf(path)
    # A GGUF-loaded model refuses save_pretrained until its quantization config is dropped;
    # the weights are already dequantized, so nothing is lost.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a crash mid-conversion never leaves a half cache
