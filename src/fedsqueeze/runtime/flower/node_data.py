"""Which data a node holds: its owner's own file (`data-path` in the SuperNode's node config, set by
`fedsqueeze flower supernode --data FILE`), or a partition of the shared source (`partition-id` /
`num-partitions`). One helper for every ClientApp path (one process per message, or a resident
worker), so each reads the node config the same way.

Under per-owner data (`data.source = "owners:DIR"`) the node's owner index is the place of its
file's stem among the run's owners (`data.owners`, in the config every process receives): a node
reads its own file and no other. On Flower's simulation engine the virtual nodes have partition
ids instead, and each reads the one file of owner `data.owners[partition]` from the folder.
"""

from __future__ import annotations

from pathlib import Path

DATA_PATH = "data-path"
PARTITION_ID, NUM_PARTITIONS = "partition-id", "num-partitions"


def node_data_path(context) -> Path | None:
    """The node's own data file, if its node config names one."""
    value = context.node_config.get(DATA_PATH)
    if value is None or not str(value).strip():
        return None
    return Path(str(value)).expanduser()


def node_config_entry(data: Path) -> str:
    """`data-path='/abs/file'` for --node-config (a TOML literal string: no quotes inside)."""
    text = str(Path(data).expanduser().resolve())
    if "'" in text:
        raise ValueError(f"{text}: a data path for --node-config may not contain a single quote")
    return f"{DATA_PATH}='{text}'"


def _partition_ids(context) -> tuple[int, int]:
    try:
        return int(context.node_config[PARTITION_ID]), int(context.node_config[NUM_PARTITIONS])
    except KeyError as exc:
        raise RuntimeError(
            f"this SuperNode has no {exc.args[0]!r} in its node config: start it with "
            "--node-config 'partition-id=I num-partitions=N' (or, for per-owner data, "
            "`fedsqueeze flower supernode --data FILE`)"
        ) from None


def node_partition(context, cfg=None, simulated: bool = False) -> tuple[int, int, Path | None]:
    """(client index, clients, the owner's file or None) of this node. cfg: the run's config (None:
    partition ids only). Under per-owner data a deployed node must have a data-path."""
    from ...data.owners import is_owners, owner_files, owner_names

    path = node_data_path(context)
    if cfg is None or not is_owners(cfg.data.source):
        if path is not None and cfg is not None:
            raise RuntimeError(
                f"this SuperNode holds its own data ({DATA_PATH} = {path}), but the run's data.source is "
                f'{cfg.data.source!r}: per-owner nodes need data.source = "owners:DIR"'
            )
        return (*_partition_ids(context), None)
    names = owner_names(cfg)
    if path is None:
        if not simulated:
            raise RuntimeError(
                f"this SuperNode has no {DATA_PATH!r} in its node config, and the run's data stays with its "
                "owners (data.source = owners:...): start it with `fedsqueeze flower supernode --data FILE` "
                f"(--node-config \"{DATA_PATH}='/path/to/OWNER.jsonl'\")"
            )
        partition, _ = _partition_ids(context)
        path = owner_files(cfg.data.source)[names[partition]]
    if path.stem not in names:
        raise RuntimeError(
            f"this SuperNode's data file {path} is owner {path.stem!r}, not one of the run's owners "
            f"({', '.join(names)}): name each owner's file after its owner"
        )
    return names.index(path.stem), len(names), path


def owner_data(path: Path):
    """Session.build's `data` for a node that holds one owner's file."""

    def build(cfg, tokenizer):
        from ...data.owners import owner_names, owner_view

        return owner_view(cfg.data, tokenizer, cfg.seed, path, owner_names(cfg))[0]

    return build


def coordinator_data(cfg, tokenizer):
    """Session.build's `data` for the coordinator of a per-owner run: the owners' names only (and
    the out-of-domain set, where data.ood_source names one: the coordinator judges it)."""
    from ...data.owners import names_only

    return names_only(cfg, tokenizer, cfg.seed)


def server_data(cfg):
    """Session.build's `data` for a ServerApp: None (the whole source, as before) unless the data
    stays with its owners; then only their names, and the clients must do the judging."""
    from ...data.owners import eval_at, is_owners
    from ...errors import ConfigError

    if not is_owners(cfg.data.source):
        return None
    if eval_at(cfg) != "clients":
        raise ConfigError(
            f"config key 'eval.at': {eval_at(cfg)!r} needs the held-out sets on the server, but under "
            f'{cfg.data.source!r} on Flower they stay with their owners: use eval.at = "clients"'
        )
    return coordinator_data
