"""Attach a peft LoRA adapter once, then read/write its tensors by name (no model copies)."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from ..errors import ConfigError
from ..quiet import no_checkpointing_alias_warning
from ..tensors import Layout, Tensors

ADAPTER = "default"


def attach_lora(model, r: int, alpha: float, dropout: float, target, seed: int):
    """Wraps `model` with a LoRA adapter. The initial A is drawn from `seed`: every participant
    builds the same starting adapter without sending it."""
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target, task_type="CAUSAL_LM")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with no_checkpointing_alias_warning():
            peft_model = get_peft_model(model, config)
    except ValueError as exc:  # peft: target modules not found in the base model
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(
            f"config key 'lora.target': {target!r} matches no layer of this model "
            f'({str(exc).splitlines()[0][:120]}); its linear layers: {", ".join(linear)}, or "all-linear"'
        ) from None
    finally:
        torch.random.set_rng_state(state)
    return peft_model


def lora_parameters(peft_model) -> dict[str, torch.nn.Parameter]:
    """The adapter's parameters by state-dict name (peft's adapter-name segment removed)."""
    suffix = f".{ADAPTER}"
    return {name.replace(suffix, ""): p for name, p in peft_model.named_parameters() if "lora_" in name}


class LoraAdapter:
    """The adapter's parameters keyed by their peft state-dict names
    (e.g. ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``)."""

    def __init__(self, peft_model):
        self.model = peft_model
        self.params = lora_parameters(peft_model)
        self.layout = Layout.of(self.get())

    def get(self) -> Tensors:
        """A CPU copy: codecs, strategies and checkpoints never see the training device."""
        return {k: p.detach().to("cpu", copy=True) for k, p in self.params.items()}

    def set(self, tensors: Tensors) -> None:
        with torch.no_grad():
            for k, v in tensors.items():
                self.params[k].copy_(v)

    def trainable(self, keep) -> list[torch.nn.Parameter]:
        """Sets requires_grad by `keep(name)` and returns the trainable parameters."""
        out = []
        for k, p in self.params.items():
            p.requires_grad_(bool(keep(k)))
            if p.requires_grad:
                out.append(p)
        return out
