"""What a run prints as it goes: the progress interface the driver reports to (NullProgress), and
a one-line-per-round printer for loggers (LogProgress; the console's rich bars are metrics/console.py)."""

from __future__ import annotations


class NullProgress:
    def start(self, total_rounds: int, done: int, steps: int) -> None: ...
    def round_start(self, rnd: int, clients: list[int]) -> None: ...
    def client_start(self, rnd: int, client: int, steps: int | None = None) -> None: ...
    def step(self, loss: float) -> None: ...
    def round_end(self, record: dict) -> None: ...
    def log(self, text: str) -> None: ...
    def stop(self) -> None: ...


class LogProgress(NullProgress):
    """One line per round through `log` (Flower's logger, a test's list)."""

    def __init__(self, log):
        self._log = log

    def log(self, text: str) -> None:
        self._log(text)

    def round_end(self, r: dict) -> None:
        line = (
            f"round {r['round']}: clients {r['clients']} | up {r['bytes_up']:,} B | down {r['bytes_down']:,} B | "
            f"train loss {r['train_loss']:.4f}"
        )
        if "eval_loss" in r:
            line += f" | eval loss {r['eval_loss']:.4f}" + _means_text(r)
        self._log(line + f" | {r['seconds']:.1f} s")


def _means_text(fields: dict) -> str:
    """' | acc 0.31 (chance 0.25) | rougeL 0.12' for a record with task metrics, else ''."""
    m = fields.get("eval_means") or {}
    text = ""
    if "macro_f1" in m:
        text += f" | acc {m['acc']:.3f} +- {m['acc_se']:.3f} / macro-F1 {m['macro_f1']:.3f} (chance {m['chance']:.3f})"
    elif "acc" in m:
        text += f" | acc {m['acc']:.3f} / norm {m.get('acc_norm', float('nan')):.3f} (chance {m['chance']:.3f})"
    for key in ("rougeL", "exact"):
        if key in m:
            text += f" | {key} {m[key]:.3f}"
    return text
