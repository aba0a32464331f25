"""The per-client state store: round trips, a bounded cache that spills to versioned files, and
checkpoints that write only what changed; in a run, memory and checkpoint bytes that do not grow
with clients who never take part, and resumes that stay bit-identical."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedsqueeze import config as config_mod
from fedsqueeze.errors import UserError
from fedsqueeze.runtime.local import LocalRuntime
from fedsqueeze.runtime.session import Session
from fedsqueeze.runtime.state_store import MB, StateStore

from conftest import tiny_config


def _state(seed: int, n: int = 1024) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"memory/a": torch.randn(n, generator=g), "global/b": torch.randn(4, 8, generator=g)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_and_nothing_for_clients_never_stored(tmp_path):
    store = StateStore(tmp_path, cache_mb=1)
    assert store.get(7) == {} and 7 not in store
    store.put(3, _state(3))
    got = store.get(3)
    assert _same(got, _state(3))
    got["memory/a"] += 1  # a copy: the store's own is untouched
    assert _same(store.get(3), _state(3))
    assert store.clients() == [3] and not list(tmp_path.glob("*.safetensors"))


def test_cache_evicts_least_recently_used_to_files_and_reads_them_back(tmp_path):
    one = sum(v.numel() * 4 for v in _state(0).values())  # bytes of one client's state
    store = StateStore(tmp_path, cache_mb=2.5 * one / MB)  # room for two
    for c in range(5):
        store.put(c, _state(c))
    assert store.cached <= 2.5 * one and len(store.cache) == 2
    assert sorted(store.cache) == [3, 4]
    assert len(list(tmp_path.glob("*.safetensors"))) == 3  # 0, 1, 2 spilled
    store.get(0)  # read back, and now most recent: 3 goes
    assert sorted(store.cache) == [0, 4]
    for c in range(5):
        assert _same(store.get(c), _state(c)), c


def test_flush_writes_only_what_changed_and_prune_keeps_the_manifest(tmp_path):
    store = StateStore(tmp_path, cache_mb=64)
    for c in range(4):
        store.put(c, _state(c))
    first = store.flush()
    assert sorted(first["files"]) == ["0", "1", "2", "3"] and first["bytes"] > 0
    store.prune()
    store.put(2, _state(20))
    second = store.flush()
    assert second["files"]["2"] != first["files"]["2"]
    assert {c: f for c, f in second["files"].items() if c != "2"} == {
        c: f for c, f in first["files"].items() if c != "2"
    }
    assert 0 < second["bytes"] < first["bytes"] / 3  # one client's file, not four
    assert len(list(tmp_path.glob("*.safetensors"))) == 5  # the old version of 2 until prune
    store.prune()
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == sorted(f[0] for f in second["files"].values())
    assert _same(load_file(str(tmp_path / second["files"]["2"][0])), _state(20))


def test_load_returns_to_a_manifest_and_drops_a_crashs_leftovers(tmp_path):
    store = StateStore(tmp_path, cache_mb=64)
    store.put(0, _state(0))
    store.put(1, _state(1))
    manifest = json.loads(json.dumps(store.flush()))  # as the checkpoint's meta.json keeps it
    store.prune()
    store.put(0, _state(99))  # the next round changed client 0 ...
    store.flush()  # ... and wrote its file, but the checkpoint naming it never landed
    again = StateStore(tmp_path, cache_mb=64)
    again.load(manifest)
    assert _same(again.get(0), _state(0)) and _same(again.get(1), _state(1))
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    again.put(0, _state(5))
    assert again.flush()["files"]["0"][0] not in {f[0] for f in manifest["files"].values()}  # never reused


def test_a_damaged_or_missing_state_file_is_a_clear_error(tmp_path):
    store = StateStore(tmp_path, cache_mb=64)
    store.put(0, _state(0))
    manifest = store.flush()
    path = tmp_path / manifest["files"]["0"][0]
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    fresh = StateStore(tmp_path, cache_mb=64)
    fresh.load(manifest)
    with pytest.raises(UserError, match="fails its checksum"):
        fresh.get(0)
    path.unlink()
    with pytest.raises(UserError, match="missing"):
        StateStore(tmp_path, cache_mb=64).load(manifest)


# ---- in a run ----------------------------------------------------------------------------------
def _cfg(tmp_path, corpus, clients: int, sets=()):
    path = tiny_config(tmp_path, corpus)
    base = [
        "method=gradualdiff",
        "data.partition=iid",
        f"data.clients={clients}",
        "train.rounds=3",
        "train.clients_per_round=2",
        "train.local_steps=1",
    ]
    return config_mod.load(path, [*base, *sets])


def _run(cfg, out, until=None):
    from fedsqueeze import rundir

    rundir.prepare(out, cfg, overwrite=True)
    driver = LocalRuntime(Session.build(cfg, log=lambda *_: None), out)
    driver.run(until=until)
    return driver


def _measured_out(record: dict) -> dict:
    """A record without what is measured (time, memory): the rest is deterministic."""
    out = {k: v for k, v in record.items() if not k.endswith(("seconds", "_mb"))}
    for key in ("codec_up", "codec_down"):
        if key in out:
            out[key] = {k: v for k, v in out[key].items() if not k.endswith("_s")}
    return out


def _rounds(out):
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def test_checkpoint_bytes_do_not_grow_with_clients_who_never_take_part(tmp_path, corpus):
    small = _run(_cfg(tmp_path, corpus, 4), tmp_path / "c4")
    large = _run(_cfg(tmp_path, corpus, 12), tmp_path / "c12")
    for a, b in zip(_rounds(tmp_path / "c4"), _rounds(tmp_path / "c12")):
        assert 0.9 <= a["checkpoint_bytes"] / b["checkpoint_bytes"] <= 1.1, (a["round"], a, b)
    # Only the clients that took part have state, server side and client side.
    took_part = sorted({c for r in _rounds(tmp_path / "c12") for c in r["clients"]})
    assert large.transport.store.clients() == took_part
    # The server keeps something (its downlink memory, a client's copy) only for those it sent to.
    assert large.server.store.clients() and set(large.server.store.clients()) <= set(took_part)
    assert len(took_part) < 12 and small.server.store.clients()


def test_a_tiny_cache_and_a_resume_give_the_same_run_bit_for_bit(tmp_path, corpus):
    whole = _run(_cfg(tmp_path, corpus, 6), tmp_path / "whole")
    squeezed = _cfg(tmp_path, corpus, 6, ["runtime.state_cache_mb=0.001"])  # every state spills to a file
    _run(squeezed, tmp_path / "part", until=1)
    resumed = LocalRuntime(Session.build(squeezed, log=lambda *_: None), tmp_path / "part")
    resumed.restore()
    resumed.run()
    a, b = (
        load_file(str(tmp_path / "whole/adapter/adapter_model.safetensors")),
        load_file(str(tmp_path / "part/adapter/adapter_model.safetensors")),
    )
    assert _same(a, b)
    for x, y in zip(_rounds(tmp_path / "whole"), _rounds(tmp_path / "part"), strict=True):
        assert _measured_out(x) == _measured_out(y)
    for c in resumed.server.store.clients():
        assert _same(whole.server.store.get(c), resumed.server.store.get(c)), c
        assert _same(whole.transport.store.get(c), resumed.transport.store.get(c)), c
