"""Runtimes: `runtime.kind` -> how a run executes. One file per runtime, one line in the catalog
(registry.py's RUNTIMES, with the facts a config check reads: remote, until).

An entry is a callable `execute(cfg, out, launch)` that runs (or resumes, per `Launch`) a whole run
into `out` and returns its summary (None when stopped early by `launch.until`).
A runtime whose clients run in this process is a Transport, built as TransportClass(session, out),
and `in_process(TransportClass)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..registry import RUNTIMES

__all__ = ["RUNTIMES", "Launch", "in_process", "run_flower_sim", "run_local"]


@dataclass(frozen=True)
class Launch:
    """How a run starts: fresh or resumed, stopped early after `until`, and where it reports."""

    resume: bool = False
    until: int | None = None
    overwrite: bool = False
    progress: object = None
    log: Callable[[str], None] = print
    rebuild_rounds: bool = False
    """On resume: rewrite a missing or damaged rounds.jsonl from the checkpoint."""


def in_process(transport_factory) -> Callable[[Config, Path, Launch], dict | None]:
    """An execute function for a transport built from the Session and run directory,
    `transport_factory(session, out)`."""

    def execute(cfg: Config, out: Path, launch: Launch = Launch()) -> dict | None:
        from .. import rundir
        from .driver import Driver, check_resumable, describe
        from .session import Session

        log = launch.log
        if launch.resume:
            check_resumable(out, cfg, launch.rebuild_rounds)  # before any work: nothing loaded, nothing written
        else:
            rundir.check_free(out, launch.overwrite)
        session = Session.build(cfg, log=log)  # before the run directory: a bad device writes nothing
        if not launch.resume:
            rundir.prepare(out, cfg, launch.overwrite)
        describe(session, log)
        driver = Driver(session, transport_factory(session, out), out, launch.progress)
        if launch.resume:
            driver.restore()
            if cfg.train.rounds > driver.done:
                log(f"resuming {out} after round {driver.done} of {cfg.train.rounds}")
            (out / rundir.CONFIG).write_text(cfg.to_toml())
        summary = driver.run(until=launch.until)
        if summary is None:
            log(f"stopped after round {driver.done}; continue with: fedsqueeze resume {out}")
        return summary

    return execute


def _local(session, out: Path):
    from .local import InProcessTransport, client_store

    return InProcessTransport(session, client_store(session, out))


def run_flower_sim(cfg: Config, out: Path, launch: Launch = Launch()) -> dict | None:
    from ..errors import UserError
    from .flower import run_flower_simulation

    if launch.until is not None:  # checks.py refuses it first (RUNTIMES' until = False)
        raise UserError('--until works with runtime.kind = "local"; on Flower, stop the run and resume it')
    return run_flower_simulation(cfg, out, overwrite=launch.overwrite, resume=launch.resume, log=launch.log)


run_local = in_process(_local)
