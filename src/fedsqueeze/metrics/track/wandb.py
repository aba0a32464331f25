"""Weights & Biases, offline only: DIR/track/wandb/offline-run-<time>-<id>/, uploaded later with
`wandb sync DIR/track/wandb/offline-run-*` (one folder per process; the same run id, so a resumed
run syncs into the one W&B run). Nothing here talks to a network: the run is made with
mode="offline", system stats and metadata probes off, and W&B's error reporting off
(WANDB_ERROR_REPORTING=false, read by the wandb-core process it starts).

`offline_history(folder)` reads the history back from the offline run files (the W&B transaction
log: LevelDB-style 32 KiB blocks of protobuf `Record`s), for tests and for checking a run before
syncing it.
"""

from __future__ import annotations

import json
import os
import struct
import time
from datetime import datetime
from pathlib import Path

from .base import RunInfo

FOLDER = "wandb"  # wandb.init(dir=DIR/track) writes DIR/track/wandb/


class WandbSink:
    name = "wandb"

    def __init__(self, info: RunInfo):
        self.info = info
        self.run = None

    def start(self, config: dict) -> None:
        os.environ["WANDB_ERROR_REPORTING"] = "false"  # read when wandb-core starts: no telemetry upload
        os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.info.folder.mkdir(parents=True, exist_ok=True)
        self._wait_for_a_new_second()
        settings = wandb.Settings(
            mode="offline",
            x_disable_stats=True,  # the system monitor probes cloud metadata addresses
            x_disable_meta=True,
            disable_git=True,
            save_code=False,
            console="off",
            silent=True,
        )
        self.run = wandb.init(
            project=self.info.project,
            name=self.info.name,
            id=self.info.run_id,
            resume="allow",
            dir=str(self.info.folder),
            config=config,
            settings=settings,
            reinit="create_new",
        )
        self.run.define_metric("*", step_metric="round")

    def _wait_for_a_new_second(self) -> None:
        """W&B names an offline folder by the second its run started (local time): a resume that
        starts in the same second as the process before it would write into that one's folder."""
        taken = {p.name.split("-")[2] for p in offline_runs(self.info.folder)}
        while datetime.now().strftime("%Y%m%d_%H%M%S") in taken:
            time.sleep(0.05)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log({**scalars, "round": step}, step=step)

    def finish(self, summary: dict) -> None:
        self.run.summary.update({f"final/{k}": v for k, v in _numbers(summary).items()})
        self.close()

    def close(self) -> None:
        if self.run is not None:
            log = Path(self.run.settings.sync_file)
            self.run.finish()
            self.run = None
            _wait_until_written(log)


def _wait_until_written(log: Path, timeout: float = 30.0) -> None:
    """`finish` returns before wandb-core has written the run's last records: wait for its exit
    record, so a resume (or a reader) that follows at once finds every step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(r.WhichOneof("record_type") == "exit" for r in read_records(log)):
                return
        except (OSError, ValueError):  # not there yet, or (never seen) unreadable: wait, then go on
            pass
        time.sleep(0.05)


def _numbers(tree: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


# ---- reading an offline run back ---------------------------------------------------------------
BLOCK = 32768
FILE_HEADER = 7  # ":W&B", magic 0xBEE1, version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def offline_runs(track_folder: Path) -> list[Path]:
    """The offline run folders under DIR/track, oldest first."""
    return sorted((track_folder / FOLDER).glob("offline-run-*"))


def read_records(path: Path):
    """The protobuf Records of one .wandb transaction log, in order. A log that wandb-core is still
    writing ends in a record cut short: reading stops before it (the records up to there are whole).
    A record that is whole but does not parse is a corrupt log: ValueError."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    pos, pending = FILE_HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        if len(chunk) < length:
            break  # the writer is in the middle of this record
        pos += 7 + length
        if kind == FULL:
            payload = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            payload, pending = pending + chunk, b""
        else:
            break  # zero padding at the end of a file that was not closed
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(payload)
        except DecodeError as err:
            raise ValueError(f"{path}: a record at byte {pos - 7 - length} does not parse ({err})") from err
        yield record


def offline_history(track_folder: Path) -> list[dict]:
    """Every history row of the offline runs under DIR/track ({"_step": n, key: value, ...}),
    oldest folder first: what `wandb sync` would upload."""
    rows = []
    for run in offline_runs(track_folder):
        for path in sorted(run.glob("run-*.wandb")):
            for record in read_records(path):
                if record.WhichOneof("record_type") != "history":
                    continue
                row = {}
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    row[key] = json.loads(item.value_json)
                if record.history.HasField("step"):
                    row.setdefault("_step", record.history.step.num)
                rows.append(row)
    return rows


def offline_config(track_folder: Path) -> dict:
    """The config of the newest offline run (its run record), {key: value}."""
    config = {}
    for run in offline_runs(track_folder):
        for path in sorted(run.glob("run-*.wandb")):
            for record in read_records(path):
                kind = record.WhichOneof("record_type")
                items = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
                for item in items:
                    key = item.key or "/".join(item.nested_key)
                    config[key] = json.loads(item.value_json)
    return config
