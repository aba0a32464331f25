"""Classification as a task: shared-prompt label scoring on the tiny model against hand computation,
the metrics, the config keys, and a user's CSV with columns named anything run as a label-skewed federation."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

from fedsqueeze.config import DataConfig, load
from fedsqueeze.errors import ConfigError, DataError
from fedsqueeze.hardware import Placement
from fedsqueeze.scoring.classify import (
    LabelTrie,
    confusion,
    from_confusion,
    needs_eos,
    pooled,
    predict,
    score_each,
    score_shared,
    sparse,
)

# Labels that share first tokens (a trie with inner nodes), one a token-prefix of another, lengths 1-4.
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny.toml"
LABELS = ["noun.animal", "noun.act", "noun", "verb.motion", "adj.all", "yes", "no"]


@pytest.fixture(scope="module")
def tiny():
    from fedsqueeze.models import load_base

    torch.manual_seed(0)
    model, tok = load_base("tiny", log=lambda *a: None)
    return model, tok


def _inputs(tok, n=5):
    from fedsqueeze.data.tokenization import prompt_token_ids, response_token_ids

    texts = ["a small dog", "to run fast", "the act of", "very green and old", "x"][:n]
    examples = [{"instruction": "Label the text.", "input": t, "response": ""} for t in texts]
    return prompt_token_ids(examples, tok, "alpaca"), response_token_ids(LABELS, tok)


def _by_hand(model, prompt, label, end):
    """log P(label tokens [, EOS] | prompt): one full sequence, log-softmax, the tokens' entries summed."""
    ids = torch.tensor([prompt + label + end])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(label + end))


def test_the_label_trie_shares_prefixes(tiny):
    _, tok = tiny
    _, label_ids = _inputs(tok)
    trie = LabelTrie.build(label_ids)
    assert len(trie.tokens) < sum(map(len, label_ids))  # "noun" shared by three labels
    for ids, path in zip(label_ids, trie.paths):
        assert [trie.tokens[n] for n in path] == ids and [trie.depth[n] for n in path] == list(range(1, len(ids) + 1))
    every = list(range(len(trie.tokens)))
    visible = trie.visible(every)
    assert all(bool(visible[n, trie.parent[n]]) for n in every if trie.parent[n] >= 0)
    assert needs_eos(label_ids)  # "noun" begins "noun.act": the EOS tells a whole "noun" apart
    assert not needs_eos([[1, 2], [1, 3], [4]])
    inner = trie.fed(eos=False)
    assert len(inner) < len(every) and all(any(trie.parent[m] == n for m in every) for n in inner)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("prefix_free", [False, True])
def test_shared_prompt_scores_equal_each_label_on_its_own_and_by_hand(tiny, attention, prefix_free):
    model, tok = tiny
    model.config._attn_implementation = attention
    prompts, label_ids = _inputs(tok)
    if prefix_free:  # no EOS scored, the labels' last tokens are never inputs
        label_ids = [ids for ids in label_ids if not any(o != ids and o[: len(ids)] == ids for o in label_ids)]
        assert not needs_eos(label_ids) and len(label_ids) == 5  # without "noun" and "no"
    eos, pad = tok.eos_token_id, tok.pad_token_id
    end = [eos] if needs_eos(label_ids) else []
    shared = score_shared(model, prompts, label_ids, eos, pad, Placement.cpu_fp32())
    each = score_each(model, prompts, label_ids, eos, pad, Placement.cpu_fp32())
    hand = [[_by_hand(model, p, lab, end) for lab in label_ids] for p in prompts]
    assert torch.allclose(torch.tensor(shared), torch.tensor(hand), atol=1e-4)
    assert torch.allclose(torch.tensor(each), torch.tensor(hand), atol=1e-4)
    # accuracy by log-likelihood = the hand-computed argmax, for any choice of gold labels
    gold = [k % len(label_ids) for k in (3, 0, 1, 6, 2)]
    hand_pred = [max(range(len(label_ids)), key=row.__getitem__) for row in hand]
    assert predict(shared) == hand_pred
    m = confusion(gold, predict(shared), len(label_ids))
    assert from_confusion(m)["acc"] == sum(g == p for g, p in zip(gold, hand_pred)) / len(gold)


def test_shared_scoring_batches_prompts_of_different_lengths(tiny, monkeypatch):
    import fedsqueeze.scoring.classify as mod

    model, tok = tiny
    prompts, label_ids = _inputs(tok)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    one = score_shared(model, prompts, label_ids, eos, pad, Placement.cpu_fp32())
    monkeypatch.setattr(mod, "MAX_BATCH", 2)  # left padding inside a batch must not change a score
    two = score_shared(model, prompts, label_ids, eos, pad, Placement.cpu_fp32())
    assert torch.allclose(torch.tensor(one), torch.tensor(two), atol=1e-4)


def test_metrics_by_hand():
    gold = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 0, 2]
    m = confusion(gold, pred, 4)  # label 3 never occurs: left out of macro-F1
    assert m[0] == [1, 1, 0, 0] and m[2] == [1, 0, 1, 0]
    r = from_confusion(m)
    f1 = [2 * 1 / (2 + 2), 2 * 2 / (2 + 3), 2 * 1 / (2 + 1)]
    assert r["acc"] == pytest.approx(4 / 6) and r["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert r["acc_se"] == pytest.approx(((4 / 6) * (2 / 6) / 6) ** 0.5)
    assert r["chance"] == 0.25 and r["majority"] == pytest.approx(2 / 6) and r["classify_n"] == 6
    both = pooled({"a": {"confusion": sparse(m)}, "b": {"confusion": sparse(m)}}, ["w", "x", "y", "z"])
    assert both["acc"] == pytest.approx(4 / 6) and both["classify_n"] == 12 and both["confusion"][0][0] == 2


def test_classify_config_keys_are_checked():
    cfg = load(None, ["data.task=classify"])
    assert "classify" in cfg.eval.metrics  # judged by itself for a classify task
    with pytest.raises(ConfigError, match=r"eval\.metrics.*classify needs data\.task"):
        load(None, ["eval.metrics=loss,classify"])
    with pytest.raises(ConfigError, match=r"eval\.metrics.*choice.*allowed: loss, classify"):
        load(None, ["data.task=classify", "eval.metrics=loss,choice"])
    with pytest.raises(ConfigError, match=r"data\.labels.*distinct"):
        load(None, ["data.task=classify", 'data.labels=["a", "a"]'])
    with pytest.raises(ConfigError, match=r"data\.task"):
        load(None, ["data.task=regress"])
    with pytest.raises(ConfigError, match=r"data\.label_field.*only with data\.task = \"classify\""):
        load(None, ["data.label_field=stars"])
    with pytest.raises(ConfigError, match=r"data\.partition.*pathological"):
        load(None, ["data.partition=label-skew"])
    with pytest.raises(ConfigError, match=r"data\.labels_per_owner"):
        load(None, ["data.labels_per_owner=0"])


def test_labels_from_the_data_or_given_and_spoken():
    from fedsqueeze.data.classify import to_classify

    rows = [{"t": f"x{i}", "y": str(v), "source": "s"} for i, v in enumerate([10, 2, 2, 1])]
    cfg = DataConfig(task="classify", text_field="t", label_field="y")
    examples, labels = to_classify(rows, cfg, "s")
    assert labels == ["1", "2", "10"]  # numbers in numeric order
    assert examples[0]["input"] == "x0" and examples[0]["response"] == "10" and examples[0]["class"] == "10"
    assert examples[0]["instruction"] == "Label the t with its y."
    spoken = DataConfig(task="classify", text_field="t", label_field="y", labels={"1": "bad", "2": "ok", "10": "top"})
    examples, labels = to_classify(rows, spoken, "s")
    assert labels == ["bad", "ok", "top"] and examples[0]["response"] == "top"
    with pytest.raises(DataError, match=r"data\.labels.*'10' \(1\)"):
        to_classify(rows, DataConfig(task="classify", text_field="t", label_field="y", labels=["1", "2"]), "s")
    with pytest.raises(DataError, match=r"data\.text_field 'text'.*fields there: t, y"):
        to_classify(rows, DataConfig(task="classify", label_field="y"), "s")


def write_reviews(path, n=240, seed=0):
    """A user's CSV: columns named id, review, stars; the stars follow the review's words."""
    rng = random.Random(seed)
    words = {"1": ["awful", "broken", "refund"], "3": ["okay", "fine", "average"], "5": ["great", "love", "perfect"]}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "review", "stars"])
        for i in range(n):
            stars = rng.choice(list(words))
            w.writerow([i, " ".join(rng.choice(words[stars]) for _ in range(5)), stars])
    return path


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """The README's one command on a user's CSV (columns id, review, stars), on the tiny model."""
    from typer.testing import CliRunner

    from fedsqueeze.cli import app

    tmp = tmp_path_factory.mktemp("csv")
    data = write_reviews(tmp / "reviews.csv")
    out = tmp / "run"
    args = ["run", str(EXAMPLE), "--set", f"data.source=csv:{data}", "--set", "data.task=classify"]
    args += ["--set", "data.text_field=review", "--set", "data.label_field=stars"]
    args += ["--set", "data.partition=dirichlet", "--set", "data.dirichlet_alpha=0.3"]
    args += ["--set", "train.rounds=2", "--set", "train.local_steps=2", "--set", "train.threads=1", "--out", str(out)]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    return out, res


def test_a_users_csv_runs_as_a_label_skewed_federation(csv_run):
    """Its summary has accuracy, macro-F1 and the confusion matrix."""
    out, res = csv_run
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    means = summary["eval_means"]
    assert 0 <= means["acc"] <= 1 and 0 <= means["macro_f1"] <= 1 and means["chance"] == pytest.approx(1 / 3)
    assert summary["eval_classify"]["labels"] == ["1", "3", "5"]
    matrix = summary["eval_classify"]["confusion"]
    assert sum(map(sum, matrix)) == means["classify_n"] == sum(len(v) for v in _eval_counts(out).values())
    assert means["acc"] == pytest.approx(sum(matrix[k][k] for k in range(3)) / means["classify_n"])
    assert "macro-F1" in res.output
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert "eval_classify" in rows[-1] and "macro_f1" in rows[-1]["eval_means"]


def test_eval_command_reproduces_the_classify_figures(csv_run, cli):
    out, _ = csv_run
    res = cli("eval", out)
    assert res.exit_code == 0, res.output
    assert "macro-F1" in res.output
    result = json.loads((out / "eval.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    for key in ("acc", "acc_se", "macro_f1", "classify_n"):
        assert result["means"][key] == summary["eval_means"][key]
    assert result["classify"] == summary["eval_classify"]


def _eval_counts(out):
    summary = json.loads((out / "summary.json").read_text())
    return {name: [0] * m["classify_n"] for name, m in summary["eval_metrics"].items()}


def test_a_missing_column_names_the_key_and_the_columns(tmp_path, cli):
    data = write_reviews(tmp_path / "reviews.csv", n=20)
    res = cli(
        "data",
        EXAMPLE,
        "--set",
        f"data.source=csv:{data}",
        "--set",
        "data.task=classify",
        "--set",
        "data.text_field=body",
        "--set",
        "data.label_field=stars",
    )
    assert res.exit_code == 2
    assert "data.text_field" in res.output and "id, review, stars" in res.output
