"""Label-skew partitions (pathological, shards, natural) against splits computed by hand, and the label
distribution table and picture of `fedsqueeze data`."""

from __future__ import annotations

import numpy as np
import pytest

from fedsqueeze.data.federation import ClientData, Federation
from fedsqueeze.data.label_partition import pathological, pathological_labels, shards
from fedsqueeze.data.partition import partition, seeded_rng
from fedsqueeze.data.tokenization import TokenizedSet
from fedsqueeze.errors import DataError

#            0    1    2    3    4    5    6    7    8    9   10   11
LABELS = ["b", "a", "c", "a", "b", "c", "a", "b", "c", "a", "b", "c"]


def test_pathological_one_label_each_is_the_label_by_hand():
    names, parts = pathological(LABELS, 3, seed=0, k=1)
    assert names == ["client-0", "client-1", "client-2"]
    assert parts == [[1, 3, 6, 9], [0, 4, 7, 10], [2, 5, 8, 11]]  # owner i holds label i of a, b, c


def test_pathological_all_labels_splits_each_label_evenly_in_owner_order():
    _, parts = pathological(LABELS, 2, seed=0, k=3)
    # a = [1, 3, 6, 9] -> [1, 3] | [6, 9]; b = [0, 4, 7, 10] -> [0, 4] | [7, 10]; c = [2, 5, 8, 11] likewise
    assert parts == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]


def test_pathological_random_labels_follow_the_seeded_draws():
    seed, clients, k = 3, 4, 2
    held = pathological_labels(["a", "b", "c"], clients, k, seeded_rng(seed, 1_711))
    assert [h[0] for h in held] == ["a", "b", "c", "a"] and all(len(set(h)) == k for h in held)
    _, parts = pathological(LABELS, clients, seed, k)
    by_label = {lab: [i for i, x in enumerate(LABELS) if x == lab] for lab in "abc"}
    expected = [[] for _ in range(clients)]
    for lab in "abc":
        owners = [o for o in range(clients) if lab in held[o]]
        for o, piece in zip(owners, np.array_split(by_label[lab], len(owners))):
            expected[o] += piece.tolist()
    assert parts == [sorted(e) for e in expected]
    for part, mine in zip(parts, held):
        assert {LABELS[i] for i in part} == set(mine)  # exactly k labels per owner


def test_shards_by_hand():
    seed = 5
    _, parts = shards(LABELS, 2, seed, per_owner=2)
    order = [1, 3, 6, 9, 0, 4, 7, 10, 2, 5, 8, 11]  # sorted by label, stable
    dealt = seeded_rng(seed, 1_712).permutation(4)
    expected = [sorted(order[3 * s + j] for s in dealt[2 * o : 2 * o + 2] for j in range(3)) for o in range(2)]
    assert parts == expected
    _, one_each = shards(LABELS, 3, seed, per_owner=1)  # shards of 4 = one label each: one label per owner
    assert all(len({LABELS[i] for i in p}) == 1 for p in one_each)
    assert sorted(i for p in one_each for i in p) == list(range(12))


def test_shards_leave_out_the_remainder_and_refuse_too_many():
    labels = LABELS[:11]
    _, parts = shards(labels, 2, 0, per_owner=2)  # 4 shards of 2: 8 of 11 examples dealt
    assert sum(map(len, parts)) == 8
    with pytest.raises(DataError, match=r"data\.clients x data\.shards_per_owner"):
        shards(labels, 4, 0, per_owner=3)
    with pytest.raises(DataError, match=r"data\.labels_per_owner = 4.*1\.\.3"):
        pathological(LABELS, 2, 0, k=4)


def test_natural_is_one_owner_per_value():
    names, parts = partition("natural", LABELS, 3, 0, 0.5, "user")
    assert names == ["a", "b", "c"] and parts[0] == [1, 3, 6, 9]
    with pytest.raises(DataError, match=r"data\.clients = 2.*3 distinct"):
        partition("natural", LABELS, 2, 0, 0.5, "user")


def _fed(counts: list[dict]) -> Federation:
    clients = [
        ClientData(f"client-{k}", TokenizedSet(), TokenizedSet(), sum(c.values()), c) for k, c in enumerate(counts)
    ]
    return Federation(clients=clients, ood=None, skipped=0, labels=["x", "y"])


def test_distribution_table_and_plot(tmp_path):
    from fedsqueeze.data import distribution

    fed = _fed([{"x": 10}, {"y": 10}])
    text = distribution.table(fed)
    assert "client-0     10      0" in text and "client-1      0     10" in text
    assert distribution.skew(fed)["tv"] == pytest.approx(0.5) and distribution.skew(fed)["labels_held"] == 1.0
    assert distribution.skew(_fed([{"x": 5, "y": 5}, {"x": 1, "y": 1}]))["tv"] == pytest.approx(0.0)
    png = distribution.plot(fed, tmp_path / "d.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
