"""User mistakes: one clear line, exit code 2, no traceback."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_config


def _assert_clean_error(res, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for n in needles:
        assert n in res.output, (n, res.output)


def test_unknown_key(tmp_path, corpus, cli):
    cfg = tiny_config(tmp_path, corpus)
    _assert_clean_error(cli("run", cfg, "--set", "train.lrr=1", "--out", tmp_path / "o"), "train.lrr", "local_steps")


def test_bad_value(tmp_path, corpus, cli):
    cfg = tiny_config(tmp_path, corpus)
    _assert_clean_error(cli("run", cfg, "--set", "train.rounds=0", "--out", tmp_path / "o"), "train.rounds")
    _assert_clean_error(cli("run", cfg, "--set", "method=nope", "--out", tmp_path / "o"), "nope", "fedavg")


def test_missing_data_file(tmp_path, corpus, cli):
    cfg = tiny_config(tmp_path, corpus, **{"data.source": f'"jsonl:{tmp_path}/absent.jsonl"'})
    _assert_clean_error(cli("run", cfg, "--out", tmp_path / "o"), "absent.jsonl")


def test_empty_partition(tmp_path, cli):
    path = tmp_path / "one.jsonl"
    path.write_text(
        "".join(json.dumps({"instruction": f"q{i}", "response": f"a{i}", "domain": "x"}) + "\n" for i in range(30))
    )
    cfg = tiny_config(tmp_path, path, **{"data.partition": '"by-domain"', "data.clients": "4"})
    _assert_clean_error(cli("run", cfg, "--out", tmp_path / "o"))


def test_no_response_tokens_left(tmp_path, cli):
    path = tmp_path / "long.jsonl"
    rows = [{"instruction": "x" * 400, "response": "y", "domain": "d"} for _ in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(tmp_path, path, **{"data.partition": '"iid"', "data.clients": "2"})
    res = cli("run", cfg, "--out", tmp_path / "o")
    _assert_clean_error(res, "xxxx")


def test_some_examples_truncated_are_skipped_and_counted(tmp_path, corpus, cli):
    lines = corpus.read_text().splitlines()
    lines += [json.dumps({"instruction": "z" * 400, "response": "y", "domain": "animals"})] * 3
    corpus.write_text("\n".join(lines) + "\n")
    cfg = tiny_config(tmp_path, corpus)
    res = cli("data", cfg)
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output


def test_resume_without_checkpoint(tmp_path, cli):
    _assert_clean_error(cli("resume", tmp_path), "checkpoint")


def test_report_on_non_run_dir(tmp_path, cli):
    _assert_clean_error(cli("report", tmp_path), "not a fedsqueeze run directory")


def test_lossy_downlink_refused_where_clients_must_match_the_server(tmp_path, corpus, cli):
    cfg = tiny_config(tmp_path, corpus, method='"fedsrd"')
    res = cli("run", cfg, "--set", "downlink.codec=quantize(bits=8)", "--out", tmp_path / "o")
    _assert_clean_error(res, "downlink.codec", "lossless")


def test_encodings_utf16_with_bom_reads_and_latin1_is_named(tmp_path, corpus, cli):
    text = corpus.read_text()
    bom16 = tmp_path / "bom16.jsonl"
    bom16.write_bytes(text.encode("utf-16"))  # with its byte-order mark
    res = cli("data", tiny_config(tmp_path, corpus, **{"data.source": f'"jsonl:{bom16}"'}))
    assert res.exit_code == 0, res.output
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(text.replace("cat", "caf\u00e9").encode("latin-1"))
    res = cli("data", tiny_config(tmp_path, corpus, **{"data.source": f'"jsonl:{latin}"'}))
    _assert_clean_error(res, "latin.jsonl", "not utf-8", "iconv")


def test_a_list_in_a_text_column_is_named(tmp_path, corpus, cli):
    bad = tmp_path / "lists.jsonl"
    bad.write_text(corpus.read_text() + json.dumps({"instruction": ["a", "b"], "response": "x"}) + "\n")
    res = cli("data", tiny_config(tmp_path, corpus, **{"data.source": f'"jsonl:{bad}"'}))
    _assert_clean_error(res, "lists.jsonl", "row 161", "'instruction'", "list")


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["lora.target=['nope_proj']"], "lora.target"),
        (["data.clients=true"], "data.clients"),
        (["train.clients_per_round=9"], "train.clients_per_round"),
        (["uplink.codec=''"], "uplink.codec"),
    ],
)
def test_silent_acceptances_are_refused(tmp_path, corpus, cli, sets, needle):
    args = ["run", tiny_config(tmp_path, corpus), "--out", tmp_path / "o"]
    for s in sets:
        args += ["--set", s]
    _assert_clean_error(cli(*args), needle)
    assert not (tmp_path / "o").exists()


def test_out_naming_a_file_and_until_zero(tmp_path, corpus, cli):
    file = tmp_path / "afile"
    file.write_text("keep me")
    _assert_clean_error(cli("run", tiny_config(tmp_path, corpus), "--out", file), "is a file")
    assert file.read_text() == "keep me"
    res = cli("run", tiny_config(tmp_path, corpus), "--out", tmp_path / "o", "--until", "0")
    assert res.exit_code == 2 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("accent", [False, True])
def test_bomless_utf16_is_named_with_its_iconv_command(tmp_path, corpus, cli, encoding, accent):
    """Pure-ASCII UTF-16 even decodes as UTF-8 (a NUL between letters): it is told apart by its
    zero bytes, before any parsing, and named with the command that converts it."""
    text = corpus.read_text()
    if accent:
        text = text.replace("cat", "caf\u00e9")
    path = tmp_path / "u16.jsonl"
    path.write_bytes(text.encode(encoding))
    name = encoding.replace("utf-16-", "UTF-16").upper()
    res = cli("data", tiny_config(tmp_path, corpus, **{"data.source": f'"jsonl:{path}"'}))
    _assert_clean_error(res, "u16.jsonl", f"{name} text without a byte-order mark", f"iconv -f {name} -t UTF-8")


def test_data_validates_the_config_before_importing_torch(tmp_path):
    """`fedsqueeze data` with a config typo: exit 2 naming the key, torch never imported."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys\nfrom fedsqueeze.cli import main\n"
        "sys.argv = ['fedsqueeze', 'data', 'examples/tiny.toml', '--set', 'data.clientz=3']\n"
        "try:\n    main()\nexcept SystemExit:\n    print('torch imported:', 'torch' in sys.modules)\n    raise\n"
    )
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "data.clientz" in res.stdout and "torch imported: False" in res.stdout, res.stdout
