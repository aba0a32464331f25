"""fedsqueeze: communication-efficient federated LoRA fine-tuning with an exact byte ledger.

    result = fedsqueeze.run("examples/tiny.toml", ["train.rounds=2"], out="runs/tiny")
    result.summary, result.rounds, result.paths.adapter

run, resume, report and load_config do what `fedsqueeze run | resume | report` do (api.py);
importing this package loads neither torch nor transformers until a run needs them.
"""

from .api import Result, RunPaths, load_config, report, resume, run
from .errors import ConfigError, UserError
from .version import __version__

__all__ = ["ConfigError", "Result", "RunPaths", "UserError", "__version__", "load_config", "report", "resume", "run"]
