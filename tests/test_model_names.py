"""Model names fail fast: an alias or a local path first; only an `org/name` id goes to the hub,
and only when it can be reached. No test here touches the network: the probe is a local port
or replaced, and a name that must not reach the hub fails if anything opens a connection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsqueeze.errors import UserError
from fedsqueeze.models import ALIASES, locate, resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network touched: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    probe = resolve.reachable
    probe.cache_clear()
    yield
    probe.cache_clear()


def _aliases_listed(text: str) -> bool:
    return all(a in text for a in ALIASES) and ".gguf" in text and "folder" in text


@pytest.mark.parametrize("name", ["tinyy", "llama3", "Qwen2-7B", "not a model"])
def test_a_name_not_shaped_like_a_hub_id_fails_without_the_network(name, no_network):
    with pytest.raises(UserError) as err:
        locate(name)
    assert "not an alias" in str(err.value) and _aliases_listed(str(err.value))


def test_aliases_files_and_folders_are_local(tmp_path, no_network):
    assert locate("tiny").kind == "tiny" and locate("smollm2-135m").kind == "smollm2"
    assert locate("llama-3.2-3b", init="random") == resolve.Source("random", "llama-3.2-3b")
    (tmp_path / "m").mkdir()
    assert locate(str(tmp_path / "m")) == resolve.Source("pretrained", str(tmp_path / "m"))
    gguf = tmp_path / "w.gguf"
    gguf.write_bytes(b"GGUF")
    assert locate(str(gguf)) == resolve.Source("gguf", str(gguf))
    for missing, needle in ((tmp_path / "nope", "folder not found"), (tmp_path / "x.gguf", "GGUF file not found")):
        with pytest.raises(UserError, match=needle):
            locate(str(missing))
    with pytest.raises(UserError, match="folder not found"):
        locate("./models/none")


def test_hub_ids_offline_come_from_the_cache_or_fail_at_once(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        locate("some-org/some-model")
    assert "HF_HUB_OFFLINE is set" in str(err.value) and _aliases_listed(str(err.value))
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        locate("llama-3.2-3b")  # an alias for a hub id is a hub id
    monkeypatch.setattr(resolve, "_cached", lambda hub_id: hub_id == "some-org/cached")
    assert locate("some-org/cached") == resolve.Source("pretrained", "some-org/cached", local_only=True)


def test_no_route_to_the_hub_is_offline_too(monkeypatch, no_network):
    monkeypatch.setattr(resolve, "reachable", lambda host, port: False)
    with pytest.raises(UserError, match=r"huggingface.co:443 cannot be reached"):
        locate("some-org/some-model")
    monkeypatch.setattr(resolve, "reachable", lambda host, port: True)
    assert locate("some-org/some-model") == resolve.Source("pretrained", "some-org/some-model")


def test_the_probe_connects_to_where_downloads_go(monkeypatch):
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "HF_ENDPOINT", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert resolve._hub_address() == ("huggingface.co", 443)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert resolve._hub_address() == ("proxy.internal", 3128)
    monkeypatch.setenv("NO_PROXY", ".huggingface.co")
    assert resolve._hub_address() == ("huggingface.co", 443)


def test_reachable_is_a_bounded_local_connect():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        assert resolve.reachable.__wrapped__("127.0.0.1", port, 2.0)
    finally:
        listener.close()
    start = time.monotonic()
    assert not resolve.reachable.__wrapped__("127.0.0.1", port, 2.0)  # closed: refused at once
    assert time.monotonic() - start < 2.5


@pytest.mark.parametrize("name", ["model.name=tinyy", "model.name=some-org/some-model"])
def test_cli_exits_2_at_once_listing_the_aliases(tmp_path, name):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fedsqueeze.cli", "run", str(ROOT / "examples" / "tiny.toml"), "--set", name]
        + ["--out", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - start
    assert done.returncode == 2, done.stdout + done.stderr
    assert _aliases_listed(" ".join(done.stdout.split())), done.stdout
    assert not (tmp_path / "run").exists()
    assert seconds < 30, seconds  # ~2 s on an idle machine (imports); generous for shared CI cores
