"""Resume checks its inputs: a config that would continue another run, a damaged checkpoint, a lost
or damaged rounds.jsonl. Each is one clear exit-2 line naming the key or file, with nothing
overwritten; a rebuilt rounds.jsonl bills exactly what an uninterrupted run bills."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import cli_runner, tiny_config, write_corpus


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 4-round run stopped after round 2, and the same run uninterrupted: made once for the file
    (each test damages its own copy)."""
    root = tmp_path_factory.mktemp("resume-checks")
    cfg = tiny_config(root, write_corpus(root / "corpus.jsonl"), **{"train.rounds": "4"})
    invoke = cli_runner()
    assert invoke("run", cfg, "--out", root / "full").exit_code == 0
    assert invoke("run", cfg, "--out", root / "part", "--until", "2").exit_code == 0
    return root


@pytest.fixture
def stopped(runs, tmp_path):
    """This test's own copy of the stopped run (the uninterrupted one beside it as tmp_path/full)."""
    shutil.copytree(runs / "full", tmp_path / "full")
    return Path(shutil.copytree(runs / "part", tmp_path / "part"))


def _snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _assert_refused(res, run, before, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.output.startswith("error:"), res.output
    for needle in needles:
        assert needle in res.output, (needle, res.output)
    assert _snapshot(run) == before  # nothing overwritten


@pytest.mark.parametrize(
    "sets, keys",
    [
        (["lora.r=8"], ["lora.r: 4 -> 8"]),
        (["method=fedsrd"], ["method: 'fedavg' -> 'fedsrd'"]),
        (["data.clients=2", "data.partition=iid"], ["data.clients: 4 -> 2", "data.partition"]),
        (["seed=1"], ["seed: 0 -> 1"]),
    ],
)
def test_a_config_of_another_run_is_refused_with_each_key(stopped, cli, sets, keys):
    before = _snapshot(stopped)
    args = ["resume", stopped]
    for s in sets:
        args += ["--set", s]
    _assert_refused(cli(*args), stopped, before, *keys)


def test_another_data_source_is_refused(stopped, cli, tmp_path):
    other = write_corpus(tmp_path / "other.jsonl", seed=5)
    before = _snapshot(stopped)
    _assert_refused(cli("resume", stopped, "--set", f"data.source=jsonl:{other}"), stopped, before, "data.source")


def test_what_may_change_does(stopped, cli):
    res = cli("resume", stopped, "--set", "train.rounds=5", "--set", "train.eval_every=2")
    assert res.exit_code == 0, res.output
    assert json.loads((stopped / "summary.json").read_text())["rounds"] == 5


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "empty"])
def test_a_damaged_checkpoint_state_is_refused_naming_the_file(stopped, cli, damage):
    path = stopped / "checkpoint" / "state.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "bitflip":
        at = len(data) - 100
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :])
    else:
        path.write_bytes(b"")
    before = _snapshot(stopped)
    _assert_refused(cli("resume", stopped), stopped, before, "state.safetensors", "checksum")


def test_a_broken_meta_json_is_refused_naming_the_file(stopped, cli):
    path = stopped / "checkpoint" / "meta.json"
    path.write_text(path.read_text()[:-20])
    before = _snapshot(stopped)
    _assert_refused(cli("resume", stopped), stopped, before, "meta.json")


def test_a_missing_rounds_file_is_reported_and_rebuilt_to_the_true_total(stopped, cli, tmp_path):
    (stopped / "rounds.jsonl").unlink()
    before = _snapshot(stopped)
    _assert_refused(cli("resume", stopped), stopped, before, "rounds.jsonl", "missing", "--rebuild-rounds")
    res = cli("resume", stopped, "--rebuild-rounds")
    assert res.exit_code == 0, res.output
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    rebuilt = json.loads((stopped / "summary.json").read_text())
    assert rebuilt["bytes_total"] == full["bytes_total"] and rebuilt["bytes_up"] == full["bytes_up"]
    rows = [json.loads(x) for x in (stopped / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]


@pytest.mark.parametrize("garbage", ["not json at all", "123", "[1, 2]", '"text"', "\x00\x01 binary"])
def test_a_garbage_line_stops_resume_and_report_skips_it(stopped, cli, garbage):
    """Text, and JSON that is not an object (a number, a list, a string), alike: no traceback."""
    path = stopped / "rounds.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + garbage + "\n")
    before = _snapshot(stopped)
    _assert_refused(cli("resume", stopped), stopped, before, "rounds.jsonl", "line 2")
    res = cli("report", stopped)
    assert res.exit_code == 0, res.output
    assert "line 2 is not a round record" in res.output


@pytest.mark.parametrize("damage", ["digest", "name", "own-line"])
def test_a_damaged_sha256sums_is_reported_as_itself_not_as_the_state(stopped, cli, damage):
    path = stopped / "checkpoint" / "SHA256SUMS"
    lines = path.read_text().splitlines(keepends=True)
    if damage == "digest":  # one hex digit of the state's checksum changed: the file is fine, its sum is not
        first = lines[0]
        lines[0] = ("0" if first[0] != "0" else "1") + first[1:]
    elif damage == "name":
        lines[0] = lines[0].replace("state.safetensors", "state.safetensorz")
    else:
        lines = lines[:-1]  # its own checksum line lost: the two others still verify (an older checkpoint)
    path.write_text("".join(lines))
    before = _snapshot(stopped)
    res = cli("resume", stopped)
    if damage == "own-line":
        assert res.exit_code == 0, res.output
        return
    _assert_refused(res, stopped, before, "SHA256SUMS", "damaged")
    assert "state.safetensors: fails" not in res.output


def test_resume_never_shrinks_a_finished_run(tmp_path, corpus, cli):
    """`resume --set train.rounds=1` on a finished 2-round run: refused, config.toml still says 2."""
    out = tmp_path / "done"
    assert cli("run", tiny_config(tmp_path, corpus), "--out", out).exit_code == 0
    before = _snapshot(out)
    _assert_refused(cli("resume", out, "--set", "train.rounds=1"), out, before, "train.rounds", "already done")
    assert "rounds = 2" in (out / "config.toml").read_text()
