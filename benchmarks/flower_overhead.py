"""What a loopback Flower deployment moves beyond the ledger: the bytes Flower itself counts for a
run (`flwr ls --format json`: the app bundle each SuperNode downloads, messages, polling) beside
the ledger's bytes_up + bytes_down. Only 127.0.0.1 is used.

    python benchmarks/flower_overhead.py [METHOD ...]     (default: fedavg fedsrd)
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from fedsqueeze.runtime.flower import deploy

CONFIG = """method = "{method}"
seed = 0
[model]
name = "tiny"
[lora]
r = 4
alpha = 8
target = "all-linear"
[data]
source = "builtin:pystdlib"
clients = 4
max_examples = 32
eval_examples = 8
max_length = 160
[train]
rounds = {rounds}
local_steps = 3
batch_size = 4
lr = 3e-3
precision = "fp32"
[runtime]
round_timeout = 150
connect_timeout = 120
"""


def measure(method: str, rounds: int, tmp: Path) -> dict:
    home, port = tmp / f"home-{method}-{rounds}", deploy.free_port()
    env = deploy.flower_env(home)
    procs = []
    try:
        log = open(tmp / f"superlink-{method}.log", "w")
        procs.append(
            subprocess.Popen(
                deploy.superlink_command(port),
                env=env,
                cwd=tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        deploy.wait_for_port(port)
        deploy.write_connection(home, f"127.0.0.1:{port}")
        for p in range(4):
            cmd = deploy.supernode_command(f"127.0.0.1:{port}", p, 4, deploy.free_port())
            procs.append(
                subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=tmp,
                    stdout=open(tmp / f"node-{method}-{p}.log", "w"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        out = tmp / f"run-{method}-{rounds}"
        run_config = deploy.write_run_config(
            tmp / f"run-{method}.toml", CONFIG.format(method=method, rounds=rounds), out
        )
        text = io.StringIO()
        code = deploy.submit(run_config, env, text)
        counted = re.search(r"Flower counted (\d+) bytes", text.getvalue())
        if code != 0 or counted is None or not (out / "summary.json").is_file():
            raise RuntimeError(f"the {method} run did not finish (exit {code}):\n{text.getvalue()[-3000:]}")
        flower = int(counted.group(1))
        summary = json.loads((out / "summary.json").read_text())
        return {"method": method, "rounds": rounds, "exit": code, "ledger": summary["bytes_total"], "flower": flower}
    finally:
        for proc in procs:
            deploy.kill_tree(proc.pid)


def main(methods: list[str]) -> None:
    print("| method | rounds | ledger bytes (up + down) | Flower's count for the run | Flower / ledger |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="fsq-overhead-") as tmp:
        for method in methods:
            for rounds in (1, 3):
                r = measure(method, rounds, Path(tmp))
                ratio = r["flower"] / max(r["ledger"], 1)
                print(f"| {method} | {rounds} | {r['ledger']:,} | {r['flower']:,} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["fedavg", "fedsrd"])
