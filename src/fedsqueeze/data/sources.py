"""Data sources: turn `data.source` into a list of examples.

Every example is a dict with `instruction`, `input`, `response`, `domain`, `source` (the name of the source it came
from, so several sources joined with " + " can be split one per client with `data.label = "source"`), plus any
extra label column (`category` for wordnet / pystdlib, or the column `data.label` names in a table).
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import DataError

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


def _existing_file(kind: str, path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{kind}:{path}: file not found: {p}")
    return p


# --- tables (jsonl / csv / parquet / hf) -> raw rows --------------------------------------------------------------


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def read_text(file: Path) -> str:
    """A data file's text: UTF-8, or UTF-16/32 with a byte-order mark; anything else is a
    DataError that says where decoding failed and how to convert the file. UTF-16 without a
    byte-order mark is told apart by its zero bytes (ASCII text in it even decodes as UTF-8,
    with a NUL between letters), and named with the iconv command that converts it."""
    data = file.read_bytes()
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    utf16 = _bomless_utf16(data) if encoding == "utf-8" else None
    if utf16:
        raise DataError(
            f"{file}: {utf16} text without a byte-order mark (every other byte is zero); convert it, e.g. "
            f"`iconv -f {utf16} -t UTF-8 {file} > {file.stem}.utf8{file.suffix}`"
        )
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{file}: not {encoding} text (byte {exc.start}, line {line}; it looks like Latin-1 or another 8-bit "
            f"code); convert it, e.g. `iconv -f LATIN1 -t UTF-8 {file} > {file.stem}.utf8{file.suffix}`"
        ) from None


def _bomless_utf16(data: bytes) -> str | None:
    """ "UTF-16LE" / "UTF-16BE" when the start of `data` looks like it (most characters of text are
    below U+0100, so one byte of each pair is zero), else None."""
    head = data[:512]
    pairs = len(head) // 2
    if pairs < 2:
        return None
    zero_odd, zero_even = head[1 : 2 * pairs : 2].count(0), head[0 : 2 * pairs : 2].count(0)
    if zero_odd >= pairs * 0.6 and zero_even == 0:
        return "UTF-16LE"
    if zero_even >= pairs * 0.6 and zero_odd == 0:
        return "UTF-16BE"
    return None


def _read_jsonl(path: str) -> tuple[list[str], list[dict]]:
    file = _existing_file("jsonl", path)
    rows, columns = [], {}
    with io.StringIO(read_text(file)) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{file}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{file}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
            columns.update(dict.fromkeys(row))
            rows.append(row)
    return list(columns), rows


def _read_csv(path: str) -> tuple[list[str], list[dict]]:
    file = _existing_file("csv", path)
    with io.StringIO(read_text(file), newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _read_parquet(path: str) -> tuple[list[str], list[dict]]:
    import pyarrow.parquet as pq

    file = _existing_file("parquet", path)
    try:
        table = pq.read_table(file)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{file}: not a readable parquet file ({exc})") from None
    return table.column_names, table.to_pylist()


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


def _text(value: Any, where: str = "", row: int = 0, column: str = "") -> str:
    """A text field: strings as they are, numbers and booleans as text; a list or an object would
    turn into its Python repr, so it is an error naming the row and column."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        raise DataError(
            f"{where}: row {row + 1}, column {column!r} holds a {type(value).__name__}, not text "
            f"({json.dumps(value)[:60]}); flatten it in the data, or name another column in data.*_field"
        )
    return value if isinstance(value, str) else str(value)


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
