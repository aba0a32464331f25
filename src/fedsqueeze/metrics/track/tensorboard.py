"""TensorBoard: event files in DIR/track/tensorboard (`tensorboard --logdir DIR/track/tensorboard`).

The resolved config goes in as the run's hyperparameters (the HParams tab) and as text; a resume
opens a new event file in the same folder with `purge_step` at its first new step, so TensorBoard
drops anything an interrupted process wrote past the checkpoint and no step is shown twice.
"""

from __future__ import annotations

import json

from .base import RunInfo

FOLDER = "tensorboard"


class TensorBoardSink:
    name = "tensorboard"

    def __init__(self, info: RunInfo):
        self.info = info
        self.folder = info.folder / FOLDER
        self.writer = None

    def start(self, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        resumed = self.info.resumed_after
        purge = resumed + 1 if resumed is not None else None
        self.writer = SummaryWriter(str(self.folder), purge_step=purge, flush_secs=5)
        if resumed is None:
            from torch.utils.tensorboard.summary import hparams

            values = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
            for summary in hparams(values, {"eval/loss": float("nan")}):
                self.writer.file_writer.add_summary(summary)
        text = "\n".join(f"    {k} = {v!r}" for k, v in config.items())
        self.writer.add_text("config", text, global_step=purge or 0)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def finish(self, summary: dict) -> None:
        self.writer.add_text("summary", "    " + json.dumps(summary, indent=1).replace("\n", "\n    "))
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
