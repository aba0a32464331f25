"""Every fault kind on the tiny workload: what the server did with the faulty client's upload and
where the run ended. `python benchmarks/faults.py [METHOD ...]` prints a markdown table.

The reference is the run in which client 1's replies are simply lost (`drop`): a run whose bad
uploads were all rejected must end on exactly that global adapter."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from fedsqueeze import config as config_mod
from fedsqueeze.config import FAULT_KINDS
from fedsqueeze.runtime import LocalRuntime, Session, rundir

BASE = {
    "model": {"name": "tiny"},
    "lora": {"r": 4, "alpha": 8, "target": "all-linear"},
    "data": {"source": "builtin:pystdlib", "clients": 4, "max_examples": 32, "eval_examples": 8, "max_length": 160},
    "train": {"rounds": 3, "local_steps": 3, "batch_size": 4, "lr": 3e-3, "precision": "fp32", "threads": 1},
}


def run(method: str, kind: str | None, out: Path):
    raw = json.loads(json.dumps(BASE))
    raw["method"] = method
    if method == "cg-fedllm":
        raw["params"] = {"tgap_rounds": 1, "arch": "tensor"}
    if kind:
        raw["faults"] = {"clients": [1], "kind": kind}
    cfg = config_mod.validate(raw)
    rundir.prepare(out, cfg, overwrite=True)
    rt = LocalRuntime(Session.build(cfg, log=lambda *_: None), out)
    summary = rt.run()
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    return summary, rows, rt.s.method.global_adapter()


def main(methods: list[str]) -> None:
    print("| method | fault | what the server did with client 1 (round 1) | final eval loss | adapter = drop run's |")
    print("|---|---|---|---:|:---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            _, _, reference = run(method, "drop", Path(tmp) / f"{method}-ref")
            for kind in FAULT_KINDS:
                summary, rows, adapter = run(method, kind, Path(tmp) / f"{method}-{kind}")
                first = rows[0]
                what = first.get("rejected", {}).get("1") or ("left out" if 1 in first["left_out"] else "admitted")
                same = all(torch.equal(adapter[k], reference[k]) for k in reference)
                loss = summary["final_eval_loss"]
                print(f"| {method} | {kind} | {what[:90]} | {loss:.4f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:] or ["fedavg", "fedsrd", "gradualdiff", "cg-fedllm"])
