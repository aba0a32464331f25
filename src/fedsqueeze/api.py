"""The Python API: what `fedsqueeze run | resume | report | eval` do, callable from a script or notebook.

    import fedsqueeze

    result = fedsqueeze.run("examples/tiny.toml", ["train.rounds=2"], out="runs/tiny")
    print(result.summary["final_eval_loss"], result.summary["bytes_total"])
    fedsqueeze.report(["runs/tiny"], out="runs/report")

The CLI commands call these functions, so a script and the command line write the same run
directory (DESIGN.md §4) and the same summary. Errors a user can cause raise `UserError`
(`fedsqueeze.UserError`), whose text is what the CLI prints before exiting with code 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    from .config import Config
    from .metrics.report import Report


@dataclass(frozen=True)
class RunPaths:
    """Where a run directory keeps each part of its output."""

    out: Path

    @property
    def config(self) -> Path:
        return self.out / "config.toml"

    @property
    def rounds(self) -> Path:
        return self.out / "rounds.jsonl"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"

    @property
    def adapter(self) -> Path:
        """The final adapter in peft format: `PeftModel.from_pretrained(base, paths.adapter)`."""
        return self.out / "adapter"

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint"


@dataclass
class Result:
    """A run's outcome: `summary` is summary.json's content (None when stopped early by
    `until`: continue with `fedsqueeze.resume(result.paths.out)`), `rounds` rounds.jsonl's."""

    summary: dict | None
    rounds: list[dict]
    paths: RunPaths

    @property
    def finished(self) -> bool:
        return self.summary is not None


def load_config(config_or_path: Config | Mapping | str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """A validated Config from a TOML file, a mapping shaped like one, or a Config, with
    `key=value` overrides applied (as `--set`). None: the defaults. Raises ConfigError.
    Checked in full (config.validate, then checks.check: method params, codec stages, privacy
    rules, runtime constraints) before anything loads."""
    from . import checks
    from . import config as config_mod

    overrides = list(overrides)
    if config_or_path is None or isinstance(config_or_path, (str, Path)):
        return checks.check(config_mod.load(config_or_path, overrides))
    if isinstance(config_or_path, config_mod.Config):
        if not overrides:
            return checks.check(config_or_path)
        raw = config_or_path.model_dump()
    elif isinstance(config_or_path, Mapping):
        raw = json.loads(json.dumps(config_or_path))  # a deep copy the overrides may change
    else:
        raise UserError(f"load_config: a Config, a mapping or a TOML path, not {type(config_or_path).__name__}")
    for item in overrides:
        config_mod.apply_override(raw, item)
    return checks.check(config_mod.validate(raw))


def run(
    config_or_path: Config | Mapping | str | Path,
    overrides: Iterable[str] = (),
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    until: int | None = None,
    log: Callable[[str], None] | None = print,
    progress=None,
) -> Result:
    """Runs a federated fine-tuning job into the run directory `out` and returns its Result.

    config_or_path: a TOML file, a Config (`load_config`) or a mapping; `overrides`: `key=value`
    strings as `--set`. `out` defaults, as on the CLI, to runs/<config file name>; for a Config
    or mapping, to a new temporary folder. An `out` that holds files is refused unless
    `overwrite`. `until`: stop after that round (resume later). `log`: where progress lines go
    (None: nowhere); `progress`: a RichProgress-like object for per-step updates."""
    import tempfile

    cfg = load_config(config_or_path, overrides)
    if out is None:
        is_path = isinstance(config_or_path, (str, Path))
        out = Path("runs") / Path(config_or_path).stem if is_path else Path(tempfile.mkdtemp(prefix="fedsqueeze-"))
    return _execute(cfg, Path(out), _launch(False, until, overwrite, progress, log))


def resume(
    run_dir: str | Path,
    overrides: Iterable[str] = (),
    *,
    until: int | None = None,
    rebuild_rounds: bool = False,
    log: Callable[[str], None] | None = print,
    progress=None,
) -> Result:
    """Continues an interrupted run (or extends a finished one, e.g. overrides=["train.rounds=8"])
    from its last checkpoint; refuses another run's config or a damaged checkpoint (UserError).
    rebuild_rounds: rewrite a missing or damaged rounds.jsonl from the checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint").is_dir() and not (run_dir / "checkpoint.old").is_dir():
        raise UserError(f"{run_dir}: no checkpoint/ to resume from")
    cfg = load_config(run_dir / "config.toml", overrides)
    _check_rounds(run_dir, cfg)
    return _execute(cfg, run_dir, _launch(True, until, False, progress, log, rebuild_rounds))


def _check_rounds(run_dir: Path, cfg: Config) -> None:
    """train.rounds may grow on resume, never fall below the rounds already done (config.toml would
    then say fewer rounds than rounds.jsonl and the checkpoint hold)."""
    from .runtime.checkpoint import read_meta

    done = read_meta(run_dir).get("round", 0)
    if cfg.train.rounds < done:
        raise UserError(
            f"config key 'train.rounds': {cfg.train.rounds} is fewer than the {done} rounds {run_dir} has already "
            f"done; a resume can only extend a run (train.rounds >= {done}); nothing was changed"
        )


def report(run_dirs: Iterable[str | Path], out: str | Path | None = None, *, overwrite: bool = False) -> Report:
    """Writes report.md (one markdown row per run) and eval_loss_vs_round.png /
    eval_loss_vs_mb.png into `out` (default: a report/ folder beside the runs); an existing file
    there is refused unless `overwrite`. Returns the table and the paths written."""
    from .metrics.report import report as make_report

    return make_report([Path(d) for d in run_dirs], Path(out) if out is not None else None, overwrite)


def evaluate(
    target: str | Path | None,
    data: str | None = None,
    metrics: Iterable[str] | str | None = None,
    *,
    base: bool = False,
    overrides: Iterable[str] = (),
    model: str | None = None,
    out: str | Path | None = None,
    lm_eval: Iterable[str] | str | None = None,
    include_path: str | Path | None = None,
    lm_eval_limit: int | None = None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Judges a saved adapter (a run directory, its adapter/ or any peft adapter folder; the base
    model alone with `base=True`) on `data` (any data.source; default: the run's own) with
    `metrics` (any of loss, choice, rouge, exact; default: the run's eval.metrics) and returns
    {"sets": {set: {loss, acc, acc_norm, chance, rougeL, exact, ...}}, "means": {...}, ...}.
    Given a run directory, the data is partitioned and held out as the run did and the sets
    judged are summary.json's, so the run's final adapter gets the run's numbers. `lm_eval`:
    lm-evaluation-harness task names (the [eval] extra), with `include_path` for local task YAML.
    `out`: also write the result there as JSON."""
    from .saved_eval import evaluate_saved

    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    if isinstance(lm_eval, str):
        lm_eval = [t.strip() for t in lm_eval.split(",") if t.strip()]
    result = evaluate_saved(
        Path(target) if target is not None else None,
        data,
        list(metrics) if metrics is not None else None,
        base=base,
        overrides=list(overrides),
        model=model,
        lm_eval=list(lm_eval) if lm_eval else None,
        include_path=Path(include_path) if include_path is not None else None,
        lm_eval_limit=lm_eval_limit,
        log=log or (lambda *_: None),
    )
    if out is not None:
        out = Path(out)
        if out.is_dir():
            raise UserError(f"--out {out}: is a folder; name a .json file")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        result["written"] = str(out)
    return result


def _launch(resume: bool, until, overwrite, progress, log, rebuild_rounds: bool = False):
    from .runtime.registry import Launch

    return Launch(resume, until, overwrite, progress, log or (lambda *_: None), rebuild_rounds)


def _execute(cfg: Config, out: Path, launch) -> Result:
    from . import checks, rundir
    from .models.resolve import locate
    from .runtime.registry import RUNTIMES

    checks.check(cfg, launch.until)  # load_config checked the rest; --until against the runtime
    locate(cfg.model.name, cfg.model.init)  # a model name that points nowhere fails here, before any loading
    if not launch.resume:
        rundir.check_free(out, launch.overwrite)
    with rundir.lock(out, "resume" if launch.resume else "run"):  # one writer per run directory
        summary = RUNTIMES.get(cfg.runtime.kind)(cfg, out, launch)
    return Result(summary, rundir.read_rounds(out), RunPaths(out))
