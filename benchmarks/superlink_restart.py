"""A SuperLink restart with real supervised SuperNodes, on 127.0.0.1 (docs/DEPLOY.md, "Restarting a
SuperLink"): a SuperLink and N SuperNodes started with `fedsqueeze flower supernode` (supervised);
a run of 2 rounds is submitted, the SuperLink (and its ServerApp) is killed once round 1 is in
rounds.jsonl, started again on the same port (with `--database`: the same state file), and the
script measures how long until every SuperNode is back (`flwr supernode ls`), then continues the
run with `resume` and checks it completes round 2.

    python benchmarks/superlink_restart.py [--nodes 2] [--down 5] [--database]

Takes 2-3 minutes on 2 cores (two ServerApp starts and ClientApp starts), so it is a benchmark,
not part of the test suite.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedsqueeze.runtime.flower import deploy  # noqa: E402
from flower_overhead import CONFIG, loopback  # noqa: E402

METHOD = "fedavg"


def online_nodes(env: dict) -> list[dict]:
    """The SuperNodes the SuperLink lists as online (`flwr supernode ls --format json`)."""
    ls = subprocess.run(
        [deploy.executable("flwr"), "supernode", "ls", deploy.CONNECTION, "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    try:
        rows = json.loads(ls.stdout).get("nodes", [])
    except ValueError:
        return []
    return [r for r in rows if "online" in str(r.get("status", "")).lower()]


def wait_nodes(env: dict, n: int, seconds: float, exclude: set | None = None) -> tuple[float, list[dict]]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        rows = [r for r in online_nodes(env) if str(r.get("node-id")) not in (exclude or set())]
        if len(rows) >= n:
            return time.monotonic() - t0, rows
        time.sleep(1)
    raise TimeoutError(f"fewer than {n} SuperNodes online after {seconds} s")


def rounds_done(out: Path) -> int:
    path = out / "rounds.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def submit(tmp: Path, env: dict, out: Path, nodes: int, resume: bool, tag: str) -> tuple[int, str]:
    config = CONFIG.format(method=METHOD, rounds=2, r=4, extra="").replace(
        "clients = 4", f'clients = {nodes}\npartition = "iid"'
    )
    run_config = deploy.write_run_config(tmp / f"run-{tag}.toml", config, out, resume=resume)
    text = io.StringIO()
    code = deploy.submit(run_config, env, text)
    (tmp / f"flwr-run-{tag}.log").write_text(text.getvalue())
    return code, text.getvalue()


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--down", type=float, default=5.0, help="seconds the SuperLink stays down")
    ap.add_argument("--database", action="store_true", help="the SuperLink keeps its state in a SQLite file")
    ap.add_argument("--keep", type=Path, help="copy the logs here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fsq-restart-") as name:
        tmp = Path(name)
        extra = ["--database", str(tmp / "state.db")] if args.database else []
        try:
            report = restart(tmp, args.nodes, args.down, extra)
        finally:
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for log in tmp.glob("*.log"):
                    (args.keep / log.name).write_text(log.read_text(errors="replace"))
    print(json.dumps(report, indent=1))


def restart(tmp: Path, nodes: int, down: float, superlink_args: list[str]) -> dict:
    out = tmp / "run"
    report: dict = {"nodes": nodes, "database": bool(superlink_args), "down_s": down}
    with loopback(tmp, "restart", nodes, superlink_args=superlink_args, supervised=True) as (env, port, procs, start):
        report["first_online_s"], before = wait_nodes(env, nodes, 120)
        ids_before = {str(r.get("node-id")) for r in before}
        result: dict = {}
        first = threading.Thread(
            target=lambda: result.update(zip(("code", "text"), submit(tmp, env, out, nodes, False, "a")))
        )
        first.start()
        t0 = time.monotonic()
        while rounds_done(out) < 1:
            if not first.is_alive():
                raise RuntimeError("the first run ended before round 1:\n" + result.get("text", "")[-3000:])
            if time.monotonic() - t0 > 600:
                raise TimeoutError("round 1 did not finish in 600 s")
            time.sleep(0.5)
        report["round_1_after_s"] = round(time.monotonic() - t0, 1)
        deploy.kill_tree(procs["superlink"].pid)  # the SuperLink and the ServerApp it started
        killed = time.monotonic()
        first.join(120)
        report["first_run_exit"] = result.get("code")
        time.sleep(down)
        start("superlink", [*deploy.superlink_command(port), *superlink_args])
        deploy.wait_for_port(port)
        restarted = time.monotonic()
        # Back: as many online nodes as before; with a database the old ids may still be listed
        # as online for a while, so the count excludes those unless they keep heartbeating.
        waited, after = wait_nodes(env, nodes, 300, exclude=None if superlink_args else ids_before)
        report["nodes_back_after_restart_s"] = round(waited, 1)
        report["nodes_back_after_kill_s"] = round(time.monotonic() - killed, 1)
        report["same_node_ids"] = {str(r.get("node-id")) for r in after} == ids_before
        t1 = time.monotonic()
        code, text = submit(tmp, env, out, nodes, True, "b")
        report["resume_exit"] = code
        report["resume_s"] = round(time.monotonic() - t1, 1)
        report["rounds_in_rounds_jsonl"] = rounds_done(out)
        report["summary"] = (out / "summary.json").is_file()
        report["restarts_per_node"] = {}
        for p in range(nodes):
            log = (tmp / f"node-{p}-restart.log").read_text(errors="replace")
            report["restarts_per_node"][p] = re.findall(r"exited with (-?\d+); starting it again", log)
        report["restart_to_resume_done_s"] = round(time.monotonic() - restarted, 1)
        if code != 0:
            print(text[-3000:], file=sys.stderr)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
