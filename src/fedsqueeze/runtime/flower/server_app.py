"""The ServerApp. Deployment (`flwr run`) reads the fedsqueeze config and run directory from the
run config; the simulation engine builds its own ServerApp around the config it was given."""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO

from flwr.app import Context
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp


def log_info(message) -> None:
    flwr_log(INFO, "%s", message)


def make_server_app(main: Callable[[Grid, Context], None]) -> ServerApp:
    app = ServerApp()
    app.main()(main)
    return app


def _deployment_main(grid: Grid, context: Context) -> None:
    from ... import rundir
    from ...checks import check
    from .server import serve
    from .settings import AppSettings, config_from_toml

    settings = AppSettings.from_run_config(context.run_config)
    cfg = check(config_from_toml(settings.config_toml))  # every check before anything loads or is written
    out = settings.out.expanduser().resolve()
    if not settings.resume:
        rundir.prepare(out, cfg, settings.overwrite)
    serve(grid, cfg, out, resume=settings.resume, log=log_info)
    log_info(f"run directory: {out}")


app = make_server_app(_deployment_main)
