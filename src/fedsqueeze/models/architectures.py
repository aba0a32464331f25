"""Architectures shipped as config.json only (no weights): for sizing paper-scale runs from shapes
(`fedsqueeze size`, on the meta device) and for random-init speed and memory tests.

With `model.init = "pretrained"` an alias stands for its Hugging Face id, so a user with hub access
gets the real weights under the same name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from ..errors import UserError

CONFIGS = Path(__file__).with_name("configs")
HUB_IDS = {
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "qwen2-7b": "Qwen/Qwen2-7B",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
RANDOM_SEED = 1234  # every process builds the same random base model


def shipped(name: str) -> bool:
    return (CONFIGS / f"{name}.json").is_file()


def architecture_config(name: str) -> PretrainedConfig:
    """A shipped alias's config, the tiny model's, or any config.json AutoConfig finds (folder or hub id)."""
    if name == "tiny":
        from .tiny import tiny_config, tiny_tokenizer

        return tiny_config(len(tiny_tokenizer()))
    if shipped(name):
        raw = json.loads((CONFIGS / f"{name}.json").read_text())
        return AutoConfig.for_model(raw.pop("model_type"), **raw)
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"model.name {name!r}: no architecture config ({str(exc).strip().splitlines()[0]}); "
            f"allowed: a folder with config.json, a Hugging Face id, tiny, or one of "
            f"{', '.join(sorted(HUB_IDS))}"
        ) from None


def random_model(config: PretrainedConfig, dtype: torch.dtype, device: torch.device | str = "cpu"):
    """Seeded random weights, built directly on `device` (meta: shapes only, no memory)."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(RANDOM_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
