"""Task metrics in a real run on the tiny model, and `fedsqueeze eval` reproducing them."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from conftest import tiny_config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny.toml"
KEYS = ("acc", "acc_norm", "rougeL")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from typer.testing import CliRunner

    from fedsqueeze.cli import app

    out = tmp_path_factory.mktemp("task") / "D"
    args = ["run", str(EXAMPLE), "--set", 'eval.metrics=["loss","choice","rouge"]', "--set", "eval.max_new_tokens=8"]
    args += ["--set", "train.rounds=2", "--set", "train.local_steps=2", "--set", "eval.every=2", "--out", str(out)]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


def test_run_records_accuracy_and_rouge_per_set(run_dir):
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert "eval_metrics" not in rows[0]  # eval.every = 2: the costly metrics wait too
    last = rows[-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    for fields in (last["eval_metrics"], summary["eval_metrics"]):
        assert set(fields) == set(last["eval_sets"])
        for metrics in fields.values():
            assert all(0.0 <= metrics[k] <= 1.0 for k in KEYS)
            assert metrics["chance"] == pytest.approx(0.25) and metrics["choice_n"] > 0
    for means in (last["eval_means"], summary["eval_means"], summary["base_eval_means"]):
        assert all(0.0 <= means[k] <= 1.0 for k in KEYS)
    assert summary["eval_means"]["acc"] == pytest.approx(
        sum(m["acc"] for m in summary["eval_metrics"].values()) / len(summary["eval_metrics"])
    )


def test_eval_command_reproduces_the_run(run_dir, cli):
    res = cli("eval", run_dir, "--data", "builtin:pystdlib", "--metrics", "choice")
    assert res.exit_code == 0, res.output
    assert "acc_norm" in res.output and "mean" in res.output
    result = json.loads((run_dir / "eval.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["eval_sets"] == summary["eval_sets"]
    for name, metrics in summary["eval_metrics"].items():
        for key in ("acc", "acc_norm", "chance", "choice_n"):
            assert result["sets"][name][key] == metrics[key]
    assert "loss" not in result["means"] and result["means"]["acc"] == summary["eval_means"]["acc"]


def test_eval_api_loss_and_base_model(run_dir, tmp_path):
    import fedsqueeze.api as api

    summary = json.loads((run_dir / "summary.json").read_text())
    out = tmp_path / "e.json"
    got = api.evaluate(run_dir / "adapter", metrics="loss", out=out, log=None)
    assert json.loads(out.read_text())["means"] == got["means"]
    for name, loss in summary["eval"].items():
        assert got["sets"][name]["loss"] == pytest.approx(loss, rel=1e-6)
    base = api.evaluate(run_dir, metrics=["loss", "choice"], base=True, log=None)
    assert base["means"]["loss"] == pytest.approx(summary["base_eval_loss"], rel=1e-6)
    assert base["means"]["acc"] == pytest.approx(summary["base_eval_means"]["acc"])


def test_lm_eval_missing_is_a_clear_error(run_dir, cli, monkeypatch):
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the [eval] extra were not installed
    res = cli("eval", run_dir, "--metrics", "loss", "--lm-eval", "t1", "--out", run_dir / "x.json")
    assert res.exit_code == 2 and "fedsqueeze[eval]" in res.output


def test_lm_eval_gets_the_peft_model_and_tokenizer(run_dir, cli, monkeypatch, tmp_path):
    calls = []

    def run_tasks(model, tokenizer, tasks, include_path, limit=None, batch_size=8):
        calls.append((type(model).__name__, tasks, include_path, limit))
        return {"t1": {"acc": 0.5}}

    monkeypatch.setitem(sys.modules, "fedsqueeze.harness", types.SimpleNamespace(run_tasks=run_tasks))
    import fedsqueeze

    monkeypatch.setattr(fedsqueeze, "harness", sys.modules["fedsqueeze.harness"], raising=False)
    out = tmp_path / "h.json"
    res = cli("eval", run_dir, "--metrics", "loss", "--lm-eval", "t1,t2", "--include-path", tmp_path, "--out", out)
    assert res.exit_code == 0, res.output
    assert calls == [("PeftModelForCausalLM", ["t1", "t2"], tmp_path, None)]
    assert json.loads(out.read_text())["lm_eval"] == {"t1": {"acc": 0.5}} and "lm-evaluation-harness" in res.output


def test_data_with_its_own_choices(tmp_path, cli):
    rows = []
    for d, words in {"x": ["ant", "bee", "cat", "dog"], "y": ["red", "tan", "blue", "gold"]}.items():
        for i in range(12):
            w = words[i % 4]
            rows.append({"q": f"Pick {w}.", "a": w, "opts": words, "ans": i % 4, "domain": d})
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(tmp_path, data, **{"data.clients": "2", "data.eval_examples": "4", "train.rounds": "1"})
    cfg.write_text(
        cfg.read_text().replace(
            "[data]\n",
            '[data]\ninstruction_field = "q"\nresponse_field = "a"\nchoices_field = "opts"\nanswer_field = "ans"\n',
        )
    )
    res = cli("run", cfg, "--set", "eval.metrics=loss,choice", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["eval_means"]["chance"] == pytest.approx(0.25)
    assert all(m["choice_n"] >= 1 for m in summary["eval_metrics"].values())  # every held-out example
