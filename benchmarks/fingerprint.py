"""Behaviour fingerprint of a tree: bytes per client per round and every loss, for a refactor's
before/after comparison (issue 26, Must show 1: "bit for bit").

Runs a suite's rows (plus a few extra rows that exercise privacy, faults, error feedback and partial
work) and writes one JSON: per row and round the bytes each client sent and received (the ledger's
`per_client`), train_loss, eval_loss, the per-set eval losses, who was late / stale / rejected, and
the final adapter's sha256. Floats are written by repr (exact round trip), so two fingerprints are
equal exactly when the runs were.

    # the tiny suite, every method (seconds per row):
    PYTHONPATH=src python benchmarks/fingerprint.py --suite tiny --out /tmp/fp-after.json
    # compare two fingerprints (exit 1 and the first differences when they differ):
    PYTHONPATH=src python benchmarks/fingerprint.py --compare /tmp/fp-before.json /tmp/fp-after.json
    # SmolLM2 (W4-lite cut to 2 rounds; minutes per row, run alone):
    PYTHONPATH=src python benchmarks/fingerprint.py --suite w4-lite --rounds 2 \
        --methods fedavg,fedsrd,gradualdiff,fed-sb,cg-fedllm-tensor --out /tmp/fp-w4.json
    # a subset on Flower's simulation engine:
    PYTHONPATH=src python benchmarks/fingerprint.py --suite tiny --runtime flower-sim \
        --methods fedavg,fed-dare,fedsrd --out /tmp/fp-flower.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

# The tiny suite's rows for every method (and each variant the issue names), then extra rows that
# run the cross-cutting features the seams refactor moves (privacy, faults, error feedback, partial work).
TINY_ROWS = [
    "fedavg",
    "centralized",
    "local",
    "ffa-lora",
    "fed-dare",
    "flexlora",
    "fedsrd",
    "fedsrd-e",
    "fedsrd-b4-q2",
    "gradualdiff",
    "gradualdiff-hybrid",
    "gradualdiff-hybrid-partial",
    "fedavg-topk-ef",
    "cg-fedllm-paper",
    "cg-fedllm-row",
    "cg-fedllm-tensor",
    "cg-fedllm-adaptive",
    "fed-sb",
]
EXTRA = {
    # name: (suite row, --set overrides)
    "fedavg-central-dp": (
        "fedavg",
        ["privacy.mode=central", "privacy.noise_multiplier=1.0", "privacy.noise_seed=7", "privacy.delta=1e-5"],
    ),
    "fedavg-central-dp-adaptive": (
        "fedavg",
        [
            "privacy.mode=central",
            "privacy.noise_multiplier=1.0",
            "privacy.noise_seed=7",
            "privacy.delta=1e-5",
            "privacy.adaptive_clipping=true",
            "privacy.clipped_count_stddev=2.0",
        ],
    ),
    "fedavg-local-dp": (
        "fedavg",
        ["privacy.mode=local", "privacy.noise_multiplier=1.0", "privacy.noise_seed=7", "privacy.delta=1e-5"],
    ),
    "fedsrd-local-dp-select": (
        "fedsrd",
        [
            "privacy.mode=local",
            "privacy.noise_multiplier=1.0",
            "privacy.noise_seed=7",
            "privacy.delta=1e-5",
            "privacy.order=select-first",
            "privacy.allow_unproven=true",
        ],
    ),
    "fedavg-fault-nan": ("fedavg", ["faults.kind=nan", "faults.clients=[1]"]),
    "fedavg-fault-bitflip": ("fedavg", ["faults.kind=bitflip", "faults.clients=[2]", "faults.rounds=[2]"]),
    "fedavg-fault-inflate": ("fedavg", ["faults.kind=inflate-examples", "faults.clients=[0]"]),
    "fedavg-fault-drop": ("fedavg", ["faults.kind=drop", "faults.clients=[3]", "faults.rounds=[1]"]),
    "fed-dare-fault-scale": ("fed-dare", ["faults.kind=scale", "faults.clients=[1]", "server.max_update_norm=10"]),
    "fedavg-clients2": ("fedavg", ["train.clients_per_round=2"]),
}
W4_LITE_ROWS = ["fedavg", "fedsrd", "gradualdiff", "fed-sb", "cg-fedllm-tensor"]


def _rows(suite: str, methods: list[str] | None) -> list[tuple[str, str, list[str]]]:
    """(name, suite row, overrides) to run."""
    if suite == "tiny":
        rows = [(r, r, []) for r in TINY_ROWS] + [(n, r, list(s)) for n, (r, s) in EXTRA.items()]
    else:
        rows = [(r, r, []) for r in W4_LITE_ROWS]
    if methods:
        known = {n for n, _, _ in rows}
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise SystemExit(f"unknown row(s) {unknown}; allowed: {sorted(known)}")
        rows = [r for r in rows if r[0] in methods]
    return rows


def _suite_name(suite: str) -> str:
    return {"tiny": "tiny", "w4-lite": "w4"}[suite]


def _fingerprint_run(run_dir: Path, summary: dict | None) -> dict:
    from fedsqueeze import rundir

    rounds = []
    for r in rundir.read_rounds(run_dir):
        rounds.append(
            {
                "round": r["round"],
                "clients": r["clients"],
                "bytes_up": r["bytes_up"],
                "bytes_down": r["bytes_down"],
                "per_client": r.get("per_client"),
                "undelivered": r.get("undelivered"),
                "train_loss": r["train_loss"],
                "eval_loss": r.get("eval_loss"),
                "eval": r.get("eval"),
                "ood_eval_loss": r.get("ood_eval_loss"),
                "late": r.get("late"),
                "stale": r.get("stale"),
                "left_out": r.get("left_out"),
                "dropped": r.get("dropped"),
                "rejected": r.get("rejected"),
                "partial": r.get("partial"),
                "epsilon": r.get("epsilon"),
                "dp_clip_norm": r.get("dp_clip_norm"),
                "codec_up_raw": (r.get("codec_up") or {}).get("raw_bytes"),
                "codec_up_rel_error": (r.get("codec_up") or {}).get("rel_error"),
                "codec_down_raw": (r.get("codec_down") or {}).get("raw_bytes"),
                "codec_down_rel_error": (r.get("codec_down") or {}).get("rel_error"),
            }
        )
    adapters = {}
    for f in sorted(run_dir.glob("adapter*/**/*.safetensors")):
        adapters[str(f.relative_to(run_dir))] = hashlib.sha256(f.read_bytes()).hexdigest()
    out = {"rounds": rounds, "adapters": adapters}
    if summary is not None:
        out["summary"] = {
            k: summary.get(k)
            for k in ("final_eval_loss", "eval", "bytes_up", "bytes_down", "base_eval_loss", "ood_eval_loss")
        }
        if "privacy" in summary:
            out["summary"]["privacy"] = summary["privacy"]
    return out


def run(suite: str, methods: list[str] | None, rounds: int | None, runtime: str, threads: int, out: Path) -> dict:
    from fedsqueeze import config as config_mod
    from fedsqueeze.bench.runner import row_configs
    from fedsqueeze.runtime import RUNTIMES, Launch

    result: dict = {}
    work = Path(tempfile.mkdtemp(prefix="fingerprint-"))
    for name, row, sets in _rows(suite, methods):
        sets = [*sets, f"train.threads={threads}", f"runtime.kind={runtime}"]
        _, [(_, raw)] = row_configs(_suite_name(suite), [row], rounds, sets)
        if suite == "w4-lite":  # W4 at the frontier's 5 local steps (bench/suites.py FRONTIER)
            raw["train"]["local_steps"] = 5
        run_dir = work / name
        print(f"fingerprint: {name}", file=sys.stderr, flush=True)
        try:
            cfg = config_mod.validate(raw)
            summary = RUNTIMES.get(cfg.runtime.kind)(cfg, run_dir, Launch(overwrite=True, log=lambda *_: None))
        except Exception as exc:  # noqa: BLE001 - a row that fails is part of the fingerprint
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        result[name] = _fingerprint_run(run_dir, summary)
    out.write_text(json.dumps(result, indent=1, sort_keys=True))
    return result


def _diff(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                found.append(f"{path}/{k}: only in {'after' if k not in a else 'before'}")
            else:
                found += _diff(a[k], b[k], f"{path}/{k}")
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)  # NaN == NaN here
    return [] if same else [f"{path}: {a!r} != {b!r}"]


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    rows = sorted(set(a) & set(b))
    diffs = [d for row in rows for d in _diff(a[row], b[row], row)]
    for row in sorted(set(a) ^ set(b)):
        print(f"(row {row} only in {'before' if row in a else 'after'}: not compared)")
    if diffs:
        print(f"{len(diffs)} difference(s) over {len(rows)} common rows:")
        for d in diffs[:40]:
            print("  " + d)
        return 1
    print(f"identical: {len(rows)} rows ({', '.join(rows)})")
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["tiny", "w4-lite"], default="tiny")
    p.add_argument("--methods", help="comma-separated rows (default: all of the suite's)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--runtime", default="local")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("fingerprint.json"))
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = p.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    methods = args.methods.split(",") if args.methods else None
    run(args.suite, methods, args.rounds, args.runtime, args.threads, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
