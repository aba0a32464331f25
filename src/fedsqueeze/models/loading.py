"""Base model loading (HF id, folder, .gguf, aliases, random init, QLoRA) and the LoRA adapter we swap per client."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import ConfigError, UserError
from .adapter import LoraAdapter, attach_lora
from .architectures import HUB_IDS, architecture_config, random_model, shipped

ALIASES = ("tiny", "smollm2-135m", *(n for n in HUB_IDS if n != "smollm2-135m"))


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
    model stays on the CPU and the caller moves it once the seeded LoRA is attached."""
    quantization = _quantization(name, init, quantize, dtype, device)
    if name == "tiny":
        from .tiny import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model(len(tok)).to(dtype)
    elif init == "random":
        model, tok = _random(name, dtype, device, log)
    elif name == "smollm2-135m":
        from .smollm2 import smollm2_dir

        model, tok = _load_pretrained(str(smollm2_dir(log)), dtype, quantization, device)
    elif name.endswith(".gguf"):
        from .gguf import load_gguf

        path = Path(name)
        if not path.is_file():
            raise UserError(f"model.name: GGUF file not found: {name}")
        model, tok = load_gguf(path, dtype)
    else:
        name = HUB_IDS.get(name, name)
        if ("/" in name and name.startswith((".", "/", "~"))) and not Path(name).expanduser().is_dir():
            raise UserError(f"model.name: folder not found: {name}")
        local = Path(name).expanduser()
        model, tok = _load_pretrained(str(local) if local.is_dir() else name, dtype, quantization, device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), tok


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


def _random(name: str, dtype: torch.dtype, device, log):
    """The architecture with seeded random weights; its tokenizer where one is there, else bytes."""
    from .tiny import tiny_tokenizer

    config = architecture_config(name)
    tok = None
    if not shipped(name):
        try:
            tok = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError):
            tok = None
    if tok is None:
        log(f"model {name}: random weights with a byte-level tokenizer (258 of its {config.vocab_size:,} tokens)")
        tok = tiny_tokenizer()
    return random_model(config, dtype, device or "cpu"), tok


def _load_pretrained(name_or_dir: str, dtype: torch.dtype = torch.float32, quantization=None, device=None):
    kwargs = {"dtype": dtype}
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map={"": device.index or 0})
    try:
        tok = AutoTokenizer.from_pretrained(name_or_dir)
        model = AutoModelForCausalLM.from_pretrained(name_or_dir, **kwargs)
    except OSError as exc:  # hub unreachable, unknown id, missing files
        first = str(exc).strip().splitlines()[0]
        raise UserError(
            f"model.name {name_or_dir!r}: cannot load ({first}); allowed: a Hugging Face id, "
            f"a local folder, a .gguf file, or one of {', '.join(ALIASES)}"
        ) from None
    return model, tok


def build_model(cfg, placement, log=print):
    """The base model with the run's seeded LoRA attached, on the placement's device.

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
    peft_model = attach_lora(model, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target, cfg.seed)
    if m.quantize == "none":
        peft_model.to(placement.device)
    if t.gradient_checkpointing:
        # Non-reentrant: works with a frozen embedding (no input-grad hook needed) and with peft.
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.config.use_cache = False
    return peft_model, tok


__all__ = ["ALIASES", "LoraAdapter", "attach_lora", "build_model", "load_base"]
