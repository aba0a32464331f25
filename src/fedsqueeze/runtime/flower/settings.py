"""How a Flower run learns its fedsqueeze config and run directory.

Deployment: through the run config (`[tool.flwr.app.config]` in pyproject.toml, overridden with
`flwr run --run-config FILE.toml`). The fedsqueeze config travels as TOML text, not as a path,
because the ServerApp and every ClientApp may sit on different machines; they all see the same
run config. Flower only accepts overrides for keys that have a default there, so the defaults
below must match pyproject.toml.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tomli_w
import tomllib

from ...config import Config, validate
from ...errors import ConfigError

CONFIG_TOML = "config-toml"
OUT_DIR = "out-dir"
OVERWRITE = "overwrite"
RESUME = "resume"
DEFAULTS = {CONFIG_TOML: "", OUT_DIR: "runs/flower", OVERWRITE: False, RESUME: False}


@dataclass
class AppSettings:
    config_toml: str
    out: Path
    overwrite: bool = False
    resume: bool = False

    @classmethod
    def from_run_config(cls, run_config) -> AppSettings:
        values = {**DEFAULTS, **dict(run_config)}
        if not str(values[CONFIG_TOML]).strip():
            raise ConfigError(
                f"run config {CONFIG_TOML!r} is empty: pass the fedsqueeze config, e.g. with "
                "`fedsqueeze flower run CONFIG.toml ...` or `flwr run . CONN --run-config FILE.toml`"
            )
        return cls(str(values[CONFIG_TOML]), Path(str(values[OUT_DIR])), bool(values[OVERWRITE]), bool(values[RESUME]))

    def to_run_config_toml(self) -> str:
        """A file for `flwr run --run-config FILE.toml`."""
        return tomli_w.dumps(
            {CONFIG_TOML: self.config_toml, OUT_DIR: str(self.out), OVERWRITE: self.overwrite, RESUME: self.resume}
        )


def config_from_toml(text: str) -> Config:
    """The run's config (config.validate: no torch, so a resident node's shim stays light); the
    ServerApp runs checks.check on it too, before anything loads."""
    try:
        return validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"run config {CONFIG_TOML!r} is not valid TOML: {exc}") from None
