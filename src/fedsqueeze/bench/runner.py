"""Runs a suite's rows one after another on the configured runtime and tabulates them."""

from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .. import __version__, checks, rundir
from .. import config as config_mod
from ..errors import UserError
from ..hardware import Capabilities
from ..metrics.plots import plot, workload
from ..metrics.report import Run, read_config
from ..runtime import RUNTIMES, Launch
from ..strategies import METHODS
from . import frontier, gap, seeds
from .suites import SUITES

MB = 1e6
TASK_COLUMNS = (("acc", "accuracy"), ("acc_norm", "acc_norm"), ("rougeL", "Rouge-L"), ("exact", "exact"))
CLASSIFY_KEYS = ("acc_se", "macro_f1", "majority", "classify_n")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def row_configs(suite_name: str, rows: list[str] | None, rounds: int | None, sets: list[str] = ()):
    if suite_name not in SUITES:
        raise UserError(f"unknown suite {suite_name!r}; allowed: {', '.join(SUITES)}")
    suite = SUITES[suite_name]
    names = rows or suite.default_rows
    unknown = [n for n in names if n not in suite.rows]
    if unknown:
        raise UserError(f"unknown bench row(s) {', '.join(unknown)}; allowed: {', '.join(suite.rows)}")
    out = []
    for name in names:
        raw = _merge(suite.base, suite.rows[name])
        if rounds:
            raw["train"]["rounds"] = rounds
        for item in sets:
            config_mod.apply_override(raw, item)
        out.append((name, raw))
    return suite, out


def run_suite(
    suite_name: str,
    rows: list[str] | None = None,
    rounds: int | None = None,
    out: Path | None = None,
    sets: list[str] = (),
    progress_factory=None,
    log=print,
    reuse: bool = False,
    train: bool = True,
) -> list[dict]:
    """reuse: keep rows that finished with the same config; train=False: skip the others."""
    suite, configs = row_configs(suite_name, rows, rounds, sets)
    suite.check_data(log)
    out = out or Path("runs") / f"bench-{suite_name}"
    results, runs, reused = [], [], []
    for name, raw in configs:
        if raw["method"] not in METHODS:
            log(f"skipping {name}: method {raw['method']!r} is not available in this build")
            continue
        cfg = checks.check(config_mod.validate(raw))
        run_dir = out / name
        if reuse and _finished_with(run_dir, cfg):
            summary = json.loads((run_dir / rundir.SUMMARY).read_text())
            reused.append(name)
        elif not train:
            log(f"skipping {name}: no run in {run_dir} finished with this configuration")
            continue
        else:
            log(f"bench {suite_name}, row {name}")  # no [brackets]: rich would read them as markup
            progress = progress_factory() if progress_factory else None
            summary = RUNTIMES.get(cfg.runtime.kind)(cfg, run_dir, Launch(overwrite=True, progress=progress, log=log))
        rows_ = rundir.read_rounds(run_dir)
        runs.append(Run(name, summary, rows_, read_config(run_dir)))
        results.append(_result(name, summary, rows_))
    if runs:
        plot(runs, out)
    (out / "bench.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    if suite.frontier:
        text += "\n\n" + frontier.write(results, out, workload(runs) if runs else suite.name, suite.verdict)
    curves = {run.name: gap.losses(run.rows, run.summary.get("base_eval_loss")) for run in runs}
    gaps = gap.write(curves, out)  # each row against fedavg, round by round (needs a fedavg row)
    if gaps:
        text += "\n\n" + gaps
    (out / "bench.md").write_text(text + "\n\n" + provenance(reused) + "\n")
    return results


def run_seeds(suite_name: str, seed_list: list[int], out: Path | None = None, sets: list[str] = (), **kw) -> dict:
    """The suite once per seed, each into OUT/seedN, then OUT/seeds.md: each row against its own seed's
    FedAvg, the mean and spread over seeds (bench/seeds.py). Returns {"per_seed": ..., "seeds": ...}."""
    if any(item.split("=", 1)[0].strip() == "seed" for item in sets):
        raise UserError("--seeds and --set seed=... both set the seed: give one of them")
    out = out or Path("runs") / f"bench-{suite_name}"
    per_seed = {s: run_suite(suite_name, out=out / f"seed{s}", sets=[*sets, f"seed={s}"], **kw) for s in seed_list}
    analysis, text = seeds.write(per_seed, out, SUITES[suite_name].verdict)
    return {"per_seed": per_seed, "seeds": analysis, "markdown": text}


def provenance(reused: list[str]) -> str:
    """Where and when the table was made: a benchmark figure means little without it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    caps = Capabilities.detect()
    text = (
        f"Made {when} on {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs "
        f"({caps.cpu_isa}, native bf16: {'yes' if caps.cpu_bf16 else 'no'}), "
        f"torch {torch.__version__}, fedsqueeze {__version__}"
        + (f" (git {commit})" if commit else "")
        + f"; command: `{' '.join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))}`."
    )
    if reused:
        text += f" Rows reused from earlier runs in the same folder: {', '.join(reused)}."
    return text


def _finished_with(run_dir: Path, cfg) -> bool:
    """A row can be reused only if it finished with exactly this configuration."""
    saved = run_dir / rundir.CONFIG
    if not ((run_dir / rundir.SUMMARY).is_file() and saved.is_file()):
        return False
    try:  # parsed again, so a key added since (with its default) does not count as a change
        return config_mod.load(saved).to_toml() == cfg.to_toml()
    except UserError:
        return False


def _result(name: str, s: dict, rows: list[dict]) -> dict:
    n_rounds = max(s["rounds"], 1)
    clients = max(s.get("clients", 1), 1)
    r = {
        "method": name,
        "bytes_up": s["bytes_up"],
        "bytes_down": s["bytes_down"],
        "bytes_total": s["bytes_total"],
        "final_eval_loss": s["final_eval_loss"],
        "ood_eval_loss": s.get("ood_eval_loss"),
        "seconds_per_round": s["seconds"] / n_rounds,  # whole rounds: training, aggregation, evaluation
        "train_seconds_per_round": s.get("train_seconds", 0.0) / n_rounds,
        "eval_seconds_per_round": s.get("eval_seconds", 0.0) / n_rounds,
        "mb_up_per_client_round": s["bytes_up"] / MB / n_rounds / clients,
        "mb_down_per_client_round": s["bytes_down"] / MB / n_rounds / clients,
        "eval": s["eval"],
    }
    if "sim_seconds" in s:
        r["sim_seconds"] = s["sim_seconds"]
    for key in ("acc", "acc_norm", "chance", "rougeL", "exact") + CLASSIFY_KEYS:
        if key in s.get("eval_means", {}):
            r[key] = s["eval_means"][key]
    if "macro_f1" in s.get("base_eval_means", {}):  # the untrained model on the same items: the "base" row
        r["base"] = {k: v for k, v in s["base_eval_means"].items() if k in ("acc", "chance", *CLASSIFY_KEYS)}
        r["base"]["final_eval_loss"] = s.get("base_eval_loss")
    snrs = [row["snr_db"] for row in rows if "snr_db" in row]  # CG-FedLLM's compressed rounds
    if snrs:
        r["snr_db"] = sum(snrs) / len(snrs)
    return r


def markdown(results: list[dict]) -> str:
    if any("macro_f1" in r for r in results):
        return classify_markdown(results)
    base = next((r for r in results if r["method"] == "fedavg"), None)
    has_sim = any("sim_seconds" in r for r in results)
    has_snr = any("snr_db" in r for r in results)
    tasks = [(k, label) for k, label in TASK_COLUMNS if any(k in r for r in results)]
    chance = next((r["chance"] for r in results if "chance" in r), None)
    head = (
        "| method | MB up / client / round | MB down / client / round | total MB | traffic vs fedavg | "
        "in-domain eval loss | OOD eval loss |"
        + "".join(f" {label} |" for _, label in tasks)
        + " s / round |"
        + (" sim s |" if has_sim else "")
        + (" mean upload SNR dB |" if has_snr else "")
    )
    lines = [head, "|" + "---|" * (8 + len(tasks) + has_sim + has_snr)]
    for r in results:
        ratio = f"{r['bytes_total'] / base['bytes_total']:.3f}" if base and base["bytes_total"] else "-"
        ood = f"{r['ood_eval_loss']:.4f}" if r.get("ood_eval_loss") is not None else "-"
        line = (
            f"| {r['method']} | {r['mb_up_per_client_round']:.3f} | {r['mb_down_per_client_round']:.3f} | "
            f"{r['bytes_total'] / MB:.2f} | {ratio} | {r['final_eval_loss']:.4f} | {ood} | "
            + "".join(f"{r[k]:.3f} | " if k in r else "- | " for k, _ in tasks)
            + f"{r['seconds_per_round']:.1f} |"
        )
        if has_sim:
            line += f" {r['sim_seconds']:.1f} |" if "sim_seconds" in r else " - |"
        if has_snr:
            line += f" {r['snr_db']:.2f} |" if "snr_db" in r else " - |"
        lines.append(line)
    if chance is not None:
        lines.append(f"\nAccuracy: multiple choice by log-likelihood (eval.metrics choice); chance {chance:.3f}.")
    return "\n".join(lines)


def classify_markdown(results: list[dict]) -> str:
    """A classification workload's table: the untrained model first ("base", from the first row's
    reference evaluation), accuracy with its standard error, macro-F1, bytes; then which rows are
    separated by more than two standard errors of their difference."""
    rows = list(results)
    first = next((r for r in rows if "base" in r), None)
    if first is not None:
        b = first["base"]
        rows = [{"method": "base", "bytes_total": 0, "final_eval_loss": b.get("final_eval_loss"), **b}, *rows]
    ref = next((r for r in results if r["method"] == "fedavg"), None)
    n = next((r["classify_n"] for r in rows if "classify_n" in r), None)
    lines = [
        "| method | accuracy +- SE | macro-F1 | total MB | traffic vs fedavg | eval loss | s / round |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['bytes_total'] / ref['bytes_total']:.3f}" if ref and ref["bytes_total"] else "-"
        loss = f"{r['final_eval_loss']:.4f}" if r.get("final_eval_loss") is not None else "-"
        secs = f"{r['seconds_per_round']:.1f}" if "seconds_per_round" in r else "-"
        acc = f"{r['acc']:.3f} +- {r.get('acc_se', float('nan')):.3f}" if "acc" in r else "-"
        f1 = f"{r['macro_f1']:.3f}" if "macro_f1" in r else "-"
        lines.append(f"| {r['method']} | {acc} | {f1} | {r['bytes_total'] / MB:.2f} | {ratio} | {loss} | {secs} |")
    chance = next((r["chance"] for r in rows if "chance" in r), None)
    majority = next((r["majority"] for r in rows if "majority" in r), None)
    if chance is not None:
        lines.append(
            f"\nAccuracy: log-likelihood over the label set, pooled over {n} held-out items; chance "
            f"{chance:.3f}, the most frequent label {majority:.3f}."
        )
    lines.append("\n" + separation(rows))
    return "\n".join(lines)


def separation(rows: list[dict]) -> str:
    """Pairs of rows whose accuracies differ by more than two standard errors of the difference
    (sqrt(se_a^2 + se_b^2), the items judged independently)."""
    judged = [r for r in rows if "acc" in r and "acc_se" in r]
    apart, close = [], []
    for i, a in enumerate(judged):
        for b in judged[i + 1 :]:
            se = (a["acc_se"] ** 2 + b["acc_se"] ** 2) ** 0.5
            diff = a["acc"] - b["acc"]
            hi, lo = (a, b) if diff >= 0 else (b, a)
            text = f"{hi['method']} > {lo['method']} ({100 * abs(diff):.1f} points, {abs(diff) / se:.1f} SE)"
            (apart if se > 0 and abs(diff) > 2 * se else close).append(text)
    out = "Separated by more than 2 SE: " + ("; ".join(apart) if apart else "none") + "."
    if close:
        out += "\nNot separated: " + "; ".join(t.split(" (")[0].replace(" > ", " ~ ") for t in close) + "."
    return out
