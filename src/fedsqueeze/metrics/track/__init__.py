"""Experiment trackers (`[track]`): TensorBoard, Weights & Biases (offline), MLflow (a file store).

Each sink gets the same scalars from the same records that rounds.jsonl holds (base.py), with the
server round as the step, and writes inside the run directory (DIR/track/). One file per sink and
one line in registry.py's TRACKERS; the library a sink needs is imported only when a run uses it (the `[track]`
extra installs all three). A resume continues each tracker's run (same id, same folder) from the
step after the last one it logged, so no step is written twice and none is missing.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path

from ...errors import ConfigError
from ...registry import TRACKERS
from .base import RunInfo, Sink, base_scalars, flat_config, record_scalars

TRACK_DIR = "track"
STATE = "state.json"


def check_sinks(names: list[str]) -> None:
    """Every name registered and its package installed, before any work (ConfigError names the key)."""
    if len(set(names)) != len(names):
        raise ConfigError(f"config key 'track.to': {names} names a tracker twice")
    for name in names:
        needs = TRACKERS.info(name)["needs"]
        if importlib.util.find_spec(needs) is None:
            raise ConfigError(
                f"config key 'track.to': {name!r} needs the {needs!r} package, which is not installed: "
                "pip install 'fedsqueeze[track]' (or leave it out of track.to)"
            )


class Tracking:
    """The run's open sinks. `log(record)` after each round's line in rounds.jsonl; `finish(summary)`
    after summary.json; `close()` when the process stops before that (idempotent)."""

    def __init__(self, folder: Path, sinks: list[Sink], state: dict, totals: dict[str, dict]):
        self.folder, self.sinks, self.state, self.totals = folder, sinks, state, totals
        self.closed = False

    @property
    def logged(self) -> dict[str, int]:
        """sink name -> the last step it logged (kept in DIR/track/state.json)."""
        return self.state.setdefault("logged", {})

    @classmethod
    def open(cls, cfg, out: Path, records: list[dict], base_eval: dict | None) -> Tracking:
        """Starts (or, on a resume, reopens) the configured sinks and logs what they have not seen
        yet: step 0 (the base evaluation) and every finished round in `records` past their last step."""
        if not cfg.track.to:
            return cls(out / TRACK_DIR, [], {}, {})
        folder = out / TRACK_DIR
        folder.mkdir(parents=True, exist_ok=True)
        state = _read_state(folder)
        run_id = state.setdefault("run_id", uuid.uuid4().hex[:12])
        logged: dict[str, int] = state.setdefault("logged", {})
        name = cfg.track.run_name or out.resolve().name
        config = {**flat_config(cfg.model_dump()), "fedsqueeze.version": _version(), "run_dir": str(out)}
        sinks, totals = [], {}
        for sink_name in cfg.track.to:
            info = RunInfo(folder, run_id, name, cfg.track.project, logged.get(sink_name))
            sink = TRACKERS.get(sink_name)(info)
            sink.start(config)
            sinks.append(sink)
            totals[sink_name] = {}
        tracking = cls(folder, sinks, state, totals)
        _write_state(folder, state)
        tracking._catch_up(records, base_eval)
        return tracking

    def _catch_up(self, records: list[dict], base_eval: dict | None) -> None:
        for sink in self.sinks:
            last = self.logged.get(sink.name, -1)
            totals = self.totals[sink.name]
            if base_eval is not None and last < 0:
                self._log(sink, base_scalars(base_eval), 0)
            for record in records:
                if record.get("eval_pending"):  # told when its evaluation comes (the next round)
                    break
                scalars = record_scalars(record, totals)  # every record: the cumulative bytes need them
                if record["round"] > last:
                    self._log(sink, scalars, record["round"])

    def log_base(self, base_eval: dict) -> None:
        """Step 0, where the base evaluation came after the run started (on round 1's train messages)."""
        for sink in self.sinks:
            if self.logged.get(sink.name, -1) < 0:
                self._log(sink, base_scalars(base_eval), 0)

    def log(self, record: dict) -> None:
        for sink in self.sinks:
            self._log(sink, record_scalars(record, self.totals[sink.name]), record["round"])

    def _log(self, sink: Sink, scalars: dict[str, float], step: int) -> None:
        sink.log(scalars, step)
        self.logged[sink.name] = step
        _write_state(self.folder, self.state)

    def finish(self, summary: dict) -> None:
        for sink in self.sinks:
            sink.finish(summary)
        self.closed = True

    def close(self) -> None:
        if not self.closed:
            for sink in self.sinks:
                sink.close()
            self.closed = True


def _read_state(folder: Path) -> dict:
    path = folder / STATE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(folder: Path, state: dict) -> None:
    tmp = folder / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(folder / STATE)


def _version() -> str:
    from ...version import __version__

    return __version__
