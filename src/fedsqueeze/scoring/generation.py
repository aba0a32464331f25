"""Greedy generation on held-out prompts, scored against the reference response: Rouge-L F1
(the `rouge-score` package, its default tokenizer: lowercased ASCII words and numbers) and exact
match after SQuAD-style normalisation (lowercase, no punctuation, no articles, single spaces)."""

from __future__ import annotations

import functools
import re
import string

import torch

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


@functools.cache
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F1 in [0, 1]: 1 for identical texts, 0 for texts with no word in common."""
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


@torch.no_grad()
def generate(model, prompts: list[list[int]], pad_id: int, eos: int, max_new_tokens: int, placement, batch: int = 8):
    """Greedy continuations (token ids, cut at EOS) of the prompts: batched by length, left-padded,
    through the model's own `generate` with its KV cache."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=eos,
    )
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            n = len(prompts[i])
            ids[r, width - n :] = torch.tensor(prompts[i], dtype=torch.long)
            mask[r, width - n :] = 1
        ids, mask = ids.to(placement.device), mask.to(placement.device)
        with placement.autocast():
            generated = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        for r, i in enumerate(rows):
            new = generated[r, width:].tolist()
            out[i] = new[: new.index(eos)] if eos in new else new
    return out
