"""A quiet console: the library chatter is filtered where it is raised and nowhere else, and
`codecs list` tells a user each stage's parameters."""

from __future__ import annotations

import logging
import warnings

from fedsqueeze.models import attach_lora, load_base
from fedsqueeze.quiet import flower_simulation_quietly, loading_quietly, no_checkpointing_alias_warning


def test_attach_lora_raises_no_warning_even_when_all_are_shown():
    model, _ = load_base("tiny")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        attach_lora(model, 4, 8, 0.0, "all-linear", seed=0)
        model.is_gradient_checkpointing  # noqa: B018  (outside the filter: the warning is back)
    assert [str(w.message)[:36] for w in seen] == ["`is_gradient_checkpointing` is depre"]


def test_the_filters_name_one_message_each():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with no_checkpointing_alias_warning():
            warnings.warn("`is_gradient_checkpointing` is deprecated and will go", FutureWarning, stacklevel=1)
            warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
        with flower_simulation_quietly():
            warnings.warn("Tip: In future versions of Ray, Ray will no longer override", FutureWarning, stacklevel=1)
            warnings.warn("a Ray problem", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else is deprecated", "a Ray problem"]

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    flwr = logging.getLogger("flwr")
    flwr.addHandler(handler)
    try:
        with flower_simulation_quietly():
            flwr.warning("DEPRECATED FEATURE: %s", "The `run_simulation` function is deprecated")
            flwr.warning("DEPRECATED FEATURE: %s", "start_server")
        flwr.warning("DEPRECATED FEATURE: %s", "The `run_simulation` function is deprecated")
    finally:
        flwr.removeHandler(handler)
    assert records == [
        "DEPRECATED FEATURE: start_server",
        "DEPRECATED FEATURE: The `run_simulation` function is deprecated",
    ]


def test_weight_loading_bar_off_unless_verbose(monkeypatch):
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    with loading_quietly():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
    monkeypatch.setenv("FEDSQUEEZE_VERBOSE", "1")
    with loading_quietly():
        assert hf_logging.is_progress_bar_enabled()


def test_codecs_list_shows_each_parameter_with_default_and_range(cli):
    res = cli("codecs", "list")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert any(
        line.split() == ["fraction", "=", "0.01", "number", "in", "[0,", "1];", "share", "of", "entries", "kept"]
        for line in lines
    ), res.output
    assert any(" ".join(line.split()) == "bits = 8 integer in [1, 8]; bits per code" for line in lines)
    assert any(line.split()[:6] == ["rounding", "=", "nearest", "one", "of", "nearest,"] for line in lines)
    assert any(line.split()[:6] == ["level", "=", "3", "integer", "in", "[-7,"] for line in lines)
    for header in ("structure:", "values:", "bytes:"):
        assert any(line.startswith(header) for line in lines)
    import json

    from fedsqueeze.codecs import CODECS

    rows = json.loads(cli("codecs", "list", "--format", "json").output)
    assert [r["name"] for r in rows] == CODECS.names()
    topk = next(r for r in rows if r["name"] == "topk")
    assert {p["name"]: p["default"] for p in topk["params"]} == {"fraction": "0.01", "k": "none", "scope": "tensor"}
