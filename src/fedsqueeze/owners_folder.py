"""The per-owner folder of `data.source = "owners:DIR"` as far as a config needs it: which files
are owners, their names, `data.clients` from them, the label set of a classify task, and who
evaluates. No torch and nothing above the config layer, so config.validate reads it; data/owners.py
builds the federation (and re-exports these).
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, DataError
from .tables import READERS, cell_text, label_order

PREFIX = "owners:"
FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".json": "json"}


def is_owners(source: str) -> bool:
    return source.strip().startswith(PREFIX)


def folder(source: str) -> Path:
    return Path(source.strip()[len(PREFIX) :].strip()).expanduser()


def owner_files(source: str) -> dict[str, Path]:
    """name -> file of every owner in the folder, sorted by name (DataError if it has none, or two
    files share a stem)."""
    where = folder(source)
    if not where.is_dir():
        raise DataError(f"data.source {source!r}: no such folder: {where}")
    found: dict[str, Path] = {}
    for path in sorted(where.iterdir()):
        if path.is_file() and path.suffix.lower() in FORMATS and not path.name.startswith("."):
            if path.stem in found:
                raise DataError(
                    f"data.source {source!r}: two files of owner {path.stem!r} ({found[path.stem].name}, "
                    f"{path.name}); each owner is one file, named by its stem"
                )
            found[path.stem] = path
    if not found:
        raise DataError(f"data.source {source!r}: no owner files in {where} (one file per owner: {', '.join(FORMATS)})")
    return dict(sorted(found.items()))


def folder_labels(data) -> list[str]:
    """The distinct labels (`data.label_field`) of every owner's file, in the order a classify task
    sorts a label set read from data (data/classify.py); DataError naming the file without that column."""
    found: set[str] = set()
    for name, path in owner_files(data.source).items():
        columns, rows = READERS[FORMATS[path.suffix.lower()]](str(path))
        if data.label_field not in columns:
            raise DataError(
                f"owner {name!r} ({path}): no column {data.label_field!r} (data.label_field, data.task = "
                f"'classify'); columns present: {', '.join(map(str, columns)) or 'none'}"
            )
        where = f"owner {name!r} ({path})"
        found.update(
            cell_text(row.get(data.label_field), where, i, data.label_field).strip() for i, row in enumerate(rows)
        )
    found.discard("")  # an empty label is an error naming its row when the owner's examples are built
    return label_order(found)


def resolve(cfg) -> None:
    """Fills `data.owners` (from the folder, where it is readable), `data.clients` (the number of
    owners, unless set) and, for a classify task, `data.labels` (every owner's labels, unless given);
    ConfigError when they disagree. Called by config.validate, so a config loaded beside the folder
    carries the names and the one label set to machines that have none of the files."""
    data = cfg.data
    readable = folder(data.source).is_dir()
    try:
        if data.owners is None and readable:
            data.owners = list(owner_files(data.source))
        if data.task == "classify" and data.labels is None and readable:
            labels = folder_labels(data)
            if len(labels) >= 2:  # else each owner's build says what is missing
                data.labels = labels
    except DataError as exc:
        raise ConfigError(f"config key 'data.source': {exc}") from None
    if data.owners is None:
        return  # names and counts come from a machine that has the folder (checked when building)
    if len(set(data.owners)) != len(data.owners) or not data.owners:
        raise ConfigError(f"config key 'data.owners': {data.owners} must be distinct owner names")
    if "clients" not in data.model_fields_set:
        data.clients = len(data.owners)
    elif data.clients != len(data.owners):
        raise ConfigError(
            f"config key 'data.clients': {data.clients}, but {data.source!r} has {len(data.owners)} owners "
            f"({', '.join(data.owners)}); under owners: each owner is one client, leave data.clients out "
            f"or set it to {len(data.owners)}"
        )


def eval_at(cfg) -> str:
    """Who judges the adapter (eval.at; by default the clients for per-owner data)."""
    return cfg.eval.at or ("clients" if is_owners(cfg.data.source) else "server")
