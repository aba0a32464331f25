"""`fedsqueeze eval`: a saved peft adapter (or the base model alone) judged on any data source.

Given a run directory (or its adapter/ folder) the run's own config is used with `data.source`
replaced by --data: the data is partitioned and held out exactly as the run did (same seed,
partition, eval_examples, template, max_length), the sets judged are those summary.json judged
(the reference round's sample), and every metric is the run's code (evaluation.evaluate_set,
scoring.judge.set_metrics), so the same adapter on the same data gives the run's numbers.
A personalized run's adapters/<set>/ judge their own set, as in the run. A bare adapter folder
takes its LoRA shape and base model from adapter_config.json (or --model) and the defaults for
everything else. The loss is per set here, also for a run made with eval.pooled.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import tomllib

from . import config as config_mod
from .errors import UserError

ADAPTER_FILE = "adapter_model.safetensors"


def _resolve(target: Path | None, base: bool) -> tuple[dict, Path | None, Path | None]:
    """(raw config, adapter folder, personalized adapters folder) for a run dir or adapter folder."""
    if target is None:
        if not base:
            raise UserError("eval: name a run directory or an adapter folder, or pass --base (the base model alone)")
        return {}, None, None
    if not target.exists():
        raise UserError(f"eval: {target}: no such run directory or adapter folder")
    run_dir = target if (target / "config.toml").is_file() else None
    if run_dir is None and (target / "adapter_config.json").is_file() and (target.parent / "config.toml").is_file():
        run_dir = target.parent  # RUN_DIR/adapter given: the run's config still applies
    if run_dir is not None:
        raw = tomllib.loads((run_dir / "config.toml").read_text())
        adapter = target if run_dir != target else run_dir / "adapter"
        personal = run_dir / "adapters" if run_dir == target and (run_dir / "adapters").is_dir() else None
        if not base and not (adapter / ADAPTER_FILE).is_file():
            raise UserError(f"eval: {run_dir} has no finished adapter ({adapter / ADAPTER_FILE}); is the run finished?")
        return raw, adapter, personal
    if (target / "adapter_config.json").is_file():
        peft_cfg = json.loads((target / "adapter_config.json").read_text())
        modules = peft_cfg.get("target_modules")
        raw = {
            "model": {"name": peft_cfg.get("base_model_name_or_path") or "tiny"},
            "lora": {
                "r": int(peft_cfg.get("r", 8)),
                "alpha": float(peft_cfg.get("lora_alpha", 16)),
                "target": sorted(modules) if isinstance(modules, list) else modules or "all-linear",
            },
        }
        return raw, target, None
    raise UserError(
        f"eval: {target}: neither a run directory (config.toml) nor a peft adapter folder (adapter_config.json)"
    )


def _config(raw: dict, data, metrics, model, overrides):
    raw = json.loads(json.dumps(raw))
    if data:
        raw.setdefault("data", {})["source"] = data
    if model:
        raw.setdefault("model", {})["name"] = model
    if metrics is not None:
        raw.setdefault("eval", {})["metrics"] = list(metrics)
    for item in overrides:
        config_mod.apply_override(raw, item)
    return config_mod.validate(raw)


def _load(s, folder: Path):
    """The adapter's tensors from a peft folder, checked against the session's LoRA layout."""
    from safetensors.torch import load_file

    file = folder / ADAPTER_FILE
    if not file.is_file():
        raise UserError(f"eval: {folder}: no {ADAPTER_FILE}")
    tensors = s.adapter.with_identity_cores(load_file(str(file)))  # a Fed-SB run saves R folded into B
    want = s.adapter.layout
    have = {k: tuple(v.shape) for k, v in tensors.items()}
    expected = dict(zip(want.names, want.shapes))
    if have != expected:
        missing = sorted(set(expected) - set(have))[:2]
        odd = sorted(k for k in have if k in expected and have[k] != expected[k])[:2]
        raise UserError(
            f"eval: {file} does not fit this model's LoRA ({cfg_text(s)}): "
            + (f"missing {missing}; " if missing else "")
            + (f"shapes differ at {odd}; " if odd else "")
            + f"{len(have)} tensors there, {len(expected)} expected"
        )
    return tensors


def cfg_text(s) -> str:
    c = s.cfg
    return f"model {c.model.name}, lora r={c.lora.r}, target {c.lora.target}"


def evaluate_saved(
    target: Path | None,
    data: str | None = None,
    metrics: list[str] | None = None,
    *,
    base: bool = False,
    overrides=(),
    model: str | None = None,
    lm_eval: list[str] | None = None,
    include_path: Path | None = None,
    lm_eval_limit: int | None = None,
    log=print,
) -> dict:
    from .evaluation import REFERENCE_ROUND, evaluate_set, sampled_sets, task_metrics
    from .runtime.session import Session
    from .scoring.judge import pooled_means, set_metrics

    raw, adapter_dir, personal = _resolve(target, base)
    cfg = _config(raw, data, metrics, model, overrides)
    asked = list(cfg.eval.metrics)
    s = Session.build(cfg, log)
    tensors = None if base else _load(s, adapter_dir)
    names = list(s.federation.eval_sets)
    sets = sampled_sets(s, REFERENCE_ROUND)
    costly = task_metrics(cfg)
    per_set: dict[str, dict] = {}
    for i in sets:
        name = names[i]
        own = personal / name if personal is not None and (personal / name / ADAPTER_FILE).is_file() else None
        if not base:
            s.adapter.set(_load(s, own) if own is not None else tensors)
        with s.model.disable_adapter() if base else contextlib.nullcontext():
            row: dict = {"examples": len(s.federation.eval_sets[name])}
            if "loss" in asked:
                row["loss"] = evaluate_set(s, s.adapter.get(), s.federation.eval_sets[name])
            row.update(set_metrics(s, name, costly))
        per_set[name] = row
    pooled, matrix = pooled_means(s, per_set, costly)
    result = {
        "target": str(target) if target is not None else None,
        "adapter": "base model" if base else str(adapter_dir),
        "model": cfg.model.name,
        "data": cfg.data.source,
        "metrics": asked,
        "eval_sets": [names[i] for i in sets],
        "eval_sets_total": len(names),
        "sets": per_set,
        "means": {
            **({"loss": sum(r["loss"] for r in per_set.values()) / len(per_set)} if "loss" in asked else {}),
            **pooled,
        },
    }
    if matrix is not None:
        result["classify"] = matrix
    if lm_eval:
        if not base and tensors is not None:
            s.adapter.set(tensors)
        with s.model.disable_adapter() if base else contextlib.nullcontext():
            from . import harness  # its run_tasks says how to install lm-eval when it is missing

            result["lm_eval"] = harness.run_tasks(s.model, s.tokenizer, lm_eval, include_path, limit=lm_eval_limit)
    return result
