"""Starts a node's resident worker (worker.py) and starts it again whenever it dies.

`fedsqueeze flower supernode` runs one ResidentWorker beside its SuperNode: it makes the node's
directory (0700) with a fresh secret (0600), runs `python -m fedsqueeze.runtime.flower.worker DIR`
in the background, and restarts it after a wait that doubles from `first` to `most` seconds
(starting over after a life longer than `most`). The SuperNode's node config names the directory
(`resident-dir`), which is how its ClientApps find the worker.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from . import channel
from .channel import RESIDENT_DIR

__all__ = ["RESIDENT_DIR", "ResidentWorker", "node_dir", "worker_command"]


def node_dir(home: Path, port: int) -> Path:
    """The default directory of the SuperNode with this ClientApp API port (unique per machine)."""
    return Path(home).resolve() / "resident" / f"node-{port}"


def worker_command(directory: Path) -> list[str]:
    return [sys.executable, "-m", "fedsqueeze.runtime.flower.worker", str(directory)]


class ResidentWorker:
    def __init__(
        self,
        directory: Path,
        env: dict | None = None,
        log=print,
        first: float = 1.0,
        most: float = 30.0,
        output: Path | None = None,
    ):
        """output: a file for the worker's log (default: this process's stderr, the node's log)."""
        self.dir, self.env, self.log, self.output = Path(directory), env, log, output
        self.first, self.most = first, most
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="resident-worker", daemon=True)

    def start(self) -> ResidentWorker:
        sock = channel.prepare_node_dir(self.dir)
        self.log(f"resident worker for this node: directory {self.dir}, socket {sock}")
        self._thread.start()
        return self

    def _loop(self) -> None:
        delay = self.first
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                out = open(self.output, "a") if self.output is not None else None  # noqa: SIM115
                try:
                    self.proc = subprocess.Popen(worker_command(self.dir), env=self.env, stdout=out, stderr=out)
                finally:
                    if out is not None:
                        out.close()
                self.starts += 1
            started = time.monotonic()
            code = self.proc.wait()
            if self._stop.is_set():
                return
            if time.monotonic() - started > self.most:
                delay = self.first
            self.log(f"resident worker exited with {code}; starting it again in {delay:g} s")
            if self._stop.wait(delay):
                return
            delay = min(2 * delay, self.most)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stop.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread.is_alive():
            self._thread.join(timeout)
