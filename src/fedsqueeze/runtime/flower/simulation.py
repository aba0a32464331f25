"""`runtime.kind = "flower-sim"`: the same ServerApp and ClientApp on Flower's simulation engine.

The ServerApp runs in this process (a thread of Flower's engine) and writes the run directory
directly; ClientApps run in Ray actors, one virtual SuperNode per client, whose node config
carries `partition-id` / `num-partitions` exactly as a real SuperNode's would.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ... import rundir
from ...config import Config
from ...errors import ConfigError
from ...hardware import Placement
from ...quiet import flower_simulation_quietly
from ...registry import extensions


def run_flower_simulation(
    cfg: Config, out: Path, overwrite: bool = False, resume: bool = False, log=print, rebuild_rounds: bool = False
) -> dict:
    from flwr.simulation import run_simulation

    from .client_app import make_client_app
    from .server import serve
    from .server_app import make_server_app

    gpus = _gpus_for(cfg)
    Placement.resolve(cfg.train.device, cfg.train.precision, cfg.model.dtype)  # a bad device fails here, once
    if not resume:
        rundir.prepare(out, cfg, overwrite)
    result: dict = {}

    def main(grid, context) -> None:
        result["summary"] = serve(grid, cfg, out, resume=resume, log=log, rebuild_rounds=rebuild_rounds)

    # Ray keeps sockets under its temp dir; a short path keeps them under the 107-byte limit.
    ray_tmp = tempfile.mkdtemp(prefix="fsq-ray-")
    old_tmp = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = ray_tmp
    workers = cfg.runtime.sim_workers
    backend: dict[str, Any] = {
        # Ray runs as many ClientApps at once as both resources allow: sim_gpus 0.25 puts four on a GPU.
        "client_resources": {"num_cpus": 1, "num_gpus": cfg.runtime.sim_gpus},
        "init_args": {
            "num_cpus": workers,
            "num_gpus": gpus,
            "_temp_dir": ray_tmp,
            "object_store_memory": 256 * 1024 * 1024,
        },
    }
    try:
        with flower_simulation_quietly():
            run_simulation(
                make_server_app(main),
                make_client_app(cfg.to_toml(), extensions()),  # ClientApps run in Ray's processes
                num_supernodes=cfg.data.clients,
                backend_config=backend,
            )
    finally:
        _shutdown_ray()
        if old_tmp is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old_tmp
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if "summary" not in result:
        raise RuntimeError("the Flower simulation ended without finishing the run (see the log above)")
    return result["summary"]


def _gpus_for(cfg: Config) -> int:
    """GPUs handed to Ray: all of this machine's when ClientApps ask for a share of one."""
    if cfg.runtime.sim_gpus == 0:
        return 0
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(
            f"config key 'runtime.sim_gpus': {cfg.runtime.sim_gpus:g} GPU per ClientApp, but this "
            "machine has no CUDA GPU; use runtime.sim_gpus = 0"
        )
    return count


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass
