"""lm-evaluation-harness bridge (fedsqueeze.harness): the shipped local task on the tiny model, offline.

The scores are checked against log-likelihoods computed here directly with the same model, so the
test pins what the bridge hands the harness (model, adapter, tokenizer), not only that it runs.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsqueeze.errors import UserError
from fedsqueeze.harness import run_tasks
from fedsqueeze.models import attach_lora, load_base

TASKS = Path(__file__).parent / "harness_tasks"
TASK = "fsq_pystdlib_choice"
LIMIT = 8

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="pip install 'fedsqueeze[eval]'")


def _builder():
    spec = importlib.util.spec_from_file_location("build_fsq_pystdlib_choice", TASKS / "build_fsq_pystdlib_choice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _builder().build


def items() -> list[dict]:
    return [json.loads(line) for line in (TASKS / f"{TASK}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def base():
    return load_base("tiny", log=lambda *_: None)


@pytest.fixture(scope="module")
def adapted():
    """The tiny model with a LoRA adapter whose B is not zero, so the adapter changes the scores."""
    model, tok = load_base("tiny", log=lambda *_: None)
    peft_model = attach_lora(model, 4, 8, 0.0, "all-linear", seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return peft_model.eval(), tok


def direct_hits(model, tok, docs: list[dict]) -> list[tuple[int, int]]:
    """Per item, (acc, acc_norm) as the harness defines them for the shipped YAML, computed by hand:
    the summed log p(" " + choice | "Python function: {question}\\nName:") decides; for acc_norm it is
    divided by the choice's length in characters. 1 where the true choice wins."""
    hits = []
    for doc in docs:
        context = tok.encode(f"Python function: {doc['question']}\nName:", add_special_tokens=False)
        lls = []
        for choice in doc["choices"]:
            cont = tok.encode(" " + choice, add_special_tokens=False)
            ids = torch.tensor([context + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            targets = ids[0, len(context) :]
            lls.append(logp[len(context) - 1 : -1].gather(1, targets[:, None]).sum().item())
        lls = np.array(lls)
        norm = lls / np.array([len(c) for c in doc["choices"]])
        hits.append((int(np.argmax(lls) == doc["answer"]), int(np.argmax(norm) == doc["answer"])))
    return hits


def direct_scores(model, tok, docs: list[dict]) -> tuple[float, float]:
    hits = direct_hits(model, tok, docs)
    return sum(h[0] for h in hits) / len(hits), sum(h[1] for h in hits) / len(hits)


@needs_lm_eval
def test_base_model_scores_are_the_harness_metrics_of_the_direct_log_likelihoods(base):
    """limit=k judges the first k items, so k * acc(limit=k) - (k-1) * acc(limit=k-1) is item k's hit:
    the harness's verdict on every item is checked, not only a mean that could match by chance."""
    model, tok = base
    rng_before = (random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state())
    expected = direct_hits(model, tok, items()[:LIMIT])
    assert 0 < sum(h[0] for h in expected) < LIMIT and sum(h[0] for h in expected) != sum(h[1] for h in expected)
    done = np.zeros(2)
    for k in range(1, LIMIT + 1):
        row = run_tasks(model, tok, [TASK], TASKS, limit=k, batch_size=4)[TASK]
        # One item has no stderr (the harness says "N/A"): numbers only come back.
        assert set(row) == {"acc", "acc_norm"} | ({"acc_stderr", "acc_norm_stderr"} if k > 1 else set())
        assert all(isinstance(v, float) for v in row.values())
        assert 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["acc_norm"] <= 1.0
        total = np.array([row["acc"], row["acc_norm"]]) * k
        assert tuple(np.rint(total - done).astype(int)) == expected[k - 1], f"item {k}"
        done = np.rint(total)
    # The harness seeds random, numpy and torch globally; the bridge puts them back.
    assert random.getstate() == rng_before[0]
    assert np.array_equal(np.random.get_state()[1], rng_before[1])
    assert torch.equal(torch.random.get_rng_state(), rng_before[2])


@needs_lm_eval
def test_peft_model_is_judged_with_its_adapter(adapted, base):
    model, tok = adapted
    model.train()
    row = run_tasks(model, tok, [TASK], TASKS)[TASK]  # all 32 items
    assert model.training  # HFLM's eval() undone
    model.eval()
    assert 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["acc_norm"] <= 1.0
    assert (row["acc"], row["acc_norm"]) == direct_scores(model, tok, items())
    # Not the base model's numbers by accident: the adapter moves the direct scores themselves.
    assert direct_scores(model, tok, items()) != direct_scores(*base, items())


@needs_lm_eval
def test_unknown_task_and_include_path_are_clear_errors(base, tmp_path):
    model, tok = base
    with pytest.raises(UserError, match=r"no task 'fsq_pystdlib_choise' \(did you mean fsq_pystdlib_choice") as e:
        run_tasks(model, tok, ["fsq_pystdlib_choise"], TASKS, limit=1)
    assert f"tasks under {str(TASKS)!r}: {TASK}" in str(e.value)
    with pytest.raises(UserError, match="is not a folder"):
        run_tasks(model, tok, [TASK], tmp_path / "nowhere", limit=1)


@needs_lm_eval
def test_missing_data_file_is_a_user_error(base, tmp_path):
    model, tok = base
    (tmp_path / "local_json.py").write_text((TASKS / "local_json.py").read_text())
    yaml = (TASKS / f"{TASK}.yaml").read_text().replace(f"test: {TASK}.jsonl", "test: gone.jsonl")
    (tmp_path / f"{TASK}.yaml").write_text(yaml)
    with pytest.raises(UserError, match="cannot read their data"):
        run_tasks(base[0], tok, [TASK], tmp_path, limit=1)


def test_without_lm_eval_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    with pytest.raises(UserError, match=r"pip install 'fedsqueeze\[eval\]'"):
        run_tasks(None, None, [TASK], TASKS)


def test_shipped_items_are_well_formed():
    rows = items()
    assert len(rows) == 32 and len({r["module"] for r in rows}) == 32
    for r in rows:
        assert len(set(r["choices"])) == 4 and r["choices"][r["answer"]] == r["id"]
        assert all(c.rpartition(".")[0] == r["module"] for c in r["choices"])


def test_builder_is_seeded_and_keeps_distractors_in_the_module():
    examples = [
        {"instruction": f"Explain what `{mod}.f{i}` does.", "category": mod, "response": f"Does {mod} thing {i}."}
        for mod in ("alpha", "beta", "gamma")
        for i in range(6)
    ]
    # An alias pair (same summary) is never asked nor offered; a module with too few functions is skipped.
    examples += [
        {"instruction": f"Explain what `alpha.{n}` does.", "category": "alpha", "response": "Same words."}
        for n in ("x", "y")
    ]
    examples += [{"instruction": "Explain what `delta.f0` does.", "category": "delta", "response": "Lonely."}]
    rows = build(examples, items=10, seed=3)
    assert rows == build(examples, items=10, seed=3)
    assert [r["module"] for r in rows] == ["alpha", "beta", "gamma"]
    for r in rows:
        assert r["choices"][r["answer"]] == r["id"] and len(set(r["choices"])) == 4
        assert all(c.startswith(r["module"] + ".f") for c in r["choices"])
