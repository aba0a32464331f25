"""Per-client state off the heap: one safetensors file per client under the run directory, with
a bounded in-memory cache in front (`runtime.state_cache_mb`).

A client's state is read when it is sampled and put back after; nothing is kept for a client that
never took part. Files are versioned (`<client>-<n>.safetensors`, never overwritten) so that a
checkpoint is a manifest naming one file per client: `flush` writes only what changed since the
last one, `prune` deletes the files that the committed manifest no longer names. A crash between
the two leaves extra files, never a manifest that points at a half-written one.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..tensors import Tensors, clone

MB = 2**20
STATE_DIR = "state"  # under the run directory: server/ and clients/, one file per client


def _nbytes(tensors: Tensors) -> int:
    return sum(v.numel() * v.element_size() for v in tensors.values())


class StateStore:
    def __init__(self, root: Path, cache_mb: float):
        self.root = root
        self.cache_bytes = int(cache_mb * MB)
        self.cache: OrderedDict[int, Tensors] = OrderedDict()  # least recently used first
        self.cached = 0  # bytes held by the cache
        self.dirty: set[int] = set()  # changed since their last file
        self.files: dict[int, tuple[str, str]] = {}  # client -> (file name, sha256) of its newest file
        self.written = 0  # files written so far: the next file's version
        self.bytes_written = 0  # since the last flush, for the round record

    # ---- access ----------------------------------------------------------------------------------
    def get(self, client: int) -> Tensors:
        """A copy of `client`'s state ({} for a client never stored)."""
        if client in self.cache:
            self.cache.move_to_end(client)
            return clone(self.cache[client])
        if client not in self.files:
            return {}
        state = self._read(client)
        self._hold(client, state)
        return clone(state)

    def put(self, client: int, state: Tensors) -> None:
        self._drop(client)
        self.dirty.add(client)
        self._hold(client, clone(state))

    def __contains__(self, client: int) -> bool:
        return client in self.cache or client in self.files

    def clients(self) -> list[int]:
        return sorted(set(self.cache) | set(self.files))

    # ---- checkpoints -----------------------------------------------------------------------------
    def flush(self) -> dict:
        """Writes every changed client; returns the manifest a checkpoint keeps (its `load` input)."""
        for client in sorted(self.dirty):
            self._write(client, self.cache[client])
        self.dirty.clear()
        written, self.bytes_written = self.bytes_written, 0
        return {
            "written": self.written,
            "files": {str(c): list(f) for c, f in sorted(self.files.items())},
            "bytes": written,
        }

    def prune(self) -> None:
        """Deletes files the last flushed manifest does not name (older versions, a crash's leftovers)."""
        keep = {name for name, _ in self.files.values()}
        for path in self.root.glob("*.safetensors"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def load(self, manifest: dict) -> None:
        """Back to a checkpoint's manifest: the cache emptied, each named file checked to exist."""
        self.cache.clear()
        self.cached, self.dirty, self.bytes_written = 0, set(), 0
        self.written = int(manifest.get("written", 0))
        self.files = {int(c): (f[0], f[1]) for c, f in manifest.get("files", {}).items()}
        for name, _ in self.files.values():
            if not (self.root / name).is_file():
                raise UserError(f"{self.root / name}: missing; the checkpoint cannot be resumed")
        self.prune()

    # ---- internals -------------------------------------------------------------------------------
    def _hold(self, client: int, state: Tensors) -> None:
        self.cache[client] = state
        self.cached += _nbytes(state)
        while self.cached > self.cache_bytes and len(self.cache) > 1:
            oldest = next(iter(self.cache))
            if oldest in self.dirty:  # a new version, named by no manifest until the next flush
                self._write(oldest, self.cache[oldest])
                self.dirty.discard(oldest)
            self._drop(oldest)

    def _drop(self, client: int) -> None:
        state = self.cache.pop(client, None)
        if state is not None:
            self.cached -= _nbytes(state)

    def _write(self, client: int, state: Tensors) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{client}-{self.written}.safetensors"
        self.written += 1
        tmp = self.root / f".{name}.tmp"
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        os.replace(tmp, self.root / name)
        self.files[client] = (name, _sha256(self.root / name))
        self.bytes_written += (self.root / name).stat().st_size

    def _read(self, client: int) -> Tensors:
        name, digest = self.files[client]
        path = self.root / name
        if _sha256(path) != digest:
            raise UserError(f"{path}: fails its checksum (truncated or damaged); the run cannot go on from it")
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise UserError(f"{path}: unreadable client state ({exc})") from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
