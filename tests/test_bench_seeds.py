"""`fedsqueeze bench --seeds`: each row against its own seed's FedAvg, the mean and spread by hand, then
the tiny suite over two seeds end to end."""

from __future__ import annotations

import json

import pytest

from fedsqueeze.bench import seeds
from fedsqueeze.bench.runner import run_seeds
from fedsqueeze.errors import UserError


def _r(name, mb, loss, acc=None):
    r = {"method": name, "bytes_total": int(mb * 1e6), "final_eval_loss": loss}
    if acc is not None:
        r["acc"] = acc
    return r


X, Y = "lora-xs-r16-s8-q4", "lora-xs-r16-s8"
PER_SEED = {
    0: [_r("fedavg", 100, 3.00, 0.60), _r(X, 1.0, 3.02, 0.598), _r(Y, 8, 3.066, 0.61)],
    1: [_r("fedavg", 100, 3.10, 0.62), _r(X, 1.2, 3.1372, 0.606), _r(Y, 8, 3.10, 0.60)],
}


def test_loss_gaps_against_each_seeds_own_fedavg_by_hand():
    a = seeds.summarize(PER_SEED)
    x, y = (next(r for r in a["rows"] if r["row"] == n) for n in (X, Y))
    # x: 3.02 / 3.00 - 1 = +0.667%, 3.1372 / 3.10 - 1 = +1.2%: mean +0.933%, within on the mean, not on seed 1
    assert x["gap"][0] == pytest.approx(0.02 / 3) and x["gap"][1] == pytest.approx(0.012)
    assert x["mean_gap"] == pytest.approx((0.02 / 3 + 0.012) / 2)
    assert x["spread"] == pytest.approx((0.02 / 3, 0.012))
    assert x["within_mean"] and not x["within_every"]
    assert x["bytes_total"] == pytest.approx(1.1e6) and x["vs_fp32"] == pytest.approx(0.011)
    assert x["mean_quality"] == pytest.approx((3.02 + 3.1372) / 2)
    # y: +2.2% and 0.0%: mean +1.1%, outside
    assert y["mean_gap"] == pytest.approx(0.011) and not y["within_mean"]
    assert a["families"]["lora-xs"] == "lora-xs-r16-s8-q4"
    text = seeds.markdown(a)
    assert "| lora-xs-r16-s8-q4 | lora-xs | 1.100 | 1.100% | 3.0200 | 3.1372 |" in text
    assert "+0.93% | +0.67% to +1.20% | yes / no |" in text
    assert "- lora-xs: lora-xs-r16-s8-q4, 1.100% of FedAvg's bytes, +0.93% on the mean" in text


def test_accuracy_gaps_are_points_below_fedavg():
    a = seeds.summarize(PER_SEED, "acc")
    x, y = (next(r for r in a["rows"] if r["row"] == n) for n in (X, Y))
    assert x["gap"] == pytest.approx({0: -0.002, 1: -0.014}) and x["within_mean"] and not x["within_every"]
    assert y["gap"] == pytest.approx({0: 0.01, 1: -0.02}) and y["mean_gap"] == pytest.approx(-0.005)
    assert y["within_mean"] and not y["within_every"]
    assert a["families"]["lora-xs"] == "lora-xs-r16-s8-q4"  # the cheaper of the two within


def test_rows_missing_from_a_seed_are_left_out_and_no_fedavg_means_no_line():
    a = seeds.summarize({0: PER_SEED[0][1:], 1: PER_SEED[1][1:2]})
    assert [r["row"] for r in a["rows"]] == ["lora-xs-r16-s8-q4"] and not a["has_ref"]
    assert "no line to judge against" in seeds.markdown(a)


def test_seed_lists_parse_and_bad_ones_name_the_form():
    assert seeds.parse("0,1") == [0, 1] and seeds.parse("0-2") == [0, 1, 2] and seeds.parse("7") == [7]
    for bad in ("", "a,b", "1,1"):
        with pytest.raises(UserError, match="--seeds"):
            seeds.parse(bad)


def test_tiny_suite_over_two_seeds_end_to_end(tmp_path):
    with pytest.raises(UserError, match="give one of them"):
        run_seeds("tiny", [0, 1], tmp_path, ["seed=3"], rows=["fedavg"], rounds=1, log=lambda *a, **k: None)
    many = run_seeds("tiny", [0, 1], tmp_path, rows=["fedavg", "fedsrd"], rounds=1, log=lambda *a, **k: None)
    per = many["per_seed"]
    for s in (0, 1):
        cfg = (tmp_path / f"seed{s}" / "fedavg" / "config.toml").read_text()
        assert f"seed = {s}" in cfg and (tmp_path / f"seed{s}" / "bench.md").is_file()
    # the seed changes the run: another initial adapter and data order
    assert per[0][0]["final_eval_loss"] != per[1][0]["final_eval_loss"]
    a = json.loads((tmp_path / "seeds.json").read_text())
    fedsrd = next(r for r in a["rows"] if r["row"] == "fedsrd")
    for s in (0, 1):
        own = per[s][1]["final_eval_loss"] / per[s][0]["final_eval_loss"] - 1
        assert fedsrd["gap"][str(s)] == pytest.approx(own)
    assert "| fedsrd | fedsrd |" in (tmp_path / "seeds.md").read_text()


def test_cli_names_the_bad_seed_list(cli, tmp_path):
    res = cli("bench", "--suite", "tiny", "--seeds", "x", "--out", tmp_path)
    assert res.exit_code != 0 and "--seeds 'x'" in res.output and "Traceback" not in res.output
