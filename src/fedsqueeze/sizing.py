"""What one round's messages weigh for any architecture, from its shapes alone (`fedsqueeze size`).

The model is built on the meta device (no memory, no weights), the run's LoRA attached, and each
message whose size does not depend on the data is built from that layout and encoded by the real
codec: the figures are len() of real blobs, headers included. Messages whose size follows from the
data (top-k, importance masks, entropy coding) are not sized here; run them (`fedsqueeze bench`).

The rows are the methods' own: every registered method that is a `strategies.mixins.MessageSizes`
builds and sizes its messages from a `SizingContext` (strategies/sizes.py); this module builds the
layout and asks them, and names no method.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from .config import Config
from .models.adapter import attach_lora, lora_parameters
from .models.architectures import architecture_config, random_model
from .registry import METHODS
from .strategies import validated_params
from .strategies.mixins import MessageSizes
from .strategies.sizes import MessageSize, SizingContext
from .tensors import Layout

MiB = 2**20


def lora_layout(cfg: Config, rank: int | None = None, core: bool = False) -> tuple[Layout, int, str]:
    """The run's adapter layout, the base model's parameter count and its class, with no memory.
    rank / core: another LoRA rank, with an r x r core per layer (Fed-SB's layout)."""
    config = architecture_config(cfg.model.name)
    model = random_model(config, torch.float32, "meta")
    base = sum(p.numel() for p in model.parameters())
    r = rank or cfg.lora.r
    params = lora_parameters(attach_lora(model, r, cfg.lora.alpha, 0.0, cfg.lora.target, cfg.seed, core=core))
    layout = Layout(tuple(params), tuple(tuple(p.shape) for p in params.values()))
    return layout, base, (config.architectures or [type(model).__name__])[0]


def method_params(cfg: Config, name: str):
    """Method `name`'s validated params: the run's own where the run is that method, else its defaults
    (read from the method's Params in the registry, never copied here)."""
    return validated_params(name, cfg.params if cfg.method == name else {})


def sizing_context(cfg: Config, layout: Layout | None = None) -> SizingContext:
    """What a method sizes its messages from: the run's layout (built here unless given), seed and
    LoRA, and the layout at another rank (lora_layout again, on the meta device)."""
    return SizingContext(
        layout=layout if layout is not None else lora_layout(cfg)[0],
        seed=cfg.seed,
        lora_r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        layout_at=lambda rank, core: lora_layout(cfg, rank, core=core)[0],
    )


def method_sizes(cfg: Config, name: str, at: SizingContext | None = None) -> list[MessageSize]:
    """The rows registered method `name` declares itself (mixins.MessageSizes), [] where it declares
    none (nothing travels, its sizes follow the data, or its messages are its parent's)."""
    cls = METHODS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, MessageSizes) and cls.declares_sizes()):
        return []
    return cls.message_sizes(method_params(cfg, name), at or sizing_context(cfg))


def message_sizes(cfg: Config, at: SizingContext | None = None) -> list[MessageSize]:
    """One message per client per round, each direction, for every registered method whose sizes
    follow from the layout alone, in the catalog's order (registry.py's METHODS): each method
    declares its own rows, so a new one needs no line here."""
    at = at or sizing_context(cfg)
    return [row for name, _ in METHODS.in_order() for row in method_sizes(cfg, name, at)]


def size_report(cfg: Config) -> dict:
    layout, base, architecture = lora_layout(cfg)
    return {
        "model": cfg.model.name,
        "architecture": architecture,
        "base_params": base,
        "lora_r": cfg.lora.r,
        "lora_target": cfg.lora.target,
        "lora_params": layout.numel,
        "lora_tensors": len(layout.names),
        "messages": [asdict(m) for m in message_sizes(cfg, sizing_context(cfg, layout))],
    }


def describe(report: dict) -> str:
    def size(n: int | None) -> str:
        return "-" if n is None else f"{n / MiB:,.1f} MiB ({n:,} B)"

    lines = [
        f"{report['model']}: {report['architecture']}, {report['base_params'] / 1e9:.2f}B base parameters "
        "(built on the meta device: shapes only)",
        f"LoRA r={report['lora_r']} on {report['lora_target']}: {report['lora_params']:,} parameters "
        f"({report['lora_params'] / 1e6:.1f}M) in {report['lora_tensors']} tensors",
        "",
        "One message per client per round (len() of the blob the real codec writes):",
        "",
        "| method | uplink | downlink | what travels |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {m['method']} | {size(m['up'])} | {size(m['down'])} | {m['note']} |" for m in report["messages"]]
    return "\n".join(lines)
