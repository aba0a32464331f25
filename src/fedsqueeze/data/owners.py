"""Per-owner sources: `data.source = "owners:DIR"`, one file per data owner.

Each file in DIR (jsonl, csv, parquet or json; any field names, mapped by the data.*_field keys)
is one owner, named by its file stem, owners in sorted order of their names. An owner's train /
held-out split is made from its own file alone, seeded by (seed, owner name), so the federation
is the same whoever builds it: one process holding the whole folder (in-process), or each node
holding only its own file (`owner_view`), or a coordinator holding no data at all
(`names_only`: the owners' names, from `data.owners`, which `resolve` fills from the folder where
the config is loaded).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DataError
from ..owners_folder import FORMATS, PREFIX, eval_at, folder, folder_labels, is_owners, owner_files, resolve  # noqa: F401
from ..tables import READERS
from .federation import ClientData, Federation, _client, _ood
from .sources import label_key, map_fields
from .tokenization import TokenizedSet


def owner_names(cfg) -> list[str]:
    """The owners of a per-owner config, from `data.owners` (filled by `resolve`)."""
    if cfg.data.owners is None:
        raise ConfigError(
            f"config key 'data.owners': {cfg.data.source!r} is not readable here, so the owners' names must be "
            "in the config (load the config where the folder is, e.g. `fedsqueeze flower run`, or set data.owners)"
        )
    return list(cfg.data.owners)


def owner_key(name: str) -> int:
    """The owner's own seed stream (its held-out split): from its name, so not from its position."""
    return int.from_bytes(hashlib.sha256(f"owner/{name}".encode()).digest()[:4], "little")


def load_owner(name: str, path: Path, cfg) -> list[dict]:
    """One owner's examples from its own file (domain defaults to the owner's name)."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"owner {name!r}: {path}: unknown format (known: {', '.join(FORMATS)})")
    where = f"owner {name!r} ({path})"
    columns, rows = READERS[kind](str(path))
    if not rows:
        raise DataError(f"{where}: no examples (the file is empty)")
    return map_fields(rows, columns, where, name, cfg)


def run_labels(cfg) -> list[str]:
    """data.task = "classify": the run's one label set (`data.labels`, filled by `resolve` from every
    owner's file where the config is loaded), so that every owner speaks the labels alike and in one
    order, also a node holding only its own file; [] for other tasks."""
    if cfg.task != "classify":
        return []
    if cfg.labels is None:
        raise ConfigError(
            f"config key 'data.labels': {cfg.source!r} is not readable here, so the label set must be in the "
            "config (load the config where the folder is, e.g. `fedsqueeze flower run`, or set data.labels)"
        )
    return list(cfg.labels.values()) if isinstance(cfg.labels, dict) else list(cfg.labels)


def owner_client(name: str, path: Path, cfg, tokenizer, seed: int) -> tuple[ClientData, int]:
    """One owner's ClientData (its split seeded by seed and name) and the examples skipped; a classify
    task's examples spoken with the run's label set (`run_labels`)."""
    examples = load_owner(name, path, cfg)
    label_set = run_labels(cfg)
    if label_set:
        from .classify import CLASS, to_classify

        examples, label_set = to_classify(examples, cfg, f"owner {name!r} ({path})")
        key: str | None = CLASS  # the summary counts classes
    else:
        key = label_key(cfg)
        if any(key not in ex for ex in examples):
            key = None
    return _client(name, owner_key(name), list(range(len(examples))), examples, cfg, tokenizer, seed, key, label_set)


def _description(cfg, n: int, where: str) -> str:
    task = (
        f", classify {cfg.text_field!r} -> {cfg.label_field!r} ({len(run_labels(cfg))} labels)"
        if cfg.task == "classify"
        else ""
    )
    return f"{n} owners, one file each ({where}){task}, template {cfg.template}, max_length {cfg.max_length}"


def build_owner_federation(cfg, tokenizer, seed: int, pooled: bool = False) -> Federation:
    """Every owner of the folder (one process holds them all: the in-process runtime)."""
    files = owner_files(cfg.source)
    if cfg.owners is not None and list(files) != list(cfg.owners):
        raise DataError(
            f"data.source {cfg.source!r} holds owners {list(files)}, but data.owners is {cfg.owners}: "
            "the folder changed since the config was written"
        )
    if cfg.clients != len(files):
        raise DataError(f"data.clients = {cfg.clients}, but {cfg.source!r} has {len(files)} owners")
    if cfg.task == "classify" and cfg.labels is None:  # a config not loaded through config.validate
        cfg = cfg.model_copy(update={"labels": folder_labels(cfg)})
    clients, skipped = [], 0
    for name, path in files.items():
        client, n = owner_client(name, path, cfg, tokenizer, seed)
        clients.append(client)
        skipped += n
    ood = None
    if cfg.ood_source:
        ood, n = _ood(cfg, tokenizer, seed)
        skipped += n
    fed = Federation(
        clients=clients,
        ood=ood,
        skipped=skipped,
        eval_sets={c.name: c.eval for c in clients},
        eval_domains={c.name: c.eval_domains for c in clients},
        eval_examples={c.name: c.eval_examples for c in clients},
        description=_description(cfg, len(clients), str(folder(cfg.source))),
        labels=run_labels(cfg),
    )
    if pooled:
        from .federation import _pool

        fed.clients = [_pool(clients)]
        fed.description += ", pooled for centralized training"
    return fed


@dataclass
class Absent:
    """An owner whose data is not on this machine: only its name is known here."""

    name: str
    num_examples: int = 0
    labels: dict = field(default_factory=dict)
    eval: TokenizedSet = field(default_factory=TokenizedSet)


def owner_view(cfg, tokenizer, seed: int, path: Path, names: list[str]) -> tuple[Federation, int]:
    """What one node holds: its own owner's data (read from `path` alone) at its index among
    `names`, every other owner Absent. Returns the view and the owner's index."""
    path = Path(path).expanduser()
    name = path.stem
    if name not in names:
        raise DataError(
            f"this node's data file {path} is owner {name!r}, which is not one of the run's owners "
            f"({', '.join(names)}): name the file after its owner"
        )
    index = names.index(name)
    if not path.is_file():
        raise DataError(f"owner {name!r}: data file not found: {path}")
    client, skipped = owner_client(name, path, cfg, tokenizer, seed)
    clients = [client if i == index else Absent(n) for i, n in enumerate(names)]
    fed = Federation(
        clients=clients,
        ood=None,
        skipped=skipped,
        eval_sets={name: client.eval},
        eval_domains={name: client.eval_domains},
        eval_examples={name: client.eval_examples},
        description=f"owner {name!r} of {len(names)}, from {path}",
        labels=run_labels(cfg),
    )
    return fed, index


class RemoteFederation(Federation):
    """The coordinator's view of a per-owner federation: the owners' names and nothing else. Its
    eval sets are empty placeholders (one per owner, so samples and breakdowns are named alike);
    the owners judge the adapter on their own held-out data (eval.at = "clients")."""

    remote = True

    def summary(self, show: int = 20) -> str:
        names = [c.name for c in self.clients]
        listed = ", ".join(names[:show]) + (f" ... ({len(names) - show} more)" if len(names) > show else "")
        return f"data: {len(names)} owners, each holding its own file (none on this machine): {listed}"


def names_only(cfg, tokenizer=None, seed: int = 0) -> RemoteFederation:
    """The coordinator's view (`cfg`: a whole Config). With a tokenizer it also reads the out-of-domain
    set (`data.ood_source`, no owner's data: the coordinator judges it), which must then be readable here."""
    names = owner_names(cfg)
    ood, skipped = None, 0
    if tokenizer is not None and cfg.data.ood_source:
        try:
            ood, skipped = _ood(cfg.data, tokenizer, seed)
        except DataError as exc:
            raise DataError(
                f"data.ood_source: the coordinator judges the out-of-domain set (it is no owner's data), "
                f"so it must be readable on the coordinator's machine: {exc}"
            ) from None
    return RemoteFederation(
        clients=[Absent(n) for n in names],
        ood=ood,
        skipped=skipped,
        eval_sets={n: TokenizedSet() for n in names},
        eval_domains={n: [] for n in names},
        eval_examples={n: [] for n in names},
        description=f"{len(names)} owners",
        labels=run_labels(cfg.data),
    )


def holds_all(federation) -> bool:
    """True where this process holds every owner's data (so the server may evaluate)."""
    return not getattr(federation, "remote", False) and not any(isinstance(c, Absent) for c in federation.clients)


def check_eval_at(cfg, method) -> None:
    """eval.at = clients / both: each owner judges one global adapter, so the method needs one."""
    at = eval_at(cfg)
    if at != "server" and not method.mode.federated:
        why = "(explicitly)" if cfg.eval.at else "(the default for per-owner data)"
        raise ConfigError(
            f"config key 'eval.at': {at!r} {why} has each client judge the global adapter, but method "
            f"{cfg.method!r} has none (each client keeps its own adapter, or the data is pooled); "
            'set eval.at = "server" and run it in-process'
        )
