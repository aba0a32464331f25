"""fedsqueeze as a Flower app: the in-process runtime's ServerRole / ClientRole wired to Flower
messages, on Flower's simulation engine (`runtime.kind = "flower-sim"`) or a real SuperLink with
SuperNodes (`flwr run`, see docs/DEPLOY.md).

server_app.py / client_app.py   the apps ([tool.flwr.app.components] in pyproject.toml)
server.py                       the round loop over a Grid, the run directory, checkpoints
wire.py                         message contents: one uint8 array per blob; client state
simulation.py                   run_flower_simulation (what `fedsqueeze run` calls)
deploy.py                       commands for a SuperLink, SuperNodes and `flwr run`
"""

import os

# Nothing leaves the machine but the federation's own traffic: no usage reporting by Flower or
# Ray. Flower reads this when it is first imported, so it is set before any flwr import.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def run_flower_simulation(*args, **kwargs):
    from .simulation import run_flower_simulation as run

    return run(*args, **kwargs)


__all__ = ["run_flower_simulation"]
