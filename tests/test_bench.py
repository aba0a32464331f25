"""`fedsqueeze bench`: the tiny suite end to end, its JSON contract, and row reuse."""

from __future__ import annotations

import json

import pytest

from fedsqueeze.bench import run_suite
from fedsqueeze.runtime import rundir

JSON_KEYS = {"method", "bytes_up", "bytes_down", "bytes_total", "final_eval_loss", "ood_eval_loss", "seconds_per_round"}


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    from typer.testing import CliRunner

    from fedsqueeze.cli import app

    res = CliRunner().invoke(
        app,
        [
            "bench",
            "--suite",
            "tiny",
            "--methods",
            "fedavg,centralized,fedsrd",
            "--rounds",
            "2",
            "--out",
            str(out),
            "--format",
            "json",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    return out, json.loads(res.output)


def test_json_contract_and_table(tiny_bench):
    out, results = tiny_bench
    assert [r["method"] for r in results] == ["fedavg", "centralized", "fedsrd"]
    for r in results:
        assert JSON_KEYS <= set(r), r.keys()
        assert r["bytes_total"] == r["bytes_up"] + r["bytes_down"]
        assert r["seconds_per_round"] > 0
    text = (out / "bench.md").read_text()
    table, _, gaps = text.partition("\n\nEval loss by round")
    assert table.count("\n| ") == 3 and "| fedsrd |" in table and "traffic vs fedavg" in table
    assert "| round | fedavg | centralized | fedsrd |" in gaps and (out / "gap.json").is_file()
    assert "native bf16: " in text and "), torch" in text and "reused" not in text
    assert (out / "eval_loss_vs_round.png").stat().st_size > 0
    assert json.loads((out / "bench.json").read_text()) == results


def test_bytes_come_from_the_ledger(tiny_bench):
    out, results = tiny_bench
    by = {r["method"]: r for r in results}
    for name, r in by.items():
        rows = rundir.read_rounds(out / name)
        assert r["bytes_up"] == sum(row["bytes_up"] for row in rows)
        assert r["bytes_down"] == sum(row["bytes_down"] for row in rows)
    assert by["centralized"]["bytes_total"] == 0
    assert 0 < by["fedsrd"]["bytes_total"] < by["fedavg"]["bytes_total"]


def test_reuse_only_a_row_finished_with_the_same_config(tiny_bench):
    out, results = tiny_bench
    logs: list[str] = []
    again = run_suite("tiny", ["fedavg"], 2, out, log=lambda *a, **k: logs.append(" ".join(map(str, a))), reuse=True)
    assert not any("bench tiny, row fedavg" in line for line in logs)
    assert again[0]["final_eval_loss"] == results[0]["final_eval_loss"]
    assert "reused from earlier runs in the same folder: fedavg" in (out / "bench.md").read_text()

    logs.clear()  # tabulate only: a row without a finished run is skipped, not trained
    table = run_suite(
        "tiny",
        ["fedavg", "flexlora"],
        2,
        out,
        log=lambda *a, **k: logs.append(" ".join(map(str, a))),
        reuse=True,
        train=False,
    )
    assert [r["method"] for r in table] == ["fedavg"] and not (out / "flexlora").exists()
    assert any("skipping flexlora" in line for line in logs)

    # a saved config that lacks a key added since (at its default) is still the same configuration
    saved = out / "fedavg" / rundir.CONFIG
    saved.write_text(saved.read_text().replace("partial_work = false\n", ""))
    assert run_suite("tiny", ["fedavg"], 2, out, log=lambda *a, **k: None, reuse=True, train=False)

    logs.clear()
    run_suite("tiny", ["fedavg"], 1, out, log=lambda *a, **k: logs.append(" ".join(map(str, a))), reuse=True)
    assert any("bench tiny, row fedavg" in line for line in logs)  # fewer rounds: a different run
    assert len(rundir.read_rounds(out / "fedavg")) == 1


def test_unknown_row_names_the_allowed_ones(cli, tmp_path):
    res = cli("bench", "--suite", "tiny", "--methods", "fedavg,nope", "--out", tmp_path)
    assert res.exit_code == 2 and "nope" in res.output and "fedsrd-random" in res.output
    res = cli("bench", "--suite", "w5", "--out", tmp_path)
    assert res.exit_code == 2 and "w4" in res.output


def test_snr_column_is_the_mean_over_compressed_rounds():
    from fedsqueeze.bench.runner import _result, markdown

    summary = {
        "rounds": 3,
        "clients": 2,
        "bytes_up": 6_000_000,
        "bytes_down": 0,
        "bytes_total": 6_000_000,
        "final_eval_loss": 3.0,
        "eval": {},
        "seconds": 30.0,
    }
    rows = [{"round": 1, "phase": "tgap"}, {"round": 2, "snr_db": 1.0}, {"round": 3, "snr_db": 4.0}]
    cg = _result("cg-fedllm-tensor", summary, rows)
    assert cg["snr_db"] == 2.5 and cg["mb_up_per_client_round"] == 1.0
    table = markdown([_result("fedavg", summary, rows[:1]), cg])
    assert "mean upload SNR dB" in table
    assert table.splitlines()[2].endswith("| - |") and table.splitlines()[3].endswith("| 2.50 |")
