"""What one training step adds to a process's memory, step by step, and what sets it (issue 29): the
in-process run of benchmarks/resident.py's config (SmolLM2-135M, fedavg, fp32, batch 4, max_length 96)
with each step's peak RSS above the RSS before it (the kernel's high-water mark, reset before each
step through /proc/self/clear_refs; freed memory handed back first), beside the batch's padded shape
and response tokens.

    python benchmarks/step_memory.py                      # the loss as fedsqueeze computes it
    python benchmarks/step_memory.py --head model         # the model's own forward: logits everywhere
    python benchmarks/step_memory.py --pad-to max_length  # one batch shape every step

--head model is the loss as it was before client/head.py: transformers' forward with labels, logits
for every position of the padded batch. Linux only (clear_refs, VmHWM). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fedsqueeze  # noqa: E402
import resident  # noqa: E402  (its CONFIG)
from fedsqueeze import config as config_mod  # noqa: E402
from fedsqueeze.client import head, trainer  # noqa: E402
from fedsqueeze.runtime.flower.worker import release_memory  # noqa: E402


def status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def model_forward_loss(model, batch, placement, tokens, scaler=None):
    """The model's own forward and loss (full logits), as before client/head.py."""
    import torch

    with placement.autocast():
        loss = model(**batch, num_items_in_batch=torch.tensor(tokens)).loss
    (scaler.scale(loss) if scaler else loss).backward()
    return loss.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--head", choices=["split", "model"], default="split")
    ap.add_argument("--pad-to", choices=["longest", "max_length"], default="longest")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    steps: list[dict] = []
    loss_of = head.backward_loss if a.head == "split" else model_forward_loss

    def measured(model, batch, placement, tokens, scaler=None):
        release_memory()  # as the resident worker does after each message
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = status_mb("VmRSS:")
        out = loss_of(model, batch, placement, tokens, scaler)
        shape = list(batch["input_ids"].shape)
        response = int((batch["labels"] != -100).sum())
        steps.append({"shape": shape, "response_tokens": response, "peak_mb": status_mb("VmHWM:") - before})
        return out

    trainer.backward_loss = measured  # what trainer._backward calls for each (micro-)batch
    tmp = Path(tempfile.mkdtemp(prefix="fsq-step-memory-"))
    fields = dict(model=a.model, nodes=1, rounds=a.rounds, threads=2, pad_to=a.pad_to)
    (tmp / "config.toml").write_text(resident.CONFIG.format(**fields))
    fedsqueeze.run(config_mod.load(tmp / "config.toml"), out=tmp / "run", log=None)

    print(f"{a.model}, head = {a.head}, train.pad_to = {a.pad_to}, {len(steps)} steps")
    print("| padded shape | response tokens | step's peak above the RSS before it (MB) |")
    print("|---|---:|---:|")
    for s in steps:
        print(f"| {s['shape'][0]} x {s['shape'][1]} | {s['response_tokens']} | {s['peak_mb']:,.0f} |")
    peaks = [s["peak_mb"] for s in steps]
    print(f"\nsteps' peaks: {min(peaks):,.0f}-{max(peaks):,.0f} MB (mean {sum(peaks) / len(peaks):,.0f})")
    if a.json:
        a.json.write_text(json.dumps({"head": a.head, "pad_to": a.pad_to, "steps": steps}, indent=1))


if __name__ == "__main__":
    main()
