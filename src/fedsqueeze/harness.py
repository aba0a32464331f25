"""lm-evaluation-harness bridge: harness tasks on a model already in memory (a peft model carrying
the adapter, or a base model), through the harness's Python API. Optional: `pip install 'fedsqueeze[eval]'`.

    run_tasks(model, tokenizer, ["my_task"], Path("tasks/"), limit=50) -> {"my_task": {"acc": 0.62, ...}}

Tasks are looked up under `include_path` first, without indexing the harness's ~15,000 built-in
tasks (5 s); only a name not found there brings the built-in index in. Tasks that are all local run
offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE for the call): they read local files only. Built-in
tasks need their datasets from the hub or its cache: the hub is asked when it answers a 2 s connect
(models/resolve.py's probe), else they run offline on the cache and fail at once if it lacks them.

The call is quiet (the harness's INFO logs, the datasets progress bars; `FEDSQUEEZE_VERBOSE=1` keeps
them) and leaves the caller's state as it found it: the random generators the harness seeds
(random, numpy, torch), the model's train/eval mode and the offline switches.
"""

from __future__ import annotations

import difflib
import logging
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from .errors import UserError
from .models.resolve import offline_reason
from .quiet import verbose

INSTALL = "pip install 'fedsqueeze[eval]'"


def run_tasks(
    model,
    tokenizer,
    tasks: list[str],
    include_path: Path | None,
    limit: int | None = None,
    batch_size: int = 8,
) -> dict[str, dict[str, float]]:
    """Runs lm-evaluation-harness `tasks` (names, or YAML paths) on `model` and returns
    {task: {metric: value}} with the harness's metric names (`acc`, `acc_norm`, `acc_stderr`, ...;
    a metric under a filter other than the default keeps it: `exact_match,strict-match`), for every
    task and group the harness reports. Numbers only, as floats. `limit`: the first N documents of
    each task. The model runs on its own device, in its own dtype, with `batch_size` requests at once.

    Raises UserError when lm-eval is not installed, `include_path` is no folder, a task is found
    nowhere, or a task's data cannot be read."""
    tasks = [str(t) for t in tasks]
    if not tasks:
        raise UserError("lm-eval: no tasks given")
    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"lm-eval: --include-path {str(include_path)!r} is not a folder")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        raise UserError(f"lm-evaluation-harness is not installed ({exc}): {INSTALL}") from None

    with _quiet(), _kept_state(model):
        manager, local = _task_manager(tasks, include_path)
        # Built-in tasks read the hub; when it is out of reach, its cache only (at once, no retries).
        why = None if local else offline_reason()
        with _offline() if local or why else nullcontext():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            try:
                out = lm_eval.simple_evaluate(
                    model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False
                )
            except (FileNotFoundError, ConnectionError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                hub = f"; built-in tasks need their datasets from the hub or its cache, and {why}" if why else ""
                raise UserError(f"lm-eval tasks {', '.join(tasks)}: cannot read their data ({first}){hub}") from None
    return _metrics(out["results"])


def _task_manager(tasks: list[str], include_path: Path | None):
    """(TaskManager, whether every task was found under include_path alone)."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if not _missing(tasks, manager):
            return manager, True
    manager = TaskManager(include_path=None if include_path is None else str(include_path))
    missing = _missing(tasks, manager)
    if missing:
        raise UserError(_not_found(missing, manager, include_path))
    return manager, False


def _missing(tasks: list[str], manager) -> list[str]:
    known = set(manager.all_tasks)
    return [t for t in tasks if t not in known and not (t.endswith((".yaml", ".yml")) and Path(t).is_file())]


def _not_found(missing: list[str], manager, include_path: Path | None) -> str:
    where = f"under {str(include_path)!r} or " if include_path is not None else ""
    lines = []
    for name in missing:
        close = difflib.get_close_matches(name, manager.all_tasks, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        lines.append(f"{name!r}{hint}")
    local = ""
    if include_path is not None:
        from lm_eval.tasks import TaskManager

        found = TaskManager(include_path=str(include_path), include_defaults=False).all_tasks
        local = f"; tasks under {str(include_path)!r}: {', '.join(found) if found else 'none'}"
    return f"lm-eval: no task {', '.join(lines)} {where}among the harness's built-in tasks{local}"


def _metrics(results: dict) -> dict[str, dict[str, float]]:
    """The harness's {task: {"acc,none": 0.5, "alias": ...}} as {task: {"acc": 0.5}} (numbers only)."""
    out: dict[str, dict[str, float]] = {}
    for task, values in results.items():
        row = {}
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not filt:
                continue  # "alias", "sample_len", "N/A" stderrs
            row[metric if filt == "none" else key] = float(value)
        out[task] = row
    return out


# Harness modules that draw tqdm bars (per request, per document) with no switch to turn them off.
_BARS = ("lm_eval.api.model", "lm_eval.api.task", "lm_eval.api.metrics", "lm_eval.models.huggingface")


def _no_bar(*args, **kwargs):
    """tqdm that never draws (the harness passes `disable=` itself, so a partial would not do)."""
    from tqdm import tqdm

    kwargs["disable"] = True
    return tqdm(*args, **kwargs)


@contextmanager
def _quiet() -> Iterator[None]:
    """The harness logs every step at INFO, draws progress bars and asks `git describe` (which
    prints "fatal: not a git repository" outside one) for a hash fedsqueeze does not report;
    datasets draws a bar per split. Errors still show: they are raised."""
    if verbose():
        yield
        return
    import importlib

    import datasets
    import lm_eval.evaluator
    from tqdm import tqdm

    logger = logging.getLogger("lm_eval")
    level = logger.level
    bars = datasets.is_progress_bar_enabled()
    patched = [(lm_eval.evaluator, "get_git_commit_hash", lambda: "")]
    for name in _BARS:
        module = importlib.import_module(name)
        if getattr(module, "tqdm", None) is tqdm:
            patched.append((module, "tqdm", _no_bar))
    saved = [(module, attr, getattr(module, attr)) for module, attr, _ in patched]
    logger.setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    for module, attr, value in patched:
        setattr(module, attr, value)
    try:
        yield
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)
        logger.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


@contextmanager
def _kept_state(model) -> Iterator[None]:
    """simple_evaluate seeds random, numpy and torch globally and HFLM puts the model in eval mode:
    both are undone, so a run's seeded randomness does not depend on whether it was evaluated."""
    import numpy as np
    import torch

    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    training = model.training
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        model.train(training)


@contextmanager
def _offline() -> Iterator[None]:
    """No hub for the call: the switches huggingface_hub and datasets read at import, and the
    environment for anything imported during it."""
    import datasets.config
    import huggingface_hub.constants as hub

    env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved = (hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    os.environ.update(dict.fromkeys(env, "1"))
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
