"""Label-skew partitioners beside dirichlet (partition.py), after flwr-datasets' definitions
(flwr-datasets itself needs datasets < 5; this stack resolves datasets 5.x, so they are re-implemented here):

- pathological: each owner holds exactly `k` distinct labels (PathologicalPartitioner,
  class_assignment_mode="first-deterministic", the NIID-Bench paper's #C=k): owner i's first label is
  label i mod L, the others drawn at random without repeats; each label's examples are split evenly
  (numpy.array_split, in data order) among the owners that hold it, in owner order.
- shards: the examples sorted by label (stable) and cut into owners x `shards_per_owner` equal shards, the
  shards dealt at random (ShardPartitioner with num_shards_per_partition, keep_incomplete_shard=False;
  McMahan et al.'s pathological non-IID MNIST); the remainder that fills no shard is left out.

Labels are taken in sorted order (flwr-datasets takes them in order of first appearance), and the random
draws come from seeded_rng(seed, tag), so a split depends on the data, the config and the seed alone.
Both return (owner names, sorted example indices per owner) like every partitioner of partition.py.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .seeding import seeded_rng

_PATHOLOGICAL_TAG = 1_711
_SHARDS_TAG = 1_712


def _names(clients: int) -> list[str]:
    return [f"client-{k}" for k in range(clients)]


def pathological_labels(unique: list[str], clients: int, k: int, rng: np.random.Generator) -> list[list[str]]:
    """The labels each owner holds: first label i mod L, the others drawn one at a time until distinct."""
    held: list[list[str]] = []
    for owner in range(clients):
        mine = [unique[owner % len(unique)]]
        while len(mine) < k:
            label = unique[int(rng.integers(len(unique)))]
            if label not in mine:
                mine.append(label)
        held.append(mine)
    return held


def pathological(labels: list[str], clients: int, seed: int, k: int) -> tuple[list[str], list[list[int]]]:
    unique = sorted(set(labels))
    if k > len(unique):
        raise DataError(
            f"pathological partition: data.labels_per_owner = {k} but the label has only {len(unique)} distinct "
            f"values; allowed: 1..{len(unique)}"
        )
    held = pathological_labels(unique, clients, k, seeded_rng(seed, _PATHOLOGICAL_TAG))
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    parts: list[list[int]] = [[] for _ in range(clients)]
    for label in unique:
        owners = [o for o in range(clients) if label in held[o]]
        if not owners:
            continue  # a label no owner drew: its examples are left out (as in flwr-datasets)
        if len(owners) > len(by_label[label]):
            raise DataError(
                f"pathological partition: label {label!r} is held by {len(owners)} owners but has only "
                f"{len(by_label[label])} examples; lower data.clients or data.labels_per_owner"
            )
        for owner, piece in zip(owners, np.array_split(np.asarray(by_label[label]), len(owners))):
            parts[owner].extend(int(i) for i in piece)
    return _names(clients), [sorted(p) for p in parts]


def shards(labels: list[str], clients: int, seed: int, per_owner: int) -> tuple[list[str], list[list[int]]]:
    n_shards = clients * per_owner
    size = len(labels) // n_shards
    if size < 1:
        raise DataError(
            f"shards partition: {len(labels)} examples cannot fill {clients} owners x {per_owner} shards "
            "(data.clients x data.shards_per_owner); lower one of them or use more data"
        )
    order = sorted(range(len(labels)), key=lambda i: labels[i])  # stable: data order within a label
    dealt = seeded_rng(seed, _SHARDS_TAG).permutation(n_shards)
    parts = []
    for owner in range(clients):
        mine = dealt[owner * per_owner : (owner + 1) * per_owner]
        parts.append(sorted(i for s in mine for i in order[int(s) * size : (int(s) + 1) * size]))
    return _names(clients), parts
