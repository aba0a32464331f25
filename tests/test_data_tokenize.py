"""Templates and tokenization: loss on response tokens + EOS only, truncation skips are counted, never trained."""

from __future__ import annotations

import json

import pytest
import torch

from fedsqueeze.config import DataConfig
from fedsqueeze.data import IGNORE_INDEX, TokenizedSet, build_federation
from fedsqueeze.data.templates import alpaca_prompt
from fedsqueeze.data.tokenization import encode
from fedsqueeze.errors import DataError
from fedsqueeze.models.tiny import tiny_tokenizer

EX = {"instruction": "Name a colour.", "input": "warm", "response": "red"}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def response_part(tok, ids, labels):
    return tok.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])


def test_alpaca_labels_cover_response_and_eos_only(tok):
    ((ids, labels),) = encode([EX], tok, "alpaca", max_length=512)
    prompt = alpaca_prompt(EX)
    assert prompt == "### Instruction:\nName a colour.\n\n### Input:\nwarm\n\n### Response:\n"
    n_prompt = len(tok(prompt)["input_ids"])
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[:n_prompt]) == prompt
    assert response_part(tok, ids, labels) == "red<|im_end|>"
    assert "### Input" not in alpaca_prompt({**EX, "input": ""})


def test_chat_template_prompt_is_everything_up_to_the_assistant_content(tok):
    ((ids, labels),) = encode([EX], tok, "chat", max_length=512)
    n_prompt = labels.count(IGNORE_INDEX)
    assert tok.decode(ids[:n_prompt]) == "<|im_start|>user\nName a colour.\n\nwarm<|im_end|>\n<|im_start|>assistant\n"
    assert response_part(tok, ids, labels) == "red<|im_end|>"
    tok_without = tiny_tokenizer()
    tok_without.chat_template = None
    with pytest.raises(DataError, match="chat template"):
        encode([EX], tok_without, "chat", max_length=512)


def test_tokenizer_bos_stays_in_the_prompt():
    from tokenizers.processors import TemplateProcessing

    tok = tiny_tokenizer()
    bos = tok.convert_tokens_to_ids("<|im_start|>")
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)]
    )
    ((ids, labels),) = encode([EX], tok, "alpaca", max_length=512)
    assert ids[0] == bos and labels[0] == IGNORE_INDEX
    assert response_part(tok, ids, labels) == "red<|im_end|>"


def test_truncation_keeps_the_prompt_and_skips_examples_without_response_tokens(tok):
    n_prompt = len(tok(alpaca_prompt(EX))["input_ids"])
    items = encode([EX, {**EX, "response": ""}], tok, "alpaca", max_length=n_prompt + 2)
    (ids, labels), empty = items
    assert len(ids) == n_prompt + 2 and response_part(tok, ids, labels) == "re"
    assert empty is None  # an empty response has nothing to learn
    assert encode([EX], tok, "alpaca", max_length=n_prompt) == [None]  # truncated away


def test_batch_right_pads_with_masked_labels():
    data = TokenizedSet(input_ids=[[5, 6, 7], [8]], labels=[[-100, 6, 7], [8]])
    batch = data.batch([1, 0], pad_id=0)
    assert batch["input_ids"].tolist() == [[8, 0, 0], [5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert batch["labels"].tolist() == [[8, -100, -100], [-100, 6, 7]]
    assert all(t.dtype == torch.long for t in batch.values())


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_federation_counts_skipped_examples_and_never_keeps_zero_label_ones(tmp_path, tok):
    short = [{"instruction": "Hi", "response": f"answer {i}", "domain": d} for d in "ab" for i in range(20)]
    long = [{"instruction": "x" * 200, "response": "lost", "domain": d} for d in "ab" for _ in range(3)]
    path = write_rows(tmp_path / "d.jsonl", short + long)
    fed = build_federation(DataConfig(source=f"jsonl:{path}", clients=2, max_length=48), tok, seed=0)
    assert fed.skipped == 6
    assert "skipped 6 example(s)" in fed.summary()
    for client in fed.clients:
        for data in (client.train, client.eval):
            assert all(any(label != IGNORE_INDEX for label in labels) for labels in data.labels)
            assert all(len(ids) <= 48 for ids in data.input_ids)


def test_client_with_no_trainable_example_is_an_error_showing_one(tmp_path, tok):
    ok = [{"instruction": "Hi", "response": "there", "domain": "fine"}] * 10
    bad = [
        {"instruction": "Please summarise this very long document " + "y" * 100, "response": "no", "domain": "long"}
    ] * 10
    path = write_rows(tmp_path / "d.jsonl", ok + bad)
    with pytest.raises(DataError) as err:
        build_federation(DataConfig(source=f"jsonl:{path}", clients=2, max_length=40), tok, seed=0)
    message = str(err.value)
    assert "client 'long'" in message and "data.max_length=40" in message
    assert "Please summarise this very long document" in message and "\n" not in message
    assert len(message) < 400


def test_chat_templates_that_transform_the_content_are_rendered_one_by_one():
    from fedsqueeze.data.templates import chat_prompts

    tok = tiny_tokenizer()
    tok.chat_template = tok.chat_template.replace("{{ m['content'] }}", "{{ m['content'] | upper }}")
    examples = [EX, {"instruction": "b", "response": "c"}]
    assert chat_prompts(examples, tok) == [
        "<|im_start|>user\nNAME A COLOUR.\n\nWARM<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nB<|im_end|>\n<|im_start|>assistant\n",
    ]


def test_fast_token_ids_match_the_tokenizer_call(tok):
    from fedsqueeze.data.tokenization import token_ids

    texts = ["héllo wörld", "<|im_start|>user\nhi<|im_end|>", ""]
    for special in (True, False):
        assert token_ids(tok, texts, special) == tok(texts, add_special_tokens=special)["input_ids"]
