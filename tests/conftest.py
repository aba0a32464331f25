"""Shared fixtures: a small synthetic multi-domain JSONL corpus and a CLI runner."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

# The tiny model is far too small to gain from threads; one thread also keeps parallel test
# processes from oversubscribing the cores.
torch.set_num_threads(1)

# Record fields that measure this machine (time, memory) rather than the run's numerics.
MEASURED = (
    "seconds",
    "train_seconds",
    "aggregate_seconds",
    "eval_seconds",
    "federation_seconds",
    "codec_up",
    "codec_down",
    "peak_rss_mb",
    "peak_gpu_mb",
)

DOMAINS = {
    "animals": ["cat", "dog", "owl", "fox", "eel", "yak", "bee", "ant"],
    "colors": ["red", "blue", "green", "cyan", "pink", "gold", "gray", "teal"],
    "numbers": ["one", "two", "three", "four", "five", "six", "seven", "eight"],
    "tools": ["saw", "axe", "awl", "pick", "file", "vise", "drill", "plane"],
}


def write_corpus(path: Path, per_domain: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for domain, words in DOMAINS.items():
            for _i in range(per_domain):
                w = rng.choice(words)
                f.write(
                    json.dumps(
                        {
                            "instruction": f"Describe the {domain[:-1]} {w}.",
                            "input": "",
                            "response": f"The {w} is a {domain[:-1]}; {w} {w} {rng.choice(words)}.",
                            "domain": domain,
                        }
                    )
                    + "\n"
                )
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus.jsonl")


def tiny_config(tmp_path: Path, corpus: Path, **overrides) -> Path:
    """A fast config on the tiny model; overrides as 'section.key' -> TOML literal."""
    body = {
        "method": '"fedavg"',
        "seed": "0",
        "model.name": '"tiny"',
        "lora.r": "4",
        "lora.alpha": "8",
        "lora.target": '"all-linear"',
        "data.source": f'"jsonl:{corpus}"',
        "data.partition": '"by-domain"',
        "data.clients": "4",
        "data.max_length": "160",
        "data.eval_examples": "8",
        "data.max_examples": "32",
        "train.rounds": "2",
        "train.local_steps": "3",
        "train.batch_size": "4",
        "train.lr": "3e-3",
        "train.precision": '"fp32"',
    }
    body.update(overrides)
    sections: dict[str, list[str]] = {"": []}
    for key, value in body.items():
        section, _, name = key.rpartition(".")
        sections.setdefault(section, []).append(f"{name} = {value}")
    text = "\n".join(sections.pop("")) + "\n"
    for section, lines in sections.items():
        text += f"\n[{section}]\n" + "\n".join(lines) + "\n"
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def cli_runner():
    """`fedsqueeze ARGS...` in this process (typer's CliRunner); returns the result."""
    from fedsqueeze.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def cli():
    return cli_runner()


def every_stage(specs: list[str], leave_out: tuple[str, ...] = ()) -> list[str]:
    """`specs` plus each registered codec stage none of them names, alone: a new stage is tested
    without anyone adding it to a list (leave_out: stages a test cannot take, each said why there)."""
    from fedsqueeze.codec_spec import parse_spec
    from fedsqueeze.registry import CODECS

    named = {name for spec in specs for name, _ in parse_spec(spec)}
    return specs + [name for name in CODECS.names() if name not in named and name not in leave_out]
