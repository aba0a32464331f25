"""How a run starts, the same for every runtime: `execute` checks, builds, prepares the run
directory, prints the header (`describe`), and runs the driver over the runtime's transport."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config

if TYPE_CHECKING:
    from .session import Session


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
    transport_factory, cfg: Config, out: Path, launch: Launch = Launch(), prepared: bool = False, data=None
) -> dict | None:
    """The one launch sequence of every runtime: checks before any work (a resume's checkpoint and
    config, or a free run directory), the Session, the run directory, the header, the driver over
    `transport_factory(session, out)`, a resume's restore, the rounds. prepared: the caller already
    made the run directory (Flower's simulation does, before its engine starts). data: Session.build's
    (the Flower server of a per-owner run builds only the owners' names)."""
    from .. import rundir
    from .checkpoint import check_resumable
    from .driver import Driver
    from .session import Session

    log = launch.log
    if launch.resume:
        check_resumable(out, cfg, launch.rebuild_rounds)  # before any work: nothing loaded, nothing written
    elif not prepared:
        rundir.check_free(out, launch.overwrite)
    session = Session.build(cfg, log=log, data=data)  # before the run directory: a bad device writes nothing
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


def describe(s: Session, log) -> None:
    """The console header every runtime prints before its first round."""
    log(s.federation.summary())
    numel = s.adapter.layout.numel
    log(
        f"method {s.cfg.method} | uplink {s.uplink_spec} | downlink {s.downlink_spec} | "
        f"adapter {numel:,} params ({numel * 4 / 1e6:.2f} MB fp32)"
    )
    log(s.placement.describe())
    if s.privacy is not None:
        log(s.privacy.describe())
    from .driver import CloseRule

    rule = CloseRule.of(s.cfg.hybrid)
    if rule.keep_late:
        log(
            f"a round closes at a quorum of {rule.quorum:g} of its clients"
            + (f" or after {rule.deadline:g} s" if rule.deadline is not None else "")
            + "; late uploads join the round in which they arrive"
        )
