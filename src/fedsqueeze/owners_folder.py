"""The per-owner folder of `data.source = "owners:DIR"` as far as a config needs it: which files
are owners, their names, `data.clients` from them, and who evaluates. No torch and nothing above the
config layer, so config.validate reads it; data/owners.py builds the federation (and re-exports these).
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, DataError

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


def resolve(cfg) -> None:
    """Fills `data.owners` (from the folder, where it is readable) and `data.clients` (the number of
    owners, unless set); ConfigError when they disagree. Called by config.validate, so a config
    loaded beside the folder carries the names to machines that have none of the files."""
    data = cfg.data
    if data.owners is None and folder(data.source).is_dir():
        try:
            data.owners = list(owner_files(data.source))
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
