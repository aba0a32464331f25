"""The label distribution of a federation's owners (`fedsqueeze data`): a table of counts per owner and
label, how skewed it is, and a picture of stacked bars per owner (flwr-datasets' plot_label_distributions).

Counts are of each owner's training examples (`ClientData.labels`: the class of a classify task, else the
value of data.label)."""

from __future__ import annotations

import textwrap
from pathlib import Path

COLUMNS = 12
"""Labels shown as columns of the table; the rest are summed under "other"."""


def label_order(fed) -> list[str]:
    """The federation's label set (classify) or every label seen, most frequent first otherwise."""
    if fed.labels:
        return list(fed.labels)
    totals: dict[str, int] = {}
    for c in fed.clients:
        for label, n in c.labels.items():
            totals[label] = totals.get(label, 0) + n
    return sorted(totals, key=lambda k: (-totals[k], k))


def skew(fed) -> dict:
    """Mean over owners of the total-variation distance between an owner's label shares and the
    federation's (0: every owner holds the same mixture; near 1: disjoint labels), and the mean
    number of distinct labels an owner holds."""
    labels = label_order(fed)
    totals = {k: sum(c.labels.get(k, 0) for c in fed.clients) for k in labels}
    n = sum(totals.values()) or 1
    tv, held = [], []
    for c in fed.clients:
        m = sum(c.labels.values()) or 1
        tv.append(0.5 * sum(abs(c.labels.get(k, 0) / m - totals[k] / n) for k in labels))
        held.append(sum(1 for k in labels if c.labels.get(k, 0)))
    return {"tv": sum(tv) / len(tv), "labels_held": sum(held) / len(held), "labels": len(labels)}


def table(fed, show: int = 20) -> str:
    """Owners x labels (training examples); past COLUMNS labels, the most frequent and "other"."""
    labels = label_order(fed)
    if not labels or not any(c.labels for c in fed.clients):
        return ""
    totals = {k: sum(c.labels.get(k, 0) for c in fed.clients) for k in labels}
    shown = sorted(labels, key=lambda k: -totals[k])[:COLUMNS] if len(labels) > COLUMNS else labels
    shown = [k for k in labels if k in shown]  # keep the label set's order
    other = len(labels) > len(shown)
    heads = [_short(k) for k in shown] + (["other"] if other else [])
    width = max([len(c.name) for c in fed.clients] + [5])
    cols = [max(len(h), 5) for h in heads]
    lines = ["  " + f"{'owner':<{width}}" + "".join(f"  {h:>{w}}" for h, w in zip(heads, cols)) + "  labels"]
    clients = fed.clients if len(fed.clients) <= show else fed.clients[: show // 2] + fed.clients[-show // 2 :]
    for i, c in enumerate(clients):
        if len(clients) < len(fed.clients) and i == show // 2:
            lines.append(f"  ... {len(fed.clients) - show} more owners ...")
        counts = [c.labels.get(k, 0) for k in shown]
        if other:
            counts.append(sum(n for k, n in c.labels.items() if k not in shown))
        held = sum(1 for n in c.labels.values() if n)
        lines.append(
            "  " + f"{c.name:<{width}}" + "".join(f"  {n:>{w}}" for n, w in zip(counts, cols)) + f"  {held:>6}"
        )
    s = skew(fed)
    lines.append(
        f"  label skew: owners hold {s['labels_held']:.1f} of {s['labels']} labels on average; mean total-variation "
        f"distance from the federation's mixture {s['tv']:.3f} (0 = the same mixture everywhere)"
    )
    return "label distribution (training examples per owner and label)\n" + "\n".join(lines)


def _short(label: str, limit: int = 14) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "~"


def plot(fed, path: Path, title: str = "") -> Path:
    """Stacked bars: one per owner, its training examples by label (a legend up to 20 labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = label_order(fed)
    owners = [c.name for c in fed.clients]
    fig, ax = plt.subplots(figsize=(min(max(6.4, 3 + 0.25 * len(owners)), 16), 4.8), layout="constrained")
    cmap = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
    bottom = [0] * len(owners)
    for j, label in enumerate(labels):
        counts = [c.labels.get(label, 0) for c in fed.clients]
        ax.bar(range(len(owners)), counts, bottom=bottom, color=cmap(j % cmap.N), label=label, width=0.85)
        bottom = [b + n for b, n in zip(bottom, counts)]
    ax.set_xticks(range(len(owners)), owners if len(owners) <= 30 else [""] * len(owners), rotation=90, fontsize=7)
    ax.set_xlabel("owner" + (f" ({len(owners)})" if len(owners) > 30 else ""))
    ax.set_ylabel("training examples")
    s = skew(fed)
    head = textwrap.wrap(f"Label distribution per owner{': ' + title if title else ''}", 90)
    tail = f"{s['labels']} labels, {s['labels_held']:.1f} held per owner on average, mean TV distance {s['tv']:.3f}"
    ax.set_title("\n".join([*head, tail]), fontsize=8)
    if len(labels) <= 20:
        fig.legend(loc="outside right center", fontsize=7, frameon=False, title="label", title_fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
