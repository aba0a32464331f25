import pytest

from fedsqueeze import config
from fedsqueeze.errors import ConfigError


def test_defaults_validate():
    cfg = config.validate({})
    assert cfg.method == "fedavg" and cfg.train.rounds >= 1


def test_override_types_are_parsed():
    cfg = config.validate({})
    raw = {}
    for item in [
        "train.rounds=7",
        "train.lr=1e-3",
        "train.precision=fp32",
        "model.name=tiny",
        "lora.target=['q_proj','v_proj']",
        "uplink.codec=topk(fraction=0.01) > zstd",
    ]:
        config.apply_override(raw, item)
    cfg = config.validate(raw)
    assert cfg.train.rounds == 7 and cfg.train.lr == 1e-3 and cfg.train.precision == "fp32"
    assert cfg.lora.target == ["q_proj", "v_proj"]
    assert cfg.uplink.codec == "topk(fraction=0.01) > zstd"


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(ConfigError) as e:
        config.validate({"train": {"lrr": 1}})
    msg = str(e.value)
    assert "train.lrr" in msg and "lr" in msg and "local_steps" in msg


def test_bad_value_names_key():
    with pytest.raises(ConfigError) as e:
        config.validate({"data": {"partition": "random"}})
    assert "data.partition" in str(e.value) and "by-domain" in str(e.value)


def test_unknown_method_lists_methods():
    with pytest.raises(ConfigError) as e:
        config.validate({"method": "fedavgg"})
    assert "fedavgg" in str(e.value) and "fedavg" in str(e.value) and "centralized" in str(e.value)


def test_bad_method_param_names_key():
    from fedsqueeze.strategies import MethodContext, build_method
    from fedsqueeze.tensors import Layout

    ctx = MethodContext(layout=Layout((), ()), init_adapter={}, seed=0)
    with pytest.raises(ConfigError) as e:
        build_method("fedavg", {"nope": 1}, ctx)
    assert "params.nope" in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        config.load(tmp_path / "missing.toml")
    assert "missing.toml" in str(e.value)


def test_roundtrip_toml():
    cfg = config.validate({"train": {"rounds": 5}, "params": {"x": 1}})
    import tomllib

    again = config.validate(tomllib.loads(cfg.to_toml()))
    assert again == cfg
