"""The channel between a node's ClientApp (the shim) and its resident worker: standard library only.

Who can reach it: a UNIX socket in the node's own directory (the directory 0700, the socket 0600,
both the node owner's), and a per-node secret (32 random bytes in `secret`, 0600) that both ends
must prove they hold before anything else is read: a mutual HMAC-SHA256 challenge-response over
fresh random nonces (the secret itself never crosses). The worker also refuses a peer of another
user id (SO_PEERCRED). A connection that fails any of this is closed before a single request byte
is read, so a process without the secret cannot make the worker train, and the shim never hands a
blob to a socket that cannot prove the secret (another user's socket at that path, say).

Framing: Connection.send_bytes / recv_bytes frames, a JSON header and then raw byte parts; no
pickle (unpickling a peer's bytes runs its code). Before the handshake succeeds, frames are tiny
and read with a deadline.

Node directory:   secret   the node's secret (hex), 0600
                  address  the socket's path (in this directory unless that path is too long
                           for AF_UNIX: then in a private 0700 folder under the temp directory)
                  worker.sock
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import stat
import struct
import tempfile
import time
from multiprocessing.connection import Client, Connection
from pathlib import Path

from .client_work import Job, Outcome

RESIDENT_DIR = "resident-dir"  # node-config key: the node's directory (secret, socket address)
PROTOCOL = b"fedsqueeze-resident/1"
SECRET, ADDRESS, SOCKET = "secret", "address", "worker.sock"
NONCE = 32
HANDSHAKE_SECONDS = 10.0  # the worker's deadline for each handshake frame
HANDSHAKE_MAX = 256  # bytes: no larger frame is read before the peer proved the secret
HEADER_MAX = 16 << 20  # the JSON header (config text, metrics)
UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux (104 on macOS): keep well below


class Refused(Exception):
    """The other end could not prove the node's secret (or is another user's process)."""


class WorkerGone(Exception):
    """The resident worker is not there, or went away during the message."""


# ---- the node's directory --------------------------------------------------------------------
def private_dir(path: Path) -> Path:
    """Creates `path` (0700) or checks an existing one is this user's and owner-only."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to user id {info.st_uid}, not to this user ({os.getuid()})")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def prepare_node_dir(path: Path) -> Path:
    """The node's directory with a fresh secret and the socket's address; returns the socket path."""
    path = private_dir(path)
    write_private(path / SECRET, secrets.token_hex(32))
    sock = path / SOCKET
    if len(str(sock.resolve())) > UNIX_PATH_MAX:
        sock = Path(tempfile.mkdtemp(prefix="fsq-node-")) / SOCKET  # mkdtemp: 0700, this user's
    write_private(path / ADDRESS, str(sock.resolve()))
    return sock


def write_private(path: Path, text: str) -> None:
    """Written 0600 from the start (never readable by others, even for a moment)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_secret(node_dir: Path) -> bytes:
    path = Path(node_dir) / SECRET
    info = path.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise PermissionError(f"{path} must be this user's and owner-only (0600)")
    return bytes.fromhex(path.read_text().strip())


def read_address(node_dir: Path) -> str:
    return (Path(node_dir) / ADDRESS).read_text().strip()


# ---- handshake ---------------------------------------------------------------------------------
def _mac(secret: bytes, role: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, PROTOCOL + b"/" + role + b"/" + nonce, hashlib.sha256).digest()


def _recv_small(conn: Connection, timeout: float | None) -> bytes:
    if timeout is not None and not conn.poll(timeout):
        raise Refused("no answer to the handshake in time")
    try:
        return conn.recv_bytes(HANDSHAKE_MAX)
    except (EOFError, OSError) as exc:
        raise Refused(f"handshake broken off ({type(exc).__name__})") from None


def peer_uid(conn: Connection) -> int:
    with socket.socket(fileno=os.dup(conn.fileno())) as s:
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def accept_peer(conn: Connection, secret: bytes) -> None:
    """The worker's side: the peer must be this user and prove the secret; then the worker proves it."""
    uid = peer_uid(conn)
    if uid != os.getuid():
        raise Refused(f"a process of user id {uid} is not this node's")
    challenge = secrets.token_bytes(NONCE)
    conn.send_bytes(PROTOCOL + b" " + challenge)
    answer = _recv_small(conn, HANDSHAKE_SECONDS)
    if len(answer) != 32 + NONCE or not hmac.compare_digest(answer[:32], _mac(secret, b"shim", challenge)):
        conn.send_bytes(b"refused")
        raise Refused("the peer did not prove the node's secret")
    conn.send_bytes(_mac(secret, b"worker", answer[32:]))


def prove(conn: Connection, secret: bytes) -> None:
    """The shim's side: answer the worker's challenge, then check the worker's answer to ours.
    The challenge may take a while (the worker serves one message at a time, and a restarted one
    imports torch first): no deadline for it; Flower's round timeout bounds the wait."""
    hello = _recv_small(conn, None)
    if not hello.startswith(PROTOCOL + b" ") or len(hello) != len(PROTOCOL) + 1 + NONCE:
        raise Refused("the socket does not speak the resident worker's protocol")
    ours = secrets.token_bytes(NONCE)
    conn.send_bytes(_mac(secret, b"shim", hello[-NONCE:]) + ours)
    answer = _recv_small(conn, HANDSHAKE_SECONDS)
    if not hmac.compare_digest(answer, _mac(secret, b"worker", ours)):
        raise Refused("the worker's socket did not prove the node's secret")


# ---- messages: a JSON header, then raw parts ------------------------------------------------
def send(conn: Connection, header: dict, parts: dict[str, bytes | None]) -> None:
    names = [k for k, v in parts.items() if v is not None]
    conn.send_bytes(json.dumps({**header, "parts": names}, default=float).encode())
    for name in names:
        conn.send_bytes(parts[name] or b"")  # names holds only the parts that are not None


def recv(conn: Connection) -> tuple[dict, dict[str, bytes]]:
    header = json.loads(conn.recv_bytes(HEADER_MAX))
    return header, {name: conn.recv_bytes() for name in header.pop("parts")}


def send_job(conn: Connection, job: Job) -> None:
    header = {
        "op": job.op,
        "data_file": job.data_file,
        "config_toml": job.config_toml,
        "partition": job.partition,
        "round": job.round,
        "seconds": job.seconds,
        "node_config": job.node_config,
        "judge": job.judge,
    }
    send(conn, header, {"down": job.down, "state": job.state})


def job_of(header: dict, parts: dict[str, bytes]) -> Job:
    return Job(
        header["config_toml"],
        int(header["partition"]),
        int(header["round"]),
        parts.get("down"),
        header.get("seconds"),
        parts.get("state", b""),
        dict(header.get("node_config") or {}),
        header.get("data_file"),
        "evaluate" if header.get("op") == "evaluate" else "train",
        header.get("judge") is True,
    )


def send_outcome(conn: Connection, outcome: Outcome) -> None:
    send(conn, {"metrics": outcome.metrics, "error": outcome.error}, {"up": outcome.up, "state": outcome.state})


def outcome_of(header: dict, parts: dict[str, bytes]) -> Outcome:
    return Outcome(parts.get("up"), dict(header["metrics"]), parts.get("state", b""), header.get("error"))


# ---- the shim's call -------------------------------------------------------------------------
def connect(node_dir: Path, wait: float = 30.0) -> Connection:
    """A proven connection to the node's worker; while it is (re)starting, tries again for `wait` s."""
    secret = read_secret(node_dir)
    deadline = time.monotonic() + wait
    while True:
        try:
            conn = Client(read_address(node_dir), family="AF_UNIX")
            break
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if time.monotonic() >= deadline:
                raise WorkerGone(
                    f"the resident worker of this node does not answer ({type(exc).__name__}) after {wait:g} s"
                ) from None
            time.sleep(0.2)
    try:
        prove(conn, secret)
    except BaseException:
        conn.close()
        raise
    return conn


def call(node_dir: Path, job: Job, wait: float = 30.0) -> Outcome:
    """Hands `job` to the node's worker and returns its outcome; WorkerGone if the worker is not
    there within `wait` s or dies before it answers (the message then fails, as on a dead node)."""
    conn = connect(node_dir, wait)
    try:
        send_job(conn, job)
        return outcome_of(*recv(conn))
    except (EOFError, ConnectionError, OSError) as exc:
        raise WorkerGone(f"the resident worker went away during the message ({type(exc).__name__})") from None
    finally:
        conn.close()
