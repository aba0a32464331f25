"""Model sources: tiny, a local folder, a hub id that cannot be reached, SmolLM2 from its wheel."""

from __future__ import annotations

import pytest
import torch

from fedsqueeze.errors import UserError
from fedsqueeze.models import LoraAdapter, attach_lora, load_base


def test_tiny_is_deterministic_and_small():
    m1, tok = load_base("tiny")
    m2, _ = load_base("tiny")
    assert len(tok) < 512 and tok.pad_token == tok.eos_token == "<|im_end|>"
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert not any(p.requires_grad for p in m1.parameters())


def test_local_folder_loads_the_same_model(tmp_path):
    model, tok = load_base("tiny")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    again, tok2 = load_base(str(tmp_path / "m"))
    ids = torch.tensor([tok("hello")["input_ids"]])
    assert torch.allclose(model(ids).logits, again(ids).logits)
    assert tok2("hello")["input_ids"] == tok("hello")["input_ids"]


def test_missing_folder_and_unreachable_hub_id_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not found"):
        load_base(str(tmp_path / "nope"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set and it is not in the local cache"):
        load_base("no-such-org/no-such-model-xyz")


def test_adapter_get_set_and_seeded_init():
    model, _ = load_base("tiny")
    a = LoraAdapter(attach_lora(model, 4, 8, 0.0, "all-linear", seed=3))
    model2, _ = load_base("tiny")
    b = LoraAdapter(attach_lora(model2, 4, 8, 0.0, "all-linear", seed=3))
    ga, gb = a.get(), b.get()
    assert list(ga) == list(gb) and all(torch.equal(ga[k], gb[k]) for k in ga)
    assert any(k.endswith("lora_A.weight") for k in ga) and any(k.endswith("lora_B.weight") for k in ga)
    bumped = {k: v + 1 for k, v in ga.items()}
    a.set(bumped)
    assert all(torch.equal(a.get()[k], bumped[k]) for k in ga)
    assert a.layout.numel == sum(v.numel() for v in ga.values())


@pytest.mark.integration
def test_smollm2_from_the_wheel_and_its_gguf(tmp_path):
    """The real model: wheel -> GGUF -> safetensors cache; and the GGUF file as model.name."""
    from fedsqueeze.models.smollm2 import cache_root

    model, tok = load_base("smollm2-135m")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.eos_token == "<|im_end|>"
    gguf = next((cache_root() / "wheels").glob("**/*.gguf"))
    direct, _ = load_base(str(gguf))
    ids = torch.tensor([tok("def add(a, b):")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, direct(ids).logits, atol=1e-4)
