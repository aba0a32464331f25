"""Codecs on the wire of a real (tiny) federated run."""

from __future__ import annotations

import json
from pathlib import Path

from fedsqueeze import config as config_mod
from fedsqueeze.runtime import LocalRuntime, Session, rundir

from conftest import tiny_config

TOPK_EF = ["uplink.codec=topk(fraction=0.05) > quantize(bits=8) > zstd", "uplink.error_feedback=true"]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"


def _run(tmp_path, corpus, name, sets, example=False):
    if example:  # the shipped tiny example: real stdlib docstrings
        cfg = config_mod.load(EXAMPLE, ["train.rounds=5", "train.threads=1", *sets])
    else:
        cfg = config_mod.load(tiny_config(tmp_path, corpus, **{"train.rounds": "5", "train.local_steps": "5"}), sets)
    out = tmp_path / name
    rundir.prepare(out, cfg, overwrite=True)
    return LocalRuntime(Session.build(cfg, log=lambda *a: None), out).run(), out


def test_topk_error_feedback_matches_fedavg_with_a_tenth_of_the_uplink(tmp_path, corpus):
    plain, _ = _run(tmp_path, corpus, "plain", [], example=True)
    sparse, _ = _run(tmp_path, corpus, "topk", TOPK_EF, example=True)
    assert sparse["bytes_up"] <= 0.10 * plain["bytes_up"]
    assert sparse["final_eval_loss"] <= 1.02 * plain["final_eval_loss"]


def test_lossy_up_and_int8_down_is_one_config(tmp_path, corpus):
    summary, out = _run(tmp_path, corpus, "both", TOPK_EF + ["downlink.codec=quantize(bits=8) > zstd"])
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert summary["downlink_codec"] == "quantize(bits=8) > zstd"
    down = rows[-1]["codec_down"]
    assert 0 < down["ratio"] < 0.3 and 0 < down["rel_error"] < 0.05
    assert 0 < rows[-1]["codec_up"]["ratio"] < 0.1


def test_bad_codec_spec_is_a_config_error(tmp_path, corpus, cli):
    cfg = tiny_config(tmp_path, corpus)
    res = cli("run", cfg, "--set", "uplink.codec=topk(fraction=2)", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "Traceback" not in res.output and "topk" in res.output
