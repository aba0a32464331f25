"""Runtime registry: `runtime.kind` -> how a run executes. One file per runtime, one line here.

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
from ..registry import Registry

RUNTIMES: Registry[Callable[..., dict | None]] = Registry("runtime", key="runtime.kind")


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


def execute(
    transport_factory, cfg: Config, out: Path, launch: Launch = Launch(), prepared: bool = False
) -> dict | None:
    """The one launch sequence of every runtime: checks before any work (a resume's checkpoint and
    config, or a free run directory), the Session, the run directory, the header, the driver over
    `transport_factory(session, out)`, a resume's restore, the rounds. prepared: the caller already
    made the run directory (Flower's simulation does, before its engine starts)."""
    from .. import rundir
    from .driver import Driver, check_resumable, describe
    from .session import Session

    log = launch.log
    if launch.resume:
        check_resumable(out, cfg, launch.rebuild_rounds)  # before any work: nothing loaded, nothing written
    elif not prepared:
        rundir.check_free(out, launch.overwrite)
    session = Session.build(cfg, log=log)  # before the run directory: a bad device writes nothing
    if not launch.resume and not prepared:
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


def in_process(transport_factory) -> Callable[[Config, Path, Launch], dict | None]:
    """An execute function for a transport built from the Session and run directory,
    `transport_factory(session, out)`."""

    def run(cfg: Config, out: Path, launch: Launch = Launch()) -> dict | None:
        return execute(transport_factory, cfg, out, launch)

    return run


def _local(session, out: Path):
    from .local import InProcessTransport, client_store

    return InProcessTransport(session, client_store(session, out))


def _flower_sim(cfg: Config, out: Path, launch: Launch = Launch()) -> dict | None:
    from ..errors import UserError
    from .flower import run_flower_simulation

    if launch.until is not None:
        raise UserError('--until works with runtime.kind = "local"; on Flower, stop the run and resume it')
    return run_flower_simulation(
        cfg, out, overwrite=launch.overwrite, resume=launch.resume, log=launch.log, rebuild_rounds=launch.rebuild_rounds
    )


RUNTIMES.register("local")(in_process(_local))
RUNTIMES.register("flower-sim")(_flower_sim)
