"""Seconds the server spends in one aggregation, per method, on SmolLM2-135M's LoRA layout (r=16,
all linear layers, 4 clients): what the method's own math adds to a round, apart from training.

    python benchmarks/server_step.py fedavg flexlora fedsrd "fedsrd moves=both download_dtype=bf16" [--repeat 3]

Client updates are synthetic (start + Gaussian steps of a trained adapter's size, B non-zero as after
a few rounds) and go through each method's own client_upload; timings are the median of --repeat
aggregations of the same round. Single-threaded unless OMP_NUM_THREADS says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedsqueeze.models import load_base
from fedsqueeze.models.adapter import LoraAdapter, attach_lora
from fedsqueeze.strategies import ClientUpdate, MethodContext, build_method
from fedsqueeze.tensors import Layout


def synthetic_round(init: dict, clients: int, seed: int) -> tuple[dict, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    start = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in init.items()}  # B != 0
    trained = [{k: v + 0.002 * torch.randn(v.shape, generator=g) for k, v in start.items()} for _ in range(clients)]
    return start, trained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "rows",
        nargs="*",
        default=["fedavg", "flexlora", "fedsrd", "fedsrd-e"],
        help='a method name, optionally followed by its parameters: "fedsrd moves=both"',
    )
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    model, _ = load_base("smollm2-135m", log=lambda *_: None)
    adapter = LoraAdapter(attach_lora(model, 16, 32, 0.0, "all-linear", 0))
    init = adapter.get()
    ctx = MethodContext(layout=Layout.of(init), init_adapter=init, seed=0, weighting="uniform")
    start, trained = synthetic_round(init, args.clients, seed=1)  # the same round for every row
    print(f"| method | params | aggregate s (median of {args.repeat}) |")
    print("|---|---|---:|")
    for row in args.rows:
        name, *pairs = row.split()
        params = dict(pair.split("=", 1) for pair in pairs)  # the method's pydantic Params parse the text
        uploader = build_method(name, params, ctx)
        updates = [ClientUpdate(c, uploader.client_upload({}, start, t), 100) for c, t in enumerate(trained)]
        times = []
        for _ in range(args.repeat):
            method = build_method(name, params, ctx)  # fresh server state: each repeat is the same round
            method.adapter = start
            t0 = time.perf_counter()
            method.aggregate(2, updates)
            times.append(time.perf_counter() - t0)
        print(f"| {name} | {' '.join(pairs) or '-'} | {statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
