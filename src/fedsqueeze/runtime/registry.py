"""Runtimes: `runtime.kind` -> how a run executes. One file per runtime, one line in the catalog
(registry.py's RUNTIMES, with the facts a config check reads: remote, until).

An entry is a callable `execute(cfg, out, launch)` that runs (or resumes, per `Launch`) a whole run
into `out` and returns its summary (None when stopped early by `launch.until`).
A runtime whose clients run in this process is a Transport, built as TransportClass(session, out),
and `in_process(TransportClass)`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..config import Config
from ..registry import RUNTIMES
from .launch import Launch, execute

__all__ = ["RUNTIMES", "Launch", "in_process", "run_flower_sim", "run_local"]


def in_process(transport_factory) -> Callable[[Config, Path, Launch], dict | None]:
    """An execute function for a transport built from the Session and run directory,
    `transport_factory(session, out)`."""

    def run(cfg: Config, out: Path, launch: Launch = Launch()) -> dict | None:
        return execute(transport_factory, cfg, out, launch)

    return run


def _local(session, out: Path):
    from .local import InProcessTransport, client_store

    return InProcessTransport(session, client_store(session, out))


def run_flower_sim(cfg: Config, out: Path, launch: Launch = Launch()) -> dict | None:
    from ..errors import UserError
    from .flower import run_flower_simulation

    if launch.until is not None:  # checks.py refuses it first (RUNTIMES' until = False)
        raise UserError('--until works with runtime.kind = "local"; on Flower, stop the run and resume it')
    return run_flower_simulation(
        cfg, out, overwrite=launch.overwrite, resume=launch.resume, log=launch.log, rebuild_rounds=launch.rebuild_rounds
    )


run_local = in_process(_local)
