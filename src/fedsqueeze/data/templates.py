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


_SLOT = "\x00fedsqueeze-content\x00"
_CHECKED = 3


def _render(tokenizer, content: str) -> str:
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_prompts(examples: list[dict], tokenizer) -> list[str]:
    """The model's own chat template up to where the assistant's content starts (add_generation_prompt).

    The template is rendered once around a placeholder and the contents are spliced in: rendering jinja per
    example doubles the time to tokenize a large source. Templates that transform the content are caught by
    comparing a few spliced prompts with real renderings, and then rendered one by one."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "data.template = 'chat' needs a tokenizer with a chat template; this one has none (use 'alpaca')"
        )
    contents = [ex["instruction"] + (f"\n\n{ex['input']}" if ex.get("input") else "") for ex in examples]
    around = _render(tokenizer, _SLOT)
    if around.count(_SLOT) == 1:
        before, after = around.split(_SLOT)
        prompts = [before + content + after for content in contents]
        if all(_render(tokenizer, c) == p for c, p in zip(contents[:_CHECKED], prompts[:_CHECKED])):
            return prompts
    return [_render(tokenizer, content) for content in contents]


def render_prompts(examples: list[dict], template: str, tokenizer) -> list[str]:
    if template == "alpaca":
        return [alpaca_prompt(ex) for ex in examples]
    if template == "chat":
        return chat_prompts(examples, tokenizer)
    raise DataError(f"data.template {template!r}: allowed: {', '.join(TEMPLATES)}")
