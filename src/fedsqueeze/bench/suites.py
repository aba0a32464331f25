"""Benchmark suites: a base config and named rows (config overrides), run with the same seed,
partition and step budget.

`w4` is workload W4 of DESIGN.md §6: SmolLM2-135M, LoRA r=16 on all linear layers, 4 clients =
FOLDOC, Jargon File, WordNet, Python stdlib (one domain each), 10 rounds x 10 local steps, batch 8,
sequence <= 96, precision auto (bf16 autocast where the CPU has native bf16, the setting of the
recorded tables); GCIDE held out as the out-of-domain eval set.
`tiny` is the same pipeline on the tiny random model and small data (tests).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..data.wordnet import STANDARD_LEXNAMES
from ..errors import UserError
from .frontier import ROWS as FRONTIER_ROWS

DICTD = Path("/usr/share/dictd")
WORDNET = Path("/usr/share/wordnet")

STRAGGLER = [1.0, 1.0, 1.0, 0.25]  # the last client computes 4x slower

# Rows shared by every suite; each is a set of config overrides on the suite's base.
ROWS: dict[str, dict] = {
    "fedavg": {"method": "fedavg"},
    "centralized": {"method": "centralized"},
    "local": {"method": "local"},
    "ffa-lora": {"method": "ffa-lora"},
    "fed-dare": {"method": "fed-dare"},
    "flexlora": {"method": "flexlora"},
    "fedsrd": {"method": "fedsrd"},
    "fedsrd-e": {"method": "fedsrd-e"},
    # FedSRD ablations (issue 4)
    "fedsrd-random": {"method": "fedsrd", "params": {"sparsifier": "random"}},
    "fedsrd-magnitude": {"method": "fedsrd", "params": {"sparsifier": "magnitude"}},
    "fedsrd-nosparsify": {"method": "fedsrd", "params": {"sparsifier": "none"}},
    "fedsrd-norecon": {"method": "fedsrd", "params": {"reconstruct": False}},
    "fedsrd-nodecomp": {"method": "fedsrd", "params": {"decompose": False}},
    "fedsrd-fixed": {"method": "fedsrd", "params": {"adaptive_ratio": False}},
    # FedSRD's loss gap on W4 (docs/BENCHMARKS.md): the broadcast's drop rate and precision ...
    "fedsrd-drop70": {"method": "fedsrd", "params": {"download_drop": 0.7}},
    "fedsrd-drop0": {"method": "fedsrd", "params": {"download_drop": 0.0}},  # diverges: see projection_damping
    "fedsrd-bf16-drop60": {"method": "fedsrd", "params": {"download_dtype": "bf16", "download_drop": 0.6}},
    "fedsrd-bf16-drop60-damped": {
        "method": "fedsrd",
        "params": {"download_dtype": "bf16", "download_drop": 0.6, "projection_damping": 0.02},
    },
    # ... both factors every round (bf16 values: about the paper's broadcast bytes) ...
    "fedsrd-both": {
        "method": "fedsrd",
        "params": {"moves": "both", "download_dtype": "bf16", "projection_damping": 0.02},
    },
    # ... and denser uploads (12% kept, bf16 values): the paper's sparser L1-rescaled uploads
    # overshoot the client's true update (see BENCHMARKS, "FedSRD's loss gap on W4").
    "fedsrd-up12": {
        "method": "fedsrd",
        "uplink": {"codec": "sparse > bf16"},
        "params": {"adaptive_ratio": False, "base_ratio": 0.88},
    },
    "fedsrd-both-up12": {
        "method": "fedsrd",
        "uplink": {"codec": "sparse > bf16"},
        "params": {
            "moves": "both",
            "download_dtype": "bf16",
            "projection_damping": 0.02,
            "adaptive_ratio": False,
            "base_ratio": 0.88,
        },
    },
    # FedSRD's own algorithm (paper defaults), only the coding changed (issue 18): the broadcast
    # rounded to an 8-bit grid by the server, uploads in 4 bits (stochastic, error feedback).
    "fedsrd-b8-q4": {
        "method": "fedsrd",
        "uplink": {"codec": "sparse > quantize(bits=4, rounding=stochastic)", "error_feedback": True},
        "params": {"download_bits": 8},
    },
    # The frontier's winner on W4-lite (issue 18): the cheapest row within +1% of FedAvg's eval
    # loss there, FedSRD's paper defaults with a 4-bit broadcast grid and 2-bit uploads.
    "fedsrd-b4-q2": FRONTIER_ROWS["fedsrd-b4-q2"],
    # Issue 31: FedSRD's lag that grows with the rounds; candidate: error feedback on the broadcast.
    # Run with fedavg and eval every round: bench.md then tabulates the per-round gap (gap.md).
    "fedsrd-b4-q2-fb": FRONTIER_ROWS["fedsrd-b4-q2-fb"],
    "fedsrd-b8-q4-fb": FRONTIER_ROWS["fedsrd-b8-q4-fb"],
    # Issue 31: the data-free basis (LoRA-XS: only R, r x r per layer, travels from round 1)
    **{
        name: FRONTIER_ROWS[name]
        for name in ("lora-xs-r16", "lora-xs-r16-s8", "lora-xs-r16-s8-q4", "lora-xs-r32-s8-q4")
    },
    "fed-sb-svdbase-r16": FRONTIER_ROWS["fed-sb-svdbase-r16"],
    # FedAvg with generic codecs (issue 3)
    "fedavg-topk-ef": {
        "method": "fedavg",
        "uplink": {"codec": "topk(fraction=0.01) > quantize(bits=8) > zstd", "error_feedback": True},
    },
    # GradualDiff-Fed and the hybrid under a 4x straggler (issue 5)
    "gradualdiff": {"method": "gradualdiff"},
    "fedavg-straggler": {"method": "fedavg", "network": {"compute": STRAGGLER}},
    "gradualdiff-straggler": {"method": "gradualdiff", "network": {"compute": STRAGGLER}},
    "gradualdiff-hybrid": {
        "method": "gradualdiff",
        "network": {"compute": STRAGGLER},
        "hybrid": {"quorum": 0.75, "max_staleness": 3},
    },
    # The straggler trains the steps that fit a deadline instead of reporting rounds late. On W4
    # (1.5 s steps, 6 s for the straggler) 46 s leave it 7 of its 10 steps.
    "gradualdiff-hybrid-partial": {
        "method": "gradualdiff",
        "network": {"compute": STRAGGLER},
        "hybrid": {"deadline": 46.0, "partial_work": True},
    },
    # Fed-SB (issue 18): only R (rank x rank per layer) travels after a one-round LoRA warm-up. On W4
    # (210 layers, narrowest 192) rank 64 sends 3.4 MB per client per round against FedAvg's ~19.5 MB
    # at r=16; rank 128, 13.8 MB. Not yet measured on W4.
    "fed-sb": {"method": "fed-sb", "params": {"rank": 64}},
    "fed-sb-r128": {"method": "fed-sb", "params": {"rank": 128}},
    # CG-FedLLM (issue 6)
    "cg-fedllm-paper": {"method": "cg-fedllm", "params": {"arch": "paper"}},
    "cg-fedllm-row": {"method": "cg-fedllm", "params": {"arch": "row"}},
    "cg-fedllm-tensor": {"method": "cg-fedllm", "params": {"arch": "tensor"}},  # the best variant here
    "cg-fedllm-adaptive": {"method": "cg-fedllm", "params": {"arch": "tensor", "adaptive_snr_db": 3.0}},
}

DEFAULT_ROWS = ["fedavg", "centralized", "ffa-lora", "fed-dare", "flexlora", "fedsrd", "fedsrd-e", "fedsrd-both-up12"]
HYBRID_ROWS = [
    "gradualdiff",
    "fedavg-straggler",
    "gradualdiff-straggler",
    "gradualdiff-hybrid",
    "gradualdiff-hybrid-partial",
]
CG_ROWS = ["cg-fedllm-paper", "cg-fedllm-row", "cg-fedllm-tensor", "cg-fedllm-adaptive"]
ABLATION_ROWS = [
    "fedsrd",
    "fedsrd-random",
    "fedsrd-magnitude",
    "fedsrd-nosparsify",
    "fedsrd-norecon",
    "fedsrd-nodecomp",
    "fedsrd-fixed",
]


@dataclass
class Suite:
    name: str
    base: dict
    rows: dict[str, dict] = field(default_factory=lambda: dict(ROWS))
    default_rows: list[str] = field(default_factory=lambda: list(DEFAULT_ROWS))
    needs: dict[str, str] = field(default_factory=dict)
    """path that must exist -> Debian package that provides it."""
    frontier: bool = False
    """Also write the bytes/quality frontier of its rows (bench/frontier.py)."""
    verdict: str = "loss"
    """What the frontier judges by: "loss" (eval loss, +1%) or "acc" (accuracy, -1 point)."""

    def check_data(self, log=print) -> None:
        missing = {pkg for path, pkg in self.needs.items() if not Path(path).exists()}
        if not missing:
            return
        if shutil.which("apt-get") and _is_root():
            log(f"installing Debian data packages: {' '.join(sorted(missing))}")
            subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
            done = subprocess.run(["apt-get", "install", "-y", "-qq", *sorted(missing)], capture_output=True, text=True)
            if done.returncode == 0:
                return
            raise UserError(f"apt-get install {' '.join(sorted(missing))} failed: {done.stderr.strip()[-300:]}")
        raise UserError(
            f"suite {self.name} needs the Debian packages {', '.join(sorted(missing))} "
            f"(files {', '.join(p for p, k in self.needs.items() if k in missing)}); "
            f"install them as root: apt-get install {' '.join(sorted(missing))}"
        )


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


W4 = Suite(
    name="w4",
    base={
        "seed": 0,
        "model": {"name": "smollm2-135m"},
        "lora": {"r": 16, "alpha": 32, "target": "all-linear"},
        "data": {
            "source": (f"dictd:{DICTD}/foldoc + dictd:{DICTD}/jargon + wordnet:{WORDNET} + builtin:pystdlib"),
            "label": "source",
            "partition": "by-domain",
            "clients": 4,
            "max_length": 96,
            # 10 rounds x 10 steps x batch 8 = 800 examples per client: more is never seen, and an
            # uncapped WordNet (118k) would outweigh the Jargon File (2.3k) 50:1 in FedAvg.
            "max_examples": 800,
            "eval_examples": 32,
            "ood_source": f"dictd:{DICTD}/gcide",
        },
        "train": {"rounds": 10, "local_steps": 10, "batch_size": 8, "lr": 5e-4, "precision": "auto"},
        "network": {"step_seconds": 1.5},  # measured median LoRA step on 2 cores (DESIGN.md section 6)
    },
    needs={
        f"{DICTD}/foldoc.index": "dict-foldoc",
        f"{DICTD}/jargon.index": "dict-jargon",
        f"{DICTD}/gcide.index": "dict-gcide",
        f"{WORDNET}/data.noun": "wordnet-base",
    },
)

TINY = Suite(
    name="tiny",
    base={
        "seed": 0,
        "model": {"name": "tiny"},
        "lora": {"r": 4, "alpha": 8, "target": "all-linear"},
        "data": {
            "source": "builtin:pystdlib",
            "partition": "by-domain",
            "clients": 4,
            "max_length": 160,
            "max_examples": 64,
            "eval_examples": 16,
        },
        "train": {"rounds": 3, "local_steps": 5, "batch_size": 4, "lr": 3e-3, "precision": "fp32", "threads": 1},
    },
)


# wordnet-cls: classification with label skew (issue 30). WordNet 3.0 glosses ("word: gloss") to their
# lexicographer category (45 labels, spoken "noun animal", "verb motion", ...: after their shared first
# word most are one token, so judging costs little more than the prompt), SmolLM2-135M with W4's LoRA
# (r=16, alpha 32, all linear layers), 10 owners whose label shares are Dirichlet(0.5), 10 rounds x 5
# local steps x batch 8 (400 training examples seen per owner, about W4's 400 steps in all). Each owner
# holds out 200 items: 2,000 judged in all (one standard error at most 1.1 points), every 5 rounds.
CLASSIFY_LABELS = {name: name.replace(".", " ") for name in STANDARD_LEXNAMES}
CLASSIFY_ROWS = [
    "fedavg",
    "centralized",
    "local",
    "fedsrd",
    "fedsrd-b4-q2",
    "gradualdiff",
    "fed-sb",
    "cg-fedllm-tensor",
]
WORDNET_CLS = Suite(
    name="wordnet-cls",
    base={
        "seed": 0,
        "model": {"name": "smollm2-135m"},
        "lora": {"r": 16, "alpha": 32, "target": "all-linear"},
        "data": {
            "source": f"wordnet:{WORDNET}",
            "task": "classify",
            "text_field": "entry",
            "label_field": "category",
            "labels": CLASSIFY_LABELS,
            "instruction": "Which WordNet category (such as noun animal or verb motion) holds this word sense?",
            "partition": "dirichlet",
            "dirichlet_alpha": 0.5,
            "clients": 10,
            "max_length": 96,
            "max_examples": 400,
            "eval_examples": 200,
        },
        "train": {"rounds": 10, "local_steps": 5, "batch_size": 8, "lr": 5e-4, "precision": "auto"},
        "eval": {"clients": "all", "every": 5},
        "network": {"step_seconds": 1.5},
    },
    default_rows=list(CLASSIFY_ROWS),
    needs={f"{WORDNET}/data.noun": "wordnet-base"},
)
TINY_CLS = Suite(
    name="tiny-cls",
    base={
        **TINY.base,
        "data": {
            "source": "builtin:pystdlib",
            "task": "classify",
            "text_field": "response",
            "label_field": "domain",
            "partition": "dirichlet",
            "dirichlet_alpha": 0.5,
            "clients": 4,
            "max_length": 128,
            "max_examples": 32,
            "eval_examples": 8,
        },
        "train": {**TINY.base["train"], "rounds": 2, "local_steps": 2},
    },
    default_rows=["fedavg", "centralized", "local"],
)


def _lite(suite: Suite, name: str, rounds: int, steps: int, verdict: str = "loss") -> Suite:
    """`suite` cut to fewer rounds and local steps, with the frontier sweep as its rows."""
    base = {**suite.base, "train": {**suite.base["train"], "rounds": rounds, "local_steps": steps}}
    return Suite(name, base, dict(FRONTIER_ROWS), list(FRONTIER_ROWS), suite.needs, frontier=True, verdict=verdict)


# W4-lite: W4 at 5 rounds x 5 local steps, where a sweep of ~20 rows fits an afternoon.
FRONTIER = _lite(W4, "frontier", rounds=5, steps=5)
TINY_FRONTIER = _lite(TINY, "tiny-frontier", rounds=TINY.base["train"]["rounds"], steps=5)
# The frontier in accuracy: the same sweep on wordnet-cls at its full length, judged by accuracy.
CLS_FRONTIER = _lite(WORDNET_CLS, "wordnet-cls-frontier", rounds=10, steps=5, verdict="acc")
TINY_CLS_FRONTIER = _lite(TINY_CLS, "tiny-cls-frontier", rounds=2, steps=2, verdict="acc")

SUITES = {
    s.name: s for s in (W4, TINY, FRONTIER, TINY_FRONTIER, WORDNET_CLS, TINY_CLS, CLS_FRONTIER, TINY_CLS_FRONTIER)
}
