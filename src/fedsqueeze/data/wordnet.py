"""`wordnet:PATH`: one example per synset gloss from a WordNet 3.x database directory.

`data.noun`, `data.verb`, `data.adj`, `data.adv` lines are
`offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id ...] p_cnt [pointers ...] [frames ...] | gloss`.
The lexicographer file (e.g. noun.animal, verb.motion: 45 topics) goes to a `category` field, a ready-made label
for Dirichlet splits; the domain is "wordnet". `word`, `gloss`, `entry` ("word: gloss") and `pos` (noun, verb,
adjective, adverb) are there for classification (data.text_field, data.label_field).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DataError

SOURCE_NAME = "wordnet"
PARTS_OF_SPEECH = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}

# The `lexnames` file of WordNet 3.0 (Debian's wordnet-base does not ship it); a `lexnames` file found in the
# database directory takes precedence.
STANDARD_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive "
    "noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation "
    "noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception "
    "verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()

_ADJECTIVE_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # "galore(ip)": syntactic position markers


def _lexnames(directory: Path) -> list[str]:
    for candidate in (directory / "lexnames", directory / "dict" / "lexnames"):
        if candidate.is_file():
            names: dict[int, str] = {}
            for line in candidate.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 2 and fields[0].isdigit():
                    names[int(fields[0])] = fields[1]
            return [names.get(i, f"lex{i:02d}") for i in range(max(names) + 1)] if names else list(STANDARD_LEXNAMES)
    return list(STANDARD_LEXNAMES)


def parse_data_line(line: str, lexnames: list[str]) -> tuple[str, str, str] | None:
    """(word, category, gloss) of one synset line, or None for license header lines."""
    if line.startswith("  ") or "|" not in line:
        return None
    head, _, gloss = line.partition("|")
    fields = head.split()
    lex_filenum, word = int(fields[1]), fields[4]
    word = _ADJECTIVE_MARKER.sub("", word).replace("_", " ")
    category = lexnames[lex_filenum] if lex_filenum < len(lexnames) else f"lex{lex_filenum:02d}"
    return word, category, gloss.strip()


def load_wordnet(path: str) -> list[dict]:
    directory = Path(path)
    if directory.is_file():  # a data.* file given: use its directory
        directory = directory.parent
    if (directory / "dict").is_dir() and not (directory / "data.noun").exists():
        directory = directory / "dict"  # the layout of the WordNet tarball
    files = [(directory / f"data.{pos}", name) for pos, name in PARTS_OF_SPEECH.items()]
    if not any(f.is_file() for f, _ in files):
        raise DataError(
            f"wordnet:{path}: no WordNet data files (data.noun, data.verb, data.adj, data.adv) in {directory}"
        )
    lexnames = _lexnames(directory)
    examples: list[dict] = []
    for file, pos_name in files:
        if not file.is_file():
            continue
        with open(file, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    parsed = parse_data_line(line, lexnames)
                except (ValueError, IndexError):
                    raise DataError(f"{file}:{lineno}: not a WordNet data line: {line[:80]!r}") from None
                if parsed and parsed[2]:
                    word, category, gloss = parsed
                    examples.append(
                        {
                            "instruction": f"Define the word {word} ({pos_name}).",
                            "input": "",
                            "response": gloss,
                            "domain": SOURCE_NAME,
                            "category": category,
                            "source": SOURCE_NAME,
                            # for data.task = "classify" (text_field / label_field)
                            "word": word,
                            "gloss": gloss,
                            "entry": f"{word}: {gloss}",
                            "pos": pos_name,
                        }
                    )
    return examples
