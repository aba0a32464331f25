"""Task metrics on hand-built cases: choice accuracy with known scores, distractors, Rouge-L, exact."""

from __future__ import annotations

import random

import pytest

from fedsqueeze.config import load
from fedsqueeze.errors import ConfigError
from fedsqueeze.scoring import choice_metrics, distractor_pool, exact_match, normalize_answer, questions, rouge_l


def _examples(domains=("a", "b"), per=30):
    return [
        {"instruction": f"q{d}{i}", "input": "", "response": f"answer {d} {i}", "domain": d}
        for d in domains
        for i in range(per)
    ]


def _questions(examples, k=4, seed=0, name="set"):
    return questions(examples, distractor_pool({name: examples}), k, seed, name)


def test_a_model_certain_of_the_answer_scores_one():
    qs = _questions(_examples())
    certain = lambda qs: [[0.0 if i == q.answer else -50.0 for i in range(len(q.candidates))] for q in qs]
    result = choice_metrics(qs, certain)
    assert result["acc"] == 1.0 and result["acc_norm"] == 1.0
    assert result["chance"] == pytest.approx(0.25) and result["n"] == 60


def test_a_uniform_model_is_at_chance_within_noise():
    examples = _examples(domains=tuple("abcdefgh"), per=250)  # 2,000 questions
    qs = _questions(examples)
    result = choice_metrics(qs, lambda qs: [[-3.0] * len(q.candidates) for q in qs])
    sigma = (0.25 * 0.75 / len(qs)) ** 0.5
    assert abs(result["acc"] - 0.25) < 4 * sigma
    noisy = random.Random(1)
    result = choice_metrics(qs, lambda qs: [[noisy.gauss(0, 1) for _ in q.candidates] for q in qs])
    assert abs(result["acc"] - 0.25) < 4 * sigma and abs(result["acc_norm"] - 0.25) < 4 * sigma


def test_acc_norm_divides_by_characters():
    ex = {"instruction": "q", "response": "aaaa", "choices": ["aaaa", "b"], "answer": 0}
    (q,) = questions([ex], {}, 4, 0, "s")
    # sum: "b" wins (-2 > -4); per character "aaaa" wins (-1 > -2)
    result = choice_metrics([q], lambda qs: [[-4.0, -2.0]])
    assert result["acc"] == 0.0 and result["acc_norm"] == 1.0 and result["chance"] == 0.5


def test_distractors_are_seeded_same_domain_distinct_and_never_the_answer():
    examples = _examples(domains=("a", "b", "c"), per=20)
    examples.append(dict(examples[0], instruction="duplicate answer"))  # the same response twice in domain a
    qs = _questions(examples, k=5, seed=3)
    assert [q.candidates for q in qs] == [q.candidates for q in _questions(examples, k=5, seed=3)]
    assert [q.candidates for q in qs] != [q.candidates for q in _questions(examples, k=5, seed=4)]
    positions = set()
    for q, ex in zip(qs, examples):
        answer = ex["response"]
        assert q.candidates[q.answer] == answer and len(q.candidates) == 5
        others = [c for i, c in enumerate(q.candidates) if i != q.answer]
        assert answer not in others and len(set(others)) == 4
        assert all(c.split()[1] == ex["domain"] for c in q.candidates)  # "answer <domain> <i>"
        positions.add(q.answer)
    assert positions == set(range(5))  # the answer is not always in the same place


def test_few_responses_in_a_domain_give_fewer_choices_and_their_chance():
    examples = _examples(domains=("a",), per=3)
    qs = _questions(examples, k=4)
    assert all(len(q.candidates) == 3 for q in qs)
    assert choice_metrics(qs, lambda qs: [[0.0] * 3 for _ in qs])["chance"] == pytest.approx(1 / 3)
    assert _questions(_examples(domains=("a",), per=1)) == []  # nothing to tell the answer from


def test_data_with_its_own_choices_uses_them():
    ex = {"instruction": "2+2?", "response": "4", "choices": ["3", "4", "5"], "answer": 1, "domain": "m"}
    (q,) = questions([ex], {"m": ["x", "y", "z"]}, 4, 0, "s")
    assert q.candidates == ["3", "4", "5"] and q.answer == 1


def test_rouge_l_and_exact_match():
    assert rouge_l("the quick brown fox", "the quick brown fox") == 1.0
    assert rouge_l("alpha beta gamma", "delta epsilon") == 0.0
    assert 0.0 < rouge_l("the quick fox", "the quick brown fox") < 1.0
    assert rouge_l("", "something") == 0.0
    assert normalize_answer("  The Answer, is: 42!  ") == "answer is 42"
    assert exact_match("An apple.", "apple") == 1.0 and exact_match("apples", "apple") == 0.0


def test_bad_eval_metrics_name_the_key_and_the_allowed_values():
    with pytest.raises(ConfigError, match=r"eval\.metrics.*allowed.*loss, choice, rouge, exact"):
        load(None, ['eval.metrics=["loss", "accuracy"]'])
    with pytest.raises(ConfigError, match=r"eval\.choices"):
        load(None, ["eval.choices=1"])
    with pytest.raises(ConfigError, match=r"data\.choices_field.*data\.answer_field"):
        load(None, ["data.choices_field=options"])
    assert load(None, ["eval.metrics=choice,rouge"]).eval.metrics == ["choice", "rouge"]


def test_bench_and_report_tables_gain_accuracy_columns():
    from fedsqueeze.bench.runner import _result, markdown
    from fedsqueeze.metrics.report import Run, markdown_table

    summary = {
        "method": "fedavg",
        "rounds": 1,
        "bytes_up": 10,
        "bytes_down": 10,
        "bytes_total": 20,
        "final_eval_loss": 1.0,
        "seconds": 1.0,
        "eval": {},
        "eval_means": {"acc": 0.5, "acc_norm": 0.4, "chance": 0.25, "rougeL": 0.3},
    }
    table = markdown([_result("fedavg", summary, [])])
    assert "| accuracy | acc_norm | Rouge-L |" in table and "| 0.500 | 0.400 | 0.300 |" in table
    assert "chance 0.250" in table
    plain = dict(summary, eval_means={})
    assert "accuracy" not in markdown([_result("fedavg", plain, [])])
    assert "| 0.500 | 0.400 | 0.300 |" in markdown_table([Run("r", summary, [])])
