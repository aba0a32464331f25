"""What a loopback Flower deployment moves beyond the ledger: the bytes Flower itself counts for a
run (`flwr ls --format json`: the app bundle each SuperNode downloads, messages, polling) beside
the ledger's bytes_up + bytes_down. Only 127.0.0.1 is used.

    python benchmarks/flower_overhead.py [METHOD ...]     (default: fedavg fedsrd)
"""

from __future__ import annotations

import contextlib
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
r = {r}
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
{extra}"""


@contextlib.contextmanager
def loopback(tmp: Path, tag: str, partitions: int = 4, dial=None, superlink_args=(), supervised: bool = False):
    """A SuperLink and `partitions` SuperNodes on 127.0.0.1 with Flower's state in tmp/home-TAG;
    yields (env, superlink port, {name: Popen}, start(name, argv)). `dial(port, partition)` is the address SuperNode
    `partition` dials (default the SuperLink itself; wire_proxy.py puts a proxy in between);
    `supervised`: the nodes run under `fedsqueeze flower supernode` (restarted on errors). Every
    process started here, and everything those start, is killed on exit (by id)."""
    home, port = tmp / f"home-{tag}", deploy.free_port()
    env = deploy.flower_env(home)
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(tmp / f"{name}-{tag}.log", "a")
        procs[name] = subprocess.Popen(
            cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return procs[name]

    try:
        start("superlink", [*deploy.superlink_command(port), *superlink_args])
        deploy.wait_for_port(port)
        deploy.write_connection(home, f"127.0.0.1:{port}")
        for p in range(partitions):
            address = dial(port, p) if dial else f"127.0.0.1:{port}"
            node_port = deploy.free_port()
            if supervised:
                cmd = [deploy.executable("fedsqueeze"), "flower", "supernode", "--superlink", address]
                cmd += ["--partition-id", str(p), "--num-partitions", str(partitions), "--port", str(node_port)]
                cmd += ["--home", str(home)]
            else:
                cmd = deploy.supernode_command(address, p, partitions, node_port)
            start(f"node-{p}", cmd)
        yield env, port, procs, start
    finally:
        for proc in procs.values():
            deploy.kill_tree(proc.pid)


def run(
    tmp: Path,
    tag: str,
    env: dict,
    method: str,
    rounds: int,
    resume: bool = False,
    out: Path | None = None,
    r: int = 4,
    extra: str = "",
):
    """`fedsqueeze flower run` of CONFIG (LoRA rank r, `extra` TOML appended); returns (exit code,
    Flower's byte count, summary.json)."""
    out = out or tmp / f"run-{tag}"
    config = CONFIG.format(method=method, rounds=rounds, r=r, extra=extra)
    run_config = deploy.write_run_config(tmp / f"run-{tag}.toml", config, out, resume=resume)
    text = io.StringIO()
    code = deploy.submit(run_config, env, text)
    (tmp / f"flwr-run-{tag}.log").write_text(text.getvalue())
    counted = re.search(r"Flower counted (\d+) bytes", text.getvalue())
    if code != 0 or counted is None or not (out / "summary.json").is_file():
        raise RuntimeError(f"the {method} run did not finish (exit {code}):\n{text.getvalue()[-3000:]}")
    return code, int(counted.group(1)), json.loads((out / "summary.json").read_text())


def measure(method: str, rounds: int, tmp: Path) -> dict:
    tag = f"{method}-{rounds}"
    with loopback(tmp, tag) as (env, _, _, _):
        code, flower, summary = run(tmp, tag, env, method, rounds)
    return {"method": method, "rounds": rounds, "exit": code, "ledger": summary["bytes_total"], "flower": flower}


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
