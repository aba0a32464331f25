"""(Re)builds fsq_pystdlib_choice.jsonl, the data of the lm-evaluation-harness task beside it.

    python tests/harness_tasks/build_fsq_pystdlib_choice.py      # from the repository root

Items come from `builtin:pystdlib` (the repo's own data, no download): the question is the first line of a
standard-library function's docstring summary (unique within its module), the four choices are that function's
name and three other functions of the same module, the answer the index of the true one. Seeded, so a rebuild
on the same Python gives the same file byte for byte; another Python version documents other functions, so the
committed file (built on Python 3.11) is the reference and the tests never rebuild it.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "fsq_pystdlib_choice.jsonl"
ITEMS = 32
CHOICES = 4
SEED = 17
MAX_QUESTION_CHARS = 160

_FUNCTION = re.compile(r"^Explain what `([\w.]+)` does\.$")


def functions_by_module(examples: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """{module: [(qualified function name, first line of its docstring summary)]}, module-level functions only."""
    out: dict[str, list[tuple[str, str]]] = {}
    for ex in examples:
        m = _FUNCTION.match(ex["instruction"])
        module = ex["category"]
        if not m or module == "builtins" or m.group(1).rpartition(".")[0] != module:
            continue
        summary = ex["response"].splitlines()[0].strip()
        if len(summary) > MAX_QUESTION_CHARS:
            summary = summary[: MAX_QUESTION_CHARS - 3].rstrip() + "..."
        out.setdefault(module, []).append((m.group(1), summary))
    # Aliases (binascii.a2b_hex / unhexlify) share a summary: either would be a right answer, so neither is kept.
    for module, funcs in out.items():
        summaries = [s for _, s in funcs]
        out[module] = [(f, s) for f, s in funcs if summaries.count(s) == 1]
    return {k: v for k, v in out.items() if len(v) >= CHOICES}


def build(examples: list[dict], items: int = ITEMS, seed: int = SEED) -> list[dict]:
    """`items` questions, at most one per module, modules and distractors drawn with `seed`."""
    rng = random.Random(seed)
    modules = functions_by_module(examples)
    picked = sorted(rng.sample(sorted(modules), min(items, len(modules))))
    rows = []
    for module in picked:
        funcs = modules[module]
        name, summary = rng.choice(funcs)
        distractors = rng.sample([f for f, _ in funcs if f != name], CHOICES - 1)
        choices = [name, *distractors]
        rng.shuffle(choices)
        rows.append(
            {
                "id": name,
                "module": module,
                "question": summary,
                "choices": choices,
                "answer": choices.index(name),
            }
        )
    return rows


def main() -> None:
    from fedsqueeze.data.builtin_pystdlib import load_pystdlib

    rows = build(load_pystdlib())
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{OUT}: {len(rows)} items")


if __name__ == "__main__":
    main()
