"""Partitioners: who holds which examples. Each returns (client names, example indices per client), seeded.

Every RNG here is derived from (seed, a fixed purpose tag), never from global state, so a partition depends only
on the data, the config and the seed.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..errors import DataError
from .seeding import seeded_rng

PARTITIONS = ("iid", "dirichlet", "by-domain", "natural", "pathological", "shards")
_PARTITION_TAG = 1_701  # distinct streams for partitioning, eval splits and batch sampling
_SPLIT_TAG = 1_702
_BATCH_TAG = 1_703
OOD_TAG = 1_704
_DIRICHLET_TRIES = 100


def iid(labels: list[str], clients: int, seed: int) -> tuple[list[str], list[list[int]]]:
    if len(labels) < clients:
        raise DataError(f"iid partition: {len(labels)} examples cannot fill {clients} clients; lower data.clients")
    order = seeded_rng(seed, _PARTITION_TAG).permutation(len(labels))
    parts = [sorted(int(i) for i in part) for part in np.array_split(order, clients)]
    return [f"client-{k}" for k in range(clients)], parts


def dirichlet(labels: list[str], clients: int, seed: int, alpha: float) -> tuple[list[str], list[list[int]]]:
    """Per label value, shares of its examples ~ Dirichlet(alpha): small alpha, each client sees few labels.
    Draws again (same seeded stream) when a client comes out empty, as the usual implementations do."""
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    rng = seeded_rng(seed, _PARTITION_TAG)
    for _ in range(_DIRICHLET_TRIES):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for label in sorted(by_label):
            members = rng.permutation(by_label[label])
            shares = rng.dirichlet([alpha] * clients)
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for k, piece in enumerate(np.split(members, cuts)):
                parts[k].extend(int(i) for i in piece)
        if all(parts):
            return [f"client-{k}" for k in range(clients)], [sorted(p) for p in parts]
    raise DataError(
        f"dirichlet partition: some of the {clients} clients got no examples in {_DIRICHLET_TRIES} draws "
        f"({len(labels)} examples, {len(by_label)} distinct values of the label, alpha={alpha}); "
        "raise data.dirichlet_alpha, lower data.clients, or use more data"
    )


def by_domain(labels: list[str], clients: int, label_name: str) -> tuple[list[str], list[list[int]]]:
    """One client per distinct label value, in sorted order of the values."""
    counts = Counter(labels)
    if len(counts) != clients:
        found = ", ".join(f"{value} ({n})" for value, n in sorted(counts.items())[:50])
        more = f" and {len(counts) - 50} more" if len(counts) > 50 else ""
        raise DataError(
            f"by-domain partition: data.clients = {clients} but {label_name!r} has {len(counts)} distinct values: "
            f"{found}{more}; set data.clients = {len(counts)} or choose another data.label"
        )
    names = sorted(counts)
    index = {name: k for k, name in enumerate(names)}
    parts: list[list[int]] = [[] for _ in names]
    for i, label in enumerate(labels):
        parts[index[label]].append(i)
    return names, parts


def partition(
    kind: str,
    labels: list[str],
    clients: int,
    seed: int,
    alpha: float,
    label_name: str,
    labels_per_owner: int = 2,
    shards_per_owner: int = 2,
):
    if kind == "iid":
        return iid(labels, clients, seed)
    if kind == "dirichlet":
        return dirichlet(labels, clients, seed, alpha)
    if kind in ("by-domain", "natural"):  # natural: flwr-datasets' name for one owner per id value
        return by_domain(labels, clients, label_name)
    if kind in ("pathological", "shards"):
        from . import label_partition

        if kind == "pathological":
            return label_partition.pathological(labels, clients, seed, labels_per_owner)
        return label_partition.shards(labels, clients, seed, shards_per_owner)
    raise DataError(f"data.partition {kind!r}: allowed: {', '.join(PARTITIONS)}")


def eval_split(indices: list[int], fraction: float, cap: int, seed: int, client: int) -> tuple[list[int], list[int]]:
    """(train, eval) of one client's examples, shuffled: eval gets `fraction` of them (at least 1, at most `cap`)
    and train keeps at least one. Both lists are in shuffled order, so taking a prefix is a random sample."""
    order = [indices[i] for i in seeded_rng(seed, _SPLIT_TAG, client).permutation(len(indices))]
    n_eval = min(cap, max(1, round(len(order) * fraction)), len(order) - 1)
    return order[n_eval:], order[:n_eval]


def sample_batches(n: int, batch_size: int, steps: int, seed: int, client: int, rnd: int) -> list[list[int]]:
    """`steps` batches of indices into a training set of size n, from (seed, client, round) alone.

    Epoch-style: consecutive shuffles of range(n) cut into batches, so every example is seen once before any is
    seen twice; a batch never holds the same example twice (batches have min(batch_size, n) indices)."""
    if n <= 0:
        raise ValueError("sample_batches: empty training set")
    size = min(batch_size, n)
    rng = seeded_rng(seed, _BATCH_TAG, client, rnd)
    stream: list[int] = []
    batches: list[list[int]] = []
    while len(batches) < steps:
        if len(stream) < size:
            # Top up with a fresh permutation that avoids repeating what is left of the previous one.
            left = set(stream)
            stream += [int(i) for i in rng.permutation(n) if int(i) not in left]
        batches.append(stream[:size])
        stream = stream[size:]
    return batches
