"""Every check before anything loads (issue 26) and no infinite knob or unfounded guarantee (issue 27).

config.load imports no torch and checks names, codec stage names and finite numbers; checks.check
(method params, stage parameters, privacy rules, runtime constraints) runs before any model or
data loads. Each mistake is one exit-2 line naming the key, and no run directory is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedsqueeze import config as config_mod
from fedsqueeze.errors import ConfigError

from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
PY_ENV = {"PYTHONPATH": str(ROOT / "src")}


def _python(code: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **PY_ENV, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_loading_a_config_imports_no_torch():
    res = _python(
        "import sys, fedsqueeze.config as c; c.load('examples/tiny.toml'); assert 'torch' not in sys.modules, 'torch'"
    )
    assert res.returncode == 0, res.stderr


def test_a_bad_stage_name_exits_2_before_torch_is_imported():
    """The issue's command, in a fresh process: exit 2 naming the stage and the allowed ones, and
    torch (hence any model or data) never imported."""
    code = (
        "import sys\n"
        "from fedsqueeze.cli import main\n"
        "sys.argv = ['fedsqueeze', 'run', 'examples/quickstart.toml', '--set',"
        " 'uplink.codec=topk(fraction=0.1) > nosuchstage', '--out', sys.argv[1]]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    print('torch imported:', 'torch' in sys.modules)\n"
        "    raise\n"
    )
    import os
    import tempfile

    out = Path(tempfile.mkdtemp()) / "never"
    env = {**os.environ, **PY_ENV, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    text = res.stdout + res.stderr
    assert res.returncode == 2, text
    assert "nosuchstage" in text and "uplink.codec" in text
    assert "allowed:" in text and "topk" in text and "zstd" in text and "quantize" in text
    assert "torch imported: False" in text and "Traceback" not in text
    assert not out.exists()


@pytest.fixture
def no_loading(monkeypatch):
    """Any model or data load fails the test: a check that comes too late is caught."""

    def boom(*args, **kwargs):
        raise AssertionError("a model or data set was loaded before the config was checked")

    import fedsqueeze.data
    import fedsqueeze.models
    import fedsqueeze.models.loading
    import fedsqueeze.runtime.session as session

    for target, name in [
        (fedsqueeze.models.loading, "build_model"),
        (fedsqueeze.models.loading, "load_base"),
        (session, "build_model"),
        (session, "build_federation"),
    ]:
        monkeypatch.setattr(target, name, boom)


@pytest.mark.parametrize(
    "sets, needles",
    [
        (["uplink.codec=topk(fraction=0.1) > nosuchstage"], ["uplink.codec", "nosuchstage", "allowed", "randk"]),
        (["uplink.codec=topk(fraction=2)"], ["uplink.codec", "topk", "fraction"]),
        (["downlink.codec=topk(fracton=0.1)"], ["downlink.codec", "fracton", "allowed: fraction"]),
        (["uplink.codec=zstd > topk"], ["uplink.codec", "cannot follow"]),
        (["downlink.codec=quantize(bits=8)", "method=fedsrd"], ["downlink.codec", "lossless"]),
        (["params.nope=1"], ["params.nope"]),
        (["uplink.codec=autoencoder"], ["uplink.codec", "autoencoder", "no method trains"]),
        (["method=local", "runtime.kind=flower-sim"], ["runtime.kind", "'local'"]),
        (["privacy.mode=central", "privacy.noise_multiplier=1.0"], ["privacy.delta"]),
    ],
)
def test_every_check_comes_before_anything_loads(tmp_path, corpus, cli, no_loading, sets, needles):
    cfg = tiny_config(tmp_path, corpus)
    args = ["run", cfg, "--out", tmp_path / "o"]
    for s in sets:
        args += ["--set", s]
    res = cli(*args)
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error:") and "Traceback" not in res.output
    for needle in needles:
        assert needle in res.output, (needle, res.output)
    assert not (tmp_path / "o").exists()


def test_until_on_a_runtime_that_cannot_stop_is_refused_before_loading(tmp_path, corpus, cli, no_loading):
    cfg = tiny_config(tmp_path, corpus, **{"runtime.kind": '"flower-sim"'})
    res = cli("run", cfg, "--out", tmp_path / "o", "--until", "1")
    assert res.exit_code == 2 and "--until" in res.output, res.output
    assert not (tmp_path / "o").exists()


# ---- issue 27: infinite numbers are not settings -------------------------------------------------
@pytest.mark.parametrize(
    "sets, key",
    [
        (["privacy.mode=central", "privacy.delta=1e-5", "privacy.noise_multiplier=1e999"], "privacy.noise_multiplier"),
        (
            ["privacy.mode=central", "privacy.delta=1e-5", "privacy.noise_multiplier=1", "privacy.clip_norm=1e999"],
            "privacy.clip_norm",
        ),
        (["privacy.mode=central", "privacy.delta=0.5", "privacy.noise_multiplier=1"], "privacy.delta"),
        (["privacy.mode=local", "privacy.delta=1e-5", "privacy.noise_multiplier=1e-300"], "privacy.noise_multiplier"),
        (["lora.alpha=1e999"], "lora.alpha"),
        (["train.weight_decay=1e999"], "train.weight_decay"),
        (["train.lr=nan"], "train.lr"),
        (["network.step_seconds=inf"], "network.step_seconds"),
        (["hybrid.deadline=-inf"], "hybrid.deadline"),
        (["params.coef=1e999", "method=fedsrd"], "params.coef"),
    ],
)
def test_a_setting_that_is_not_finite_or_a_void_privacy_plan_exits_2(tmp_path, corpus, cli, no_loading, sets, key):
    cfg = tiny_config(tmp_path, corpus)
    args = ["run", cfg, "--out", tmp_path / "o"]
    for s in sets:
        args += ["--set", s]
    res = cli(*args)
    assert res.exit_code == 2, res.output
    assert key in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "o").exists()  # no run directory written


@pytest.mark.parametrize("literal", ["inf", "-inf", "nan", "1e999"])
def test_toml_infinity_and_nan_are_refused_naming_the_key(tmp_path, literal):
    path = tmp_path / "c.toml"
    path.write_text(f"[train]\nweight_decay = {literal}\n")
    with pytest.raises(ConfigError, match="train.weight_decay.*finite"):
        config_mod.load(path)


def test_why_a_privacy_plan_is_refused_is_said():
    from fedsqueeze.checks import check

    base = ["privacy.mode=central", "privacy.noise_multiplier=1.0"]
    with pytest.raises(ConfigError, match=r"privacy.delta.*0.5.*not below 1/owners \(1/4"):
        check(config_mod.load(None, base + ["privacy.delta=0.5"]))
    with pytest.raises(ConfigError, match=r"privacy.noise_multiplier.*1e-300.*epsilon.*inf"):
        check(config_mod.load(None, ["privacy.mode=central", "privacy.delta=1e-5", "privacy.noise_multiplier=1e-300"]))


def test_the_opt_out_runs_a_void_plan_labelled_as_carrying_no_guarantee():
    from fedsqueeze.checks import check, method_dp
    from fedsqueeze.privacy.plan import Plan

    sets = ["privacy.mode=central", "privacy.noise_multiplier=1.0", "privacy.delta=0.5", "privacy.allow_unproven=true"]
    cfg = check(config_mod.load(None, sets))
    plan = Plan.of(cfg, 4, method_dp(cfg))
    assert plan.guarantee.startswith("no formal guarantee") and "privacy.delta" in plan.guarantee
    assert "-DP" not in plan.guarantee


def test_a_non_finite_final_adapter_voids_the_guarantee(tmp_path, corpus):
    """Finite settings whose noise still overflows float32 (std 2 x 1e3 x 1e37): the run ends, and
    its summary states no (epsilon, delta) guarantee for an adapter of NaN / infinity."""
    import fedsqueeze

    sets = [
        "privacy.mode=central",
        "privacy.delta=1e-5",
        "privacy.noise_multiplier=1000",
        "privacy.clip_norm=1e37",
        "privacy.noise_seed=1",
        "train.rounds=1",
        "data.max_examples=8",
        "train.local_steps=1",
    ]
    result = fedsqueeze.run(tiny_config(tmp_path, corpus), sets, out=tmp_path / "o", log=None)
    guarantee = result.summary["privacy"]["guarantee"]
    assert guarantee.startswith("void") and "non-finite" in guarantee
