"""A real LoRA update to benchmark codecs on: a few local steps of one client on real data."""

from __future__ import annotations

from .. import config as config_mod
from ..client import train_client
from ..runtime import Session
from ..tensors import Layout, Tensors


def real_update(
    model: str, r: int = 16, target: str = "all-linear", steps: int = 5, log=print
) -> tuple[Tensors, Layout]:
    cfg = config_mod.validate(
        {
            "model": {"name": model},
            "lora": {"r": r, "alpha": 2 * r, "target": target},
            "data": {
                "source": "builtin:pystdlib",
                "partition": "iid",
                "clients": 1,
                "max_examples": 128,
                "max_length": 96 if model != "tiny" else 160,
                "eval_examples": 8,
            },
            "train": {
                "local_steps": steps,
                "batch_size": 8,
                "lr": 5e-4,
                "precision": "auto" if model != "tiny" else "fp32",
            },
        }
    )
    session = Session.build(cfg, log=log)
    start = session.method.global_adapter()
    trained, _ = train_client(session, 0, 1, start)
    return {k: trained[k] - start[k] for k in start}, session.adapter.layout
