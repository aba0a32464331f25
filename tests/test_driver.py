"""The round driver with a transport written here alone: clients run in threads on the real clock,
each with a Session of its own (as a Flower ClientApp would), registered as a runtime and run
through the same code path as `fedsqueeze run` — the hybrid rule included."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import pytest
import torch

from fedsqueeze import config as config_mod
from fedsqueeze.runtime import RUNTIMES, Launch, Session, in_process
from fedsqueeze.runtime.reply import Upload
from fedsqueeze.runtime.roles import ClientRole

from conftest import tiny_config

STRAGGLER = 3  # trains only once round 2 has begun: late on the real clock, deterministically


class ThreadTransport:
    """Send, poll, now: no close rule here (the driver applies it)."""

    remote = True  # only blobs reach the clients
    simulated = False
    patience = 60.0

    def __init__(self, session, out):
        self.cfg = session.cfg
        self.pool = ThreadPoolExecutor(max_workers=session.num_clients)
        self.roles: dict[int, ClientRole] = {}
        self.futures = {}  # future -> (client, round it was sent in)
        self.lock = threading.Lock()  # Session.build is not re-entrant (torch RNG state)
        self.gate = threading.Event()

    def _role(self, client: int) -> ClientRole:
        with self.lock:
            if client not in self.roles:
                self.roles[client] = ClientRole(Session.build(self.cfg, log=lambda *_: None), client)
            return self.roles[client]

    def _work(self, client: int, rnd: int, blob):
        if client == STRAGGLER:
            self.gate.wait(timeout=60)
        return self._role(client).handle(rnd, blob)

    def start(self) -> None:
        for c in range(self.cfg.data.clients):
            self._role(c)

    def reachable(self, clients):
        return clients

    def in_flight(self):
        return dict(self.futures.values())

    def client_states(self):
        return [{} for _ in range(self.cfg.data.clients)]

    def committed(self):
        pass

    def now(self):
        return time.monotonic()

    def send(self, rnd, blobs, work_seconds, progress):
        if rnd >= 2 and not self.gate.is_set():
            # The straggler trains now, before this round's clients get their blobs: its reply
            # arrives in this round, deterministically.
            self.gate.set()
            wait([f for f, (c, _) in self.futures.items() if c == STRAGGLER], timeout=60)
        for c, blob in blobs.items():
            self.futures[self.pool.submit(self._work, c, rnd, blob)] = (c, rnd)

    def poll(self, until):
        wait(list(self.futures), timeout=max(0.0, min(0.05, until - time.monotonic())), return_when=FIRST_COMPLETED)
        done = [f for f in self.futures if f.done()]
        return [Upload(*self.futures.pop(f), f.result()) for f in done]

    def abandon(self, client):
        self.futures = {f: co for f, co in self.futures.items() if co[0] != client}

    def state_dict(self):
        return {}, {}

    def load_state_dict(self, state, meta):
        pass


RUNTIMES.register("threads-test")(in_process(ThreadTransport))


def test_a_transport_registered_in_a_test_runs_a_hybrid_round_through_the_driver(tmp_path, corpus):
    overrides = {
        "train.rounds": "3",
        "runtime.kind": '"threads-test"',
        "hybrid.quorum": "0.75",
        "hybrid.max_staleness": "2",
        "method": '"gradualdiff"',
    }
    cfg = config_mod.load(tiny_config(tmp_path, corpus, **overrides))
    out = tmp_path / "run"
    summary = RUNTIMES.get(cfg.runtime.kind)(cfg, out, Launch(log=lambda *_: None))
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    # Round 1 closes at 3 of 4 without the straggler; it is not sampled while its upload is in
    # flight, and its update joins a later round with its staleness.
    assert rows[0]["clients"] == [0, 1, 2] and rows[0]["late"] == [3] and rows[0]["left_out"] == []
    assert rows[1]["clients"] == [0, 1, 2, 3] and rows[1]["stale"] == {"3": 1} and rows[1]["late"] == []
    assert sum(r["per_client"].get("3", {}).get("up", 0) for r in rows) > 0
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in rows) and "sim_seconds" not in rows[0]
    adapter = json.loads((out / "summary.json").read_text())
    assert adapter["rounds"] == 3 and torch.isfinite(torch.tensor(adapter["final_eval_loss"]))


def test_unknown_runtime_names_the_key_and_the_registered_ones(tmp_path, corpus):
    from fedsqueeze.errors import ConfigError

    with pytest.raises(ConfigError, match="runtime.kind.*threads-test"):
        config_mod.load(tiny_config(tmp_path, corpus, **{"runtime.kind": '"nope"'}))
