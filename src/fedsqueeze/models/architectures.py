"""Architectures shipped as config.json only (no weights): for sizing paper-scale runs from shapes
(`fedsqueeze size`, on the meta device) and for random-init speed and memory tests.

With `model.init = "pretrained"` an alias stands for its Hugging Face id, so a user with hub access
gets the real weights under the same name.
"""

from __future__ import annotations

import json

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from ..errors import UserError
from .resolve import CONFIGS, shipped

RANDOM_SEED = 1234  # every process builds the same random base model


def architecture_config(name: str) -> PretrainedConfig:
    """A shipped alias's config, the tiny model's, or any config.json AutoConfig finds (folder or hub id)."""
    if name == "tiny":
        from .tiny import tiny_config, tiny_tokenizer

        return tiny_config(len(tiny_tokenizer()))
    if shipped(name):
        raw = json.loads((CONFIGS / f"{name}.json").read_text())
        return AutoConfig.for_model(raw.pop("model_type"), **raw)
    from .resolve import how_to_point, locate

    source = locate(name, "random")  # a folder, or a hub id the hub or its cache can serve; fails fast otherwise
    try:
        return AutoConfig.from_pretrained(source.target, local_files_only=source.local_only)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"model.name {name!r}: no architecture config ({str(exc).strip().splitlines()[0]}); {how_to_point()}"
        ) from None


def random_model(config: PretrainedConfig, dtype: torch.dtype, device: torch.device | str = "cpu"):
    """Seeded random weights, built directly on `device` (meta: shapes only, no memory)."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(RANDOM_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
