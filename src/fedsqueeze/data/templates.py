"""Prompt templates. Only the prompt is rendered here: the response is tokenized on its own and followed by EOS,
so that the loss covers exactly the response tokens + EOS whatever the template."""

from __future__ import annotations

from ..errors import DataError

TEMPLATES = ("alpaca", "chat")


def alpaca_prompt(example: dict) -> str:
    # Without Alpaca's one-sentence preamble: at 64-96 tokens per sequence every prompt token counts.
    parts = [f"### Instruction:\n{example['instruction']}\n\n"]
    if example.get("input"):
        parts.append(f"### Input:\n{example['input']}\n\n")
    parts.append("### Response:\n")
    return "".join(parts)


def chat_prompts(examples: list[dict], tokenizer) -> list[str]:
    """The model's own chat template up to where the assistant's content starts (add_generation_prompt)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("data.template = 'chat' needs a tokenizer with a chat template; this one has none (use 'alpaca')")
    conversations = [
        [{"role": "user", "content": ex["instruction"] + (f"\n\n{ex['input']}" if ex.get("input") else "")}]
        for ex in examples
    ]
    rendered = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True)
    return list(rendered)


def render_prompts(examples: list[dict], template: str, tokenizer) -> list[str]:
    if template == "alpaca":
        return [alpaca_prompt(ex) for ex in examples]
    if template == "chat":
        return chat_prompts(examples, tokenizer)
    raise DataError(f"data.template {template!r}: allowed: {', '.join(TEMPLATES)}")
