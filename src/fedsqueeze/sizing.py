"""What one round's messages weigh for any architecture, from its shapes alone (`fedsqueeze size`).

The model is built on the meta device (no memory, no weights), the run's LoRA attached, and each
message whose size does not depend on the data is built from that layout and encoded by the real
codec: the figures are len() of real blobs, headers included. Messages whose size follows from the
data (top-k, importance masks, entropy coding) are not sized here; run them (`fedsqueeze bench`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .codecs import build_codec
from .codecs.grid import snap
from .codecs.wire import Message, message_tensors
from .config import Config
from .models.adapter import attach_lora, lora_parameters
from .models.architectures import architecture_config, random_model
from .registry import METHODS
from .strategies import validated_params
from .strategies.lora_math import A_SUFFIX, B_SUFFIX, R_SUFFIX, random_drop, seeded_drop
from .tensors import Layout, Tensors

MiB = 2**20


@dataclass
class MessageSize:
    method: str
    up: int | None  # bytes per client per round; None: nothing travels or it depends on the data
    down: int | None
    note: str


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


def method_params(cfg: Config | None, name: str):
    """Method `name`'s validated params: the run's own where the run is that method, else its defaults
    (read from the method's Params in the registry, never copied here)."""
    return validated_params(name, cfg.params if cfg is not None and cfg.method == name else {})


def fed_sb_rank(cfg: Config) -> int:
    """R's size: Fed-SB's AdapterSpec for the run's params (its rank, or lora.r)."""
    return METHODS.get("fed-sb").adapter_spec(method_params(cfg, "fed-sb"), cfg.lora.r, cfg.lora.alpha).rank


def core_rank(cfg: Config, name: str) -> int:
    """R's size for method `name` (fed-sb, lora-xs): its AdapterSpec for the run's params (rank, or lora.r)."""
    return METHODS.get(name).adapter_spec(method_params(cfg, name), cfg.lora.r, cfg.lora.alpha).rank


def lora_xs_sizes(cfg: Config) -> list[MessageSize]:
    """LoRA-XS: R alone each way from round 1 (B and A from the base weights' SVD, never sent), in
    fp32 and with k-bit cores (uploads quantize(bits=k, rounding=stochastic), broadcast grid(bits=k))."""
    rank = core_rank(cfg, "lora-xs")
    layout, _, _ = lora_layout(cfg, rank, core=True)
    shapes = dict(zip(layout.names, layout.shapes))
    cores = {n: torch.ones(s) for n, s in shapes.items() if n.endswith(R_SUFFIX)}
    values = sum(t.numel() for t in cores.values())
    rows = []
    for bits in (None, 8, 4):
        up = "fp32" if bits is None else f"quantize(bits={bits}, rounding=stochastic)"
        down = "fp32" if bits is None else f"grid(bits={bits})"
        label = f"lora-xs (rank {rank})" + ("" if bits is None else f", {bits}-bit cores")
        note = f"R only ({values:,} values), from round 1; B, A from the base weights' SVD, never sent"
        note += "" if bits is None else f"; up {up}, down {down}"
        on_grid = cores if bits is None else {n: snap(t * 0.5, bits) for n, t in cores.items()}
        rows.append(
            MessageSize(
                label, len(build_codec(up, layout).encode(cores)), len(build_codec(down, layout).encode(on_grid)), note
            )
        )
    return rows


def fed_sb_size(cfg: Config) -> MessageSize:
    """Fed-SB from round 2: R (rank x rank per layer) each way; the one-off messages in the note."""
    spec = METHODS.get("fed-sb").adapter_spec(method_params(cfg, "fed-sb"), cfg.lora.r, cfg.lora.alpha)
    rank = spec.rank
    layout, _, _ = lora_layout(cfg, rank, core=spec.core)
    shapes = dict(zip(layout.names, layout.shapes))
    r_only = {n: torch.ones(s) for n, s in shapes.items() if n.endswith(R_SUFFIX)}
    per_round = len(build_codec("fp32", layout).encode(r_only))
    basis = len(build_codec("fp32", layout).encode({n: torch.ones(s) for n, s in shapes.items()}))
    if cfg.method == "fed-sb" and cfg.params.get("init") == "svd-base":
        note = "R only, fp32, from round 1 (init svd-base: B, A from the base weights' SVD, never sent)"
    else:
        note = (
            f"R only, fp32, from round 2; round 1 uploads a LoRA delta at rank {min(cfg.lora.r, rank)}, "
            f"round 2 sends B, A and R once ({basis:,} B)"
        )
    return MessageSize(f"fed-sb (rank {rank})", per_round, per_round, note)


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
        "messages": [asdict(m) for m in [*message_sizes(layout, cfg.seed, cfg), fed_sb_size(cfg), *lora_xs_sizes(cfg)]],
    }


def message_sizes(layout: Layout, seed: int = 0, cfg: Config | None = None) -> list[MessageSize]:
    """One message per client per round, each direction, for the methods with data-independent sizes.
    Drop rates are the methods' own params (`method_params`: the run's where it is that method)."""
    dare_p = method_params(cfg, "fed-dare").p
    srd_drop = method_params(cfg, "fedsrd").download_drop
    ones = {n: torch.ones(s) for n, s in zip(layout.names, layout.shapes)}  # any non-zero value
    b_only = {n: t for n, t in ones.items() if n.endswith(B_SUFFIX)}
    a_only = {n: t for n, t in ones.items() if n.endswith(A_SUFFIX)}
    rng = torch.Generator().manual_seed(seed)

    def blob(spec: str, tensors: Tensors) -> int:
        return len(build_codec(spec, layout).encode(tensors))

    def dropped(tensors: Tensors, p: float) -> Tensors:
        return {n: random_drop(t, p, rng) for n, t in tensors.items()}

    def seeded(tensors: Tensors, p: float, bits: int | None = None) -> Tensors:
        out = {n: seeded_drop(t, p, seed, n) for n, t in tensors.items()}
        return message_tensors(Message({n: snap(t, bits) for n, t in out.items()} if bits else out, mask_seed=seed))

    def broadcast(spec: str, bits: int | None = None) -> tuple[int, int]:
        return blob(spec, seeded(a_only, srd_drop, bits)), blob(spec, seeded(b_only, srd_drop, bits))

    dense, dense16 = blob("fp32", ones), blob("bf16", ones)
    srd_a, srd_b = blob("sparse", dropped(a_only, srd_drop)), blob("sparse", dropped(b_only, srd_drop))
    rows = [
        MessageSize("fedavg", dense, dense, "the whole adapter (or its delta), fp32"),
        MessageSize("fedavg, bf16 values", dense16, dense16, "codec bf16 both ways"),
        MessageSize("ffa-lora", blob("fp32", b_only), blob("fp32", b_only), "B only, fp32"),
        MessageSize("flexlora", dense, dense, "dense delta up, SVD-truncated adapter down"),
        MessageSize(
            "fed-dare",
            blob("seeded", seeded(ones, dare_p)),
            dense,
            f"{1 - dare_p:.0%} of the delta kept (seeded), values only",
        ),
        MessageSize(
            "fedsrd (broadcast), download_mask=bernoulli",
            None,
            (srd_a + srd_b) // 2,
            f"one factor, {1 - srd_drop:.0%} kept, positions sent: A rounds {srd_a:,} B, B rounds {srd_b:,} B",
        ),
    ]
    for label, spec, bits in (
        ("fedsrd (broadcast)", "seeded", None),
        ("fedsrd (broadcast), download_dtype=bf16", "seeded > narrow", None),
        ("fedsrd (broadcast), download_bits=8", "seeded > grid(bits=8)", 8),
        ("fedsrd (broadcast), download_bits=4", "seeded > grid(bits=4)", 4),
    ):
        a, b = broadcast(spec, bits)
        note = f"one factor, {1 - srd_drop:.0%} kept (seeded), values only: A rounds {a:,} B, B rounds {b:,} B"
        note += "; uploads follow the data" if spec == "seeded" else ""
        rows.append(MessageSize(label, None, (a + b) // 2, note))
    return rows


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
