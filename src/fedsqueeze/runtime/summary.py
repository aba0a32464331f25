"""The end of a run: adapter/ (adapters/<set>/ for personalized methods), its model card and summary.json."""

from __future__ import annotations

import time
from pathlib import Path

from .. import rundir
from ..evaluation import REFERENCE_ROUND, evaluate_sets, sampled_sets
from ..metrics.memory import merge_peaks
from .model_card import write_model_cards
from .session import Session


def finish(
    s: Session,
    out: Path,
    client_states,
    rounds_done: int,
    elapsed: float,
    base_eval: dict | None = None,
    rows: list[dict] | None = None,
) -> dict:
    """Writes adapter/ (and adapters/<client>/ for personalized methods) and summary.json.

    The summary judges the final adapter on the reference round's eval sets, those the untrained
    adapter was judged on before round 1 (`final_evaluation`), and says how many of how many sets
    that was. Its `seconds` are the rounds' whole seconds plus that evaluation's, if it ran."""
    rows = rundir.read_rounds(out) if rows is None else rows
    final, final_seconds = final_evaluation(s, client_states, next(r for r in reversed(rows) if "eval_loss" in r))
    final_adapter = s.method.final_adapter(client_states)
    finite = all(bool(v.isfinite().all()) for v in final_adapter.values())
    s.adapter.set(final_adapter)
    s.adapter.save(out / "adapter")
    if s.method.mode.personalized:
        for i, name in enumerate(s.federation.eval_sets):
            s.adapter.set(s.method.eval_adapter(i, client_states[i]))
            s.adapter.save(out / "adapters" / name)
    up = sum(r["bytes_up"] for r in rows)
    down = sum(r["bytes_down"] for r in rows)
    undelivered = sum(sum(r.get("undelivered", {}).values()) for r in rows)
    summary = {
        "method": s.cfg.method,
        "rounds": rounds_done,
        "bytes_up": up,
        "bytes_down": down,
        "bytes_total": up + down,
        "final_eval_loss": final["eval_loss"],
        "eval": final["eval"],
        "eval_sets_evaluated": len(final.get("eval_sets", s.federation.eval_sets)),
        "eval_sets_total": len(s.federation.eval_sets),
        "eval_sets": final.get("eval_sets", list(s.federation.eval_sets)),
        "seconds": elapsed + final_seconds,
        **{key: sum(r.get(key, 0.0) for r in rows) for key in ("train_seconds", "aggregate_seconds")},
        "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in rows) + final_seconds,
        "sim_seconds": sum(r.get("sim_seconds", 0.0) for r in rows),
        "uplink_codec": s.uplink_spec,
        "downlink_codec": s.downlink_spec,
        "clients": s.num_clients,
        "adapter_params": s.adapter.layout.numel,
        "device": str(s.placement.device),
        "precision": s.placement.precision,
        "federation_seconds": s.federation.build_seconds,
        **merge_peaks(*rows),
    }
    if undelivered:
        summary["bytes_undelivered"] = undelivered
    if any("wire_down" in r for r in rows):  # Flower runs: the messages' serialized bytes
        summary.update({key: sum(r.get(key, 0) for r in rows) for key in ("wire_down", "wire_up")})
    if s.privacy is not None:
        clip_norm = next((r["dp_clip_norm"] for r in reversed(rows) if "dp_clip_norm" in r), s.privacy.clip_norm)
        summary["privacy"] = s.privacy.summary(rounds_done, clip_norm)
        if not finite:  # the run's own numbers support no claim about it
            summary["privacy"]["guarantee"] = "void: the final adapter holds non-finite values (NaN or infinity)"
    if "eval_by" in final:
        summary["eval_by"] = final["eval_by"]
    if "ood_eval_loss" in final:
        summary["ood_eval_loss"] = final["ood_eval_loss"]
    if "eval_metrics" in final:
        summary["eval_metrics"], summary["eval_means"] = final["eval_metrics"], final["eval_means"]
    if "eval_classify" in final:
        summary["eval_classify"] = final["eval_classify"]
    if base_eval is not None:
        summary["base_eval_loss"] = base_eval["eval_loss"]
        if "eval_means" in base_eval:
            summary["base_eval_means"] = base_eval["eval_means"]
        if base_eval.get("ood_eval_loss") is not None:
            summary["base_ood_eval_loss"] = base_eval["ood_eval_loss"]
    rundir.write_summary(out, summary)
    write_model_cards(s, out, summary, rows)  # adapter/README.md (and adapters/<client>/README.md)
    return summary


def final_evaluation(s: Session, client_states, last_eval: dict) -> tuple[dict, float]:
    """The final adapter's eval fields on the reference round's sets, and the seconds it took:
    the last round's evaluation where it judged those very sets (always so when every set is
    judged: 16 or fewer under eval.clients = "auto"), else one more evaluation of them. One more
    sample-sized pass, so a large federation's summary still costs what a round's evaluation does."""
    names = list(s.federation.eval_sets)
    reference = sampled_sets(s, REFERENCE_ROUND)
    if last_eval.get("eval_sets", names) == [names[i] for i in reference] or last_eval.get("eval_at") == "clients":
        return last_eval, 0.0
    t0 = time.perf_counter()
    fields = evaluate_sets(s, client_states, reference)
    return fields, time.perf_counter() - t0
