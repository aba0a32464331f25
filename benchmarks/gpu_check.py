"""The GPU check of issue 13, as one script (benchmarks/gpu_check.sh runs it; < 8 min on one GPU).

1. W4-shaped fedavg and fedsrd rows, 3 rounds, on cuda in the auto precision (bf16 on any recent
   GPU), then the same rows on the CPU in fp32: tokens/s, peak GPU memory, and whether the bytes
   match. fedavg's messages are dense, so its bytes must be identical; fedsrd's upload masks follow
   the trained values, so its bytes are compared and reported, not assumed.
2. One QLoRA round (NF4, double quantization) of the SmolLM2 architecture, if bitsandbytes is there.
3. One local step of the random-init Llama-3.2-3B with LoRA r=64 on all linear layers: tokens/s
   and peak memory.

The model is SmolLM2-135M-Instruct where its cache exists (FEDSQUEEZE_CACHE), else the same
architecture with seeded random weights (a GPU machine without internet has no weights): shapes,
bytes of dense messages and speed are the same; losses are not comparable to W4's. The data is the
built-in stdlib corpus (W4's dictionaries are Debian packages a bare GPU machine lacks).
Writes OUT/gpu_check.json and prints a markdown summary.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedsqueeze import config as config_mod
from fedsqueeze.client import train_client
from fedsqueeze.models.smollm2 import cache_root
from fedsqueeze.runtime import LocalRuntime, Session, rundir

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu-check")
REAL = (cache_root() / "smollm2-135m-instruct" / "config.json").is_file()


def base(device: str, **extra) -> dict:
    cfg = {
        "seed": 0,
        "model": {"name": "smollm2-135m", "init": "pretrained" if REAL else "random"},
        "lora": {"r": 16, "alpha": 32, "target": "all-linear"},
        "data": {
            "source": "builtin:pystdlib",
            "partition": "by-domain",
            "clients": 4,
            "max_length": 96,
            "max_examples": 240,
            "eval_examples": 32,
        },
        "train": {
            "rounds": 3,
            "local_steps": 10,
            "batch_size": 8,
            "lr": 5e-4,
            "device": device,
            "precision": "auto" if device != "cpu" else "fp32",
        },
    }
    for section, values in extra.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    return cfg


class TokenCounter:
    """Counts the non-padding tokens every forward pass sees (training and evaluation)."""

    def __init__(self, model):
        self.tokens = 0
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None:
            self.tokens += int(mask.sum())


def run_row(name: str, raw: dict) -> dict:
    cfg = config_mod.validate(raw)
    out = OUT / name
    rundir.prepare(out, cfg, overwrite=True)
    if cfg.train.device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    session = Session.build(cfg, log=lambda *_: None)
    counter = TokenCounter(session.model)
    t0 = time.perf_counter()
    summary = LocalRuntime(session, out).run()
    seconds = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    return {
        "row": name,
        "device": summary["device"],
        "precision": summary["precision"],
        "bytes_up": summary["bytes_up"],
        "bytes_down": summary["bytes_down"],
        "per_round_up": [r["bytes_up"] for r in rows],
        "final_eval_loss": summary["final_eval_loss"],
        "seconds": round(seconds, 1),
        "tokens_per_s": round(counter.tokens / seconds),
        "peak_gpu_mb": summary.get("peak_gpu_mb"),
        "peak_rss_mb": summary.get("peak_rss_mb"),
    }


def qlora_round() -> dict:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return {"row": "qlora", "skipped": "bitsandbytes is not installed (pip install 'fedsqueeze[gpu]')"}
    name = "smollm2-135m"
    if not REAL:  # quantize needs weights on disk: save the seeded random ones once
        from fedsqueeze.models import load_base

        model, tok = load_base(name, init="random", log=lambda *_: None)
        folder = Path(tempfile.mkdtemp()) / "smollm2-random"
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        name = str(folder)
    raw = base("cuda", model={"name": name, "init": "pretrained", "quantize": "4bit"}, train={"rounds": 1})
    return run_row("qlora", raw)


def llama_3b_step() -> dict:
    raw = base(
        "cuda",
        model={"name": "llama-3.2-3b", "init": "random"},
        lora={"r": 64, "alpha": 128},
        data={"clients": 1, "partition": "iid", "max_examples": 64},
        train={"rounds": 1, "local_steps": 3},
    )
    cfg = config_mod.validate(raw)
    torch.cuda.reset_peak_memory_stats()
    session = Session.build(cfg, log=lambda *_: None)
    counter = TokenCounter(session.model)
    start = session.method.global_adapter()
    train_client(session, 0, 1, start, steps=1)  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    counter.tokens, t0 = 0, time.perf_counter()
    train_client(session, 0, 1, start, steps=2)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "row": "llama-3.2-3b step",
        "precision": session.placement.precision,
        "lora_params": session.adapter.layout.numel,
        "seconds_per_step": round(seconds / 2, 3),
        "tokens_per_s": round(counter.tokens / seconds),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20),
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device")
    results = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16": torch.cuda.is_bf16_supported(),
        "weights": "pretrained" if REAL else "random",
        "rows": [],
    }
    steps = [
        lambda: run_row("fedavg-cuda", base("cuda", method="fedavg")),
        lambda: run_row("fedsrd-cuda", base("cuda", method="fedsrd")),
        lambda: run_row("fedavg-cpu", base("cpu", method="fedavg")),
        lambda: run_row("fedsrd-cpu", base("cpu", method="fedsrd")),
        qlora_round,
        llama_3b_step,
    ]
    for step in steps:
        try:
            results["rows"].append(step())
        except Exception as exc:  # one failed check must not hide the others' figures
            results["rows"].append({"row": getattr(step, "__name__", "step"), "error": repr(exc)[:500]})
        (OUT / "gpu_check.json").write_text(json.dumps(results, indent=1))
        print(json.dumps(results["rows"][-1]), flush=True)
    by = {r["row"]: r for r in results["rows"]}
    for method in ("fedavg", "fedsrd"):
        gpu, cpu = by.get(f"{method}-cuda", {}), by.get(f"{method}-cpu", {})
        if "bytes_up" in gpu and "bytes_up" in cpu:
            same = (gpu["bytes_up"], gpu["bytes_down"]) == (cpu["bytes_up"], cpu["bytes_down"])
            print(
                f"{method}: bytes on cuda {'==' if same else '!='} cpu "
                f"({gpu['bytes_up'] + gpu['bytes_down']:,} vs {cpu['bytes_up'] + cpu['bytes_down']:,})"
            )
    (OUT / "gpu_check.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
