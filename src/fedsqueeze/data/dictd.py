"""`dictd:PATH`: definitions from a dictd database (FOLDOC, Jargon File, GCIDE, ... as Debian packages them).

A database is `NAME.index` (lines `headword<TAB>offset<TAB>length`, numbers in dictd's base64) plus `NAME.dict.dz`
(gzip-compatible, so `gzip` reads it) or a plain `NAME.dict`. Each entry becomes "Define: headword" -> the entry's
text without its headword line, markup and citation tags; domain = the database name.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from ..errors import DataError

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}


def decode_number(text: str) -> int:
    """dictd base64 number: most significant digit first, no padding ("Ba" == 1*64 + 26)."""
    value = 0
    for char in text:
        value = value * 64 + _B64_VALUE[char]
    return value


def database_paths(path: str) -> tuple[str, Path, Path]:
    """(name, index file, data file) from the base path, the .index file, or the .dict(.dz) file."""
    base = str(path)
    for suffix in (".index", ".dict.dz", ".dict"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    index = Path(base + ".index")
    if not index.is_file():
        raise DataError(f"dictd:{path}: index file not found: {index}")
    for candidate in (Path(base + ".dict.dz"), Path(base + ".dict")):
        if candidate.is_file():
            return Path(base).name, index, candidate
    raise DataError(f"dictd:{path}: data file not found: {base}.dict.dz or {base}.dict")


# Markup and apparatus that carry no meaning for the definition itself.
_LINK = re.compile(r"\{\s*([^{}]*?)\s*\}")  # {cross reference} -> cross reference
_CITATION = re.compile(r"\[(?:[^\]\[]*Webster[^\]\[]*|WordNet[^\]\[]*|PJC|Jargon[^\]\[]*)\]")
_DATE = re.compile(r"^\(\d{4}-\d{2}-\d{2}\)$")  # FOLDOC's last-edited stamp
_WEBSTER_HEAD = re.compile(r"^(.+?) \\[^\\\n]*\\")  # GCIDE: "Headword \Pro*nun"ci*a`tion\, n. ..."
_PRONUNCIATION = re.compile(r"\\[^\\]{1,80}\\")
_PART_OF_SPEECH = re.compile(r"(?:[a-z]{1,5}\.\s*){1,3}")  # "n.", "v. t.", "adj."


def _strip_webster_header(text: str) -> str:
    """GCIDE entries run the header (headwords with pronunciations, part of speech, [etymology]) straight into
    the definition, wrapping lines freely: drop through the last pronunciation near the start, then any
    bracketed / parenthesized groups and part-of-speech abbreviations that follow it."""
    ends = [m.end() for m in _PRONUNCIATION.finditer(text[:400])]
    rest = text[ends[-1] :] if ends else text
    for _ in range(8):
        rest = rest.lstrip(" \t\n,;")
        if rest[:1] in ("(", "["):
            closing, depth = None, 0
            for pos, char in enumerate(rest):
                depth += char in "([" and 1 or (-1 if char in ")]" else 0)
                if depth == 0:
                    closing = pos
                    break
            if closing is None:
                break
            rest = rest[closing + 1 :]
        elif m := _PART_OF_SPEECH.match(rest):
            rest = rest[m.end() :]
        else:
            break
    return rest


def clean_entry(headword: str, text: str) -> tuple[str, str]:
    """(display headword, definition) of one raw entry."""
    text = text.replace("\r", "").strip("\n")
    display = headword
    webster = _WEBSTER_HEAD.match(text)
    if webster:
        display = webster.group(1).strip()
        body = _strip_webster_header(text)
    elif text[:1] and not text[:1].isspace():
        # FOLDOC/Jargon: a header block of headword lines (canonical name first, then aliases, then an
        # indented pronunciation / part of speech) ends at the first blank line; the body is indented.
        header, _, body = text.partition("\n\n")
        display = header.splitlines()[0].strip() or headword
    else:
        body = text
    paragraphs = []
    for para in re.split(r"\n\s*\n", body):
        para = " ".join(para.split())
        para = _CITATION.sub("", _LINK.sub(r"\1", para)).strip()
        if para and not _DATE.match(para):
            paragraphs.append(" ".join(para.split()))
    return display, "\n".join(paragraphs)


def load_dictd(path: str) -> list[dict]:
    name, index_path, data_path = database_paths(path)
    opener = gzip.open if data_path.name.endswith(".dz") else open
    try:
        with opener(data_path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"dictd:{path}: cannot read {data_path}: {exc}") from None
    examples: list[dict] = []
    seen: set[tuple[int, int]] = set()
    with open(index_path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                raise DataError(f"{index_path}:{lineno}: expected 'headword<TAB>offset<TAB>length', got {line[:80]!r}")
            headword, offset_text, length_text = parts[:3]
            if headword.startswith(("00-database", "00database")):  # dictd's own metadata entries
                continue
            try:
                offset, length = decode_number(offset_text), decode_number(length_text)
            except KeyError:
                raise DataError(f"{index_path}:{lineno}: offset/length are not dictd base64: {line[:80]!r}") from None
            if (offset, length) in seen:  # aliases point at the same entry: one example per entry
                continue
            seen.add((offset, length))
            raw = data[offset : offset + length].decode("utf-8", errors="replace")
            display, definition = clean_entry(headword, raw)
            if definition:
                examples.append(
                    {
                        "instruction": f"Define: {display}",
                        "input": "",
                        "response": definition,
                        "domain": name,
                        "source": name,
                    }
                )
    return examples
