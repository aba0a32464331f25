"""What judging a classification costs: N held-out items over 45 labels against the same N over 2 labels,
scored the way a run scores them (scoring/classify.py: each prompt once, the labels' trie after it).

    python benchmarks/classify_cost.py [--items 2000] [--model smollm2-135m] [--threads 2] [--each 50]

The items are WordNet glosses with the wordnet-cls workload's prompt; the 45 labels its spoken categories
("noun animal", "verb motion", ...), the 2 labels "noun" and "verb". Prints the seconds of each (median of
--repeat runs), their ratio, and exits 1 when judging over 45 labels costs more than twice judging over 2
(issue 30). --each N also times the one-sequence-per-label reference on N items (what the shared prompt
saves) and checks that both give the same scores. Run it alone on the machine: timings on a shared CPU
mean little.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch

from fedsqueeze.bench.suites import CLASSIFY_LABELS, WORDNET, WORDNET_CLS
from fedsqueeze.data.templates import alpaca_prompt
from fedsqueeze.data.tokenization import eos_id, prompt_token_ids, response_token_ids
from fedsqueeze.data.wordnet import load_wordnet
from fedsqueeze.hardware import Placement
from fedsqueeze.models import load_base
from fedsqueeze.scoring.classify import LabelTrie, needs_eos, score_each, score_shared

MAX_RATIO = 2.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--each", type=int, default=0, help="also time scoring each label on its own on this many items")
    ap.add_argument("--precision", default="fp32", help="fp32 or bf16 (autocast)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_base(args.model, log=lambda *a: None)
    placement = Placement(torch.device("cpu"), args.precision, torch.float32, "benchmark")
    entries = load_wordnet(str(WORDNET))
    items = random.Random(0).sample(entries, args.items)
    instruction = WORDNET_CLS.base["data"]["instruction"]
    examples = [{"instruction": instruction, "input": e["entry"], "response": ""} for e in items]
    prompts = [p[-90:] for p in prompt_token_ids(examples, tok, "alpaca")]
    eos, pad = eos_id(tok), tok.pad_token_id
    sets = {"45 labels": list(CLASSIFY_LABELS.values()), "2 labels": ["noun", "verb"]}
    seconds = {}
    for name, labels in sets.items():
        ids = response_token_ids(labels, tok)
        trie = LabelTrie.build(ids)
        fed = len(trie.fed(needs_eos(ids)))
        runs = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            score_shared(model, prompts, ids, eos, pad, placement)
            runs.append(time.perf_counter() - t0)
        seconds[name] = statistics.median(runs)
        print(
            f"{name}: {len(items)} items in {seconds[name]:.1f} s ({1000 * seconds[name] / len(items):.1f} ms/item); "
            f"label tokens {sum(map(len, ids))}, trie inputs after the prompt {fed}"
        )
    mean_prompt = sum(map(len, prompts)) / len(prompts)
    print(f"prompt: {mean_prompt:.1f} tokens on average; alpaca template: {alpaca_prompt(examples[0])!r}")
    if args.each:
        ids = response_token_ids(sets["45 labels"], tok)
        few = prompts[: args.each]
        t0 = time.perf_counter()
        each = score_each(model, few, ids, eos, pad, placement)
        t_each = time.perf_counter() - t0
        t0 = time.perf_counter()
        shared = score_shared(model, few, ids, eos, pad, placement)
        t_shared = time.perf_counter() - t0
        gap = (torch.tensor(each) - torch.tensor(shared)).abs().max().item()
        print(
            f"each label on its own, {len(few)} items x 45 labels: {t_each:.1f} s against {t_shared:.1f} s shared "
            f"({t_each / max(t_shared, 1e-9):.1f}x); largest score difference {gap:.2e}"
        )
    ratio = seconds["45 labels"] / seconds["2 labels"]
    verdict = "PASS" if ratio <= MAX_RATIO else "FAIL"
    print(f"45 labels / 2 labels: {ratio:.2f}x (at most {MAX_RATIO:g}x wanted): {verdict}")
    return 0 if ratio <= MAX_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
