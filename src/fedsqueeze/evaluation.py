"""Held-out evaluation: which adapter is judged on which eval set is the method's call (its run
mode and `eval_adapter`); this module only runs the model over the sets."""

from __future__ import annotations

from .client import evaluate
from .tensors import Tensors


def evaluate_set(s, adapter: Tensors, dataset, max_batch: int = 8) -> float:
    """Mean token cross-entropy of `adapter` on `dataset` (a Session's model and placement)."""
    s.adapter.set(adapter)
    pad = s.tokenizer.pad_token_id
    idx = list(range(len(dataset)))
    batches = (dataset.batch(idx[i : i + max_batch], pad) for i in range(0, len(idx), max_batch))
    return evaluate(s.model, batches, s.placement)


def evaluate_all(s, client_states: list[Tensors]) -> tuple[dict[str, float], float | None]:
    """Held-out loss per eval set (set i with the adapter the method shows its owner), and the
    out-of-domain loss of the final adapter where the method has one global adapter."""
    method = s.method
    results = {}
    for i, (name, dataset) in enumerate(s.federation.eval_sets.items()):
        owner = method.mode.eval_owner(i)
        results[name] = evaluate_set(s, method.eval_adapter(owner, client_states[owner]), dataset)
    ood = None
    if s.federation.ood is not None and method.mode.has_global_adapter:
        ood = evaluate_set(s, method.final_adapter(client_states), s.federation.ood)
    return results, ood


def summarize(evals: dict[str, float], ood: float | None) -> dict:
    """The eval fields of a round record (and of the untrained reference)."""
    out = {"eval_loss": sum(evals.values()) / len(evals), "eval": evals}
    if ood is not None:
        out["ood_eval_loss"] = ood
    return out
