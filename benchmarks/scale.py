"""Cost of a run against the number of clients: peak RSS, seconds per round, checkpoint bytes
written per round and the federation's build time, for a fixed number of clients per round.

Each run is a fresh `fedsqueeze run` process under /usr/bin/time (its maximum resident set), on
the tiny model over a synthetic instruction corpus with `--per-client` examples per client (so any
client count has data), iid partition.

    python benchmarks/scale.py [--clients 100 1000] [--methods gradualdiff] [--per-round 100]
                               [--rounds 10] [--r 64] [--model tiny] [--local-steps 1]
                               [--batch-size 2] [--per-client 4] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "alpha beta gamma delta river stone cloud ember maple quartz signal vector lattice orbit".split()


def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            a, b, c = rng.sample(WORDS, 3)
            row = {"instruction": f"Relate {a} and {b} (item {i}).", "input": "", "response": f"{a} {c} {b} {c}."}
            f.write(json.dumps(row) + "\n")


def config(corpus: Path, method: str, clients: int, args) -> str:
    return f"""method = "{method}"
seed = 0
[model]
name = "{args.model}"
[lora]
r = {args.r}
alpha = {2 * args.r}
target = "all-linear"
[data]
source = "jsonl:{corpus}"
partition = "iid"
clients = {clients}
max_examples = {args.per_client}
eval_examples = 2
max_length = {args.max_length}
[train]
rounds = {args.rounds}
clients_per_round = {min(args.per_round, clients)}
local_steps = {args.local_steps}
batch_size = {args.batch_size}
lr = 3e-3
precision = "{args.precision}"
"""


def run_one(work: Path, method: str, clients: int, args) -> dict:
    corpus = work / f"corpus-{clients}.jsonl"
    if not corpus.exists():
        write_corpus(corpus, clients * (args.per_client + 2))
    cfg = work / f"{method}-{clients}.toml"
    cfg.write_text(config(corpus, method, clients, args))
    out = work / f"run-{method}-{clients}"
    sets = [x for kv in args.set for x in ("--set", kv)]
    cli = str(Path(sys.executable).parent / "fedsqueeze")
    cmd = ["/usr/bin/time", "-v", cli, "run", str(cfg), "--out", str(out), *sets]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    later = rows[1:] or rows  # round 1 writes every client's first state file
    return {
        "method": method,
        "clients": clients,
        "per_round": min(args.per_round, clients),
        "peak_rss_mb": rss_kb / 1024,
        "wall_s": wall,
        "s_per_round": sum(r["seconds"] for r in rows) / len(rows),
        # Builds before the state store rewrote the whole checkpoint each round and did not say so.
        "ckpt_mb_per_round": (
            sum(r["checkpoint_bytes"] for r in later) / len(later) / 2**20
            if "checkpoint_bytes" in later[0]
            else _mb(out / "checkpoint")
        ),
        "state_mb": _mb(out / "state"),
        "federation_s": summary.get("federation_seconds", float("nan")),
        "bytes_total": summary["bytes_total"],
        "final_eval_loss": summary["final_eval_loss"],
    }


def _mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--methods", nargs="+", default=["gradualdiff"])
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--r", type=int, default=64)
    ap.add_argument("--per-client", type=int, default=4)
    ap.add_argument("--model", default="tiny", help="e.g. smollm2-135m for SmolLM2 (W4: --r 16 --local-steps 10 ...)")
    ap.add_argument("--local-steps", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--set", action="append", default=[], help="extra config override for every run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fsq-scale-") as tmp:
        results = [run_one(Path(tmp), m, n, args) for m in args.methods for n in args.clients]
    print(
        "| method | clients | per round | peak RSS MB | wall s | s / round | checkpoint MB / round | state MB | "
        "federation s | bytes up + down | final eval loss |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for x in results:
        print(
            f"| {x['method']} | {x['clients']:,} | {x['per_round']} | {x['peak_rss_mb']:.0f} | {x['wall_s']:.0f} | "
            f"{x['s_per_round']:.2f} | "
            f"{x['ckpt_mb_per_round']:.2f} | {x['state_mb']:.1f} | {x['federation_s']:.1f} | "
            f"{x['bytes_total']:,} | {x['final_eval_loss']:.4f} |"
        )


if __name__ == "__main__":
    main()
