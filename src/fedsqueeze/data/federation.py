"""Assemble a federation: load -> partition -> per-client held-out split -> cap -> tokenize."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from ..config import DataConfig
from ..errors import DataError
from .partition import OOD_TAG, eval_split, partition, seeded_rng
from .sources import check_label, label_key, load_examples
from .templates import render_prompts
from .tokenization import TokenizedSet, tokenize_examples


@dataclass
class ClientData:
    name: str
    train: TokenizedSet
    eval: TokenizedSet
    num_examples: int
    """Training examples: the FedAvg weight."""
    labels: dict[str, int]
    """Counts of the `data.label` values among the training examples (for the summary)."""
    eval_domains: list[str] = field(default_factory=list)
    """The domain of each held-out example (the pooled evaluation's breakdown)."""
    eval_examples: list[dict] = field(default_factory=list)
    """The held-out examples as text, one per row of `eval` (choice and generation metrics)."""


@dataclass
class Federation:
    clients: list[ClientData]
    ood: TokenizedSet | None
    skipped: int
    """Examples dropped because no response token was left (empty response, or truncated away)."""
    eval_sets: dict[str, TokenizedSet] = field(default_factory=dict)
    build_seconds: float = 0.0  # partitioning and tokenizing, for the summary
    """Held-out set per original client, also when the training data is pooled (centralized)."""
    eval_domains: dict[str, list[str]] = field(default_factory=dict)
    """Per eval set, the domain of each of its examples."""
    eval_examples: dict[str, list[dict]] = field(default_factory=dict)
    """Per eval set, its examples as text (instruction, input, response, domain; choices, answer)."""
    description: str = ""
    labels: list[str] = field(default_factory=list)
    """data.task = "classify": the label set (spoken, in order); empty otherwise."""

    def summary(self, show: int = 20) -> str:
        """A table of the clients; past `show` of them, the first and last few and the spread."""
        total_train = sum(c.num_examples for c in self.clients)
        total_eval = sum(len(s) for s in self.eval_sets.values())
        head = f"data: {len(self.clients)} client(s), {total_train} train / {total_eval} eval examples"
        lines = [head + (f" ({self.description})" if self.description else "")]
        width = max([len(c.name) for c in self.clients] + [len(n) for n in self.eval_sets] + [6])
        lines.append(f"  {'client':<{width}}  {'train':>6}  {'eval':>5}  top labels")
        listed = self.clients if len(self.clients) <= show else self.clients[: show // 2] + self.clients[-show // 2 :]
        for i, c in enumerate(listed):
            if len(listed) < len(self.clients) and i == show // 2:
                lines.append(f"  ... {len(self.clients) - show} more clients ...")
            top = ", ".join(f"{label} {n}" for label, n in sorted(c.labels.items(), key=lambda kv: (-kv[1], kv[0]))[:3])
            more = f" (+{len(c.labels) - 3} more)" if len(c.labels) > 3 else ""
            lines.append(f"  {c.name:<{width}}  {c.num_examples:>6}  {len(c.eval):>5}  {top}{more}")
        if len(listed) < len(self.clients):
            sizes = sorted(c.num_examples for c in self.clients)
            lines.append(
                f"  train examples per client: min {sizes[0]}, median {sizes[len(sizes) // 2]}, max {sizes[-1]}"
            )
        pooled_names = [n for n in self.eval_sets if n not in {c.name for c in self.clients}]
        if pooled_names:
            lines.append(
                "  eval per original client: " + ", ".join(f"{n} {len(self.eval_sets[n])}" for n in pooled_names)
            )
        if self.ood is not None:
            lines.append(f"  {'ood':<{width}}  {'':>6}  {len(self.ood):>5}")
        if self.skipped:
            lines.append(f"  skipped {self.skipped} example(s) with no response token left (empty, or truncated away)")
        return "\n".join(lines)


def _show(example: dict, limit: int = 160) -> str:
    shown = {k: example[k] for k in ("instruction", "input", "response") if example.get(k)}
    text = json.dumps(shown, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _nothing_trainable(client: str, what: str, examples: list[dict], cfg: DataConfig, tokenizer) -> DataError:
    example = examples[0]
    prompt = render_prompts([example], cfg.template, tokenizer)[0]
    n_prompt = len(tokenizer(prompt, add_special_tokens=cfg.template == "alpaca")["input_ids"])
    return DataError(
        f"client {client!r}: none of its {len(examples)} {what} examples has a response token left after "
        f"truncation to data.max_length={cfg.max_length} (or its response is empty), e.g. {_show(example)} "
        f"(prompt: {n_prompt} tokens); raise data.max_length or shorten the prompts"
    )


def _client(
    name: str,
    k: int,
    indices: list[int],
    examples: list[dict],
    cfg: DataConfig,
    tokenizer,
    seed: int,
    key: str | None,
    label_set: list[str] = (),
) -> tuple[ClientData, int]:
    if len(indices) < 2:
        raise DataError(
            f"client {name!r} has {len(indices)} example(s): each client needs at least 2 "
            "(one to train on, one held out); use more data or fewer clients"
        )
    train_idx, eval_idx = eval_split(indices, cfg.eval_fraction, cfg.eval_examples, seed, k)
    eval_examples = [examples[i] for i in eval_idx]
    train_examples = [examples[i] for i in train_idx]
    if label_set:  # classify: long texts cut to fit, not dropped (only those that will be tokenized)
        from .classify import fit_inputs

        fit_inputs(eval_examples, label_set, tokenizer, cfg.template, cfg.max_length)
        fit_inputs(train_examples[: cfg.max_examples], label_set, tokenizer, cfg.template, cfg.max_length)
    eval_set, eval_kept, eval_skipped = tokenize_examples(eval_examples, tokenizer, cfg.template, cfg.max_length)
    train_set, kept, train_skipped = tokenize_examples(
        train_examples, tokenizer, cfg.template, cfg.max_length, limit=cfg.max_examples
    )
    if not train_set:
        raise _nothing_trainable(name, "training", train_examples, cfg, tokenizer)
    if not eval_set:
        raise _nothing_trainable(name, "held-out", eval_examples, cfg, tokenizer)
    labels = Counter(train_examples[i].get(key, "") for i in kept) if key else Counter()
    domains = [str(eval_examples[i].get("domain", "")) for i in eval_kept]
    data = ClientData(
        name=name,
        train=train_set,
        eval=eval_set,
        num_examples=len(train_set),
        labels=dict(labels),
        eval_domains=domains,
        eval_examples=[eval_examples[i] for i in eval_kept],
    )
    return data, len(eval_skipped) + len(train_skipped)


def _ood(cfg: DataConfig, tokenizer, seed: int) -> tuple[TokenizedSet, int]:
    examples = load_examples(cfg.ood_source, cfg)
    if cfg.task == "classify":
        from .classify import to_classify

        examples, _ = to_classify(examples, cfg, cfg.ood_source)
    order = seeded_rng(seed, OOD_TAG).permutation(len(examples))
    sample = [examples[int(i)] for i in order]
    ood, _, skipped = tokenize_examples(sample, tokenizer, cfg.template, cfg.max_length, limit=cfg.eval_examples)
    if not ood:
        raise _nothing_trainable("ood", "out-of-domain", sample, cfg, tokenizer)
    return ood, len(skipped)


def build_federation(cfg: DataConfig, tokenizer, seed: int, pooled: bool = False) -> Federation:
    """Load `cfg.source`, partition it into `cfg.clients` clients, hold out an eval split per client, tokenize.

    pooled=True (centralized training): one client "pooled" with every client's training examples, the same
    examples held out as in the federated run, and `eval_sets` still one per original client."""
    if cfg.source.strip().startswith("owners:"):  # one file per owner (data/owners.py)
        from .owners import build_owner_federation

        return build_owner_federation(cfg, tokenizer, seed, pooled)
    examples = load_examples(cfg.source, cfg)
    label_set: list[str] = []
    if cfg.task == "classify":
        from .classify import to_classify

        examples, label_set = to_classify(examples, cfg, cfg.source)
    key: str | None = label_key(cfg)
    if cfg.partition != "iid":
        check_label(examples, cfg, cfg.source)
    elif any(key not in ex for ex in examples):
        key = None  # iid does not need the label; the summary then shows no label counts
    labels = [ex[key] for ex in examples] if key else ["" for _ in examples]
    names, parts = partition(
        cfg.partition,
        labels,
        cfg.clients,
        seed,
        cfg.dirichlet_alpha,
        cfg.label,
        cfg.labels_per_owner,
        cfg.shards_per_owner,
    )
    if label_set:
        from .classify import CLASS

        key = CLASS  # the summary counts classes whatever the partition split on
    clients: list[ClientData] = []
    skipped = 0
    for k, (name, indices) in enumerate(zip(names, parts)):
        client, n_skipped = _client(name, k, indices, examples, cfg, tokenizer, seed, key, label_set)
        clients.append(client)
        skipped += n_skipped
    eval_sets = {c.name: c.eval for c in clients}
    eval_domains = {c.name: c.eval_domains for c in clients}
    eval_texts = {c.name: c.eval_examples for c in clients}
    ood = None
    if cfg.ood_source:
        ood, n_skipped = _ood(cfg, tokenizer, seed)
        skipped += n_skipped
    description = f"{cfg.partition}"
    if cfg.partition != "iid":
        description += f" on {cfg.label_field if label_key(cfg) == 'class' else cfg.label!r}"
    if cfg.partition == "dirichlet":
        description += f", alpha {cfg.dirichlet_alpha}"
    if cfg.partition == "pathological":
        description += f", {cfg.labels_per_owner} labels per owner"
    if cfg.partition == "shards":
        description += f", {cfg.shards_per_owner} shards per owner"
    if label_set:
        description += f", classify {cfg.text_field!r} -> {cfg.label_field!r} ({len(label_set)} labels)"
    description += f", template {cfg.template}, max_length {cfg.max_length}"
    if pooled:
        clients = [_pool(clients)]
        description += ", pooled for centralized training"
    return Federation(
        clients=clients,
        ood=ood,
        skipped=skipped,
        eval_sets=eval_sets,
        eval_domains=eval_domains,
        eval_examples=eval_texts,
        description=description,
        labels=label_set,
    )


def _pool(clients: list[ClientData]) -> ClientData:
    train, evals = TokenizedSet(), TokenizedSet()
    labels: Counter = Counter()
    domains: list[str] = []
    texts: list[dict] = []
    for c in clients:
        train.extend(c.train)
        evals.extend(c.eval)
        labels.update(c.labels)
        domains.extend(c.eval_domains)
        texts.extend(c.eval_examples)
    return ClientData(
        name="pooled",
        train=train,
        eval=evals,
        num_examples=len(train),
        labels=dict(labels),
        eval_domains=domains,
        eval_examples=texts,
    )
