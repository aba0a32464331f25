"""The report's pictures: held-out loss vs round and vs cumulative MB (log axis, plain labels), and
beside them, when the runs judged task metrics (eval.metrics choice), accuracy vs cumulative MB.

Everything a reader needs is on the picture: the workload in the title (model, data, clients), one
legend entry per run naming its method, codec and the settings that differ between the runs, and
FedAvg's final loss as a dashed reference line when a FedAvg run is among them.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

MB = 1e6
WORKLOAD = ("model.name", "data.source", "data.clients")
# Keys that are in the label already (method, codec) or say how a run executed, not what it computed.
NOT_IN_LABEL = ("method", "uplink.codec", "downlink.codec", "runtime.", "train.device", "train.threads", "track.")
MAX_LABEL_KEYS = 4
ROUND_NOTES = 12  # the MB plot names each point's round up to this many points per run
KINDS = ("round", "mb")
ACCURACY_PLOT = "accuracy_vs_mb.png"
WRAP = 95  # characters per legend line (8 pt) at the figure's width
TITLE_WRAP = 75  # ... and per title line (11 pt)


def mb_label(value: float) -> str:
    """Plain decimal text for a tick in MB: 0.005, 0.1, 1, 10, 2,000 (never 1e-2 or 10^-1)."""
    if value >= 1000:
        return f"{value:,.0f}"
    digits = max(0, 2 - math.floor(math.log10(value))) if value > 0 else 0
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def mb_ticks(lo: float, hi: float) -> list[float]:
    """Tick positions for a log MB axis over [lo, hi]: powers of ten where the range spans
    decades, else 1-2-5, else every digit: at least three ticks where digits allow, at most eight."""
    lo, hi = min(lo, hi), max(lo, hi)
    if lo <= 0 or not math.isfinite(lo) or not math.isfinite(hi):
        return []
    ticks: list[float] = []
    for mantissas in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [
            float(f"{m}e{e}")
            for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for m in mantissas
            if lo <= float(f"{m}e{e}") <= hi
        ]
        if len(ticks) >= 3 or (len(ticks) >= 2 and len(mantissas) == 9):
            break
    if len(ticks) < 2:  # narrower than the gap between two digits: the ends, rounded
        ticks = sorted({float(f"{lo:.2g}"), float(f"{hi:.2g}")})
    step = math.ceil(len(ticks) / 8)
    return ticks[::step]


def log_mb_axis(ax) -> None:
    """A log x axis in MB over the data already drawn, with plain decimal ticks (mb_ticks)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator(mb_ticks(lo, hi)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: mb_label(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _codec(run) -> str:
    up = run.summary.get("uplink_codec") or run.config.get("uplink.codec") or "default codec"
    down = run.summary.get("downlink_codec") or run.config.get("downlink.codec") or "default codec"
    return up if up == down else f"up {up}, down {down}"


def _differing(runs) -> list[str]:
    keys = sorted({k for r in runs for k in r.config})
    return [k for k in keys if not k.startswith(NOT_IN_LABEL) and len({repr(r.config.get(k)) for r in runs}) > 1]


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def labels(runs) -> list[str]:
    """`method (codec / key=value of each setting that differs between the runs)`, one per run."""
    keys = _differing(runs)
    out = []
    for r in runs:
        own = [k for k in keys if r.config.get(k) is not None]  # another method's params are not this run's
        extra = [f"{k}={_value(r.config[k])}" for k in own[:MAX_LABEL_KEYS]]
        if len(own) > MAX_LABEL_KEYS:
            extra.append(f"+{len(own) - MAX_LABEL_KEYS} more")
        if not r.finished:
            extra.append("unfinished")
        inside = _codec(r) + (" / " + ", ".join(extra) if extra else "")
        out.append(f"{r.method} ({inside})")
    if len(set(out)) < len(out):  # the same configuration twice: the folder tells them apart
        out = [f"{label} [{r.name}]" for label, r in zip(out, runs)]
    return out


def workload(runs) -> str:
    """The settings every run shares that say what was trained: model, data, clients."""
    parts = []
    for key in WORKLOAD:
        values = {repr(r.config.get(key)) for r in runs}
        if len(values) == 1 and runs[0].config.get(key) is not None:
            value = runs[0].config[key]
            parts.append(f"{value} clients" if key == "data.clients" else _short_source(str(value)))
    return " · ".join(parts) or "runs with different workloads"


def _short_source(text: str) -> str:
    """`dictd:/usr/share/dictd/foldoc` -> `dictd:foldoc`: the folders say nothing on a picture."""
    return re.sub(r"(\w+):(?:[^\s:+]*/)([^\s/+]+)", r"\1:\2", text)


def _loss(r: dict) -> float | None:
    return r.get("eval_loss")


def _accuracy(r: dict) -> float | None:
    return (r.get("eval_means") or {}).get("acc")


def _points(rows: list[dict], kind: str, value=_loss) -> list[tuple[float, float, int]]:
    """(x, value, round) per evaluated round; x is the round or the MB sent up to it."""
    pts, cum = [], 0
    for r in rows:
        cum += r["bytes_up"] + r["bytes_down"]
        y = value(r)
        if y is None:
            continue
        if kind == "round":
            pts.append((r["round"], y, r["round"]))
        elif cum > 0:  # a log axis has no zero: a round that moved no bytes has no place on it
            pts.append((cum / MB, y, r["round"]))
    return pts


def figures(runs) -> dict:
    """{"round": Figure, "mb": Figure} and "accuracy" (vs MB) when a run judged choice accuracy,
    drawn and ready to save (tests read their Axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = labels(runs)
    fedavg = next((r for r in runs if r.method == "fedavg" and r.finished), None)
    figs = {}
    plots = [(kind, kind, _loss) for kind in KINDS]
    if any(_accuracy(row) is not None for run in runs for row in run.rows):
        plots.append(("accuracy", "mb", _accuracy))
    for key, kind, value in plots:
        # The legend sits below the axes (it never covers a line): the figure grows with it.
        lines = sum(len(textwrap.wrap(n, WRAP)) for n in names) + 1
        fig, ax = plt.subplots(figsize=(7.2, 4.4 + 0.2 * lines), layout="constrained")
        colors = {}
        for run, name in zip(runs, names):
            pts = _points(run.rows, kind, value)
            if pts:
                xs, ys, rounds = zip(*pts)
                (line,) = ax.plot(xs, ys, marker="o", ms=4, label=textwrap.fill(name, WRAP, subsequent_indent="  "))
                colors[run.name] = line.get_color()
                if kind == "mb" and len(pts) <= ROUND_NOTES:  # which round each point closes
                    for x, y, rnd in pts:
                        ax.annotate(
                            f"r{rnd}", (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7, color="0.35"
                        )
        if fedavg is not None and len(runs) > 1 and value is _loss:
            loss = fedavg.summary["final_eval_loss"]
            ax.axhline(
                loss, ls="--", lw=1, color=colors.get(fedavg.name, "gray"), label=f"fedavg final loss ({loss:.3f})"
            )
        if kind == "round":
            ax.set_xlabel("round")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            title = "Held-out loss by round"
        else:
            ax.set_xlabel("cumulative MB sent (up + down, log scale)")
            log_mb_axis(ax)
            title = "Held-out loss by traffic" if value is _loss else "Multiple-choice accuracy by traffic"
        ax.set_title(f"{title}\n{textwrap.fill(workload(runs), TITLE_WRAP)}", fontsize=11)
        ax.set_ylabel("mean held-out eval loss" if value is _loss else "mean accuracy (choice, log-likelihood)")
        chances = [row["eval_means"]["chance"] for r in runs for row in r.rows if "chance" in row.get("eval_means", {})]
        chance = chances[0] if chances else None
        if value is _accuracy and chance is not None:
            ax.axhline(chance, ls=":", lw=1, color="gray", label=f"chance ({chance:.3f})")
        ax.margins(y=0.08)
        ax.grid(alpha=0.3, which="major")
        if ax.get_legend_handles_labels()[0]:
            fig.legend(loc="outside lower center", fontsize=8, frameon=False)
        fig.canvas.draw()
        figs[key] = fig
    return figs


def plot(runs, out: Path) -> list[Path]:
    """Writes eval_loss_vs_round.png, eval_loss_vs_mb.png (and accuracy_vs_mb.png when the runs
    judged accuracy) into `out`; returns their paths."""
    figs = figures(runs)
    import matplotlib.pyplot as plt

    paths = []
    for kind, fig in figs.items():
        path = out / (ACCURACY_PLOT if kind == "accuracy" else f"eval_loss_vs_{kind}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
