"""Evaluation whose cost does not grow with the federation (`[eval]`: a seeded sample of eval
sets, or one pooled set broken down by domain) and round records whose `seconds` cover the
whole round. Never asserts on absolute timings."""

from __future__ import annotations

import json
import logging

import pytest

from fedsqueeze import config as config_mod
from fedsqueeze.errors import ConfigError
from fedsqueeze.evaluation import REFERENCE_ROUND, eval_sample, evaluate_sets
from fedsqueeze.runtime import LocalRuntime, Session, rundir

from conftest import MEASURED, tiny_config

SIX_IID = {"data.partition": '"iid"', "data.clients": "6", "data.max_examples": "16", "data.eval_examples": "4"}


def _rounds(out):
    return [json.loads(line) for line in (out / rundir.ROUNDS).read_text().splitlines()]


def _local(cfg_path, out, sets=()):
    cfg = config_mod.load(cfg_path, list(sets))
    rundir.prepare(out, cfg, overwrite=True)
    return LocalRuntime(Session.build(cfg, log=lambda *_: None), out).run()


def _names(sets, prefix="client-"):
    return [f"{prefix}{i}" for i in sets]


# ---- which sets: eval.clients and the seeded sample ---------------------------------------------
@pytest.mark.parametrize(
    "setting, total, size",
    [("auto", 5, 5), ("auto", 16, 16), ("auto", 17, 16), ("auto", 1000, 16), ("all", 1000, 1000), (3, 1000, 3)],
)
def test_eval_clients_sizes_the_sample(setting, total, size):
    assert config_mod.EvalConfig(clients=setting).sample_size(total) == size


def test_the_eval_sample_is_seeded_by_seed_and_round():
    rounds = [eval_sample(0, rnd, 100, 16) for rnd in range(6)]
    assert rounds == [eval_sample(0, rnd, 100, 16) for rnd in range(6)]  # a second run, or a resume
    assert all(len(s) == 16 == len(set(s)) and s == sorted(s) for s in rounds)
    assert len({tuple(s) for s in rounds}) == 6  # another sample every round
    assert eval_sample(1, 1, 100, 16) != rounds[1]  # and for another seed
    assert eval_sample(0, 7, 10, 16) == list(range(10))  # fewer sets than the sample: all of them


@pytest.mark.parametrize("value", ["0", '"some"', "true", "7"])
def test_bad_eval_clients_are_refused_naming_the_key(tmp_path, corpus, value):
    with pytest.raises(ConfigError, match="eval.clients"):
        config_mod.load(tiny_config(tmp_path, corpus, **{"eval.clients": value}))  # 4 clients


def test_deprecated_train_eval_every_warns_and_sets_eval_every(tmp_path, corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="fedsqueeze.config"):
        cfg = config_mod.load(tiny_config(tmp_path, corpus, **{"train.eval_every": "2"}))
    assert cfg.eval.every == 2
    warnings = [r.getMessage() for r in caplog.records if "eval_every" in r.getMessage()]
    assert len(warnings) == 1 and "eval.every" in warnings[0]
    assert "eval_every" not in cfg.to_toml() and config_mod.validate(cfg.model_dump()).eval.every == 2
    with pytest.raises(ConfigError, match="eval.every"):
        config_mod.load(tiny_config(tmp_path, corpus, **{"train.eval_every": "0"}))


# ---- a run judges the sample, records it, and its seconds add up ------------------------------
def test_a_run_judges_a_seeded_sample_and_the_summary_the_reference_sets(tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus, **SIX_IID, **{"train.rounds": "3", "eval.clients": "2", "eval.every": "2"})
    summary = _local(cfg, tmp_path / "out")
    rows = _rounds(tmp_path / "out")
    assert ["eval" in r for r in rows] == [False, True, True]  # every 2nd round and the last
    for r in rows[1:]:
        assert r["eval_sets"] == list(r["eval"]) == _names(eval_sample(0, r["round"], 6, 2))
        assert r["eval_loss"] == pytest.approx(sum(r["eval"].values()) / 2)
    reference = _names(eval_sample(0, REFERENCE_ROUND, 6, 2))
    assert summary["eval_sets"] == list(summary["eval"]) == reference
    assert (summary["eval_sets_evaluated"], summary["eval_sets_total"]) == (2, 6)
    assert summary["final_eval_loss"] == pytest.approx(sum(summary["eval"].values()) / 2)
    assert summary["final_eval_loss"] < summary["base_eval_loss"]  # the same sets before and after
    # seconds: the whole round, its parts beside it
    for r in rows:
        parts = [r["train_seconds"], r["aggregate_seconds"], r["eval_seconds"]]
        assert all(p >= 0 for p in parts) and r["seconds"] >= sum(parts)
    for key in ("train_seconds", "aggregate_seconds"):
        assert summary[key] == pytest.approx(sum(r[key] for r in rows))
    final_eval = summary["eval_seconds"] - sum(r["eval_seconds"] for r in rows)  # the reference sets, again
    assert final_eval >= 0 and summary["seconds"] == pytest.approx(sum(r["seconds"] for r in rows) + final_eval)


def test_a_small_federation_is_judged_whole_as_before(tmp_path, corpus):
    summary = _local(tiny_config(tmp_path, corpus), tmp_path / "out")
    last = _rounds(tmp_path / "out")[-1]
    assert last["eval_sets"] == list(last["eval"]) == ["animals", "colors", "numbers", "tools"]
    assert summary["eval"] == last["eval"] and summary["eval_seconds"] == pytest.approx(
        sum(r["eval_seconds"] for r in _rounds(tmp_path / "out"))
    )  # the last round's evaluation is the summary's: nothing judged twice


def test_resume_judges_the_same_sample_bit_identically(tmp_path, corpus, cli):
    cfg = tiny_config(tmp_path, corpus, **SIX_IID, **{"train.rounds": "3", "eval.clients": "3"})
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli("run", cfg, "--out", full).exit_code == 0
    assert cli("run", cfg, "--out", part, "--until", "1").exit_code == 0
    res = cli("resume", part, "--set", "eval.every=1")  # how often may change on resume
    assert res.exit_code == 0, res.output
    strip = lambda rows: [{k: v for k, v in r.items() if k not in MEASURED} for r in rows]
    assert strip(_rounds(full)) == strip(_rounds(part))
    a, b = (json.loads((d / rundir.SUMMARY).read_text()) for d in (full, part))
    numerics = lambda summary: {k: v for k, v in summary.items() if k not in MEASURED and not k.endswith("seconds")}
    assert numerics(a) == numerics(b)
    res = cli("resume", part, "--set", "eval.clients=2", "--set", "train.rounds=4")
    assert res.exit_code == 2 and "eval.clients" in res.output  # the reference was judged on 3


# ---- pooled: one set, broken down by domain ----------------------------------------------------
def _session(tmp_path, corpus, **overrides):
    s = Session.build(config_mod.load(tiny_config(tmp_path, corpus, **overrides)), log=lambda *_: None)
    return s, [{} for _ in range(len(s.federation.eval_sets))]


def _tokens(dataset) -> int:
    return sum(sum(1 for label in labels[1:] if label != -100) for labels in dataset.labels)


def test_pooled_by_domain_equals_the_per_set_losses_of_a_by_domain_federation(tmp_path, corpus):
    s, states = _session(tmp_path, corpus)  # by-domain: each client holds one domain
    per_set = evaluate_sets(s, states, [0, 1, 2, 3])
    s.cfg.eval.pooled = True
    pooled = evaluate_sets(s, states, [0, 1, 2, 3])
    assert pooled["eval_by"] == "domain" and pooled["eval_sets"] == per_set["eval_sets"]
    assert pooled["eval"] == pytest.approx(per_set["eval"], rel=1e-5)


def test_pooled_loss_is_token_weighted_and_broken_down_by_domain(tmp_path, corpus):
    s, states = _session(tmp_path, corpus, **{"data.partition": '"iid"'})  # every client holds every domain
    per_set = evaluate_sets(s, states, [1, 3])
    s.cfg.eval.pooled = True
    pooled = evaluate_sets(s, states, [1, 3])
    assert pooled["eval_by"] == "domain" and pooled["eval_sets"] == ["client-1", "client-3"]
    held_out = [s.federation.eval_domains[n] for n in pooled["eval_sets"]]
    assert list(pooled["eval"]) == sorted(set().union(*held_out))
    sets = [s.federation.eval_sets[n] for n in pooled["eval_sets"]]
    weighted = sum(per_set["eval"][n] * _tokens(d) for n, d in zip(pooled["eval_sets"], sets))
    assert pooled["eval_loss"] == pytest.approx(weighted / sum(_tokens(d) for d in sets), rel=1e-5)


def test_pooled_data_of_one_domain_breaks_down_by_eval_set(tmp_path):
    corpus = tmp_path / "plain.jsonl"  # no domain field and one source: a single domain
    corpus.write_text(
        "".join(
            json.dumps({"instruction": f"Say {w} {i}.", "response": f"{w} {w} {i}."}) + "\n"
            for i in range(30)
            for w in ("yes", "no")
        )
    )
    s, states = _session(tmp_path, corpus, **{"data.partition": '"iid"', "data.clients": "3", "eval.pooled": "true"})
    pooled = evaluate_sets(s, states, [0, 2])
    assert pooled["eval_by"] == "client" and list(pooled["eval"]) == ["client-0", "client-2"]


def test_a_pooled_run_summarises_the_breakdown(tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus, **{"data.partition": '"iid"', "eval.pooled": "true", "eval.clients": "2"})
    summary = _local(cfg, tmp_path / "out")
    assert summary["eval_by"] == "domain" and set(summary["eval"]) == {"animals", "colors", "numbers", "tools"}
    assert (summary["eval_sets_evaluated"], summary["eval_sets_total"]) == (2, 4)
