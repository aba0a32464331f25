"""The task metrics of one eval set of a Session, judged with the adapter its model holds now.

The run (evaluation.py: the owner's adapter per set, every eval.every rounds) and
`fedsqueeze eval` (a saved adapter) both call `set_metrics`, so their numbers are the same code's.
Choice questions are judged on every held-out example of the set; generations on a sample of
eval.generate_examples of them seeded by (seed, set), the same examples in every round.
"""

from __future__ import annotations

import random

from ..client.trainer import example_losses
from ..data.tokenization import TokenizedSet, eos_id, prompt_token_ids, response_token_ids
from .choice import Question, choice_metrics, distractor_pool, questions
from .generation import exact_match, generate, rouge_l

CHOICE_BATCH = 16
GENERATE_BATCH = 8
MEAN_KEYS = ("acc", "acc_norm", "chance", "rougeL", "exact")


def set_metrics(s, name: str, metrics: list[str]) -> dict:
    """{acc, acc_norm, chance, choice_n} for "choice", {rougeL} for "rouge", {exact} for "exact"
    (with generate_n, the examples generated for), {acc, acc_se, macro_f1, chance, majority,
    classify_n, confusion} for "classify" on eval set `name`."""
    examples = s.federation.eval_examples[name]
    out: dict = {}
    if "choice" in metrics:
        pool = _pool(s)
        qs = questions(examples, pool, s.cfg.eval.choices, s.cfg.seed, name)
        result = choice_metrics(qs, lambda q: loglikelihoods(s, q))
        out.update(acc=result["acc"], acc_norm=result["acc_norm"], chance=result["chance"], choice_n=result["n"])
    if "classify" in metrics:
        out.update(classify_set(s, examples))
    if "rouge" in metrics or "exact" in metrics:
        picked = generation_sample(s.cfg.seed, name, len(examples), s.cfg.eval.generate_examples)
        chosen = [examples[i] for i in picked]
        predictions = generations(s, chosen)
        references = [ex["response"].strip() for ex in chosen]
        if "rouge" in metrics:
            out["rougeL"] = _mean([rouge_l(p, r) for p, r in zip(predictions, references)])
        if "exact" in metrics:
            out["exact"] = _mean([exact_match(p, r) for p, r in zip(predictions, references)])
        out["generate_n"] = len(chosen)
    return out


def means(per_set: dict[str, dict]) -> dict:
    """The plain mean over sets of each metric (every data owner counts the same, as eval_loss)."""
    out = {}
    for key in MEAN_KEYS:
        values = [m[key] for m in per_set.values() if key in m and m[key] == m[key]]
        if values:
            out[key] = sum(values) / len(values)
    return out


def pooled_means(s, per_set: dict[str, dict], metrics: list[str]) -> tuple[dict, dict | None]:
    """`means(per_set)` and, for "classify", its figures pooled over every judged item instead (each set
    holds only a few of them) with the pooled confusion matrix ({labels, confusion}); else None."""
    out = means(per_set)
    if "classify" not in metrics:
        return out, None
    from .classify import pooled

    everything = pooled(per_set, s.federation.labels)
    matrix = {k: everything.pop(k) for k in ("labels", "confusion")}
    out.update(everything)
    return out, matrix


def generation_sample(seed: int, name: str, total: int, size: int) -> list[int]:
    if size >= total:
        return list(range(total))
    return sorted(random.Random(f"{seed}/generate/{name}").sample(range(total), size))


def loglikelihoods(s, qs: list[Question], batch: int = CHOICE_BATCH) -> list[list[float]]:
    """Summed log-likelihood of each candidate (its tokens + EOS) after its question's prompt,
    batched by length on the session's model and placement. A sequence longer than the model's
    context loses prompt tokens from the left, never continuation tokens."""
    eos = eos_id(s.tokenizer)
    prompts = prompt_token_ids([q.example for q in qs], s.tokenizer, s.cfg.data.template)
    flat = [(i, c) for i, q in enumerate(qs) for c in q.candidates]
    conts = response_token_ids([c for _, c in flat], s.tokenizer)
    limit = _context(s)
    seqs = TokenizedSet()
    for (i, _), cont in zip(flat, conts):
        target = cont + [eos]
        prompt = prompts[i][max(0, len(prompts[i]) + len(target) - limit) :]
        seqs.input_ids.append(prompt + target)
        seqs.labels.append([-100] * len(prompt) + target)
    order = sorted(range(len(seqs)), key=lambda j: len(seqs.input_ids[j]))
    pad = s.tokenizer.pad_token_id
    batches = (seqs.batch(order[j : j + batch], pad) for j in range(0, len(order), batch))
    sums = [0.0] * len(seqs)
    for j, (loss, _) in zip(order, example_losses(s.model, batches, s.placement)):
        sums[j] = -loss
    out, at = [], 0
    for q in qs:
        out.append(sums[at : at + len(q.candidates)])
        at += len(q.candidates)
    return out


def classify_set(s, examples: list[dict]) -> dict:
    """acc, acc_se, macro_f1, chance, majority, classify_n and the sparse confusion matrix of the held-out
    examples of a classify task: each label scored after the shared prompt (scoring/classify.py)."""
    from ..data.classify import CLASS
    from .classify import confusion, from_confusion, predict, score_shared, sparse

    labels = s.federation.labels
    index = {label: k for k, label in enumerate(labels)}
    label_ids = response_token_ids(labels, s.tokenizer)
    room = _context(s) - max(len(ids) for ids in label_ids)
    prompts = [p[-room:] for p in prompt_token_ids(examples, s.tokenizer, s.cfg.data.template)]
    scores = score_shared(s.model, prompts, label_ids, eos_id(s.tokenizer), s.tokenizer.pad_token_id, s.placement)
    m = confusion([index[ex[CLASS]] for ex in examples], predict(scores), len(labels))
    return {**from_confusion(m), "confusion": sparse(m)}


def generations(s, examples: list[dict], batch: int = GENERATE_BATCH) -> list[str]:
    """The model's greedy responses (decoded, stripped) to the examples' prompts."""
    if not examples:
        return []
    new = s.cfg.eval.max_new_tokens
    keep = max(1, _context(s) - new)
    prompts = [p[-keep:] for p in prompt_token_ids(examples, s.tokenizer, s.cfg.data.template)]
    ids = generate(s.model, prompts, s.tokenizer.pad_token_id, eos_id(s.tokenizer), new, s.placement, batch)
    return [s.tokenizer.decode(x, skip_special_tokens=True).strip() for x in ids]


def _pool(s) -> dict[str, list[str]]:
    fed = s.federation
    cached = getattr(fed, "_distractor_pool", None)
    if cached is None:
        cached = distractor_pool(fed.eval_examples)
        fed._distractor_pool = cached
    return cached


def _context(s) -> int:
    return int(getattr(s.model.config, "max_position_embeddings", None) or 4096)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
