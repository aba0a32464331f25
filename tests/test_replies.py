"""A client's reply is checked where the server receives it (issue 27): a reply whose fields are
NaN, infinite, negative, strings or missing rejects that upload with its reason, like an
undecodable blob, and the run finishes with every figure finite. In-process here; over Flower's
message path in test_flower.py."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from fedsqueeze import config as config_mod
from fedsqueeze.runtime import RUNTIMES, Launch
from fedsqueeze.runtime.filters import UPLOAD_FILTERS, ClientRound, UploadFilter
from fedsqueeze.runtime.reply import Reply

from conftest import tiny_config

MISSING = object()

# (round, client) -> (field, value, what the reason names); client 0 stays honest throughout.
BAD = {
    (1, 1): ("num_examples", math.nan, "num_examples is not an integer (nan)"),
    (1, 2): ("steps", -1, "steps = -1 is out of bounds"),
    (1, 3): ("train_loss", math.inf, "train_loss is not finite (inf)"),
    (2, 1): ("num_examples", "32", "num_examples is not an integer ('32')"),
    (2, 2): ("train_loss", MISSING, "missing train_loss"),
    (2, 3): ("up_encode_s", -0.5, "up_encode_s = -0.5 is negative"),
    (3, 1): ("steps", 10**6, "steps = 1000000 is out of bounds [0, 3]"),
    (3, 2): ("num_examples", MISSING, "missing num_examples"),
    (3, 3): ("train_loss", "low", "train_loss is not a number ('low')"),
}


def spoiled(reply: Reply, name: str, value) -> Reply:
    if name in ("num_examples", "steps", "train_loss") or value is not MISSING:
        return replace(reply, **{name: None if value is MISSING else value})
    raise AssertionError(name)


def assert_finite_run(out, expected: dict) -> None:
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    for r in rows:
        got = {(r["round"], int(c)): why for c, why in r.get("rejected", {}).items()}
        want = {k: f"bad reply: {v[2]}" for k, v in expected.items() if k[0] == r["round"]}
        assert got.keys() == want.keys(), (r["round"], got)
        for k, why in want.items():
            assert got[k].startswith(why), (got[k], why)
        assert r["clients"] == [0], r["clients"]  # only the honest upload is aggregated
        for key in ("train_loss", "eval_loss", "bytes_up", "bytes_down"):
            assert math.isfinite(r[key]), (key, r[key])
        assert all(math.isfinite(v) for v in r["eval"].values())
        assert all(math.isfinite(v) for link in ("codec_up", "codec_down") for v in r.get(link, {}).values())
        # a rejected reply's blob crossed the wire: it is on the bill
        assert all(r["per_client"][str(c)]["up"] > 0 for _, c in got)
    assert math.isfinite(summary["final_eval_loss"]) and summary["rounds"] == len(rows) == 3


def test_unsound_reply_fields_are_named(tmp_path):
    good = Reply(b"x", 32, 3, 1.5, peaks={"peak_rss_mb": 10.0})
    assert good.problem(3) is None
    for (_, _), (name, value, why) in BAD.items():
        assert spoiled(good, name, value).problem(3) == why or spoiled(good, name, value).problem(3).startswith(why)
    assert replace(good, peaks={"peak_rss_mb": math.nan}).problem(3) == "peak_rss_mb is not finite (nan)"
    assert replace(good, blob="abc").problem(3) == "blob is str, not bytes"
    assert replace(good, num_examples=True).problem(3) == "num_examples is not an integer (True)"
    # under local DP the loss is withheld: its absence is right, its presence is not
    assert replace(good, train_loss=None).problem(3, loss_withheld=True) is None
    assert "withhold" in good.problem(3, loss_withheld=True)


def test_reply_fields_round_trip():
    reply = Reply(b"abc", 32, 3, 1.25, 0.1, 0.2, 0.3, 400, {"peak_rss_mb": 12.5})
    assert Reply.of_fields(reply.blob, reply.fields()) == reply
    withheld = replace(reply, train_loss=None)
    assert "train_loss" not in withheld.fields() and Reply.of_fields(b"abc", withheld.fields()) == withheld


class LyingReplies(UploadFilter):
    """What BAD says, in the reply of its (round, client); registered for runs with seed LYING."""

    def reply(self, up: ClientRound, reply: Reply, message) -> Reply:
        if (up.turn.round, up.client) in BAD:
            name, value, _ = BAD[up.turn.round, up.client]
            reply = spoiled(reply, name, value)
        return reply


LYING = 27
UPLOAD_FILTERS.register("test-lying-replies")(lambda s, c: LyingReplies() if s.cfg.seed == LYING else None)


def test_bad_replies_in_process_are_rejected_and_the_run_finishes_finite(tmp_path, corpus):
    cfg = config_mod.load(tiny_config(tmp_path, corpus, **{"train.rounds": "3", "seed": str(LYING)}))
    out = tmp_path / "run"
    RUNTIMES.get("local")(cfg, out, Launch(log=lambda *_: None))
    assert_finite_run(out, BAD)


@pytest.mark.parametrize("mode", ["local"])
def test_a_withheld_loss_under_local_dp_is_no_rejection(tmp_path, corpus, mode):
    sets = {"privacy.mode": f'"{mode}"', "privacy.noise_multiplier": "1.0", "privacy.delta": "1e-5"}
    sets["privacy.noise_seed"] = "3"
    cfg = config_mod.load(tiny_config(tmp_path, corpus, **sets))
    out = tmp_path / "run"
    RUNTIMES.get("local")(cfg, out, Launch(log=lambda *_: None))
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert all("rejected" not in r and r["clients"] == [0, 1, 2, 3] for r in rows)
    assert all(math.isnan(r["train_loss"]) for r in rows)  # nobody reports one
