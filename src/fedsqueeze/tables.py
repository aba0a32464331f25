"""Data files to rows: JSON Lines, CSV, Parquet and JSON files read as (columns, rows), their text
decoded the one way (UTF-8, or UTF-16/32 with a byte-order mark), a cell as text, and the order of a
label set read from data. Below the config layer (no torch, nothing of fedsqueeze but its errors), so
that config.validate can read an owners folder's labels (owners_folder.py) with the very readers
that data/sources.py builds examples with.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import DataError


def existing_file(kind: str, path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{kind}:{path}: file not found: {p}")
    return p


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


def read_jsonl(path: str) -> tuple[list[str], list[dict]]:
    file = existing_file("jsonl", path)
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


def read_csv(path: str) -> tuple[list[str], list[dict]]:
    file = existing_file("csv", path)
    with io.StringIO(read_text(file), newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def read_parquet(path: str) -> tuple[list[str], list[dict]]:
    import pyarrow.parquet as pq

    file = existing_file("parquet", path)
    try:
        table = pq.read_table(file)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{file}: not a readable parquet file ({exc})") from None
    return table.column_names, table.to_pylist()


def read_json(path: str) -> tuple[list[str], list[dict]]:
    """A JSON list of objects (or {"data": [...]}-like: the one list inside); JSON Lines under a .json name."""
    file = existing_file("json", path)
    text = read_text(file)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        return read_jsonl(path)
    if isinstance(rows, dict):
        lists = [v for v in rows.values() if isinstance(v, list)]
        rows = lists[0] if len(lists) == 1 else rows
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{file}: expected a JSON list of objects (one per example)")
    columns: dict = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns), rows


READERS = {"jsonl": read_jsonl, "csv": read_csv, "parquet": read_parquet, "json": read_json}


def cell_text(value: Any, where: str = "", row: int = 0, column: str = "") -> str:
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


def label_order(values: Iterable[str]) -> list[str]:
    """A label set read from data, in order: numerically where every label is a number, else as text."""
    values = list(values)
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)
