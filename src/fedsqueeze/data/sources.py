"""Data sources: turn `data.source` into a list of examples.

Every example is a dict with `instruction`, `input`, `response`, `domain`, `source` (the name of the source it came
from, so several sources joined with " + " can be split one per client with `data.label = "source"`), plus any
extra label column (`category` for wordnet / pystdlib, or the column `data.label` names in a table).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from ..tables import cell_text, existing_file, read_csv, read_jsonl, read_parquet, read_text  # noqa: F401

KINDS = ("jsonl", "csv", "parquet", "hf", "builtin", "dictd", "wordnet")
BUILTINS = ("pystdlib",)


def split_sources(spec: str) -> list[tuple[str, str]]:
    """'jsonl:a.jsonl + builtin:pystdlib' -> [('jsonl', 'a.jsonl'), ('builtin', 'pystdlib')]."""
    parts = [p.strip() for p in spec.split(" + ")]
    out = []
    for part in parts:
        kind, sep, arg = part.partition(":")
        if not sep or kind not in KINDS or not arg.strip():
            raise DataError(
                f"data.source {part!r}: expected KIND:ARG with KIND one of {', '.join(KINDS)} "
                "(e.g. jsonl:data.jsonl, builtin:pystdlib); join several with ' + '"
            )
        out.append((kind, arg.strip()))
    return out


# --- tables (jsonl / csv / parquet / hf) -> raw rows: the file readers are tables.py's (config.validate
# reads an owners folder's labels with them) ---------------------------------------------------------------
_existing_file, _read_jsonl, _read_csv, _read_parquet = existing_file, read_jsonl, read_csv, read_parquet


# Local files given to hf: are read with the matching packaged `datasets` builder.
_HF_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def _read_hf(arg: str) -> tuple[list[str], list[dict]]:
    """hf:NAME[:SPLIT] through `datasets.load_dataset` (hub id, local folder or local file). NAME holds no ':'
    so that SPLIT can be a slice such as train[:1000]."""
    import datasets

    name, _, split = arg.partition(":")
    split = split or "train"
    local = Path(name).expanduser()
    if local.is_file():
        builder = _HF_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise DataError(f"hf:{arg}: cannot tell the format of {local} (known: {', '.join(_HF_BUILDERS)})")
        args, kwargs = (builder,), {"data_files": str(local), "split": split}
    elif local.exists():
        args, kwargs = (str(local),), {"split": split}  # a folder of data files
    elif name.startswith((".", "/", "~")):
        raise DataError(f"hf:{arg}: file or folder not found: {local}")
    else:
        args, kwargs = (name,), {"split": split}  # a hub id
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # our own summary says what was loaded
    try:
        ds = datasets.load_dataset(*args, **kwargs)
    except Exception as exc:  # hub, network, builder and split errors all mean "could not load this"
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"hf:{arg}: could not load with datasets.load_dataset: {first_line}") from None
    finally:
        if bars:
            datasets.enable_progress_bars()
    return list(ds.column_names), ds.to_list()


_TABLE_READERS = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet, "hf": _read_hf}


def _cell(row: dict, where: str, index: int, column: str) -> str:
    return _text(row.get(column), where, index, column)


_text = cell_text


def map_fields(rows: Iterable[dict], columns: list[str], where: str, name: str, cfg: DataConfig) -> list[dict]:
    """Rename the configured columns to the standard keys; keep the label column when it is an extra one."""
    if cfg.task == "classify":
        return _classify_rows(rows, columns, where, name, cfg)
    required = ("instruction_field", "response_field") + (
        ("choices_field", "answer_field") if cfg.choices_field is not None else ()
    )
    for key in required:
        column = getattr(cfg, key)
        if column not in columns:
            raise DataError(
                f"{where}: no column {column!r} (data.{key}); columns present: {', '.join(map(str, columns)) or 'none'}"
            )
    has_input = cfg.input_field in columns
    has_domain = cfg.domain_field in columns
    extra = cfg.label if cfg.label not in ("domain", "source", cfg.domain_field) and cfg.label in columns else None
    out = []
    for i, row in enumerate(rows):
        text = functools.partial(_cell, row, where, i)
        ex = {
            "instruction": text(cfg.instruction_field),
            "input": text(cfg.input_field) if has_input else "",
            "response": text(cfg.response_field),
            "domain": (text(cfg.domain_field) or name) if has_domain else name,
            "source": name,
        }
        if extra is not None:
            ex[extra] = text(extra)
        if cfg.choices_field is not None:
            ex["choices"], ex["answer"] = _choices(row, where, i, cfg)
        out.append(ex)
    return out


def _classify_rows(rows: Iterable[dict], columns: list[str], where: str, name: str, cfg: DataConfig) -> list[dict]:
    """data.task = "classify": the text and label columns under their own names (data/classify.py turns
    them into prompts and spoken labels), the domain, and the data.label column when it is another one."""
    for key in ("text_field", "label_field"):
        column = getattr(cfg, key)
        if column not in columns:
            raise DataError(
                f"{where}: no column {column!r} (data.{key}, data.task = 'classify'); "
                f"columns present: {', '.join(map(str, columns)) or 'none'}"
            )
    has_domain = cfg.domain_field in columns
    keep = [c for c in (cfg.text_field, cfg.label_field) if c]
    if cfg.label not in ("domain", "source", cfg.domain_field) and cfg.label in columns and cfg.label not in keep:
        keep.append(cfg.label)
    out = []
    for i, row in enumerate(rows):
        ex = {column: _cell(row, where, i, column) for column in keep}
        ex["domain"] = (_cell(row, where, i, cfg.domain_field) or name) if has_domain else name
        ex["source"] = name
        out.append(ex)
    return out


def _choices(row: dict, where: str, i: int, cfg: DataConfig) -> tuple[list[str], int]:
    """An example's own answer choices (data.choices_field: a list of texts, or a JSON list in a
    text cell) and the index of the right one (data.answer_field: an index or the choice's text)."""
    value = row.get(cfg.choices_field)
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if not isinstance(value, list) or len(value) < 2:
        raise DataError(
            f"{where}: row {i + 1}, column {cfg.choices_field!r} (data.choices_field) must be a list of at "
            f"least 2 answer texts, got {json.dumps(value)[:60]}"
        )
    choices = [_text(c, where, i, cfg.choices_field) for c in value]
    answer = row.get(cfg.answer_field)
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return choices, answer
    if isinstance(answer, str) and answer in choices:
        return choices, choices.index(answer)
    raise DataError(
        f"{where}: row {i + 1}, column {cfg.answer_field!r} (data.answer_field) must be the index "
        f"(0-{len(choices) - 1}) or the text of one of the choices, got {json.dumps(answer)[:60]}"
    )


def source_name(kind: str, arg: str) -> str:
    """Short name of a source: its file stem, database name, or builtin name."""
    if kind in ("builtin", "wordnet"):
        return "pystdlib" if kind == "builtin" else "wordnet"
    if kind == "hf":
        arg = arg.partition(":")[0]
    base = Path(arg.rstrip("/")).name
    for suffix in (".dict.dz", ".index", ".dict", ".jsonl", ".json", ".csv", ".parquet", ".txt"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def load_one(kind: str, arg: str, name: str, cfg: DataConfig) -> list[dict]:
    where = f"{kind}:{arg}"
    if kind in _TABLE_READERS:
        columns, rows = _TABLE_READERS[kind](arg)
        if not rows:
            raise DataError(f"{where}: no examples (the table is empty)")
        examples = map_fields(rows, columns, where, name, cfg)
    elif kind == "builtin":
        if arg not in BUILTINS:
            raise DataError(f"{where}: unknown builtin data set; available: {', '.join(BUILTINS)}")
        from .builtin_pystdlib import load_pystdlib

        examples = load_pystdlib()
    elif kind == "dictd":
        from .dictd import load_dictd

        examples = load_dictd(arg)
    else:
        from .wordnet import load_wordnet

        examples = load_wordnet(arg)
    for ex in examples:
        ex["source"] = name
    if not examples:
        raise DataError(f"{where}: no examples")
    return examples


def load_examples(spec: str, cfg: DataConfig) -> list[dict]:
    """All examples of `spec` (one source or several joined with ' + '), in a deterministic order."""
    examples: list[dict] = []
    names: set[str] = set()
    for kind, arg in split_sources(spec):
        name = base = source_name(kind, arg)
        suffix = 2
        while name in names:  # two files both called train.jsonl stay two domains
            name, suffix = f"{base}-{suffix}", suffix + 1
        names.add(name)
        examples.extend(load_one(kind, arg, name, cfg))
    return examples


def label_key(cfg: DataConfig) -> str:
    """The example key the partitioners split on ("domain" whatever its column was called; the class of a
    classify task for the label-skew partitioners while data.label is left at "domain")."""
    from .classify import CLASS, PARTITION_ON_CLASS

    if cfg.task == "classify" and cfg.partition in PARTITION_ON_CLASS and cfg.label == "domain":
        return CLASS
    return "domain" if cfg.label in ("domain", cfg.domain_field) else cfg.label


def check_label(examples: list[dict], cfg: DataConfig, spec: str) -> None:
    key = label_key(cfg)
    missing = next((ex for ex in examples if key not in ex), None)
    if missing is not None:
        present = sorted(k for k in missing if k not in ("instruction", "input", "response"))
        raise DataError(
            f"data.label {cfg.label!r}: source {missing['source']!r} of {spec!r} has no such column; "
            f"labels available there: {', '.join(present)}"
        )
