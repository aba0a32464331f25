"""Library chatter that says nothing to a fedsqueeze user, silenced at the narrowest scope.

Each filter names one message and is active only around the call that emits it, so a warning
from anything else (the user's code, a real problem) still shows. `FEDSQUEEZE_VERBOSE=1` (the CLI's
`--verbose`) keeps transformers' weight-loading progress bar; it reaches Flower's worker processes
through the environment.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

VERBOSE_ENV = "FEDSQUEEZE_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def set_verbose(on: bool) -> None:
    if on:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)


@contextmanager
def no_checkpointing_alias_warning() -> Iterator[None]:
    """peft reads `model.is_gradient_checkpointing`, which transformers 5 deprecates for
    `is_activation_checkpointing` with a FutureWarning on every run: nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


@contextmanager
def loading_quietly() -> Iterator[None]:
    """No "Loading weights" progress bar while a base model loads (unless verbose)."""
    from transformers.utils import logging as hf_logging

    if verbose() or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


class _DropRunSimulationDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("DEPRECATED FEATURE") and "run_simulation" in str(record.args))


@contextmanager
def flower_simulation_quietly() -> Iterator[None]:
    """Around Flower's `run_simulation` (`runtime.kind = "flower-sim"`): Flower logs that this
    Python entry point is deprecated for `flwr run` (fedsqueeze chose it on purpose), and Ray's
    init warns that a future Ray will stop hiding GPUs from actors that ask for none (fedsqueeze
    sets `runtime.sim_gpus` explicitly either way)."""
    logger = logging.getLogger("flwr")
    drop = _DropRunSimulationDeprecation()
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
            yield
    finally:
        logger.removeFilter(drop)


def quiet_console() -> None:
    """What the CLI sets once per command: transformers and datasets log errors only (all of
    them when verbose), and tokenizers does not warn about forking."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose():
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("datasets").setLevel(logging.ERROR)
