"""MLflow: a file store in DIR/track/mlruns (`mlflow ui --backend-store-uri DIR/track/mlruns`).

MLflow 3 keeps its file store in maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE is
set; a database store needs the full `mlflow` package (SQLAlchemy, Alembic), the file store only
`mlflow-skinny`. The run id MLflow chose is kept in DIR/track/mlflow_run_id, so a resume logs into
the same run. Parameters are written once (MLflow refuses to change one); a resume's config is
logged as the text artifact config.txt beside the first.
"""

from __future__ import annotations

import os

from .base import RunInfo

FOLDER = "mlruns"
RUN_ID = "mlflow_run_id"
MAX_PARAM = 500  # characters of a parameter's value kept (MLflow's limit is larger; configs are short)


class MlflowSink:
    name = "mlflow"

    def __init__(self, info: RunInfo):
        self.info = info
        self.client = None
        self.run_id: str | None = None

    def start(self, config: dict) -> None:
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        store = self.info.folder / FOLDER
        store.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=store.resolve().as_uri())
        id_file = self.info.folder / RUN_ID
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            step = self.info.resumed_after if self.info.resumed_after is not None else 0
            self.client.log_text(self.run_id, _text(config), f"config_from_step_{step + 1}.txt")
            return
        experiment = self.client.get_experiment_by_name(self.info.project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.info.project)
        tags = {"fedsqueeze.run_id": self.info.run_id}
        run = self.client.create_run(experiment_id, run_name=self.info.name, tags=tags)
        self.run_id = run.info.run_id
        id_file.write_text(self.run_id + "\n")
        params = [Param(k, str(v)[:MAX_PARAM]) for k, v in config.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_text(self.run_id, _text(config), "config.txt")

    def log(self, scalars: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def finish(self, summary: dict) -> None:
        import json

        self.client.log_text(self.run_id, json.dumps(summary, indent=1) + "\n", "summary.json")
        self.client.set_terminated(self.run_id, status="FINISHED")
        self.client = None

    def close(self) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, status="KILLED")  # stopped, not failed: resume goes on
            self.client = None


def _text(config: dict) -> str:
    return "".join(f"{k} = {v!r}\n" for k, v in config.items())
