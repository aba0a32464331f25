"""Runtime registry: `runtime.kind` -> how a run executes. One file per runtime, one line here.

An entry is a callable `execute(cfg, out, *, resume, until, overwrite, progress, log)` that runs
(or resumes) a whole run into `out` and returns its summary (None when stopped early by `until`).
A runtime whose clients run in this process is a Transport and `in_process(TransportClass)`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..config import Config
from ..registry import Registry

RUNTIMES: Registry[Callable[..., dict | None]] = Registry("runtime", key="runtime.kind")


def in_process(transport_factory) -> Callable[..., dict | None]:
    """An execute function for a transport built from the Session, `transport_factory(session)`."""

    def execute(
        cfg: Config,
        out: Path,
        *,
        resume: bool = False,
        until: int | None = None,
        overwrite: bool = False,
        progress=None,
        log=print,
    ) -> dict | None:
        from . import rundir
        from .driver import Driver, describe
        from .session import Session

        if not resume:
            rundir.check_free(out, overwrite)
        session = Session.build(cfg, log=log)  # before the run directory: a bad device writes nothing
        if not resume:
            rundir.prepare(out, cfg, overwrite)
        describe(session, log)
        driver = Driver(session, transport_factory(session), out, progress)
        if resume:
            driver.restore()
            if cfg.train.rounds > driver.done:
                log(f"resuming {out} after round {driver.done} of {cfg.train.rounds}")
            (out / rundir.CONFIG).write_text(cfg.to_toml())
        summary = driver.run(until=until)
        if summary is None:
            log(f"stopped after round {driver.done}; continue with: fedsqueeze resume {out}")
        return summary

    return execute


def _local(session):
    from .local import InProcessTransport

    return InProcessTransport(session)


def _flower_sim(
    cfg: Config,
    out: Path,
    *,
    resume: bool = False,
    until: int | None = None,
    overwrite: bool = False,
    progress=None,
    log=print,
) -> dict | None:
    from ..errors import UserError
    from .flower import run_flower_simulation

    if until is not None:
        raise UserError('--until works with runtime.kind = "local"; on Flower, stop the run and resume it')
    return run_flower_simulation(cfg, out, overwrite=overwrite, resume=resume, log=log)


RUNTIMES.register("local")(in_process(_local))
RUNTIMES.register("flower-sim")(_flower_sim)
