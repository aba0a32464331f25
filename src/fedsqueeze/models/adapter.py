"""Attach a peft LoRA adapter once, then read/write its tensors by name (no model copies).

Cores (a method's AdapterSpec with core=True, e.g. Fed-SB): every LoRA layer also gets an r x r
matrix R between A and B, so the layer adds s B R A x. peft's forward computes
`lora_B(lora_A(dropout(x))) * s`; here `lora_A[adapter]` becomes a module that applies A and then R,
keeping A as its own `weight` (peft reads `lora_A.weight` for the input dtype), and R is registered
as `lora_R[adapter]` on the layer, so its name in the adapter is `<prefix>.lora_R.weight`. Nothing
of peft is patched. Saved adapters fold R into B (B' = B R): a standard LoRA any peft loads.

Bases (AdapterSpec.basis, e.g. LoRA-XS): B and A from the truncated SVD of each layer's frozen
weight instead of peft's seeded init, and R = 0 (models/basis.py). Computed here, from the model,
by every party alike: nothing of them travels.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from ..errors import ConfigError
from ..quiet import no_checkpointing_alias_warning
from ..tensors import Layout, Tensors

ADAPTER = "default"
B_SUFFIX = ".lora_B.weight"
R_SUFFIX = ".lora_R.weight"
"""A core's name in the adapter (strategies/lora_math.py's R_SUFFIX: the methods' side of it)."""


class _AThenCore(torch.nn.Module):
    """Stands in for a layer's lora_A: x -> R (A x). A stays the registered `weight`; R belongs to
    the layer's lora_R (held here unregistered, so it has one name only)."""

    def __init__(self, a: torch.nn.Linear, core: torch.nn.Linear):
        super().__init__()
        self.weight = a.weight
        object.__setattr__(self, "_core", core)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.weight), self._core.weight)


def add_cores(peft_model) -> None:
    """An r x r identity core R between A and B in every LoRA layer (B R A = B A until R trains)."""
    for module in peft_model.modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or ADAPTER not in lora_a:
            continue
        a = lora_a[ADAPTER]
        r = a.weight.shape[0]
        core = torch.nn.Linear(r, r, bias=False, device=a.weight.device, dtype=a.weight.dtype)
        with torch.no_grad():
            core.weight.copy_(torch.eye(r, dtype=a.weight.dtype))
        module.lora_R = torch.nn.ModuleDict({ADAPTER: core})
        lora_a[ADAPTER] = _AThenCore(a, core)


def attach_lora(
    model, r: int, alpha: float, dropout: float, target, seed: int, core: bool = False, basis: str | None = None
):
    """Wraps `model` with a LoRA adapter. The initial A is drawn from `seed`: every participant
    builds the same starting adapter without sending it. core: an r x r R between A and B in
    every layer (see the module docstring). basis: B and A from the base weights' SVD instead
    ("svd" or "svd-orthonormal", models/basis.py; needs core)."""
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
    if core:
        add_cores(peft_model)
    if basis is not None:
        if not core:
            raise ValueError("a LoRA basis from the base weights needs cores (AdapterSpec core=True)")
        from .basis import set_svd_basis

        set_svd_basis(peft_model, ADAPTER, basis)
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

    @property
    def cores(self) -> list[str]:
        return [k for k in self.params if k.endswith(R_SUFFIX)]

    def with_identity_cores(self, tensors: Tensors) -> Tensors:
        """A standard LoRA's tensors (a saved adapter: cores folded into B) for this model: every
        core it lacks is the identity, so B R A = B A."""
        out = dict(tensors)
        for name in self.cores:
            if name not in out:
                out[name] = torch.eye(self.params[name].shape[0], dtype=self.params[name].dtype)
        return out

    def save(self, folder: str | Path) -> None:
        """peft's save_pretrained of the current adapter, each core folded into its B (B' = B R):
        a standard LoRA of the same rank that `PeftModel.from_pretrained` loads as is."""
        if not self.cores:
            self.model.save_pretrained(str(folder))
            return
        suffix = f".{ADAPTER}"
        state = {k: v for k, v in self.model.state_dict().items() if ".lora_R." not in k}
        for name in self.cores:
            b_name = name[: -len(R_SUFFIX)] + B_SUFFIX
            b_key = b_name[: -len(B_SUFFIX)] + f".lora_B{suffix}.weight"
            b, core = self.params[b_name].detach(), self.params[name].detach()
            state[b_key] = (b.float() @ core.float()).to(b.dtype)
        self.model.save_pretrained(str(folder), state_dict=state)

    def trainable(self, keep) -> list[torch.nn.Parameter]:
        """Sets requires_grad by `keep(name)` and returns the trainable parameters."""
        out = []
        for k, p in self.params.items():
            p.requires_grad_(bool(keep(k)))
            if p.requires_grad:
                out.append(p)
        return out
