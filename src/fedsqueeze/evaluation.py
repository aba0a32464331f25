"""Held-out evaluation: which eval sets one evaluation judges (a sample seeded by (seed, round),
`[eval]`), with which adapter (the method's call: its run mode and `eval_adapter`), and how the
losses combine (a mean over sets, or one pooled set broken down by domain). Its cost is bounded
by `eval.clients`, not by the size of the federation. Task metrics (`eval.metrics`: choice,
rouge, exact; scoring/) are judged per set, with the same owner's adapter as the loss, and land
in the record as `eval_metrics` ({set: {acc, acc_norm, chance, rougeL, exact, ...}}) and
`eval_means` (their plain mean over sets). The classify metric's figures in `eval_means` (acc, acc_se,
macro_f1, chance, majority, classify_n) are pooled over all judged items instead, and the pooled
confusion matrix with its label order is `eval_classify` ({labels, confusion})."""

from __future__ import annotations

import random
from collections.abc import Sequence

from .client import evaluate, example_losses
from .data.tokenization import TokenizedSet
from .scoring.judge import pooled_means, set_metrics
from .tensors import Tensors

REFERENCE_ROUND = 0
"""The evaluation of the untrained adapter before round 1; summary.json judges the final adapter
on the same sets, so `base_eval_loss` and `final_eval_loss` compare like with like."""
MAX_BATCH = 8


def eval_sample(seed: int, rnd: int, total: int, size: int) -> list[int]:
    """Indices of the `size` of `total` eval sets judged in round `rnd`, seeded by (seed, round)
    alone: the same in every runtime and in a resumed run. All of them when size >= total."""
    if size >= total:
        return list(range(total))
    return sorted(random.Random(f"{seed}/eval/{rnd}").sample(range(total), size))


def sampled_sets(s, rnd: int) -> list[int]:
    """The eval sets a Session's config judges in round `rnd`."""
    total = len(s.federation.eval_sets)
    return eval_sample(s.cfg.seed, rnd, total, s.cfg.eval.sample_size(total))


def evaluate_set(s, adapter: Tensors, dataset, max_batch: int = MAX_BATCH) -> float:
    """Mean token cross-entropy of `adapter` on `dataset` (a Session's model and placement)."""
    s.adapter.set(adapter)
    return evaluate(s.model, _batches(s, dataset, max_batch), s.placement)


def evaluate_round(s, client_states: Sequence[Tensors], rnd: int) -> dict:
    """The eval fields of round `rnd`'s record (REFERENCE_ROUND: the untrained adapter)."""
    return evaluate_sets(s, client_states, sampled_sets(s, rnd))


def evaluate_sets(s, client_states: Sequence[Tensors], sets: list[int]) -> dict:
    """`eval_loss`, `eval`, `eval_sets` (the names judged) and, where the method has one global
    adapter and the data an out-of-domain set, `ood_eval_loss`. Set i is judged with the adapter
    the method shows its owner (`RunMode.eval_owner`)."""
    names = list(s.federation.eval_sets)
    fields = _pooled(s, client_states, sets) if s.cfg.eval.pooled else _per_set(s, client_states, sets)
    fields["eval_sets"] = [names[i] for i in sets]
    fields.update(_task_metrics(s, client_states, sets))
    fields.update(ood_loss(s, client_states))
    return fields


def ood_loss(s, client_states: Sequence[Tensors]) -> dict:
    """`ood_eval_loss`: the global adapter on the out-of-domain set, where the data has one (and this
    process holds it) and the method has a global adapter; else {}."""
    method = s.method
    if s.federation.ood is None or not method.mode.has_global_adapter:
        return {}
    return {"ood_eval_loss": evaluate_set(s, method.final_adapter(client_states), s.federation.ood)}


def _per_set(s, client_states: list[Tensors], sets: list[int]) -> dict:
    """One loss per set; eval_loss is their plain mean (every data owner counts the same)."""
    method, items = s.method, list(s.federation.eval_sets.items())
    results = {}
    for i in sets:
        name, dataset = items[i]
        owner = method.mode.eval_owner(i)
        results[name] = evaluate_set(s, method.eval_adapter(owner, client_states[owner]), dataset)
    return {"eval_loss": sum(results.values()) / len(results), "eval": results}


def task_metrics(cfg) -> list[str]:
    """The costly metrics a config asks for (the loss is always judged)."""
    return [m for m in cfg.eval.metrics if m != "loss"]


def _task_metrics(s, client_states: list[Tensors], sets: list[int]) -> dict:
    """`eval_metrics` and `eval_means` (none without task metrics): per set, also with eval.pooled."""
    metrics = task_metrics(s.cfg)
    if not metrics:
        return {}
    method, names = s.method, list(s.federation.eval_sets)
    per_set = {}
    for i in sets:
        owner = method.mode.eval_owner(i)
        s.adapter.set(method.eval_adapter(owner, client_states[owner]))
        per_set[names[i]] = set_metrics(s, names[i], metrics)
    pooled, matrix = pooled_means(s, per_set, metrics)
    fields = {"eval_metrics": per_set, "eval_means": pooled}
    if matrix is not None:
        fields["eval_classify"] = matrix
    return fields


def _pooled(s, client_states: list[Tensors], sets: list[int]) -> dict:
    """The sets' examples as one set: eval_loss token-weighted over all of them, `eval` per domain
    (per eval set where they all share one domain), `eval_by` says which. A global adapter judges
    the whole pool in full batches; personalized methods judge each owner's part with its own."""
    method, fed = s.method, s.federation
    names = list(fed.eval_sets)
    mode = method.mode
    groups: dict[int, list[int]] = {}
    for i in sets:
        groups.setdefault(mode.eval_owner(i) if mode.personalized else mode.eval_owner(sets[0]), []).append(i)
    rows: list[tuple[str, str, float, int]] = []  # (set, domain, summed loss, tokens) per example
    for owner, members in groups.items():
        pool, tags = TokenizedSet(), []
        for i in members:
            pool.extend(fed.eval_sets[names[i]])
            domains = fed.eval_domains.get(names[i]) or [""] * len(fed.eval_sets[names[i]])
            tags.extend((names[i], d) for d in domains)
        s.adapter.set(method.eval_adapter(owner, client_states[owner]))
        losses = example_losses(s.model, _batches(s, pool, MAX_BATCH), s.placement)
        rows.extend((name, domain, loss, n) for (name, domain), (loss, n) in zip(tags, losses))
    by = "domain" if len({domain for _, domain, _, _ in rows}) > 1 else "client"
    totals: dict[str, list[float]] = {}
    for name, domain, loss, n in rows:
        entry = totals.setdefault(domain if by == "domain" else name, [0.0, 0])
        entry[0], entry[1] = entry[0] + loss, entry[1] + n
    keys = sorted(totals) if by == "domain" else [names[i] for i in sets]
    breakdown = {k: totals[k][0] / max(totals[k][1], 1) for k in keys}
    pooled_loss = sum(loss for _, _, loss, _ in rows) / max(sum(n for _, _, _, n in rows), 1)
    return {"eval_loss": pooled_loss, "eval": breakdown, "eval_by": by}


def _batches(s, dataset, max_batch: int):
    pad = s.tokenizer.pad_token_id
    idx = list(range(len(dataset)))
    return (dataset.batch(idx[i : i + max_batch], pad) for i in range(0, len(idx), max_batch))
