"""Partitioners, held-out splits, batch sampling and the pooled (centralized) federation."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze.config import DataConfig
from fedsqueeze.data import build_federation, sample_batches
from fedsqueeze.data.partition import by_domain, dirichlet, eval_split, iid
from fedsqueeze.errors import DataError
from fedsqueeze.models.tiny import tiny_tokenizer

LABELS = [f"label{i % 4}" for i in range(400)]


def top_share(parts):
    """Mean over clients of the share of the client's most common label."""
    shares = [Counter(LABELS[i] for i in part).most_common(1)[0][1] / len(part) for part in parts]
    return sum(shares) / len(shares)


def assert_is_a_partition(parts, n):
    flat = sorted(i for part in parts for i in part)
    assert flat == list(range(n)) and all(parts)


def test_iid_is_seeded_balanced_and_complete():
    names, parts = iid(LABELS, 4, seed=3)
    assert names == ["client-0", "client-1", "client-2", "client-3"]
    assert_is_a_partition(parts, 400)
    assert [len(p) for p in parts] == [100] * 4
    assert iid(LABELS, 4, seed=3) == (names, parts)
    assert iid(LABELS, 4, seed=4)[1] != parts
    with pytest.raises(DataError, match="3 examples cannot fill 4 clients"):
        iid(LABELS[:3], 4, seed=0)


def test_dirichlet_skew_follows_alpha_and_is_seeded():
    _, skewed = dirichlet(LABELS, 4, seed=0, alpha=0.1)
    _, even = dirichlet(LABELS, 4, seed=0, alpha=1000.0)
    assert_is_a_partition(skewed, 400)
    assert_is_a_partition(even, 400)
    assert top_share(skewed) > 0.6
    assert top_share(even) < 0.4
    assert dirichlet(LABELS, 4, seed=0, alpha=0.1)[1] == skewed
    assert dirichlet(LABELS, 4, seed=1, alpha=0.1)[1] != skewed


def test_dirichlet_that_cannot_fill_every_client_says_what_to_change():
    with pytest.raises(DataError, match="raise data.dirichlet_alpha, lower data.clients"):
        dirichlet(["a"] * 5 + ["b"] * 5, 8, seed=0, alpha=0.01)


def test_by_domain_one_client_per_value_and_count_mismatch_lists_them():
    names, parts = by_domain(LABELS, 4, "domain")
    assert names == ["label0", "label1", "label2", "label3"]
    assert all({LABELS[i] for i in part} == {name} for name, part in zip(names, parts))
    with pytest.raises(
        DataError,
        match=r"data.clients = 3 but 'domain' has 4 distinct values: "
        r"label0 \(100\), label1 \(100\), label2 \(100\), label3 \(100\)",
    ):
        by_domain(LABELS, 3, "domain")


def test_eval_split_fraction_cap_and_at_least_one_each():
    train, held = eval_split(list(range(100)), fraction=0.1, cap=32, seed=0, client=0)
    assert len(held) == 10 and len(train) == 90 and not set(train) & set(held)
    assert len(eval_split(list(range(1000)), 0.1, 32, 0, 0)[1]) == 32
    train, held = eval_split([7, 8], 0.1, 32, 0, 0)
    assert len(train) == len(held) == 1
    assert eval_split(list(range(100)), 0.1, 32, 0, 1) != eval_split(list(range(100)), 0.1, 32, 0, 0)


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 40),
    batch=st.integers(1, 9),
    steps=st.integers(1, 12),
    seed=st.integers(0, 2**31),
    client=st.integers(0, 5),
    rnd=st.integers(0, 50),
)
def test_sample_batches_is_a_pure_function_of_its_arguments(n, batch, steps, seed, client, rnd):
    plan = sample_batches(n, batch, steps, seed, client, rnd)
    assert plan == sample_batches(n, batch, steps, seed, client, rnd)
    assert len(plan) == steps
    assert all(len(b) == min(batch, n) == len(set(b)) and all(0 <= i < n for i in b) for b in plan)
    if steps * min(batch, n) <= n:  # within the first pass, no example repeats
        flat = [i for b in plan for i in b]
        assert len(flat) == len(set(flat))


def test_sample_batches_differ_across_client_and_round():
    base = sample_batches(100, 8, 5, seed=0, client=0, rnd=1)
    assert base != sample_batches(100, 8, 5, seed=0, client=1, rnd=1)
    assert base != sample_batches(100, 8, 5, seed=0, client=0, rnd=2)
    assert base != sample_batches(100, 8, 5, seed=1, client=0, rnd=1)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("fed") / "domains.jsonl"
    rows = [
        {"instruction": f"Q{d}{i}", "response": f"A{i}", "domain": d, "topic": f"t{i % 3}"}
        for d, n in (("art", 30), ("law", 40), ("math", 50))
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"jsonl:{path}"


def as_tuples(data):
    return sorted(zip(map(tuple, data.input_ids), map(tuple, data.labels)))


def test_federation_by_domain_with_caps(source):
    tok = tiny_tokenizer()
    cfg = DataConfig(source=source, clients=3, eval_fraction=0.2, eval_examples=7, max_examples=25)
    fed = build_federation(cfg, tok, seed=0)
    assert [c.name for c in fed.clients] == ["art", "law", "math"]
    assert [len(c.eval) for c in fed.clients] == [6, 7, 7]  # 20% of 30, then the cap of 7
    assert [c.num_examples for c in fed.clients] == [24, 25, 25]  # 30 - 6 = 24; max_examples caps the rest
    assert [c.labels for c in fed.clients] == [{"art": 24}, {"law": 25}, {"math": 25}]
    assert list(fed.eval_sets) == ["art", "law", "math"] and fed.ood is None and fed.skipped == 0
    summary = fed.summary()
    assert "3 client(s), 74 train / 20 eval" in summary and "math" in summary
    again = build_federation(cfg, tok, seed=0)
    assert [c.train.input_ids for c in again.clients] == [c.train.input_ids for c in fed.clients]
    other = build_federation(cfg, tok, seed=1)
    assert [c.train.input_ids for c in other.clients] != [c.train.input_ids for c in fed.clients]


def test_dirichlet_federation_on_another_label_column(source):
    cfg = DataConfig(source=source, clients=2, partition="dirichlet", label="topic", dirichlet_alpha=0.3)
    fed = build_federation(cfg, tiny_tokenizer(), seed=0)
    assert [c.name for c in fed.clients] == ["client-0", "client-1"]
    assert set().union(*(c.labels for c in fed.clients)) <= {"t0", "t1", "t2"}
    assert sum(c.num_examples + len(c.eval) for c in fed.clients) == 120


def test_pooled_federation_holds_out_the_same_examples(source):
    tok = tiny_tokenizer()
    cfg = DataConfig(source=source, clients=3, partition="iid", eval_examples=5)
    fed = build_federation(cfg, tok, seed=0)
    pooled = build_federation(cfg, tok, seed=0, pooled=True)
    (only,) = pooled.clients
    assert only.name == "pooled"
    assert only.num_examples == len(only.train) == sum(c.num_examples for c in fed.clients)
    assert as_tuples(only.train) == sorted(t for c in fed.clients for t in as_tuples(c.train))
    assert list(pooled.eval_sets) == list(fed.eval_sets) == ["client-0", "client-1", "client-2"]
    for name, data in fed.eval_sets.items():
        assert pooled.eval_sets[name].input_ids == data.input_ids
    assert "eval per original client" in pooled.summary()


def test_ood_source_is_a_capped_eval_set(source, tmp_path):
    ood = tmp_path / "ood.jsonl"
    ood.write_text("".join(json.dumps({"instruction": f"o{i}", "response": "x"}) + "\n" for i in range(50)))
    cfg = DataConfig(source=source, clients=3, ood_source=f"jsonl:{ood}", eval_examples=9)
    fed = build_federation(cfg, tiny_tokenizer(), seed=0)
    assert len(fed.ood) == 9 and "ood" in fed.summary()


def test_single_example_client_is_an_error(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"instruction": "q", "response": "a", "domain": d} for d in ("big",) * 5 + ("lonely",)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="client 'lonely' has 1 example"):
        build_federation(DataConfig(source=f"jsonl:{path}", clients=2), tiny_tokenizer(), seed=0)
