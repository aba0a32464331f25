"""What a person sees: rich progress bars over rounds and local steps, one line per round."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

MB = 1e6


def mb(n: int) -> str:
    return f"{n / MB:.3f}"


class RichProgress:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=False)
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.rounds = self.steps = None
        self.steps_per_client = 0

    def start(self, total_rounds: int, done: int, steps: int) -> None:
        self.steps_per_client = steps
        self.bar.start()
        self.rounds = self.bar.add_task("rounds", total=total_rounds, completed=done, info="")
        self.steps = self.bar.add_task("local steps", total=steps, info="")
        self.console.print("[bold]round  clients        MB up   MB down  train loss  eval loss   seconds[/bold]")

    def round_start(self, rnd: int, clients: list[int]) -> None:
        self.bar.update(self.rounds, info=f"round {rnd}")

    def client_start(self, rnd: int, client: int, steps: int | None = None) -> None:
        """steps: this client's local steps when fewer than the round's (hybrid partial work)."""
        self.bar.reset(self.steps, total=steps or self.steps_per_client, info=f"client {client}")

    def step(self, loss: float) -> None:
        self.bar.update(self.steps, advance=1, info=f"loss {loss:.3f}")

    def round_end(self, r: dict) -> None:
        self.bar.advance(self.rounds)
        ev = f"{r['eval_loss']:.4f}" if "eval_loss" in r else ("next" if r.get("eval_pending") else "-")
        clients = ",".join(map(str, r["clients"]))
        self.console.print(
            f"{r['round']:>5}  {clients:<10} {mb(r['bytes_up']):>9} {mb(r['bytes_down']):>9}"
            f"  {r['train_loss']:>10.4f}  {ev:>9}  {r['seconds']:>8.1f}"
        )

    def log(self, text: str) -> None:
        self.console.print(text)

    def stop(self) -> None:
        self.bar.stop()


def summary_table(summary: dict) -> Table:
    t = Table(title=f"fedsqueeze: {summary['method']}", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("rounds", str(summary["rounds"]))
    t.add_row("clients", str(summary.get("clients", "")))
    t.add_row("uplink codec", summary.get("uplink_codec", ""))
    t.add_row("downlink codec", summary.get("downlink_codec", ""))
    t.add_row("MB up", mb(summary["bytes_up"]))
    t.add_row("MB down", mb(summary["bytes_down"]))
    t.add_row("MB total", mb(summary["bytes_total"]))
    if "base_eval_loss" in summary:
        t.add_row("eval loss before training", f"{summary['base_eval_loss']:.4f}")
    t.add_row("final eval loss", f"{summary['final_eval_loss']:.4f}")
    for name, loss in summary["eval"].items():
        t.add_row(f"  {name}", f"{loss:.4f}")
    classify = "macro_f1" in summary.get("eval_means", {})
    for key, label in (
        ("acc", "accuracy (classify)" if classify else "accuracy (choice)"),
        ("acc_se", "  standard error"),
        ("macro_f1", "macro-F1"),
        ("acc_norm", "acc_norm"),
        ("rougeL", "Rouge-L"),
        ("exact", "exact"),
    ):
        if key in summary.get("eval_means", {}):
            before = summary.get("base_eval_means", {}).get(key)
            text = f"{summary['eval_means'][key]:.3f}" + (f" (before {before:.3f})" if before is not None else "")
            t.add_row(label, text)
    if "chance" in summary.get("eval_means", {}):
        t.add_row("  chance", f"{summary['eval_means']['chance']:.3f}")
    if "classify_n" in summary.get("eval_means", {}):
        t.add_row("  items judged", str(summary["eval_means"]["classify_n"]))
    if "ood_eval_loss" in summary:
        t.add_row("OOD eval loss", f"{summary['ood_eval_loss']:.4f}")
    t.add_row("seconds", f"{summary['seconds']:.1f}")
    if "device" in summary:
        t.add_row("device / precision", f"{summary['device']} / {summary['precision']}")
    for key, label in (("peak_rss_mb", "peak RSS MB"), ("peak_gpu_mb", "peak GPU MB")):
        if key in summary:
            t.add_row(label, f"{summary[key]:,.0f}")
    return t


EVAL_COLUMNS = (
    ("loss", "loss", "{:.4f}"),
    ("acc", "acc", "{:.3f}"),
    ("acc_se", "acc SE", "{:.3f}"),
    ("macro_f1", "macro-F1", "{:.3f}"),
    ("classify_n", "items", "{}"),
    ("acc_norm", "acc_norm", "{:.3f}"),
    ("chance", "chance", "{:.3f}"),
    ("rougeL", "Rouge-L", "{:.3f}"),
    ("exact", "exact", "{:.3f}"),
)


def eval_table(result: dict) -> Table:
    """`fedsqueeze eval`'s table: one row per eval set, then the mean over sets (classify: all items pooled)."""
    rows = result["sets"]
    shown = [c for c in EVAL_COLUMNS if any(c[0] in r for r in rows.values())]
    t = Table(title=f"{result['adapter']} on {result['data']} ({result['model']})")
    t.add_column("eval set")
    t.add_column("examples", justify="right")
    for _, label, _ in shown:
        t.add_column(label, justify="right")
    for name, r in rows.items():
        t.add_row(name, str(r.get("examples", "")), *(fmt.format(r[k]) if k in r else "-" for k, _, fmt in shown))
    m = result["means"]
    t.add_row("mean", "", *(fmt.format(m[k]) if k in m else "-" for k, _, fmt in shown), style="bold")
    return t


def lm_eval_table(results: dict) -> Table:
    t = Table(title="lm-evaluation-harness")
    t.add_column("task")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for task, values in results.items():
        for metric, value in values.items():
            t.add_row(task, metric, f"{value:.4f}" if isinstance(value, float) else str(value))
    return t
