"""The catalog (registry.py): one line per method, codec stage and runtime, checked without an
import, resolved on first use; the docs and the tests follow it instead of keeping their own lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedsqueeze import config as config_mod
from fedsqueeze.errors import ConfigError
from fedsqueeze.registry import CODECS, METHODS, RUNTIMES, Registry

ROOT = Path(__file__).resolve().parents[1]


def test_every_catalog_line_resolves_to_the_object_it_names():
    for name, cls in METHODS.items():
        assert cls.name == name
    for name, stage in CODECS.items():
        assert stage.name == name and stage.kind in ("structure", "values", "bytes")
    for name in RUNTIMES.names():
        assert callable(RUNTIMES.get(name))
        assert set(RUNTIMES.info(name)) <= {"remote", "until"}


def test_every_method_builds_its_default_codecs():
    """A method's defaults are its own to keep valid: config checks only what a config names."""
    from fedsqueeze.codecs.chain import build_stages

    for _, cls in METHODS.items():
        for spec in (cls.default_uplink, cls.default_downlink):
            if isinstance(spec, str):  # fedsrd's downlink follows its params (tests/test_strategies_fedsrd.py)
                build_stages(spec)


def test_a_lazy_entry_imports_only_when_asked():
    reg: Registry = Registry("thing", key="thing.kind", entries={"path": "pathlib:PurePosixPath"})
    assert reg.names() == ["path"] and "path" in reg
    assert reg.get("path").__name__ == "PurePosixPath"
    with pytest.raises(ConfigError, match=r"config key 'thing.kind': unknown thing 'nope'; allowed: path"):
        reg.check("nope")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("path", object)


def test_a_stage_defined_here_registers_with_one_line(monkeypatch):
    """A codec stage in a test file, one register line: config checks its name, a chain builds with it."""
    import numpy as np
    from pydantic import Field

    from fedsqueeze.codecs import build_codec
    from fedsqueeze.codecs.base import StageParams, Values
    from fedsqueeze.tensors import Layout

    monkeypatch.setattr(CODECS, "_items", dict(CODECS._items))
    monkeypatch.setattr(CODECS, "_info", dict(CODECS._info))

    class HalvesParams(StageParams):
        parts: int = Field(2, ge=1, le=4, description="a declared knob")

    class Halves(Values):
        """fp32 values, the declared knob only checked (a test stage)."""

        name = "halves"
        lossless = True
        Params = HalvesParams

        def encode(self, values, lengths, w, reconstruct):
            w.array(values.astype("<f4"))
            return values if reconstruct else None

        def decode(self, r, lengths):
            return r.array("<f4", int(lengths.sum()), "values").astype(np.float32)

    CODECS.register("halves")(Halves)
    config_mod.validate({"uplink": {"codec": "sparse > halves(parts=3)"}})
    import torch

    x = {"w": torch.arange(6.0).reshape(2, 3)}
    codec = build_codec("halves(parts=3)", Layout.of(x))
    assert codec.spec == "halves(parts=3)"
    assert torch.equal(codec.decode(codec.encode(x))["w"], x["w"])
    with pytest.raises(ConfigError, match=r"parts must be in \[1, 4\]"):
        build_codec("halves(parts=9)", Layout.of(x))


def test_the_readme_method_table_lists_every_method_and_only_those():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Methods", 1)[1].split("\n\n", 2)[1]
    named = {n for row in table.splitlines()[2:] for n in re.findall(r"`([a-z0-9-]+)`", row.split("|")[1])}
    # test files register methods of their own (tests/test_extensions.py): they are "test-" names
    assert named == {n for n in METHODS.names() if not n.startswith("test-")}


def test_the_readme_config_table_names_only_keys_that_exist():
    readme = (ROOT / "README.md").read_text()
    keys = set()
    for row in readme.splitlines():
        if row.startswith("| `") and "." in row.split("|")[1]:
            keys |= set(re.findall(r"`([a-z_]+\.[a-z_]+)`", row.split("|")[1]))
    assert keys, "the README's config table moved"
    cfg = config_mod.Config.model_fields
    for key in sorted(keys):
        section, _, name = key.partition(".")
        if section == "params":
            continue
        assert section in cfg, key
        assert name in cfg[section].annotation.model_fields, key


def test_config_knobs_carry_their_docstrings_as_descriptions():
    """One way to declare a knob: a pydantic field whose docstring is its description (schema, docs)."""
    field = config_mod.TrainConfig.model_fields["device"]
    assert field.description and "cuda" in field.description
