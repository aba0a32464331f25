"""Classification as a task (`data.task = "classify"`): a text and its label, from fields of any names.

Each example becomes an instruction example whose response is the label spoken as words (its verbalizer:
the label's own text, or `data.labels = {value = "words"}`), so training is text -> label with the loss on
the label tokens (+ EOS), and judging is a choice among the label set by log-likelihood (scoring/classify.py).
The label set is `data.labels` in its order, else the distinct labels found in the data, sorted (numerically
when they are all numbers). The class is kept under the key `CLASS` so that the label-skew partitioners
(dirichlet, pathological, shards) can split on it.
"""

from __future__ import annotations

from collections import Counter

from ..config import DataConfig
from ..errors import DataError
from ..tables import label_order

CLASS = "class"
"""The example key holding the spoken label (what label-skew partitions split on)."""
PARTITION_ON_CLASS = ("dirichlet", "pathological", "shards")


def default_instruction(cfg: DataConfig) -> str:
    return cfg.instruction or f"Label the {cfg.text_field} with its {cfg.label_field}."


def label_map(found: Counter, cfg: DataConfig, spec: str) -> dict[str, str]:
    """value in the data -> its spoken label, in the label set's order."""
    if cfg.labels is None:
        return {v: v for v in label_order(found)}
    given = cfg.labels if isinstance(cfg.labels, dict) else {v: v for v in cfg.labels}
    given = {str(k).strip(): str(v).strip() for k, v in given.items()}
    unknown = sorted(v for v in found if v not in given)
    if unknown:
        shown = ", ".join(f"{v!r} ({found[v]})" for v in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise DataError(
            f"data.labels: {spec!r} has labels outside the given set in {cfg.label_field!r}: {shown}; "
            f"add them to data.labels, or leave data.labels out to use every label found"
        )
    return given


def to_classify(examples: list[dict], cfg: DataConfig, spec: str) -> tuple[list[dict], list[str]]:
    """The examples as instruction examples (text as input, spoken label as response) and the label set
    (spoken, in order). Every example must have both fields; an empty label is an error naming the row."""
    for key, what in ((cfg.text_field, "text_field"), (cfg.label_field, "label_field")):
        missing = next((i for i, ex in enumerate(examples) if key not in ex), None)
        if missing is not None:
            present = sorted(k for k in examples[missing] if k not in ("source",))
            raise DataError(
                f"data.{what} {key!r}: source {examples[missing].get('source', spec)!r} of {spec!r} has no such "
                f"field; fields there: {', '.join(present)}"
            )
    values = []
    for i, ex in enumerate(examples):
        value = str(ex[cfg.label_field]).strip()
        if not value:
            raise DataError(f"{spec}: example {i + 1} has an empty label in {cfg.label_field!r} (data.label_field)")
        values.append(value)
    found = Counter(values)
    mapping = label_map(found, cfg, spec)
    if len(set(mapping.values())) < 2:
        raise DataError(
            f"data.task = 'classify': {spec!r} has {len(found)} distinct label(s) in {cfg.label_field!r} "
            f"({', '.join(found)}); a classification needs at least 2"
        )
    instruction = default_instruction(cfg)
    out = []
    for ex, value in zip(examples, values):
        new = {k: v for k, v in ex.items() if k not in (cfg.text_field, cfg.label_field)}
        new.update(
            instruction=instruction,
            input=str(ex[cfg.text_field]).strip(),
            response=mapping[value],
            domain=ex.get("domain", ""),
            source=ex.get("source", ""),
        )
        new[CLASS] = mapping[value]
        out.append(new)
    return out, list(dict.fromkeys(mapping.values()))


def fit_inputs(examples: list[dict], labels: list[str], tokenizer, template: str, max_length: int) -> int:
    """Cut each example's input text (from its end) so that the prompt and the longest label (+ EOS) fit
    in max_length tokens: a long text is classified on its beginning rather than dropped. Returns how
    many were cut."""
    from .tokenization import prompt_token_ids, response_token_ids

    room = max_length - 1 - max(len(ids) for ids in response_token_ids(labels, tokenizer))
    if room < 4:
        raise DataError(
            f"data.max_length={max_length}: the longest label leaves {room} tokens for the prompt; raise it"
        )
    cut = 0
    prompts = prompt_token_ids(examples, tokenizer, template)
    for ex, prompt in zip(examples, prompts):
        excess = len(prompt) - room
        if excess <= 0 or not ex["input"]:
            continue
        ids = tokenizer(ex["input"], add_special_tokens=False)["input_ids"]
        for extra in (0, 2, 8, 32):  # re-tokenizing a cut text can give a token more; cut a little deeper
            keep = max(0, len(ids) - excess - extra)
            ex["input"] = tokenizer.decode(ids[:keep]).strip()
            if len(prompt_token_ids([ex], tokenizer, template)[0]) <= room or keep == 0:
                break
        cut += 1
    return cut
