"""Paper-scale sizing from shapes alone: LoRA parameter counts computed by hand from each shipped
config.json, and the FedSRD paper's FedAvg figure for Llama-3.2-3B (371 MiB per message)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from fedsqueeze import config as config_mod
from fedsqueeze.models import load_base
from fedsqueeze.registry import METHODS
from fedsqueeze.sizing import lora_layout, message_sizes, method_sizes


def _lora(d_in: int, d_out: int, r: int) -> int:
    return r * (d_in + d_out)


def _llama_layer(hidden: int, kv: int, inter: int, r: int, mlp: bool = True) -> int:
    attn = 2 * _lora(hidden, hidden, r) + 2 * _lora(hidden, kv, r)
    return attn + (3 * _lora(hidden, inter, r) if mlp else 0)


@pytest.mark.parametrize(
    "name, r, target, expected",
    [
        ("llama-3.2-3b", 64, "all-linear", 28 * _llama_layer(3072, 8 * 128, 8192, 64)),  # 97,255,424
        ("llama-3.1-8b", 16, "all-linear", 32 * _llama_layer(4096, 8 * 128, 14336, 16)),
        (
            "qwen2-7b",
            8,
            ["q_proj", "k_proj", "v_proj", "o_proj"],
            28 * _llama_layer(3584, 4 * 128, 18944, 8, mlp=False),
        ),
        ("smollm2-135m", 16, "all-linear", 30 * _llama_layer(576, 3 * 64, 1536, 16)),  # W4's adapter
    ],
)
def test_lora_parameter_counts_from_shapes(name, r, target, expected):
    cfg = config_mod.validate({"model": {"name": name}, "lora": {"r": r, "target": target}})
    layout, base, _ = lora_layout(cfg)
    assert layout.numel == expected
    if name == "llama-3.2-3b":
        assert expected == 97_255_424 and 3.2e9 < base < 3.25e9


def test_llama_3b_fedavg_message_is_the_papers_371_mib(cli):
    res = cli(
        "size", "--model", "llama-3.2-3b", "--set", "lora.r=64", "--set", "lora.target=all-linear", "--format", "json"
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["lora_params"] == 97_255_424
    rows = {m["method"]: m for m in report["messages"]}
    fedavg = rows["fedavg"]["up"]
    assert fedavg == rows["fedavg"]["down"] and round(fedavg / 2**20, 1) == 371.0
    assert 0 < fedavg - 4 * 97_255_424 < 128  # fp32 values plus the blob's header and checksum
    assert 0 < rows["fedavg, bf16 values"]["up"] - 2 * 97_255_424 < 128
    assert rows["ffa-lora"]["up"] < fedavg / 1.9  # B holds d_out * r of r (d_in + d_out) per layer
    from fedsqueeze.sizing import describe

    text = describe(report)  # what `size` prints without --format json (encoding the blobs twice took a minute)
    assert "97,255,424 parameters (97.3M)" in text and "| fedavg | 371.0 MiB" in text


def test_message_sizes_are_real_blobs_of_the_layout():
    """On a small layout: the rows are len() of what the real codecs write for those messages."""
    from fedsqueeze.codecs import build_codec

    cfg = config_mod.validate({"model": {"name": "tiny"}, "lora": {"r": 4, "target": "all-linear"}})
    layout, _, _ = lora_layout(cfg)
    rows = {m.method: m for m in message_sizes(cfg)}
    ones = {n: torch.ones(s) for n, s in zip(layout.names, layout.shapes)}
    assert rows["fedavg"].up == len(build_codec("fp32", layout).encode(ones))
    b_only = {n: t for n, t in ones.items() if n.endswith("lora_B.weight")}
    assert rows["ffa-lora"].down == len(build_codec("fp32", layout).encode(b_only))
    kept = rows["fed-dare"].up
    assert 0.05 * rows["fedavg"].up < kept < 0.3 * rows["fedavg"].up  # ~10% of values + positions


def test_size_of_an_unknown_model_is_a_clean_error(cli, tmp_path):
    res = cli("size", "--model", str(tmp_path / "absent"))
    assert res.exit_code == 2 and "Traceback" not in res.output and "model.name" in res.output


def test_random_init_builds_a_shipped_architecture_the_same_in_every_process():
    """model.init = random: seeded weights from the shipped config, a byte tokenizer when no
    tokenizer ships with it (speed and memory tests without a download)."""
    a, tok = load_base("smollm2-135m", init="random", log=lambda *_: None)
    b, _ = load_base("smollm2-135m", init="random", log=lambda *_: None)
    assert sum(p.numel() for p in a.parameters()) == 134_515_008  # the real model's count
    assert len(tok) == 258 and tok.pad_token is not None
    name, weight = next(iter(a.state_dict().items()))
    assert torch.equal(weight, b.state_dict()[name]) and float(weight.std()) > 0


def test_random_init_of_a_folder_uses_its_tokenizer(tmp_path):
    model, tok = load_base("tiny")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    again, tok2 = load_base(str(tmp_path / "m"), init="random", dtype=torch.bfloat16)
    assert next(again.parameters()).dtype == torch.bfloat16
    assert tok2("abc")["input_ids"] == tok("abc")["input_ids"]


def test_fed_sb_row_is_r_squared_per_layer_plus_the_header():
    raw = {"model": {"name": "tiny"}, "lora": {"r": 4, "target": "all-linear"}}
    cfg = config_mod.validate({**raw, "method": "fed-sb", "params": {"rank": 6}})
    (row,) = method_sizes(cfg, "fed-sb")
    layout, _, _ = lora_layout(cfg, 6, core=True)
    cores = [s for n, s in zip(layout.names, layout.shapes) if n.endswith("lora_R.weight")]
    assert len(cores) == 14 and all(tuple(s) == (6, 6) for s in cores)
    assert row.method == "fed-sb (rank 6)" and row.up == row.down
    assert 0 < row.up - 14 * 36 * 4 < 64  # the values and the blob's header and checksum
    assert method_sizes(config_mod.validate(raw), "fed-sb")[0].method == "fed-sb (rank 4)"  # another method: lora.r
    svd = method_sizes(config_mod.validate({**raw, "method": "fed-sb", "params": {"init": "svd-base"}}), "fed-sb")
    assert "from round 1" in svd[0].note  # the run's own params, where the run is that method


def test_lora_xs_rows_are_r_squared_per_layer_in_fp32_and_k_bits():
    raw = {"model": {"name": "tiny"}, "lora": {"r": 4, "target": "all-linear"}}
    fp32, q8, q4 = method_sizes(config_mod.validate({**raw, "method": "lora-xs", "params": {"rank": 6}}), "lora-xs")
    assert fp32.method == "lora-xs (rank 6)" and fp32.up == fp32.down
    assert 0 < fp32.up - 14 * 36 * 4 < 64  # the values and the blob's header and checksum
    # 4 bits a value (+ per core: an 8-byte min/step pair up, a tag and exponent down)
    assert 14 * 36 // 2 < q4.up < 14 * (18 + 8) + 64 and 14 * 36 // 2 < q4.down < 14 * (18 + 3) + 64
    assert q4.up < q8.up < fp32.up and q4.down < q8.down < fp32.down


TINY = {"model": {"name": "tiny"}, "lora": {"r": 4, "target": "all-linear"}}


def test_each_method_declares_its_own_rows_under_its_own_name():
    """sizing.py names no method: every row comes from the method it is labelled with, in the
    catalog's order, and no label repeats (a subclass does not inherit its parent's rows)."""
    cfg = config_mod.validate(TINY)
    per_method = {name: method_sizes(cfg, name) for name, _ in METHODS.in_order()}
    assert message_sizes(cfg) == [row for rows in per_method.values() for row in rows]
    for name, rows in per_method.items():
        assert all(re.match(rf"{re.escape(name)}($|[ ,])", row.method) for row in rows), name
    labels = [m.method for m in message_sizes(cfg)]
    assert len(labels) == len(set(labels))
    assert {name for name, rows in per_method.items() if rows} >= {"fedavg", "fedsrd", "fed-dare", "fed-sb", "lora-xs"}
    assert method_sizes(cfg, "fedsrd-e") == [] and method_sizes(cfg, "ffa-lora")[0].method == "ffa-lora"
    assert method_sizes(cfg, "local") == []  # nothing travels


def test_a_method_with_its_own_message_shape_is_one_class_and_one_register_line(monkeypatch, cli, tmp_path):
    """A method defined here with the MessageSizes mixin and one register line gets its rows in
    `fedsqueeze size`; its subclass, registered too, inherits none (its rows would carry the
    parent's name)."""
    from fedsqueeze.codecs import build_codec
    from fedsqueeze.strategies.fedavg import FedAvg
    from fedsqueeze.strategies.lora_math import A_SUFFIX
    from fedsqueeze.strategies.sizes import MessageSize, SizingContext

    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHODS, "_info", dict(METHODS._info))

    class AOnly(FedAvg):
        """Sends A alone each way (a test method: only its sizes matter here)."""

        name = "test-a-only"

        @classmethod
        def message_sizes(cls, params, at: SizingContext) -> list[MessageSize]:
            a = at.blob("fp32", at.ending(A_SUFFIX))
            return [MessageSize("test-a-only", a, a, "A only, fp32")]

    class AOnlyAgain(AOnly):
        name = "test-a-only-again"

    METHODS.register("test-a-only")(AOnly)
    METHODS.register("test-a-only-again")(AOnlyAgain)
    cfg = config_mod.validate(TINY)
    rows = message_sizes(cfg)
    layout, _, _ = lora_layout(cfg)
    a_only = {n: torch.ones(s) for n, s in zip(layout.names, layout.shapes) if n.endswith(A_SUFFIX)}
    assert rows[-1].method == "test-a-only"  # registered last, listed last
    assert rows[-1].up == rows[-1].down == len(build_codec("fp32", layout).encode(a_only))
    assert method_sizes(cfg, "test-a-only-again") == []
    res = cli("size", "--model", "tiny", "--set", "lora.r=4", "--format", "json")
    assert res.exit_code == 0, res.output
    assert "test-a-only" in [m["method"] for m in json.loads(res.output)["messages"]]
