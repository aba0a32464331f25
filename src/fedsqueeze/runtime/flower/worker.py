"""The resident worker: one process per SuperNode that keeps the client's Session (base model,
tokenizer, adapter, on the node's device and precision) loaded across rounds and runs, and runs
each train message that the node's ClientApp hands it over the channel (channel.py).

    python -m fedsqueeze.runtime.flower.worker NODE_DIR

`fedsqueeze flower supernode` starts it (supervisor.py) and starts it again if it dies. It binds
its socket before torch loads, so a ClientApp can connect at once; the model loads with the first
message of a run ("model loaded" in the node's log) and stays until a message brings a config
with another model, adapter layout, seed or device. Messages are served one at a time, in the
order they connect: one model per node, one round at a time.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from multiprocessing.connection import Listener
from pathlib import Path

from . import channel
from .client_work import Outcome, Sessions

HOLD = "FEDSQUEEZE_RESIDENT_TEST_HOLD"  # tests: seconds to hold each message before training


def log(text: str) -> None:
    print(f"resident worker {os.getpid()}: {text}", file=sys.stderr, flush=True)


def listen(sock: Path) -> Listener:
    """Binds the node's socket, owner-only from its first moment."""
    sock.unlink(missing_ok=True)  # a dead worker's socket
    old = os.umask(0o177)
    try:
        listener = Listener(str(sock), family="AF_UNIX", backlog=16)
    finally:
        os.umask(old)
    os.chmod(sock, 0o600)
    return listener


def serve_one(conn, secret: bytes, sessions: Sessions) -> None:
    try:
        channel.accept_peer(conn, secret)
    except channel.Refused as exc:
        log(f"refused a connection: {exc}")
        return
    try:
        job = channel.job_of(*channel.recv(conn))
    except (EOFError, OSError, ValueError, KeyError) as exc:
        log(f"a message broke off before it was read ({type(exc).__name__}: {exc})")
        return
    log(f"round {job.round}: message for client {job.partition}")
    hold = float(os.environ.get(HOLD, "0") or 0)
    if hold:
        time.sleep(hold)
    t0 = time.perf_counter()
    try:
        outcome = channel_outcome(sessions, job)
    except Exception as exc:  # the session could not be built: the state stays as it came
        outcome = Outcome(None, {}, job.state, f"{type(exc).__name__}: {exc}")
    log(
        f"round {job.round}: client {job.partition} "
        + (f"failed: {outcome.error}" if outcome.error else f"done in {time.perf_counter() - t0:.2f} s")
    )
    try:
        channel.send_outcome(conn, outcome)
    except OSError as exc:
        log(f"round {job.round}: the ClientApp went away before the reply ({type(exc).__name__}); reply lost")


def release_memory() -> None:
    """Hands the message's freed buffers back to the system: without it glibc keeps the freed
    blocks of each round's decode, training and encode in its arenas, and the resident worker's RSS
    creeps up by a few percent over rounds (issue 29 asks it to stay flat)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def channel_outcome(sessions: Sessions, job) -> Outcome:
    from . import client_work

    return client_work.run(sessions.get(job.config_toml, job.data_file), job)


def serve(node_dir: Path) -> None:
    node_dir = Path(node_dir)
    secret = channel.read_secret(node_dir)
    sock = Path(channel.read_address(node_dir))
    listener = listen(sock)
    log(f"listening on {sock}")
    t0 = time.perf_counter()
    from .. import roles  # noqa: F401  torch, transformers, peft: once, before the first message
    from ..session import Session  # noqa: F401

    log(f"ready (model stack imported in {time.perf_counter() - t0:.1f} s)")
    sessions = Sessions(log)
    try:
        while True:
            try:
                conn = listener.accept()
            except OSError as exc:
                log(f"accept failed: {exc}")
                continue
            with conn:
                serve_one(conn, secret, sessions)
            release_memory()
            log(f"resident memory {rss_mb():,.0f} MB")
    finally:
        listener.close()


def _terminate(*_) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m fedsqueeze.runtime.flower.worker NODE_DIR")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        serve(Path(argv[0]))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
