"""The classification workload in `fedsqueeze bench`: its table (base row, accuracy with SE, macro-F1,
2-SE separation) and the frontier judged in accuracy, on made-up results (no training)."""

from __future__ import annotations

import pytest

from fedsqueeze import config as config_mod
from fedsqueeze.bench import frontier
from fedsqueeze.bench.runner import _result, classify_markdown, markdown, row_configs, separation


def _summary(method, acc, se, f1, mb, base_acc=0.05):
    return {
        "method": method,
        "rounds": 10,
        "clients": 10,
        "bytes_up": mb * 1e6 / 2,
        "bytes_down": mb * 1e6 / 2,
        "bytes_total": mb * 1e6,
        "final_eval_loss": 1.0 - acc,
        "seconds": 100.0,
        "eval": {},
        "eval_means": {"acc": acc, "acc_se": se, "macro_f1": f1, "chance": 1 / 45, "majority": 0.12},
        "base_eval_means": {"acc": base_acc, "acc_se": 0.005, "macro_f1": 0.01, "chance": 1 / 45},
        "base_eval_loss": 3.0,
    }


RESULTS = [
    _result("fedavg", _summary("fedavg", 0.50, 0.011, 0.40, 400), []),
    _result("fedsrd-b4-q2", _summary("fedsrd", 0.495, 0.011, 0.39, 4), []),
    _result("fed-sb-r16", _summary("fed-sb", 0.40, 0.011, 0.30, 1), []),
]


def test_classify_table_has_the_base_row_se_f1_and_the_separations():
    text = markdown(RESULTS)
    assert text == classify_markdown(RESULTS)
    assert "| base | 0.050 +- 0.005 | 0.010 | 0.00 |" in text
    assert "| fedavg | 0.500 +- 0.011 | 0.400 | 400.00 | 1.000 |" in text
    assert "chance 0.022" in text
    assert "fedavg > fed-sb-r16 (10.0 points, 6.4 SE)" in text  # 0.10 / sqrt(2 x 0.011^2)
    assert "fedavg ~ fedsrd-b4-q2" in text.split("Not separated:")[1]


def test_separation_needs_more_than_two_standard_errors():
    rows = [{"method": "a", "acc": 0.5, "acc_se": 0.01}, {"method": "b", "acc": 0.5 + 0.0282, "acc_se": 0.01}]
    assert "none" in separation(rows)  # 2.82 points < 2 x 1.414
    rows[1]["acc"] = 0.5 + 0.0290
    assert "b > a" in separation(rows).split("\n")[0]


def test_frontier_in_accuracy_within_one_point():
    a = frontier.analyse_accuracy(RESULTS)
    assert a["metric"] == "acc" and a["fedavg_acc"] == 0.50 and a["limit"] == pytest.approx(0.49)
    by_row = {p["row"]: p for p in a["points"]}
    assert by_row["fedsrd-b4-q2"]["within"] and not by_row["fed-sb-r16"]["within"]
    assert [p["row"] for p in frontier.pareto_accuracy(a["points"])] == ["fed-sb-r16", "fedsrd-b4-q2", "fedavg"]
    assert a["families"]["fedsrd"]["cheapest_within"] == "fedsrd-b4-q2"
    assert a["families"]["fed-sb"]["cheapest_within"] is None
    text = frontier.markdown_accuracy(a)
    assert "- fedsrd: fedsrd-b4-q2, 1.00% of FedAvg's bytes" in text and "-0.5 points" in text
    assert "- fed-sb: none within; its most accurate fed-sb-r16 at -10.0 points" in text


def test_frontier_write_judges_by_the_suites_verdict(tmp_path):
    text = frontier.write(RESULTS, tmp_path, "test", verdict="acc")
    assert "accuracy +- SE" in text and (tmp_path / "frontier.png").is_file()
    assert "eval loss" in frontier.write(RESULTS, tmp_path, "test")  # the loss verdict by default


def test_wordnet_cls_suite_configs_validate():
    from fedsqueeze.bench.suites import SUITES

    suite, rows = row_configs("wordnet-cls", None, None)
    names = [n for n, _ in rows]
    assert names == ["fedavg", "centralized", "local", "fedsrd", "fedsrd-b4-q2", "gradualdiff", "fed-sb"] + [
        "cg-fedllm-tensor"
    ]
    cfg = config_mod.validate(rows[0][1])
    assert cfg.data.task == "classify" and "classify" in cfg.eval.metrics and len(cfg.data.labels) == 45
    assert cfg.data.clients * cfg.data.eval_examples >= 2000  # one SE at most 1.1 points
    assert SUITES["wordnet-cls-frontier"].verdict == "acc" and SUITES["wordnet-cls-frontier"].frontier
    for _, raw in row_configs("wordnet-cls-frontier", None, None)[1]:
        config_mod.validate(raw)
