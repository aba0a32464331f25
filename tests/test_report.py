"""`fedsqueeze report`: plain MB tick labels on a log axis, integer rounds, a title naming the
workload, legend entries naming method, codec and what differs, the FedAvg reference line, and
report files that never replace a user's file without --overwrite. Run directories are written
by hand here (no training), so the pictures' contents are known."""

from __future__ import annotations

import json
import re

import pytest

from fedsqueeze import report as api_report
from fedsqueeze.errors import UserError
from fedsqueeze.metrics.plots import figures, labels, mb_label, mb_ticks, workload
from fedsqueeze.metrics.report import Run


def _fake_run(path, method, codec, bytes_per_round, losses, **config):
    path.mkdir(parents=True)
    cfg = {"method": method, "model": {"name": "tiny"}, "data": {"source": "builtin:pystdlib", "clients": 4}}
    for key, value in config.items():
        section, name = key.split("__")
        cfg.setdefault(section, {})[name] = value
    lines = [f'method = "{method}"']
    for section, body in cfg.items():
        if isinstance(body, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in body.items()]
    (path / "config.toml").write_text("\n".join(lines) + "\n")
    rows = [
        {"round": i + 1, "bytes_up": b // 2, "bytes_down": b - b // 2, "eval_loss": loss, "seconds": 0.1}
        for i, (b, loss) in enumerate(zip(bytes_per_round, losses))
    ]
    (path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    total = sum(bytes_per_round)
    summary = {
        "method": method,
        "rounds": len(rows),
        "bytes_up": sum(r["bytes_up"] for r in rows),
        "bytes_down": sum(r["bytes_down"] for r in rows),
        "bytes_total": total,
        "final_eval_loss": losses[-1],
        "seconds": 0.3,
        "uplink_codec": codec,
        "downlink_codec": codec,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    return path


@pytest.fixture
def two_runs(tmp_path):
    a = _fake_run(tmp_path / "runs" / "fedavg", "fedavg", "fp32", [139_000, 278_000, 278_000], [5.34, 5.27, 5.26])
    b = _fake_run(tmp_path / "runs" / "fedsrd", "fedsrd", "sparse", [9_900, 21_000, 22_000], [5.51, 5.67, 5.67])
    return a, b


@pytest.mark.parametrize(
    "value, text",
    [(0.001, "0.001"), (0.005, "0.005"), (0.02, "0.02"), (0.5, "0.5"), (1, "1"), (10, "10"), (100, "100")]
    + [(2000, "2,000"), (0.00002, "0.00002"), (1.5, "1.5")],
)
def test_mb_labels_are_plain_decimals(value, text):
    assert mb_label(value) == text


def test_mb_ticks_powers_of_ten_over_decades_and_one_two_five_below():
    assert mb_ticks(0.5, 700) == [1, 10, 100]
    assert mb_ticks(0.3, 70_000) == [1, 10, 100, 1000, 10_000]
    assert mb_ticks(0.009, 0.8) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]  # all under 1 MB
    assert mb_ticks(0.12, 0.7) == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]  # under one decade
    assert mb_ticks(0.0011, 0.0019) == [0.0011, 0.0019]  # narrower than a digit: the ends
    assert len(mb_ticks(1e-6, 1e6)) <= 8  # thinned, never a crowd
    assert mb_ticks(0, 1) == []


def _texts(items):
    return [t.get_text() for t in items if t.get_text()]


def test_pictures_have_plain_ticks_integer_rounds_title_legend_and_fedavg_line(two_runs):
    runs = [Run.from_dir(d) for d in two_runs]
    figs = figures(runs)
    mb_ax, round_ax = figs["mb"].axes[0], figs["round"].axes[0]
    ticks = _texts(mb_ax.get_xticklabels())
    assert ticks and all(re.fullmatch(r"[0-9][0-9,]*(\.[0-9]+)?", t) for t in ticks), ticks
    assert {"0.01", "0.1"} <= set(ticks)
    assert mb_ax.get_xscale() == "log"
    rounds = _texts(round_ax.get_xticklabels())
    assert rounds and all(re.fullmatch(r"[0-9]+", t) for t in rounds) and {"1", "2", "3"} <= set(rounds)
    for ax in (mb_ax, round_ax):
        assert "tiny · builtin:pystdlib · 4 clients" in ax.get_title()
        legend = ax.figure.legends[0]  # below the axes, never over a line
        assert _texts(legend.get_texts()) == ["fedavg (fp32)", "fedsrd (sparse)", "fedavg final loss (5.260)"]
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(dashed) == 1 and set(dashed[0].get_ydata()) == {5.26}


def test_legend_names_what_differs_and_title_only_what_is_shared(tmp_path):
    a = _fake_run(tmp_path / "a", "fedavg", "fp32", [100], [5.0], lora__r=4)
    b = _fake_run(tmp_path / "b", "fedavg", "topk(fraction=0.1)", [50], [5.1], lora__r=8, data__clients=8)
    runs = [Run.from_dir(a), Run.from_dir(b)]
    assert labels(runs) == [
        "fedavg (fp32 / data.clients=4, lora.r=4)",
        "fedavg (topk(fraction=0.1) / data.clients=8, lora.r=8)",
    ]
    assert workload(runs) == "tiny · builtin:pystdlib"
    c = _fake_run(tmp_path / "c", "fedsrd", "sparse", [20], [5.2], params__moves="both")
    d = _fake_run(tmp_path / "d", "fedavg", "fp32", [100], [5.0])  # one method's params are not another's
    assert labels([Run.from_dir(d), Run.from_dir(c)]) == ["fedavg (fp32)", "fedsrd (sparse / params.moves=both)"]
    twin = _fake_run(tmp_path / "twin", "fedavg", "fp32", [100], [5.0], lora__r=4)
    assert labels([Run.from_dir(a), Run.from_dir(twin)]) == ["fedavg (fp32) [a]", "fedavg (fp32) [twin]"]


def test_report_goes_beside_the_runs_and_never_overwrites_without_asking(two_runs, cli):
    res = cli("report", *two_runs)
    assert res.exit_code == 0, res.output
    out = two_runs[0].parent / "report"
    table = (out / "report.md").read_text()
    assert "| fedavg | fedavg |" in table and "| fedsrd | fedsrd |" in table and table.strip() in res.output
    assert (out / "eval_loss_vs_round.png").stat().st_size > 10_000
    before = (out / "eval_loss_vs_mb.png").read_bytes()
    (out / "report.md").write_text("my notes\n")
    res = cli("report", *two_runs)
    assert res.exit_code == 2 and str(out / "report.md") in res.output and "--overwrite" in res.output
    assert (out / "report.md").read_text() == "my notes\n"  # nothing touched
    assert (out / "eval_loss_vs_mb.png").read_bytes() == before
    assert cli("report", *two_runs, "--overwrite").exit_code == 0
    assert (out / "report.md").read_text() == table


def test_report_out_folder_and_api_agree(two_runs, tmp_path):
    done = api_report(two_runs, out=tmp_path / "mine")
    assert [p.name for p in done.paths] == ["report.md", "eval_loss_vs_round.png", "eval_loss_vs_mb.png"]
    assert all(p.parent == tmp_path / "mine" and p.is_file() for p in done.paths)
    with pytest.raises(UserError, match="report.md exists"):
        api_report(two_runs, out=tmp_path / "mine")


def test_runs_all_under_one_mb_and_a_run_that_sent_nothing(tmp_path):
    small = _fake_run(tmp_path / "s", "fedsrd", "sparse", [900, 2_000, 3_000], [5.5, 5.4, 5.3])
    none = _fake_run(tmp_path / "n", "local", "fp32", [0, 0, 0], [5.2, 5.1, 5.0])
    figs = figures([Run.from_dir(small), Run.from_dir(none)])
    ticks = _texts(figs["mb"].axes[0].get_xticklabels())
    assert ticks and all(re.fullmatch(r"0\.[0-9]+", t) for t in ticks), ticks
    assert len(figs["mb"].axes[0].get_lines()) == 1  # nothing sent: no place on a log axis
    assert len(figs["round"].axes[0].get_lines()) == 2


def test_titles_name_data_sources_without_their_folders():
    from fedsqueeze.metrics.plots import _short_source

    assert (
        _short_source("dictd:/usr/share/dictd/foldoc + wordnet:/usr/share/wordnet + builtin:pystdlib")
        == "dictd:foldoc + wordnet:wordnet + builtin:pystdlib"
    )
    assert _short_source("jsonl:/data/owners/a.jsonl") == "jsonl:a.jsonl"
    assert _short_source("builtin:pystdlib") == "builtin:pystdlib"
