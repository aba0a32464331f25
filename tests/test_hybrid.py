"""The simulated clock, staleness weights and the asynchronous-synchronous hybrid."""

from __future__ import annotations

import json

import pytest
import torch

from fedsqueeze import config as config_mod
from fedsqueeze.client import within_seconds
from fedsqueeze.config import HybridConfig, NetworkConfig
from fedsqueeze.errors import ConfigError
from fedsqueeze.runtime import LocalRuntime, Session, rundir
from fedsqueeze.runtime.clock import NetworkModel
from fedsqueeze.runtime.driver import CloseRule
from fedsqueeze.strategies import ClientUpdate, MethodContext, build_method
from fedsqueeze.tensors import Layout

from conftest import MEASURED, tiny_config


def test_round_trip_hand_computed():
    net = NetworkModel(
        NetworkConfig(step_seconds=1.0, compute=[1.0, 0.5], up_mbps=8.0, down_mbps=80.0, latency_ms=10.0), 2, seed=0
    )
    # client 1: 10 steps at half speed = 20 s; 1 MB down at 80 Mbit/s = 0.1 s; 0.5 MB up at 8 Mbit/s
    # = 0.5 s; one latency each way = 0.02 s.
    assert net.round_trip(1, 1_000_000, 10, 500_000) == pytest.approx(20.62)
    assert net.round_trip(0, 0, 10, 0) == pytest.approx(10.0)  # nothing sent: no latency either


def close_time(start, finishes, pending, hybrid):
    return CloseRule.of(hybrid).close_time(start, finishes, pending)


def test_close_time_rules():
    h = HybridConfig(quorum=0.5)
    assert close_time(100.0, [104.0, 101.0, 110.0, 103.0], [], h) == 103.0  # 2 of 4
    assert close_time(100.0, [104.0, 101.0, 110.0, 103.0], [], HybridConfig()) == 110.0  # all
    assert close_time(100.0, [104.0, 130.0], [], HybridConfig(deadline=20.0)) == 120.0
    assert close_time(100.0, [], [107.0, 105.0], h) == 105.0  # nobody idle: wait for a late one


def test_staleness_weight_hand_computed():
    layout = Layout(("w",), ((2,),))
    ctx = MethodContext(layout=layout, init_adapter={"w": torch.zeros(2)}, seed=0, staleness_exponent=0.5)
    method = build_method("fedavg", {}, ctx)
    ups = [
        ClientUpdate(0, {"w": torch.ones(2)}, 30, staleness=0),
        ClientUpdate(1, {"w": torch.ones(2)}, 10, staleness=3),
    ]
    # example weights 0.75 / 0.25; the update 3 rounds late is discounted by (1 + 3)^-0.5 = 0.5
    assert method.weights(ups) == pytest.approx([0.75, 0.125])
    assert method.weights(ups, renormalize=True) == pytest.approx([0.75 / 0.875, 0.125 / 0.875])
    method.aggregate(1, ups)
    assert torch.allclose(method.adapter["w"], torch.full((2,), 0.875))


def _runtime(tmp_path, corpus, name, sets):
    cfg = config_mod.load(tiny_config(tmp_path, corpus, **{"train.rounds": "4"}), sets)
    out = tmp_path / name
    rundir.prepare(out, cfg, overwrite=True)
    return LocalRuntime(Session.build(cfg, log=lambda *a: None), out)


def test_quorum_one_is_bit_identical_to_synchronous(tmp_path, corpus):
    sync = _runtime(tmp_path, corpus, "sync", ["method=gradualdiff"])
    hyb = _runtime(
        tmp_path,
        corpus,
        "hyb",
        ["method=gradualdiff", "hybrid.quorum=1.0", "hybrid.max_staleness=0", "hybrid.staleness_exponent=2.0"],
    )
    a, b = sync.run(), hyb.run()
    ga, gb = sync.s.method.global_adapter(), hyb.s.method.global_adapter()
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
    assert a["bytes_total"] == b["bytes_total"] and a["sim_seconds"] == b["sim_seconds"]


def test_late_update_is_applied_exactly_once(tmp_path, corpus):
    rt = _runtime(
        tmp_path,
        corpus,
        "late",
        ["method=gradualdiff", "network.compute=[1, 1, 1, 0.25]", "hybrid.quorum=0.75", "hybrid.max_staleness=3"],
    )
    seen = []
    aggregate = rt.s.method.aggregate

    def spy(rnd, updates):
        seen.extend((rnd, u.client, u.staleness) for u in updates)
        return aggregate(rnd, updates)

    rt.s.method.aggregate = spy
    summary = rt.run()
    rows = [json.loads(x) for x in (rt.out / "rounds.jsonl").read_text().splitlines()]
    # client 3 (4x slower) misses the quorum of round 1, is not re-sampled while busy, and lands
    # in a later round with staleness >= 1, exactly once per time it was sampled.
    assert rows[0]["clients"] == [0, 1, 2] and rows[0]["late"] == [3]
    late = [(r, s) for r, c, s in seen if c == 3]
    assert late and all(s >= 1 for _, s in late)
    trained_rounds = [r["round"] for r in rows if 3 not in r["late"] or r["round"] == 1]
    origins = [r - s for r, s in late]
    assert len(origins) == len(set(origins))  # no update applied twice
    assert all(o in trained_rounds for o in origins)
    # the straggler no longer sets the pace: hybrid rounds are shorter than the straggler's trip
    sync = _runtime(tmp_path, corpus, "sync2", ["method=gradualdiff", "network.compute=[1, 1, 1, 0.25]"])
    assert summary["sim_seconds"] < sync.run()["sim_seconds"]


def test_too_stale_update_is_dropped_but_counted(tmp_path, corpus):
    rt = _runtime(
        tmp_path,
        corpus,
        "drop",
        ["method=fedavg", "network.compute=[1, 1, 1, 0.3]", "hybrid.quorum=0.75", "hybrid.max_staleness=0"],
    )
    rt.run()
    rows = [json.loads(x) for x in (rt.out / "rounds.jsonl").read_text().splitlines()]
    dropped = [r for r in rows if r.get("dropped")]
    assert dropped and dropped[0]["dropped"] == [3]
    assert 3 not in dropped[0]["clients"]
    assert dropped[0]["per_client"]["3"]["up"] > 0  # its bytes crossed the wire all the same


def test_steps_that_fit_hand_computed():
    net = NetworkModel(
        NetworkConfig(step_seconds=1.0, compute=[1.0, 0.25], up_mbps=8.0, down_mbps=80.0, latency_ms=10.0), 2, seed=0
    )
    # transfers take 0.11 s down (1 MB) + 0.51 s up (0.5 MB): 9.38 s of a 10 s deadline are left,
    # 9 steps at full speed, 2.345 -> 2 at a quarter of it.
    assert net.steps_that_fit(0, 10.0, 1_000_000, 500_000, 20) == 9
    assert net.steps_that_fit(0, 10.0, 1_000_000, 500_000, 5) == 5  # never more than the round's steps
    assert net.steps_that_fit(1, 10.0, 1_000_000, 500_000, 20) == 2
    assert net.steps_that_fit(1, 0.5, 1_000_000, 500_000, 20) == 1  # at least one, even if late


def test_within_seconds_keeps_at_least_one_step():
    assert list(within_seconds(iter(range(5)), 0.0)) == [0]
    assert list(within_seconds(iter(range(5)), 1e9)) == [0, 1, 2, 3, 4]


def test_partial_work_needs_a_deadline(tmp_path, corpus):
    with pytest.raises(ConfigError, match="hybrid.partial_work.*hybrid.deadline"):
        config_mod.load(tiny_config(tmp_path, corpus), ["hybrid.partial_work=true"])


def test_partial_work_straggler_reports_in_time(tmp_path, corpus):
    # 3 local steps of 1 s; client 3 at a quarter speed would need 12 s; the deadline of 9 s
    # leaves it 2 steps (the transfers of the tiny adapter take ~0.1 s), so nobody is late.
    rt = _runtime(
        tmp_path,
        corpus,
        "partial",
        [
            "method=gradualdiff",
            "network.step_seconds=1.0",
            "network.compute=[1, 1, 1, 0.25]",
            "hybrid.deadline=9.0",
            "hybrid.partial_work=true",
        ],
    )
    trained = []
    from fedsqueeze.runtime import roles

    train_client = roles.train_client

    def spy(s, client, rnd, start, **kw):
        adapter, losses = train_client(s, client, rnd, start, **kw)
        trained.append((rnd, client, len(losses)))
        return adapter, losses

    roles.train_client = spy
    try:
        rt.run()
    finally:
        roles.train_client = train_client
    rows = [json.loads(x) for x in (rt.out / "rounds.jsonl").read_text().splitlines()]
    assert all(r["partial"] == {"3": 2} and r["late"] == [] and r["clients"] == [0, 1, 2, 3] for r in rows)
    assert all(8.0 < r["sim_seconds"] <= 9.0 for r in rows)
    assert sorted({(c, n) for _, c, n in trained}) == [(0, 3), (1, 3), (2, 3), (3, 2)]


def test_resume_with_partial_work_and_late_updates_is_exact(tmp_path, corpus):
    # Quorum 0.75 and a deadline that leaves the straggler 2 steps: it still arrives after the
    # quorum, so runs carry both in-flight updates and partial-work sizing across the checkpoint.
    sets = [
        "method=gradualdiff",
        "network.step_seconds=1.0",
        "network.compute=[1, 1, 1, 0.25]",
        "hybrid.deadline=9.0",
        "hybrid.partial_work=true",
        "hybrid.quorum=0.75",
    ]
    full = _runtime(tmp_path, corpus, "full", sets)
    full.run()
    part = _runtime(tmp_path, corpus, "part", sets)
    part.run(until=2)
    again = LocalRuntime(Session.build(part.s.cfg, log=lambda *a: None), part.out)
    again.restore()
    again.run()
    strip = lambda out: [
        {k: v for k, v in json.loads(x).items() if k not in MEASURED}
        for x in (out / "rounds.jsonl").read_text().splitlines()
    ]
    rows = strip(full.out)
    assert rows == strip(again.out)
    assert any(r["late"] for r in rows) and any(r["partial"] == {"3": 2} for r in rows)
    ga, gb = full.s.method.global_adapter(), again.s.method.global_adapter()
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
