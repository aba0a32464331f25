"""Seconds per round of a loopback Flower deployment with and without resident workers (issue 29),
beside the in-process run of the same config and Flower's own round trip with a trivial ClientApp;
peak RSS of each node (its whole process tree: `fedsqueeze flower supernode`, flower-supernode,
its ClientApp processes and the resident worker) round by round, and of its resident worker alone
(the process that keeps the model; the tree also counts each message's short-lived ClientApp).
Only 127.0.0.1 is used.

    python benchmarks/resident.py                       # SmolLM2-135M, fedavg, 5 rounds; 1 and 3 nodes
    python benchmarks/resident.py --rounds 2 --nodes 1  # a short cut
    python benchmarks/resident.py --model tiny --rounds 2 --nodes 1   # seconds: checks the script

Run it alone on the machine (timings). Prints a markdown table for docs/DEPLOY.md and writes the
figures as JSON (--json). Rows:
  in-process      `fedsqueeze run` of the config (runtime.kind = local)
  no-resident     SuperNodes started with `fedsqueeze flower supernode --no-resident`
  resident        SuperNodes started with `fedsqueeze flower supernode` (a resident worker each)
  trivial         Flower alone: a ServerApp that sends each node one 100 kB uint8 array per round
                  and a ClientApp that echoes it (the floor of any Flower round; issue 29 asks the
                  resident row's overhead over in-process to stay within this + 1 s)
Round seconds come from rounds.jsonl (broadcast to evaluation; the trivial app: push to last
reply); "rounds 2-R" leaves out round 1, which pays the model's one load on a resident worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fedsqueeze.runtime.flower import deploy  # noqa: E402

CONFIG = """method = "fedavg"
seed = 0
[model]
name = "{model}"
[lora]
r = 8
alpha = 16
[data]
source = "builtin:pystdlib"
partition = "iid"
clients = {nodes}
max_length = 96
max_examples = 64
eval_examples = 8
[train]
rounds = {rounds}
local_steps = 2
batch_size = 4
pad_to = "{pad_to}"
lr = 3e-3
precision = "fp32"
device = "cpu"
threads = {threads}
[uplink]
codec = "fp16"
[runtime]
round_timeout = 900
connect_timeout = 300
"""

ECHO_APP = """
import time
import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

client = ClientApp()


@client.train()
def train(msg, context):
    return Message(content=RecordDict({"up": msg.content.array_records["down"]}), reply_to=msg)


server = ServerApp()


@server.main()
def main(grid, context):
    rounds, nodes, out = int(context.run_config["rounds"]), int(context.run_config["nodes"]), context.run_config["out"]
    while len(list(grid.get_node_ids())) < nodes:
        time.sleep(0.5)
    ids = list(grid.get_node_ids())[:nodes]
    down = ArrayRecord({"blob": Array(np.zeros(100_000, dtype=np.uint8))})
    seconds = []
    for _ in range(rounds):
        t0 = time.monotonic()
        sent = grid.push_messages(
            [Message(content=RecordDict({"down": down}), dst_node_id=n, message_type="train") for n in ids]
        )
        waiting = {str(i) for i in sent}
        while waiting:  # the same 0.5 s polling as fedsqueeze's server (runtime/flower/server.py)
            for reply in grid.pull_messages(list(waiting)):
                waiting.discard(reply.metadata.reply_to_message_id)
            if waiting:
                time.sleep(0.5)
        seconds.append(time.monotonic() - t0)
    with open(out, "w") as f:
        f.write(",".join(f"{s:.3f}" for s in seconds))
"""

ECHO_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"
[project]
name = "echoapp"
version = "1.0.0"
dependencies = []
[tool.hatch.build.targets.wheel]
packages = ["."]
[tool.flwr.app]
publisher = "fedsqueeze"
[tool.flwr.app.components]
serverapp = "echo_app:server"
clientapp = "echo_app:client"
[tool.flwr.app.config]
rounds = 5
nodes = 1
out = ""
"""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fedsqueeze.cli import main; main()", *args]


def _vmrss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _is_worker(pid: int) -> bool:
    try:
        return b"fedsqueeze.runtime.flower.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory of `pid` and everything below it, and of its resident worker alone (MB; 0
    without one). The tree's figure moves with the short-lived ClientApp processes of each message;
    the worker's is the memory that must stay flat (the model it keeps)."""
    tree = worker = 0
    for p in [pid, *deploy.descendants(pid)]:
        kb = _vmrss_kb(p)
        tree += kb
        if _is_worker(p):
            worker += kb
    return tree / 1024, worker / 1024


class RssSampler:
    """Samples each node's tree every `every` s; the peak per node and per round (round = rows
    already in rounds.jsonl + 1, or None before a run directory exists)."""

    def __init__(self, pids: dict[int, int], rounds_file: Path | None, every: float = 0.25):
        self.pids, self.rounds_file, self.every = pids, rounds_file, every
        self.peaks: dict[int, dict[int, float]] = {node: {} for node in pids}
        self.worker: dict[int, dict[int, float]] = {node: {} for node in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _round(self) -> int:
        if self.rounds_file is None or not self.rounds_file.is_file():
            return 1
        return len(self.rounds_file.read_text().splitlines()) + 1

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            rnd = self._round()
            for node, pid in self.pids.items():
                tree, worker = rss_mb(pid)
                self.peaks[node][rnd] = max(self.peaks[node].get(rnd, 0.0), tree)
                if worker:
                    self.worker[node][rnd] = max(self.worker[node].get(rnd, 0.0), worker)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def loopback(tmp: Path, tag: str, nodes: int, node_args: list[str] | None, env_extra: dict):
    """A SuperLink and `nodes` SuperNodes; node_args None: bare `flower-supernode` (the trivial app
    needs no fedsqueeze), else `fedsqueeze flower supernode` with these extra arguments."""
    home, port = tmp / f"home-{tag}", deploy.free_port()
    env = {**deploy.flower_env(home), **env_extra}
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(tmp / f"{name}-{tag}.log", "a")  # noqa: SIM115
        procs[name] = subprocess.Popen(
            cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return procs[name]

    try:
        start("superlink", deploy.superlink_command(port))
        deploy.wait_for_port(port)
        deploy.write_connection(home, f"127.0.0.1:{port}")
        node_pids = {}
        for p in range(nodes):
            node_port = deploy.free_port()
            if node_args is None:
                cmd = deploy.supernode_command(f"127.0.0.1:{port}", p, nodes, node_port)
            else:
                cmd = cli("flower", "supernode", "--superlink", f"127.0.0.1:{port}", "--partition-id", str(p))
                cmd += ["--num-partitions", str(nodes), "--port", str(node_port), "--home", str(home), *node_args]
            node_pids[p] = start(f"node-{p}", cmd).pid
        yield env, node_pids
    finally:
        for proc in procs.values():
            deploy.kill_tree(proc.pid)
        for proc in procs.values():
            proc.wait()


def rounds_of(out: Path) -> list[float]:
    return [json.loads(line)["seconds"] for line in (out / "rounds.jsonl").read_text().splitlines()]


def in_process(tmp: Path, config: Path, tag: str, env: dict) -> dict:
    out = tmp / f"run-{tag}"
    with open(tmp / f"run-{tag}.log", "w") as log:
        cmd = cli("run", str(config), "--out", str(out))
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        with RssSampler({0: proc.pid}, out / "rounds.jsonl") as rss:
            code = proc.wait()
    if code != 0:
        raise RuntimeError(f"in-process run failed, see {tmp / f'run-{tag}.log'}")
    return {"seconds": rounds_of(out), "rss": rss.peaks}


def deployed(tmp: Path, config: Path, tag: str, nodes: int, resident: bool, env_extra: dict) -> dict:
    out = tmp / f"run-{tag}"
    args = [] if resident else ["--no-resident"]
    with loopback(tmp, tag, nodes, args, env_extra) as (env, pids):
        run_config = deploy.write_run_config(tmp / f"run-{tag}.toml", config.read_text(), out)
        with RssSampler(pids, out / "rounds.jsonl") as rss, open(tmp / f"flwr-run-{tag}.log", "w") as log:
            code = deploy.submit(run_config, env, log)
        if code != 0:
            raise RuntimeError(f"the {tag} run failed (exit {code}), see {tmp}/*-{tag}.log")
        loads = [(tmp / f"node-{p}-{tag}.log").read_text(errors="replace").count("model loaded") for p in pids]
    return {"seconds": rounds_of(out), "rss": rss.peaks, "worker_rss": rss.worker, "model_loads": loads}


def trivial(tmp: Path, tag: str, nodes: int, rounds: int, env_extra: dict) -> dict:
    app = tmp / "echo-app"
    app.mkdir(exist_ok=True)
    (app / "pyproject.toml").write_text(ECHO_PYPROJECT)
    (app / "echo_app.py").write_text(ECHO_APP)
    result = tmp / f"echo-{tag}.txt"
    with loopback(tmp, tag, nodes, None, env_extra) as (env, pids):
        run_config = tmp / f"echo-{tag}.toml"
        run_config.write_text(f'rounds = {rounds}\nnodes = {nodes}\nout = "{result}"\n')
        cmd = [deploy.executable("flwr"), "run", str(app), deploy.CONNECTION, "--run-config", str(run_config)]
        with RssSampler(pids, None) as rss, open(tmp / f"flwr-run-{tag}.log", "w") as log:
            subprocess.run([*cmd, "--stream"], env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1800)
    if not result.is_file():
        raise RuntimeError(f"the trivial app did not finish, see {tmp}/*-{tag}.log")
    return {"seconds": [float(s) for s in result.read_text().split(",")], "rss": rss.peaks}


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def flatness(series: dict[int, dict[int, float]], rounds: int) -> str:
    """Per node: the peak through round 2 → the peak through the last round (the growth the issue
    bounds at 5%), and the range of the per-round peaks over rounds 2-R (they move with each round's
    batches: the in-process run's own peaks move as much)."""
    out = []
    for per in series.values():
        later = {k: v for k, v in per.items() if 2 <= k <= rounds}
        if later:
            upto2 = max(v for k, v in per.items() if k <= 2)
            upto = max(v for k, v in per.items() if k <= rounds)
            lo, hi = min(later.values()), max(later.values())
            out.append(f"{upto2:,.0f} → {upto:,.0f} ({100 * (upto / upto2 - 1):+.1f}%); rounds {lo:,.0f}-{hi:,.0f}")
    return "; ".join(out)


def row(nodes: int, name: str, r: dict, base: float | None) -> str:
    s = r["seconds"]
    later = mean(s[1:]) if len(s) > 1 else s[0]
    over = f"{later - base:+.2f}" if base is not None and name not in ("in-process", "trivial") else ""
    peaks = [max(per.values()) for per in r["rss"].values() if per]
    peak = f"{max(peaks):,.0f}" if peaks else "?"
    loads = r.get("model_loads")
    return (
        f"| {nodes} | {name} | {s[0]:.2f} | {later:.2f} | {over} | {peak} | {flatness(r['rss'], len(s))} | "
        f"{flatness(r.get('worker_rss', {}), len(s))} | "
        f"{', '.join(map(str, loads)) if name == 'resident' else 'every message' if name == 'no-resident' else ''} |"
    )


def _int_keys(series: dict) -> dict[int, dict[int, float]]:
    return {int(n): {int(k): v for k, v in per.items()} for n, per in series.items()}


def table_of(results: dict) -> str:
    """The table rows of a saved --json file (its keys are strings: JSON's)."""
    lines, base = [], None
    for tag, r in results.items():
        if not isinstance(r, dict) or "seconds" not in r:
            continue
        mode, nodes = tag.rsplit("-", 1)
        r = {**r, "rss": _int_keys(r["rss"]), "worker_rss": _int_keys(r.get("worker_rss", {}))}
        if mode == "in-process":
            s = r["seconds"]
            base = mean(s[1:]) if len(s) > 1 else s[0]
        lines.append(row(int(nodes), mode, r, base))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--modes", nargs="+", default=["in-process", "trivial", "no-resident", "resident"])
    parser.add_argument("--threads", type=int, default=0, help="train.threads (0: cores / nodes)")
    parser.add_argument(
        "--pad-to", choices=["longest", "max_length"], default="longest", help="train.pad_to (max_length: one shape)"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, run directories)")
    parser.add_argument("--table", type=Path, default=None, help="print the table of a saved --json file; run nothing")
    a = parser.parse_args()
    if a.table:
        print(table_of(json.loads(a.table.read_text())))
        return
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env_extra = {"PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}
    tmp = Path(tempfile.mkdtemp(prefix="fsq-resident-"))
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or cpu_name()}"}
    results["date"] = time.strftime("%Y-%m-%d")
    results["pad_to"] = a.pad_to
    lines = [
        f"{a.model}, fedavg (fp16 uplink), {a.rounds} rounds, train.pad_to = {a.pad_to}, loopback, insecure; "
        f"{results['machine']}, {results['date']}",
        "",
        "| nodes | run | round 1 (s) | rounds 2-R (s/round) | over in-process (s/round) | peak RSS per node (MB) "
        "| node peak RSS through round 2 → R (MB) | worker peak RSS through round 2 → R (MB) | model loads per node |",
        "|---:|---|---:|---:|---:|---:|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    try:
        for nodes in a.nodes:
            threads = a.threads or max(1, (os.cpu_count() or 1) // nodes)
            config = tmp / f"config-{nodes}.toml"
            fields = dict(model=a.model, nodes=nodes, rounds=a.rounds, threads=threads, pad_to=a.pad_to)
            config.write_text(CONFIG.format(**fields))
            base = None
            for mode in a.modes:
                tag = f"{mode}-{nodes}"
                env = {**os.environ, **env_extra}
                if mode == "in-process":
                    r = in_process(tmp, config, tag, env)
                elif mode == "trivial":
                    r = trivial(tmp, tag, nodes, a.rounds, env_extra)
                else:
                    r = deployed(tmp, config, tag, nodes, mode == "resident", env_extra)
                s = r["seconds"]
                if mode == "in-process":
                    base = mean(s[1:]) if len(s) > 1 else s[0]
                results[tag] = r
                text = row(nodes, mode, r, base)
                lines.append(text)
                print(text, flush=True)
    finally:
        if a.json:
            a.json.write_text(json.dumps(results, indent=1, default=str))
        if a.keep:
            print(f"logs and run directories: {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
