"""The GPU check of issue 13, as one script (benchmarks/gpu_check.sh runs it; < 8 min on one GPU).

1. W4-shaped fedavg and fedsrd rows, 3 rounds, on cuda in the auto precision (bf16 on any recent
   GPU), then the same rows on the CPU in fp32: tokens/s, peak GPU memory, and whether the bytes
   match. fedavg's messages are dense, so its bytes must be identical; fedsrd's upload masks follow
   the trained values, so its bytes are compared and reported, not assumed.
2. One QLoRA round (NF4, double quantization) of the SmolLM2 architecture, if bitsandbytes is there.
3. One local step of the random-init Llama-3.2-3B with LoRA r=64 on all linear layers: tokens/s
   and peak memory.
4. The resident worker (issue 29): a worker process on cuda serves 5 rounds of one run and 2 of a
   second run with the same model (another learning rate: the model is kept); its GPU memory
   (peak allocated per round, and what nvidia-smi says the process holds) must stay flat, and the
   model must load once. `python benchmarks/gpu_check.py OUT --resident-dry-run` runs this case
   alone on the CPU with the tiny model (RSS instead of GPU memory), to check the script anywhere.

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

OUT = Path(next((a for a in sys.argv[1:] if not a.startswith("--")), "runs/gpu-check"))
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


def _gpu_mb_of(pid: int) -> float | None:
    """What nvidia-smi says process `pid` holds on the GPU (allocator cache included), MB."""
    import subprocess

    try:
        rows = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in rows.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid):
            return float(fields[1])
    return None


def resident_rounds(device: str = "cuda", model: str | None = None, rounds: tuple[int, int] = (5, 2)) -> dict:
    """A resident worker (a process, as under `fedsqueeze flower supernode`) trains client 0 for
    rounds[0] rounds of one config, then rounds[1] of a second config with the same model; the
    downlink blobs come from a CPU session of the same config. Memory per round from the worker's
    own reply (peak allocated on the GPU, peak RSS) and nvidia-smi; "flat": the last round within
    5% of round 2."""
    import os

    from fedsqueeze.codecs.wire import message_tensors
    from fedsqueeze.runtime.flower import channel
    from fedsqueeze.runtime.flower.client_work import Job
    from fedsqueeze.runtime.flower.supervisor import ResidentWorker

    raw = base(device, method="fedavg", train={"rounds": rounds[0]})
    if model is not None:
        raw["model"] = {"name": model}
        raw["lora"] = {"r": 4, "alpha": 8, "target": "all-linear"}
        raw["train"] = {**raw["train"], "local_steps": 3, "batch_size": 4}
    second = {**raw, "train": {**raw["train"], "lr": raw["train"]["lr"] / 2, "rounds": rounds[1]}}
    node = OUT / "resident-node"
    log = OUT / "resident-worker.log"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    worker = ResidentWorker(node, env, log=lambda *_: None, output=log).start()
    per_round, state = [], b""
    try:
        for run, cfg_raw in enumerate((raw, second), start=1):
            cfg = config_mod.validate(cfg_raw)
            text = cfg.to_toml()
            server = Session.build(
                config_mod.validate({**cfg_raw, "train": {**cfg_raw["train"], "device": "cpu", "precision": "fp32"}}),
                log=lambda *_: None,
            )
            state = b""
            for rnd in range(1, cfg.train.rounds + 1):
                message = server.method.broadcast(rnd, 0)  # None: round 1 starts from the initial adapter
                down = server.downlink_sender().encode(message_tensors(message)) if message is not None else None
                t0 = time.perf_counter()
                outcome = channel.call(node, Job(text, 0, rnd, down, None, state), wait=120)
                if outcome.error:
                    raise RuntimeError(outcome.error)
                state = outcome.state
                per_round.append(
                    {
                        "run": run,
                        "round": rnd,
                        "seconds": round(time.perf_counter() - t0, 2),
                        "peak_gpu_mb": outcome.metrics.get("peak_gpu_mb"),
                        "peak_rss_mb": outcome.metrics.get("peak_rss_mb"),
                        "nvidia_smi_mb": _gpu_mb_of(worker.proc.pid) if device != "cpu" else None,
                    }
                )
                print(json.dumps(per_round[-1]), flush=True)
            del server
    finally:
        worker.stop()
    text = log.read_text(errors="replace")
    key = "peak_gpu_mb" if device != "cpu" else "peak_rss_mb"
    values = [r[key] for r in per_round if r[key] is not None]
    flat = len(values) > 2 and max(values[1:]) <= 1.05 * values[1]
    return {
        "row": "resident worker" + (" (dry run, cpu)" if device == "cpu" else ""),
        "model_loads": text.count("model loaded"),
        "model_kept": text.count("model kept"),
        "memory_key": key,
        "flat_within_5pct_from_round_2": flat,
        "rounds": per_round,
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if "--resident-dry-run" in sys.argv:
        result = resident_rounds("cpu", model="tiny", rounds=(4, 2))
        (OUT / "gpu_check_resident_dry_run.json").write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "rounds"}))
        return
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
        resident_rounds,
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
