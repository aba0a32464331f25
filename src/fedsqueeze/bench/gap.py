"""Each row's eval loss against FedAvg's, round by round: whether a method's lag behind FedAvg stays
put or grows with the rounds (issue 31: FedSRD's did, +0.66% on W4-lite, +1.49% on full W4).

Written by every bench run that has a `fedavg` row (gap.md, gap.json beside bench.md), from the
rounds' own eval records (rounds.jsonl): rows must evaluate at the same rounds (eval.every = 1,
the default, gives every round). Round 0 is the base model, the same for every row.
"""

from __future__ import annotations

import json
from pathlib import Path

REFERENCE = "fedavg"


def losses(rows: list[dict], base: float | None = None) -> dict[int, float]:
    """round -> eval loss, from a run's round records (round 0: the base model's, when given)."""
    out = {0: base} if base is not None else {}
    out.update({int(r["round"]): float(r["eval_loss"]) for r in rows if "eval_loss" in r})
    return out


def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of y over x (None with fewer than two points)."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


def analyse(curves: dict[str, dict[int, float]], reference: str = REFERENCE) -> dict | None:
    """Per row and round: loss and gap (loss / FedAvg's - 1) where both were evaluated; per row the
    first and last gap (from round 1 on) and the gap's least-squares growth per round."""
    ref = curves.get(reference)
    if not ref:
        return None
    rounds = sorted(ref)
    rows = {}
    for name, curve in curves.items():
        if name == reference:
            continue
        gaps = {r: curve[r] / ref[r] - 1 for r in rounds if r in curve and r > 0 and ref[r] > 0}
        trained = sorted(gaps)
        rows[name] = {
            "loss": {str(r): curve[r] for r in rounds if r in curve},
            "gap": {str(r): g for r, g in gaps.items()},
            "first_gap": gaps[trained[0]] if trained else None,
            "last_gap": gaps[trained[-1]] if trained else None,
            "gap_per_round": slope([(r, gaps[r]) for r in trained]),
        }
    return {"reference": reference, "rounds": rounds, "fedavg": {str(r): ref[r] for r in rounds}, "rows": rows}


def markdown(a: dict) -> str:
    names = list(a["rows"])
    lines = [
        "Eval loss by round, and each row's gap to FedAvg's at that round:",
        "",
        "| round | fedavg |" + "".join(f" {n} |" for n in names),
        "|---:|---:|" + "---:|" * len(names),
    ]
    for r in a["rounds"]:
        line = f"| {r} | {a['fedavg'][str(r)]:.4f} |"
        for n in names:
            row = a["rows"][n]
            loss, gap = row["loss"].get(str(r)), row["gap"].get(str(r))
            cell = "-" if loss is None else f"{loss:.4f}" + (f" ({100 * gap:+.2f}%)" if gap is not None else "")
            line += f" {cell} |"
        lines.append(line)
    lines.append("")
    for n in names:
        row = a["rows"][n]
        if row["first_gap"] is None:
            continue
        growth = row["gap_per_round"]
        trend = "" if growth is None else f", growing {100 * growth:+.3f} points a round (least squares)"
        first, last = 100 * row["first_gap"], 100 * row["last_gap"]
        lines.append(f"- {n}: {first:+.2f}% after the first round, {last:+.2f}% at the last{trend}")
    return "\n".join(lines)


def write(curves: dict[str, dict[int, float]], out: Path) -> str | None:
    """gap.json and gap.md in `out`; returns the markdown, or None without a fedavg row."""
    a = analyse(curves)
    if a is None or not a["rows"]:
        return None
    (out / "gap.json").write_text(json.dumps(a, indent=1))
    text = markdown(a)
    (out / "gap.md").write_text(text + "\n")
    return text
