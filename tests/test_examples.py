"""Every shipped example config is valid, and frontier.toml / lora-xs.toml are the named bench rows they claim to be."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsqueeze import config
from fedsqueeze.bench.runner import row_configs

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_example_config_is_valid(path):
    config.load(path)


def test_frontier_example_is_the_w4_bench_row():
    ((_, raw),) = row_configs("w4", ["fedsrd-b4-q2"], None)[1]
    assert config.load(EXAMPLES / "frontier.toml").to_toml() == config.validate(raw).to_toml()


def test_lora_xs_example_is_the_w4_bench_row():
    ((_, raw),) = row_configs("w4", ["lora-xs-r16-s8-q4"], None)[1]
    assert config.load(EXAMPLES / "lora-xs.toml").to_toml() == config.validate(raw).to_toml()
