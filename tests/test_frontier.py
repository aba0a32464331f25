"""The bytes/quality frontier: Pareto set and the +1% verdicts by hand, then the tiny sweep end to end."""

from __future__ import annotations

import json

import pytest

from fedsqueeze.bench import frontier, run_suite


def _r(name, mb, loss):
    return {"method": name, "bytes_total": int(mb * 1e6), "final_eval_loss": loss}


RESULTS = [
    _r("fedavg", 100, 3.00),
    _r("fedavg-bf16", 50, 3.00),
    _r("fedsrd-b8-q4", 4, 3.02),  # +0.67%: within, and the cheapest within
    _r("fedsrd-keep5-b4-q4", 2, 3.05),  # +1.67%: cheaper still, but outside
    _r("gradualdiff-top0.5-q8", 20, 3.01),  # within, dominated by fedsrd-b8-q4? no: lower loss
    _r("gradualdiff-top0.2-q4", 30, 3.04),  # dominated (more bytes, worse loss than 20 MB at 3.01)
    _r("fed-sb-r16", 1, 3.10),
]


def test_pareto_keeps_only_undominated_points_cheapest_first():
    front = [p["method"] for p in frontier.pareto(RESULTS)]
    # 1 MB 3.10 < 2 MB 3.05 < 4 MB 3.02 < 20 MB 3.01 < 50 MB 3.00; 100 MB at 3.00 ties 50 MB: dominated
    assert front == ["fed-sb-r16", "fedsrd-keep5-b4-q4", "fedsrd-b8-q4", "gradualdiff-top0.5-q8", "fedavg-bf16"]


def test_verdicts_per_family_and_ratios_against_both_references():
    a = frontier.analyse(RESULTS)
    assert a["limit"] == pytest.approx(3.03)
    points = {p["row"]: p for p in a["points"]}
    assert points["fedsrd-b8-q4"]["vs_fp32"] == pytest.approx(0.04)
    assert points["fedsrd-b8-q4"]["vs_bf16"] == pytest.approx(0.08)
    assert points["fedsrd-b8-q4"]["within"] and not points["fedsrd-keep5-b4-q4"]["within"]
    assert not points["gradualdiff-top0.2-q4"]["pareto"]
    fams = a["families"]
    assert fams["fedsrd"]["cheapest_within"] == "fedsrd-b8-q4"
    assert fams["gradualdiff"]["cheapest_within"] == "gradualdiff-top0.5-q8"
    assert fams["fed-sb"] == {"cheapest_within": None, "best_loss": "fed-sb-r16"}
    assert fams["fedavg"]["cheapest_within"] == "fedavg-bf16"
    text = frontier.markdown(a)
    assert "- fedsrd: fedsrd-b8-q4, 4.00% of FedAvg's bytes (8.00% of bf16), loss +0.67%" in text
    assert "- fed-sb: none within; its best loss fed-sb-r16 at +3.33% (1.00% of the bytes)" in text


def test_uplink_share_is_reported_where_the_split_is_known():
    split = [{**r, "bytes_up": r["bytes_total"] // 4} for r in RESULTS[:2]]
    a = frontier.analyse(split + RESULTS[2:])
    points = {p["row"]: p for p in a["points"]}
    assert points["fedavg"]["up_share"] == pytest.approx(0.25) and "up_share" not in points["fed-sb-r16"]
    text = frontier.markdown(a)
    assert "| fedavg | fedavg | 100.000 | 100.00% | 200.00% | 25.00% | 3.0000 | +0.00% |  |" in text
    head, rule = text.splitlines()[:2]
    assert head.count("|") == rule.count("|")  # a table with one rule cell per column renders


def test_without_fedavg_there_is_no_line_to_judge_against():
    a = frontier.analyse(RESULTS[2:])
    assert a["limit"] is None and all("within" not in p for p in a["points"])
    assert "No `fedavg` row" in frontier.markdown(a)


def test_every_sweep_row_names_its_family():
    assert set(frontier.FAMILY) == set(frontier.ROWS)
    assert frontier.REFERENCE in frontier.ROWS and frontier.REFERENCE_BF16 in frontier.ROWS


def test_tiny_sweep_end_to_end(tmp_path):
    rows = ["fedavg", "fedavg-bf16", "fedavg-top0.01-q4"]
    results = run_suite("tiny-frontier", rows, out=tmp_path, log=lambda *a, **k: None)
    assert [r["method"] for r in results] == rows
    a = json.loads((tmp_path / "frontier.json").read_text())
    by = {p["row"]: p for p in a["points"]}
    bf16 = by["fedavg-bf16"]["vs_fp32"]
    assert 0.45 < bf16 < 0.55  # half the value bytes, plus the same headers
    assert by["fedavg-top0.01-q4"]["vs_fp32"] < 0.1
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    assert "fewest bytes per method" in (tmp_path / "bench.md").read_text()
    assert "gap to FedAvg" in (tmp_path / "bench.md").read_text() and (tmp_path / "gap.json").is_file()


def test_every_suite_row_is_a_valid_config_with_valid_method_params():
    from fedsqueeze import config as config_mod
    from fedsqueeze.bench.runner import row_configs
    from fedsqueeze.bench.suites import SUITES
    from fedsqueeze.strategies import METHODS, validated_params

    for suite in SUITES.values():
        _, configs = row_configs(suite.name, list(suite.rows), None)
        for _name, raw in configs:
            cfg = config_mod.validate(raw)
            if cfg.method in METHODS:
                validated_params(cfg.method, cfg.params)


def test_the_per_round_gap_against_fedavg_by_hand(tmp_path):
    from fedsqueeze.bench import gap

    rec = lambda losses: [{"round": r, "eval_loss": x} for r, x in enumerate(losses, start=1)]
    curves = {
        "fedavg": gap.losses(rec([3.0, 2.0, 1.0]), base=4.0),
        "steady": gap.losses(rec([3.03, 2.02, 1.01]), base=4.0),  # +1% each round
        "growing": gap.losses(rec([3.0, 2.02, 1.02]), base=4.0),  # 0, +1%, +2%
        "sparse": gap.losses([{"round": 3, "eval_loss": 1.1}], base=4.0),  # evaluated at the end only
    }
    a = gap.analyse(curves)
    assert a["rounds"] == [0, 1, 2, 3]
    steady, growing, sparse = (a["rows"][n] for n in ("steady", "growing", "sparse"))
    assert steady["gap"] == pytest.approx({"1": 0.01, "2": 0.01, "3": 0.01})
    assert steady["gap_per_round"] == pytest.approx(0.0, abs=1e-12)
    assert growing["gap_per_round"] == pytest.approx(0.01) and growing["last_gap"] == pytest.approx(0.02)
    assert sparse["first_gap"] == sparse["last_gap"] == pytest.approx(0.1) and sparse["gap_per_round"] is None
    text = gap.write(curves, tmp_path)
    assert "| 2 | 2.0000 | 2.0200 (+1.00%) | 2.0200 (+1.00%) | - |" in text
    assert "growing: +0.00% after the first round, +2.00% at the last, growing +1.000 points a round" in text
    assert json.loads((tmp_path / "gap.json").read_text())["rows"]["growing"]["last_gap"] == pytest.approx(0.02)
    assert gap.write({"steady": curves["steady"]}, tmp_path / "none") is None  # no fedavg row
