"""Base model loading (HF id, folder, .gguf, aliases, random init, QLoRA); which one is models/resolve.py's call."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import ConfigError, UserError
from ..quiet import loading_quietly
from .adapter import attach_lora
from .architectures import architecture_config, random_model, shipped
from .resolve import Source, how_to_point, locate


def load_base(
    name: str,
    log=print,
    *,
    dtype: torch.dtype = torch.float32,
    init: str = "pretrained",
    quantize: str = "none",
    device: torch.device | None = None,
):
    """Returns (model, tokenizer), eval mode, frozen, base weights in `dtype`.

    quantize: "8bit" / "4bit" loads through bitsandbytes onto `device` (CUDA only); otherwise the
    model stays on the CPU and the caller moves it once the seeded LoRA is attached.
    A name that is no alias, file or folder goes to the hub only if it is shaped like a hub id and
    the hub is reachable (models/resolve.py); otherwise UserError at once."""
    with loading_quietly():
        model, tok = _load(name, log, dtype, init, quantize, device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), tok


def _load(name: str, log, dtype: torch.dtype, init: str, quantize: str, device):
    source = locate(name, init)  # fails here, at once, for a name that points nowhere
    quantization = _quantization(name, init, quantize, dtype, device)
    if source.kind == "tiny":
        from .tiny import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model(len(tok)).to(dtype)
    elif source.kind == "random":
        model, tok = _random(name, source, dtype, device, log)
    elif source.kind == "smollm2":
        from .smollm2 import smollm2_dir

        model, tok = _load_pretrained(str(smollm2_dir(log)), dtype, quantization, device)
    elif source.kind == "gguf":
        from .gguf import load_gguf

        model, tok = load_gguf(Path(source.target), dtype)
    else:
        model, tok = _load_pretrained(source.target, dtype, quantization, device, source.local_only)
    return model, tok


def _quantization(name: str, init: str, quantize: str, dtype: torch.dtype, device):
    if quantize == "none":
        return None
    if device is None or device.type != "cuda":
        raise ConfigError(
            f"config key 'model.quantize': {quantize!r} needs a CUDA GPU (bitsandbytes quantizes "
            f'on CUDA only) and this run trains on {device or "cpu"}; use model.quantize = "none"'
        )
    if name == "tiny" or init == "random" or name.endswith(".gguf"):
        raise ConfigError(
            f"config key 'model.quantize': {quantize!r} quantizes pretrained weights loaded from a "
            f"Hugging Face id or folder (or smollm2-135m), not {name!r} with model.init = {init!r}"
        )
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ConfigError(
            f"config key 'model.quantize': {quantize!r} needs bitsandbytes: pip install 'fedsqueeze[gpu]'"
        ) from None
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = dtype if dtype != torch.float32 else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )


def _random(name: str, source: Source, dtype: torch.dtype, device, log):
    """The architecture with seeded random weights; its tokenizer where one is there, else bytes."""
    from .tiny import tiny_tokenizer

    config = architecture_config(name)
    tok = None
    if not shipped(name):
        try:
            tok = AutoTokenizer.from_pretrained(source.target, local_files_only=source.local_only)
        except (OSError, ValueError):
            tok = None
    if tok is None:
        log(f"model {name}: random weights with a byte-level tokenizer (258 of its {config.vocab_size:,} tokens)")
        tok = tiny_tokenizer()
    return random_model(config, dtype, device or "cpu"), tok


def _load_pretrained(
    name_or_dir: str, dtype: torch.dtype = torch.float32, quantization=None, device=None, local_only: bool = False
):
    kwargs = {"dtype": dtype, "local_files_only": local_only}
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map={"": device.index or 0})
    try:
        tok = AutoTokenizer.from_pretrained(name_or_dir, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(name_or_dir, **kwargs)
    except OSError as exc:  # unknown id, missing files, a cache without the weights
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"model.name {name_or_dir!r}: cannot load ({first}); {how_to_point()}") from None
    return model, tok


def build_model(cfg, placement, log=print, spec=None):
    """The base model with the run's seeded LoRA attached, on the placement's device. spec: the
    method's AdapterSpec (rank, alpha, cores, a basis from the base weights); None: the config's
    lora.r and alpha.

    The LoRA init is drawn on the CPU from `cfg.seed` before the move, so every device and every
    process starts from the same adapter."""
    m, t = cfg.model, cfg.train
    model, tok = load_base(
        m.name, log, dtype=placement.model_dtype, init=m.init, quantize=m.quantize, device=placement.device
    )
    if m.quantize != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=t.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    rank, alpha, core = (cfg.lora.r, cfg.lora.alpha, False) if spec is None else (spec.rank, spec.alpha, spec.core)
    basis = getattr(spec, "basis", None)
    if basis is not None and m.quantize != "none":
        raise ConfigError(
            f"config key 'model.quantize': {cfg.method} computes its LoRA basis from the base weights' "
            f'SVD, which needs them unquantized; use model.quantize = "none"'
        )
    peft_model = attach_lora(model, rank, alpha, cfg.lora.dropout, cfg.lora.target, cfg.seed, core=core, basis=basis)
    if m.quantize == "none":
        peft_model.to(placement.device)
    if t.gradient_checkpointing:
        # Non-reentrant: works with a frozen embedding (no input-grad hook needed) and with peft.
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.config.use_cache = False
    return peft_model, tok
