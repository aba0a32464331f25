"""Base models and the LoRA adapter we swap per client.

    locate(name, init) -> Source     what model.name points at (resolve.py; no torch, fails fast)
    load_base(name, ...)             (model, tokenizer), frozen (loading.py)
    build_model(cfg, placement)      the base with the run's seeded LoRA, on its device
    LoraAdapter, attach_lora         read / write the adapter's tensors by name (adapter.py)

Names resolve without importing torch or transformers, so a mistyped model.name fails in a
fraction of a second; the rest loads on first use.
"""

from __future__ import annotations

from ..lazy import lazy_attributes
from .resolve import ALIASES, Source, locate

_LAZY = {
    "LoraAdapter": "adapter",
    "attach_lora": "adapter",
    "build_model": "loading",
    "load_base": "loading",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = ["ALIASES", "LoraAdapter", "Source", "attach_lora", "build_model", "load_base", "locate"]
