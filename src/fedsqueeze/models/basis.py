"""A data-free LoRA basis: B and A from the truncated SVD of each layer's frozen base weight.

LoRA-XS (Balazy et al., arXiv 2405.17604) fixes B and A from W = U S V^T, the layer's pretrained
weight, and trains only an r x r core R between them: the layer adds s B R A x. Every party (server,
each client, `fedsqueeze eval`) computes B and A from the model it loaded, so they never travel.

    kind "svd":             B = U_r, A = S_r V_r^T      (the LoRA-XS reference code's split)
    kind "svd-orthonormal": B = U_r, A = V_r^T          (orthonormal factors, as Fed-SB fixes them)

How, so that every party gets the same bits: in fp64 on the CPU, with one thread, through the
eigendecomposition of the smaller Gram matrix (W^T W or W W^T: 576 x 576 for SmolLM2's widest layer
instead of an SVD of 1536 x 576, about 4x faster), the other side's vectors as W v / s; each pair's
sign fixed so that the largest-magnitude entry of U's column is positive (LAPACKs may return
either sign); then rounded to fp32. The same library on the same CPU gives bit-identical factors
(tests/test_strategies_loraxs.py builds two models and compares). Across machines they may differ in
the last fp32 bit; nothing needs more: the server averages the cores alone and never uses B or A.
Only the top r pairs are kept, and they are well conditioned through the Gram matrix as long as
s_r is not at round-off level (a zero singular value leaves its columns zero: that direction adds
nothing, whatever R holds).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..errors import ConfigError

KINDS = ("svd", "svd-orthonormal")


@contextmanager
def one_thread():
    """torch with one intra-op thread inside (results then do not depend on the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def top_singular(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U_r, S_r, V_r) of the weight's top `rank` singular triplets, fp64, signs fixed (module docstring)."""
    w = weight.detach().to("cpu", torch.float64)
    d_out, d_in = w.shape
    if rank > min(d_out, d_in):
        raise ValueError(f"rank {rank} is more than the weight's smaller dimension ({min(d_out, d_in)})")
    with one_thread():
        tall = d_out >= d_in
        gram = w.T @ w if tall else w @ w.T
        evals, evecs = torch.linalg.eigh(gram)  # ascending
        small = evecs[:, -rank:].flip(1)
        s = evals[-rank:].flip(0).clamp_min(0).sqrt()
        other = (w @ small) if tall else (w.T @ small)
    alive = s > s.max() * 1e-12 if s.numel() and s.max() > 0 else torch.zeros_like(s, dtype=torch.bool)
    other = torch.where(alive[None, :], other / torch.where(alive, s, torch.ones_like(s))[None, :], 0.0)
    u, v = (other, small) if tall else (small, other)
    u = torch.where(alive[None, :], u, 0.0)
    v = torch.where(alive[None, :], v, 0.0)
    pivot = u.abs().argmax(dim=0)
    sign = torch.where(u[pivot, torch.arange(rank)] < 0, -1.0, 1.0).to(torch.float64)
    return u * sign[None, :], s, v * sign[None, :]


def svd_factors(weight: torch.Tensor, rank: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) for one layer: B (d_out x r), A (r x d_in), fp32 (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown basis {kind!r}; allowed: {', '.join(KINDS)}")
    u, s, v = top_singular(weight, rank)
    a = v.T * s[:, None] if kind == "svd" else v.T
    return u.float().contiguous(), a.float().contiguous()


def base_weight(module) -> torch.Tensor:
    """A peft LoRA layer's frozen weight as (d_out, d_in) (GPT-2's Conv1D stores it transposed)."""
    weight = module.get_base_layer().weight
    return weight.T if getattr(module, "fan_in_fan_out", False) else weight


def set_svd_basis(peft_model, adapter: str, kind: str) -> int:
    """B and A of every LoRA layer (with a core) from its base weight's SVD, and R = 0, so that
    B R A = 0: training starts at the base model. Returns the number of layers set; layers on the
    meta device (shapes only: `fedsqueeze size`) are left as they are."""
    done = 0
    for module in peft_model.modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or adapter not in lora_a:
            continue
        if not hasattr(module, "lora_R"):
            raise ValueError("a basis from the base weights needs an r x r core in every LoRA layer")
        a_param = lora_a[adapter].weight
        weight = base_weight(module)
        if weight.is_meta or a_param.is_meta:
            continue
        rank, narrow = a_param.shape[0], min(weight.shape)
        if rank > narrow:
            raise ConfigError(
                f"config key 'params.rank' (or 'lora.r'): rank {rank} is more than the smaller dimension of a "
                f"LoRA layer's base weight ({tuple(weight.shape)}), which has only {narrow} singular vectors; "
                f"use at most {narrow}"
            )
        b, a = svd_factors(weight, a_param.shape[0], kind)
        with torch.no_grad():
            a_param.copy_(a)
            module.lora_B[adapter].weight.copy_(b)
            module.lora_R[adapter].weight.zero_()
        done += 1
    return done
