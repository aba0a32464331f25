"""Classification by log-likelihood over the label set (lm-evaluation-harness `acc`), with the prompt shared.

Every label is a continuation of the prompt: its tokens, tokenized on their own as training sees the
response. The score of a label is the sum of those tokens' log-likelihoods (and of the EOS that ends a
response where one label's tokens begin another's: `needs_eos`); the prediction is the label of highest
score (ties to the first).

Judging N items over L labels by scoring each (item, label) sequence on its own costs N x L forward
passes of the prompt. Here the labels' tokens form a trie (labels that share a first token share its
node), appended once after each prompt: one forward pass per batch of items over
`prompt + trie nodes`, with a 4-D attention mask by which each trie node sees the prompt and its own
ancestors only, and position ids that continue the prompt's. A label's tokens are then scored from the
logits at its parent nodes (its first token from the prompt's last), so only the trie's inner nodes are
inputs (its leaves too where the EOS is scored). The cost is about N passes of (prompt + inner nodes)
tokens: with labels of a token or two, not much more than N prompt passes.
`score_each` is the plain one-sequence-per-label reference (tests, and models without 4-D masks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

POSITIONS_PER_BATCH = 2048
"""Logit rows (items x (trie nodes + 1)) computed at once: bounds the memory of the vocabulary-wide logits."""
MAX_BATCH = 16


@dataclass
class LabelTrie:
    tokens: list[int]
    """The input token of each node."""
    parent: list[int]
    """Each node's parent node, -1 for a label's first token (its parent is the prompt's last token)."""
    depth: list[int]
    """1 for a label's first token."""
    paths: list[list[int]]
    """Per label, the nodes of its tokens in order."""

    @classmethod
    def build(cls, label_ids: list[list[int]]) -> LabelTrie:
        tokens, parent, depth, paths = [], [], [], []
        index: dict[tuple[int, ...], int] = {}
        for ids in label_ids:
            if not ids:
                raise ValueError("a label with no token")
            path = []
            for j in range(len(ids)):
                prefix = tuple(ids[: j + 1])
                if prefix not in index:
                    index[prefix] = len(tokens)
                    tokens.append(ids[j])
                    parent.append(path[-1] if path else -1)
                    depth.append(j + 1)
                path.append(index[prefix])
            paths.append(path)
        return cls(tokens, parent, depth, paths)

    def fed(self, eos: bool) -> list[int]:
        """The nodes that must be inputs: those whose logits score something (a child's token, or the
        EOS after a label's last token when EOS is scored). A label's last token is never an input
        unless EOS is scored after it."""
        has_child = set(p for p in self.parent if p >= 0)
        return [n for n in range(len(self.tokens)) if eos or n in has_child]

    def visible(self, fed: list[int]) -> torch.Tensor:
        """(F, F) bool over the fed nodes: q may attend to k (k is q or one of its ancestors)."""
        col = {n: j for j, n in enumerate(fed)}
        out = torch.zeros((len(fed), len(fed)), dtype=torch.bool)
        for q in fed:
            k = q
            while k != -1:
                out[col[q], col[k]] = True
                k = self.parent[k]
        return out

    def targets(self, fed: list[int], eos: int | None) -> tuple[list[int], list[int], list[int]]:
        """(row, token, label) triples flattened: the logit row (0 = the prompt's last token, 1 + the
        fed node's column) that predicts each scored token of each label, the token, and its label."""
        col = {n: j for j, n in enumerate(fed)}
        rows, toks, owner = [], [], []
        for label, path in enumerate(self.paths):
            scored = [self.tokens[node] for node in path] + ([eos] if eos is not None else [])
            before = [0] + [1 + col[node] for node in path[: len(scored) - 1]]
            rows += before
            toks += scored
            owner += [label] * len(scored)
        return rows, toks, owner


def needs_eos(label_ids: list[list[int]]) -> bool:
    """Whether the EOS after a label is scored: only where some label's tokens begin another label's
    (e.g. "1" and "10"), so that the shorter one is a whole answer rather than a beginning. A label set
    free of such prefixes is scored as lm-evaluation-harness scores continuations, without the EOS."""
    seqs = [tuple(ids) for ids in label_ids]
    return any(a != b and b[: len(a)] == a for a in seqs for b in seqs)


def _mask_kind(model) -> str:
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    return "bool" if impl == "sdpa" else "additive"


@torch.no_grad()
def score_shared(model, prompts: list[list[int]], label_ids: list[list[int]], eos: int, pad: int, placement):
    """Log-likelihood of every label after every prompt ([item][label]): its tokens, and the EOS after
    them where `needs_eos`."""
    trie = LabelTrie.build(label_ids)
    end = eos if needs_eos(label_ids) else None
    fed = trie.fed(end is not None)
    visible = trie.visible(fed)
    rows, toks, owner = (torch.tensor(x, dtype=torch.long) for x in trie.targets(fed, end))
    fed_tokens = torch.tensor([trie.tokens[n] for n in fed], dtype=torch.long)
    fed_depth = torch.tensor([trie.depth[n] for n in fed], dtype=torch.long)
    n_fed = len(fed)
    batch = max(1, min(MAX_BATCH, POSITIONS_PER_BATCH // (n_fed + 1)))
    kind = _mask_kind(model)
    device = placement.device
    model.eval()
    out: list[list[float]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch):
        items = order[start : start + batch]
        width = max(len(prompts[i]) for i in items)
        size = width + n_fed
        ids = torch.full((len(items), size), pad, dtype=torch.long)
        pos = torch.zeros((len(items), size), dtype=torch.long)
        allowed = torch.zeros((len(items), 1, size, size), dtype=torch.bool)
        for r, i in enumerate(items):
            p = len(prompts[i])
            lead = width - p
            ids[r, lead:width] = torch.tensor(prompts[i], dtype=torch.long)
            ids[r, width:] = fed_tokens
            pos[r, lead:width] = torch.arange(p)
            pos[r, width:] = fed_depth + p - 1
            allowed[r, 0, lead:width, lead:width] = torch.ones((p, p), dtype=torch.bool).tril()
            allowed[r, 0, width:, lead:width] = True
            allowed[r, 0, width:, width:] = visible
            idx = torch.arange(lead)
            allowed[r, 0, idx, idx] = True  # padding sees itself only (never a row of nothing)
        if kind == "bool":
            mask = allowed
        else:
            mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
        keep = torch.arange(width - 1, size)
        with placement.autocast():
            logits = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=pos.to(device),
                logits_to_keep=keep.to(device),
            ).logits
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()  # (items, 1 + fed nodes, vocab)
        picked = logp[:, rows, toks]  # (items, scored tokens)
        sums = torch.zeros((len(items), len(label_ids)), dtype=torch.float64)
        sums.index_add_(1, owner, picked.double())
        for r, i in enumerate(items):
            out[i] = sums[r].tolist()
    return out


@torch.no_grad()
def score_each(model, prompts: list[list[int]], label_ids: list[list[int]], eos: int, pad: int, placement, batch=16):
    """The reference: every (prompt, label [+ EOS]) its own sequence, its label tokens' log-likelihoods summed."""
    from ..client.trainer import example_losses
    from ..data.tokenization import TokenizedSet

    end = [eos] if needs_eos(label_ids) else []
    seqs = TokenizedSet()
    for prompt in prompts:
        for ids in label_ids:
            target = list(ids) + end
            seqs.input_ids.append(list(prompt) + target)
            seqs.labels.append([-100] * len(prompt) + target)
    idx = list(range(len(seqs)))
    batches = (seqs.batch(idx[j : j + batch], pad) for j in range(0, len(idx), batch))
    flat = [-loss for loss, _ in example_losses(model, batches, placement)]
    n = len(label_ids)
    return [flat[k * n : (k + 1) * n] for k in range(len(prompts))]


def predict(scores: list[list[float]]) -> list[int]:
    """The label of highest score per item (ties to the first)."""
    return [max(range(len(s)), key=s.__getitem__) for s in scores]


# --- metrics -------------------------------------------------------------------------------------------------


def confusion(gold: list[int], pred: list[int], n_labels: int) -> list[list[int]]:
    """rows: the true label, columns: the predicted one."""
    m = [[0] * n_labels for _ in range(n_labels)]
    for g, p in zip(gold, pred):
        m[g][p] += 1
    return m


def from_confusion(m: list[list[int]]) -> dict:
    """acc, its standard error sqrt(acc (1 - acc) / n), macro-F1 (the mean F1 over the labels that occur
    as truth or as prediction, scikit-learn's convention), chance (1 / labels), majority (the share of the
    most frequent true label) and n."""
    n_labels = len(m)
    n = sum(map(sum, m))
    if n == 0:
        return {"acc": float("nan"), "acc_se": float("nan"), "macro_f1": float("nan"), "classify_n": 0}
    correct = sum(m[i][i] for i in range(n_labels))
    acc = correct / n
    f1s = []
    for k in range(n_labels):
        support = sum(m[k])
        predicted = sum(m[i][k] for i in range(n_labels))
        if support == 0 and predicted == 0:
            continue
        f1s.append(2 * m[k][k] / (support + predicted))
    return {
        "acc": acc,
        "acc_se": math.sqrt(acc * (1 - acc) / n),
        "macro_f1": sum(f1s) / len(f1s),
        "chance": 1 / n_labels,
        "majority": max(sum(row) for row in m) / n,
        "classify_n": n,
    }


def sparse(m: list[list[int]]) -> list[list[int]]:
    """[[true, predicted, count], ...] of the non-zero cells (per eval set: a few items among many labels)."""
    return [[g, p, c] for g, row in enumerate(m) for p, c in enumerate(row) if c]


def dense(cells: list[list[int]], n_labels: int) -> list[list[int]]:
    m = [[0] * n_labels for _ in range(n_labels)]
    for g, p, c in cells:
        m[g][p] += c
    return m


def pooled(per_set: dict[str, dict], labels: list[str]) -> dict:
    """The metrics of all judged items together (their confusion matrices summed) and the matrix."""
    total = [[0] * len(labels) for _ in labels]
    for metrics in per_set.values():
        for g, p, c in metrics.get("confusion", []):
            total[g][p] += c
    return {**from_confusion(total), "labels": list(labels), "confusion": total}
