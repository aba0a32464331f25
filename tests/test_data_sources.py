"""Data sources on tiny local files: tables, field mapping, dictd, wordnet, builtin:pystdlib."""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter

import pytest

from fedsqueeze.config import DataConfig
from fedsqueeze.data import load_examples
from fedsqueeze.data.dictd import clean_entry, decode_number
from fedsqueeze.errors import DataError

ROWS = [
    {"instruction": "Add 2 and 3.", "input": "", "response": "5", "domain": "math"},
    {"instruction": "Name a colour.", "input": "warm", "response": "red", "domain": "art"},
    {"instruction": "Say hi.", "input": "", "response": "hi", "domain": "chat"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def core(ex):
    return {k: ex[k] for k in ("instruction", "input", "response", "domain")}


def test_jsonl_csv_parquet_read_the_same_examples(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "t.parquet")
    write_jsonl(tmp_path / "t.jsonl", ROWS)
    write_csv(tmp_path / "t.csv", ROWS)
    for kind in ("jsonl", "csv", "parquet"):
        examples = load_examples(f"{kind}:{tmp_path}/t.{kind}", DataConfig())
        assert [core(e) for e in examples] == ROWS, kind
        assert {e["source"] for e in examples} == {"t"}


def test_hf_source_reads_a_local_file_and_folder_through_datasets(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS)
    from_file = load_examples(f"hf:{folder}/train.jsonl", DataConfig())
    from_folder = load_examples(f"hf:{folder}:train", DataConfig())
    assert [core(e) for e in from_file] == [core(e) for e in from_folder] == ROWS
    with pytest.raises(DataError, match="could not load"):
        load_examples(f"hf:{folder}:validation", DataConfig())
    with pytest.raises(DataError, match="file or folder not found"):
        load_examples(f"hf:{tmp_path}/missing", DataConfig())


def test_field_mapping_and_missing_columns(tmp_path):
    rows = [{"q": "What is 1+1?", "ctx": "arithmetic", "a": "2", "topic": "math", "level": "easy"}] * 2
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    cfg = DataConfig(instruction_field="q", input_field="ctx", response_field="a", domain_field="topic", label="level")
    (ex, _) = load_examples(f"jsonl:{path}", cfg)
    assert core(ex) == {"instruction": "What is 1+1?", "input": "arithmetic", "response": "2", "domain": "math"}
    assert ex["level"] == "easy"  # the extra label column survives the mapping
    # No input / domain columns: input empty, domain = the source's name.
    (ex, _) = load_examples(f"jsonl:{path}", DataConfig(instruction_field="q", response_field="a"))
    assert (ex["input"], ex["domain"]) == ("", "qa")
    with pytest.raises(DataError, match=r"no column 'response'.*columns present: q, ctx, a, topic, level"):
        load_examples(f"jsonl:{path}", DataConfig(instruction_field="q"))


def test_user_mistakes_are_one_line_data_errors(tmp_path):
    with pytest.raises(DataError, match="file not found.*nope.jsonl"):
        load_examples(f"jsonl:{tmp_path}/nope.jsonl", DataConfig())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "response": "b"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_examples(f"jsonl:{bad}", DataConfig())
    with pytest.raises(DataError, match="expected KIND:ARG"):
        load_examples("excel:data.xlsx", DataConfig())
    with pytest.raises(DataError, match="available: pystdlib"):
        load_examples("builtin:nope", DataConfig())
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no examples"):
        load_examples(f"jsonl:{empty}", DataConfig())


def test_joined_sources_each_become_a_domain(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "domain"} for r in ROWS]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_jsonl(tmp_path / "a" / "train.jsonl", rows)
    write_csv(tmp_path / "b" / "train.csv", rows)
    write_jsonl(tmp_path / "tagged.jsonl", ROWS)
    spec = f"jsonl:{tmp_path}/a/train.jsonl + csv:{tmp_path}/b/train.csv + jsonl:{tmp_path}/tagged.jsonl"
    examples = load_examples(spec, DataConfig())
    assert Counter(e["domain"] for e in examples) == {"train": 3, "train-2": 3, "math": 1, "art": 1, "chat": 1}
    assert Counter(e["source"] for e in examples) == {"train": 3, "train-2": 3, "tagged": 3}


# --- dictd ------------------------------------------------------------------------------------------------------

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def encode_number(n: int) -> str:
    digits = ""
    while True:
        digits = B64[n % 64] + digits
        n //= 64
        if n == 0:
            return digits


def write_dictd(base, entries: dict[str, str], compress: bool = True):
    """A dictd database: entries concatenated in .dict(.dz), and an .index of base64 offsets/lengths."""
    data, index = b"", []
    for headword, text in entries.items():
        raw = text.encode()
        index.append(f"{headword}\t{encode_number(len(data))}\t{encode_number(len(raw))}\n")
        data += raw
    (base.parent / f"{base.name}.index").write_text("".join(sorted(index)))
    if compress:
        with gzip.open(base.parent / f"{base.name}.dict.dz", "wb") as f:
            f.write(data)
    else:
        (base.parent / f"{base.name}.dict").write_bytes(data)


FOLDOC_LIKE = {
    "00-database-short": "00-database-short\n   Tiny test dictionary\n",
    "00-database-url": "00-database-url\n   nowhere\n",
    "uart": "UART\nuniversal asynchronous receiver-transmitter\n\n   <hardware> A chip that turns {parallel} data\n"
    "   into serial data.\n\n   See also {16550}.\n\n   (2003-07-05)\n\n",
    "kludge": "kludge\n /kluhj/ n.\n\n    [common] A clever programming trick intended to solve\n"
    "    a particular nasty case.\n\n",
}


def test_dictd_base64_numbers():
    assert [decode_number(s) for s in ("A", "B", "/", "BA", "Ba")] == [0, 1, 63, 64, 90]
    for n in (0, 1, 63, 64, 4095, 4096, 123_456_789):
        assert decode_number(encode_number(n)) == n


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("given", ["base", "index"])
def test_dictd_database(tmp_path, compress, given):
    write_dictd(tmp_path / "mini", FOLDOC_LIKE, compress=compress)
    path = tmp_path / "mini" if given == "base" else tmp_path / "mini.index"
    examples = load_examples(f"dictd:{path}", DataConfig())
    got = {e["instruction"]: e["response"] for e in examples}
    assert got == {
        "Define: UART": "<hardware> A chip that turns parallel data into serial data.\nSee also 16550.",
        "Define: kludge": "[common] A clever programming trick intended to solve a particular nasty case.",
    }
    assert {e["domain"] for e in examples} == {e["source"] for e in examples} == {"mini"}


def test_dictd_aliases_share_one_example_and_missing_files_error(tmp_path):
    write_dictd(tmp_path / "mini", FOLDOC_LIKE)
    index = tmp_path / "mini.index"
    first = index.read_text().splitlines()[-1]  # "uart\t..."
    index.write_text(
        index.read_text() + "universal asynchronous receiver-transmitter\t" + first.split("\t", 1)[1] + "\n"
    )
    assert len(load_examples(f"dictd:{tmp_path}/mini", DataConfig())) == 2
    with pytest.raises(DataError, match="index file not found"):
        load_examples(f"dictd:{tmp_path}/other", DataConfig())
    (tmp_path / "mini.dict.dz").unlink()
    with pytest.raises(DataError, match=r"data file not found.*mini.dict.dz or .*mini.dict"):
        load_examples(f"dictd:{tmp_path}/mini", DataConfig())


def test_dictd_webster_style_header_is_dropped():
    text = (
        'Floriculture \\Flo"ri*cul`ture\\ (? or ?; 135), n. [L. flos,\n   floris, flower.]\n'
        "   The cultivation of flowering plants.\n   [1913 Webster]\n"
    )
    assert clean_entry("Floriculture", text) == ("Floriculture", "The cultivation of flowering plants.")


# --- wordnet ----------------------------------------------------------------------------------------------------

WORDNET_NOUN = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04424418 n 0000 | that which is perceived "
    "or known or inferred to have its own distinct existence (living or nonliving)  \n"
    "02084071 05 n 05 dog 0 domestic_dog 0 Canis_familiaris 0 x 0 y 0 001 @ 02083346 n 0000 | a member of the genus "
    'Canis; "the dog barked all night"  \n'
)
WORDNET_ADJ = "00001740 00 a 01 galore(ip) 0 000 | in great numbers  \n"


def test_wordnet_glosses_with_lexicographer_categories(tmp_path):
    (tmp_path / "data.noun").write_text(WORDNET_NOUN)
    (tmp_path / "data.adj").write_text(WORDNET_ADJ)
    examples = load_examples(f"wordnet:{tmp_path}", DataConfig())
    assert [(e["instruction"], e["response"], e["category"]) for e in examples] == [
        (
            "Define the word entity (noun).",
            "that which is perceived or known or inferred to have its own distinct existence (living or nonliving)",
            "noun.Tops",
        ),
        ("Define the word dog (noun).", 'a member of the genus Canis; "the dog barked all night"', "noun.animal"),
        ("Define the word galore (adjective).", "in great numbers", "adj.all"),
    ]
    assert {e["domain"] for e in examples} == {"wordnet"}
    # A lexnames file in the folder wins over the built-in WordNet 3.0 list.
    (tmp_path / "lexnames").write_text("00\tadj.custom\t3\n03\tnoun.custom\t1\n05\tnoun.beasts\t1\n")
    assert [e["category"] for e in load_examples(f"wordnet:{tmp_path}", DataConfig())] == [
        "noun.custom",
        "noun.beasts",
        "adj.custom",
    ]
    with pytest.raises(DataError, match="no WordNet data files"):
        load_examples(f"wordnet:{tmp_path}/missing", DataConfig())


# --- builtin:pystdlib -------------------------------------------------------------------------------------------


def test_pystdlib_has_four_sizeable_families_and_is_deterministic():
    examples = load_examples("builtin:pystdlib", DataConfig())
    sizes = Counter(e["domain"] for e in examples)
    assert set(sizes) == {"text", "data", "system", "net"}
    assert min(sizes.values()) >= 200, sizes
    assert all(e["response"].strip() and e["instruction"] for e in examples)
    assert len({e["response"] for e in examples}) == len(examples)  # no answer appears twice
    dumps = next(e for e in examples if e["instruction"] == "Explain what `json.dumps` does.")
    assert dumps["domain"] == "text" and "JSON" in dumps["response"]
    assert load_examples("builtin:pystdlib", DataConfig()) == examples


def test_pystdlib_ignores_what_libraries_patched_into_the_stdlib(monkeypatch):
    import logging

    from fedsqueeze.data import builtin_pystdlib

    def warning_twice(self, msg):
        """A method a third-party library added to logging.Logger."""

    monkeypatch.setattr(logging.Logger, "warning_twice", warning_twice, raising=False)
    builtin_pystdlib._built_in_clean_interpreter.cache_clear()
    examples = builtin_pystdlib.load_pystdlib()
    instructions = {e["instruction"] for e in examples}
    assert "Explain what `logging.Logger.warning_once` does." not in instructions  # transformers adds it
    assert "Explain what `logging.Logger.warning_twice` does." not in instructions
    assert "Explain what `logging.Logger.warning` does." in instructions
