"""Command lines for a real deployment: a SuperLink, SuperNodes with their partition ids, `flwr run`.

Plain functions that return argv lists and write the two small files Flower reads, so the CLI
helpers, the integration tests and docs/DEPLOY.md all start the same processes the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from .settings import AppSettings

CONNECTION = "fedsqueeze"  # name of the SuperLink connection written into FLWR_HOME/config.toml


@dataclass
class Tls:
    """PEM files. The SuperLink serves with cert + key; everyone else trusts the CA."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


def executable(name: str) -> str:
    """Flower's commands from this environment first (the one fedsqueeze is installed in)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else (shutil.which(name) or name)


def flower_env(home: Path, base: dict | None = None) -> dict:
    """Environment for Flower processes: their state under `home`, no usage reporting, no uv downloads."""
    env = dict(os.environ if base is None else base)
    home = Path(home).resolve()
    # Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name from PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(
        {
            "FLWR_HOME": str(home),
            "UV_CACHE_DIR": str(home / "uv-cache"),
            "RAY_TMPDIR": str(home / "ray"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    return env


def superlink_command(
    port: int, host: str = "127.0.0.1", tls: Tls | None = None, auth: bool = False, database: Path | None = None
) -> list[str]:
    """database: a SQLite file for the SuperLink's state (nodes, runs, messages); without it the state
    is in memory, and after a restart every SuperNode is unknown (401) and has to register again."""
    cmd = [
        executable("flower-superlink"),
        "--host",
        host,
        "--port",
        str(port),
        # Apps run on the fedsqueeze already installed here: no per-run `uv sync` (needs the internet).
        "--disable-runtime-dependency-installation",
    ]
    if tls is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
    if auth:
        cmd.append("--enable-supernode-auth")
    if database is not None:
        cmd += ["--database", str(database)]
    return cmd


def supernode_command(
    superlink: str,
    partition: int,
    partitions: int,
    port: int,
    host: str = "127.0.0.1",
    root_cert: Path | None = None,
    auth_key: Path | None = None,
    resident: Path | None = None,
    data: Path | None = None,
) -> list[str]:
    """port: this SuperNode's own ClientApp API (one per SuperNode on a machine). resident: the
    directory of the node's resident worker (its ClientApps hand their rounds to it). data: the
    owner's own file (per-owner data, node config `data-path`) instead of a partition of a shared
    source."""
    from .node_data import node_config_entry

    node_config = (
        node_config_entry(data) if data is not None else f"partition-id={partition} num-partitions={partitions}"
    )
    if resident is not None:
        node_config += f" resident-dir='{Path(resident).resolve()}'"
    cmd = [
        executable("flower-supernode"),
        "--superlink",
        superlink,
        "--host",
        host,
        "--port",
        str(port),
        "--node-config",
        node_config,
    ]
    cmd += ["--insecure"] if root_cert is None else ["--root-certificates", str(root_cert)]
    if auth_key is not None:
        cmd += ["--auth-supernode-private-key", str(auth_key)]
    return cmd


def write_connection(home: Path, address: str, root_cert: Path | None = None, name: str = CONNECTION) -> None:
    """The `flwr` CLI's SuperLink connection (FLWR_HOME/config.toml), made the default."""
    conn: dict = {"address": address}
    if root_cert is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(Path(root_cert).resolve())
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": name, name: conn}}))


def write_run_config(path: Path, config_toml: str, out: Path, overwrite: bool = False, resume: bool = False) -> Path:
    """`out` is a path on the SuperLink's machine (relative: to the SuperLink's working directory)."""
    settings = AppSettings(config_toml, Path(out), overwrite, resume)
    path.write_text(settings.to_run_config_toml())
    return path


def run_command(
    run_config: Path, app_dir: Path | None = None, stream: bool = True, connection: str = CONNECTION
) -> list[str]:
    cmd = [executable("flwr"), "run", str(app_dir or project_dir()), connection, "--run-config", str(run_config)]
    return cmd + ["--stream"] if stream else cmd


STARTED = re.compile(r"Successfully started run (\d+)")


def submit(run_config: Path, env: dict, out=sys.stdout) -> int:
    """`flwr run --stream`, then the run's final status from the SuperLink: 0 only if the ServerApp
    completed (`flwr run` itself exits 0 once the stream ends, whatever the run did)."""
    proc = subprocess.Popen(
        run_command(run_config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    run_id = None
    assert proc.stdout is not None  # stdout=PIPE
    for line in proc.stdout:
        out.write(line)
        found = STARTED.search(line)
        run_id = found.group(1) if found and run_id is None else run_id
    if proc.wait() != 0:
        return proc.returncode
    if run_id is None:
        out.write("error: flwr run did not say which run it started\n")
        return 1
    ls = subprocess.run(
        [executable("flwr"), "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
    )
    try:
        row = json.loads(ls.stdout)["runs"][0]
    except (ValueError, KeyError, IndexError):
        out.write(f"error: could not read the status of run {run_id}: {(ls.stdout + ls.stderr).strip()[-300:]}\n")
        return 1
    traffic = row.get("network-traffic", {})
    out.write(f"run {run_id}: {row['status']}; Flower counted {traffic.get('total-bytes', '?')} bytes in and out\n")
    if str(row["status"]).endswith(":completed"):
        return 0
    out.write(f"error: run {run_id} ended {row['status']}: {row.get('status-details') or 'see the log above'}\n")
    return 1


class _Stop(Exception):
    """SIGTERM reached the supervisor."""


def _stop(*_) -> None:
    raise _Stop


def supervise(
    cmd: list[str],
    env: dict,
    log=print,
    first: float = 1.0,
    most: float = 60.0,
    sleep=time.sleep,
    max_restarts: int | None = None,
) -> int:
    """Runs `cmd` and starts it again whenever it stops by itself, whatever its exit code: after a
    SuperLink restart Flower's SuperNode gets 401, sends itself SIGINT and exits 0 (a "graceful"
    exit, as on Ctrl-C), and it comes back by itself once the SuperLink is there again. The wait
    doubles from `first` to `most` seconds, and starts over after a run that lasted longer than
    `most`. Only a stop asked of the supervisor ends the loop: SIGTERM (passed on to the child,
    returns 143), Ctrl-C (130), or `max_restarts` (the child's last exit code)."""
    delay, restarts = first, 0
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        while True:
            started = time.monotonic()
            proc = subprocess.Popen(cmd, env=env)
            try:
                code = proc.wait()
            except (KeyboardInterrupt, _Stop) as exc:
                proc.terminate()
                proc.wait()
                return 130 if isinstance(exc, KeyboardInterrupt) else 128 + signal.SIGTERM
            if max_restarts is not None and restarts >= max_restarts:
                return code
            if time.monotonic() - started > most:
                delay = first
            log(f"{Path(cmd[0]).name} exited with {code}; starting it again in {delay:g} s")
            try:
                sleep(delay)
            except KeyboardInterrupt:
                return 130
            except _Stop:
                return 128 + signal.SIGTERM
            delay, restarts = min(2 * delay, most), restarts + 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def free_port() -> int:
    """A TCP port nothing listens on, on 127.0.0.1 (loopback deployments)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def register_command(public_key: Path, connection: str = CONNECTION) -> list[str]:
    """Registers a SuperNode's public key with a SuperLink that runs with --enable-supernode-auth."""
    return [executable("flwr"), "supernode", "register", str(public_key), connection]


def project_dir() -> Path:
    """The folder whose pyproject.toml declares the Flower app (this checkout)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "fedsqueeze").is_dir():
            return parent
    raise FileNotFoundError("no fedsqueeze checkout with pyproject.toml above " + str(here))


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc). The SuperLink starts its flower-superexec in a new
    session, so killing the SuperLink's process group alone would leave it running."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Kills `pid` and everything it started, by their ids (children first looked up, then killed)."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
