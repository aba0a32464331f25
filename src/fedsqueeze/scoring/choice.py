"""Multiple choice on any instruction/response data, lm-evaluation-harness style.

Each held-out example becomes a question: its true response among `k - 1` distractors drawn,
seeded by (seed, set, example), from the other distinct responses of the same domain in the
federation's held-out sets (never equal to the answer), the answer at a seeded position. Data
that carries its own choices (`data.choices_field`, `data.answer_field`) uses them. Every
continuation is scored by the sum of its tokens' log-likelihoods given the prompt (its tokens
and the EOS that ends a response, as the loss counts them): `acc` picks the highest sum,
`acc_norm` the highest sum per character of the continuation (the harness's acc_norm).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    example: dict
    """The held-out example whose prompt the continuations follow."""
    candidates: list[str]
    answer: int
    """Index of the right continuation in `candidates`."""


def distractor_pool(sets: dict[str, list[dict]]) -> dict[str, list[str]]:
    """domain -> the distinct responses (stripped) of the held-out examples of that domain, in the
    order the eval sets hold them: where distractors are drawn from."""
    pool: dict[str, dict[str, None]] = {}
    for examples in sets.values():
        for ex in examples:
            pool.setdefault(str(ex.get("domain", "")), {})[ex["response"].strip()] = None
    return {domain: list(responses) for domain, responses in pool.items()}


def questions(examples: list[dict], pool: dict[str, list[str]], k: int, seed: int, set_name: str) -> list[Question]:
    """One question per example (an example with no other response in its domain has none)."""
    out = []
    for j, ex in enumerate(examples):
        if "choices" in ex:
            out.append(Question(ex, [c.strip() for c in ex["choices"]], int(ex["answer"])))
            continue
        answer = ex["response"].strip()
        others = [r for r in pool.get(str(ex.get("domain", "")), []) if r != answer]
        if not others:
            continue
        rng = random.Random(f"{seed}/choice/{set_name}/{j}")
        picked = rng.sample(others, min(k - 1, len(others)))
        at = rng.randrange(len(picked) + 1)
        out.append(Question(ex, picked[:at] + [answer] + picked[at:], at))
    return out


Scorer = Callable[[list[Question]], list[list[float]]]
"""Summed log-likelihood of each candidate of each question (judge.py's is the model's)."""


def choice_metrics(qs: list[Question], score: Scorer) -> dict:
    """acc, acc_norm, chance (the mean of 1 / candidates) and n (questions) of `qs` under `score`.
    Ties go to the first candidate, so a model that scores all alike is right at chance."""
    if not qs:
        return {"acc": float("nan"), "acc_norm": float("nan"), "chance": float("nan"), "n": 0}
    scores = score(qs)
    hits = hits_norm = chance = 0.0
    for q, s in zip(qs, scores):
        norm = [v / max(len(c), 1) for v, c in zip(s, q.candidates)]
        hits += _argmax(s) == q.answer
        hits_norm += _argmax(norm) == q.answer
        chance += 1 / len(q.candidates)
    n = len(qs)
    return {"acc": hits / n, "acc_norm": hits_norm / n, "chance": chance / n, "n": n}


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)
