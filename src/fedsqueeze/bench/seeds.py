"""One suite over several seeds: is a verdict a property of the method or of the draw?

`fedsqueeze bench --seeds 0,1` runs the suite once per seed, each into OUT/seedN (a whole suite folder:
bench.md, and the frontier where the suite has one), then writes OUT/seeds.md and seeds.json: per row its
quality against FedAvg's *of the same seed* (the seed draws the data order, the initial adapter, the
stochastic rounding: a row and its reference share them), the mean of that gap over the seeds with its
spread (min to max), and the frontier's verdict on the mean and on every seed. Bytes are the mean too
(they can differ by seed where a method's density adapts to the update).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .frontier import ACC_TOLERANCE, FAMILY, MB, REFERENCE, REFERENCE_BF16, TOLERANCE


def parse(text: str) -> list[int]:
    """ "0,1" or "0-2" -> [0, 1] / [0, 1, 2]."""
    try:
        if "-" in text.strip().lstrip("-"):
            lo, hi = text.split("-", 1)
            seeds = list(range(int(lo), int(hi) + 1))
        else:
            seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: want integers, e.g. 0,1 or 0-2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: want distinct integers, e.g. 0,1 or 0-2")
    return seeds


def _gap(row: dict, ref: dict, verdict: str) -> float:
    """Loss: relative (+0.01 is 1% worse); accuracy: absolute points (-0.01 is one point worse)."""
    if verdict == "acc":
        return row["acc"] - ref["acc"]
    return row["final_eval_loss"] / ref["final_eval_loss"] - 1


def _within(gap: float, verdict: str) -> bool:
    return gap >= -ACC_TOLERANCE - 1e-12 if verdict == "acc" else gap <= TOLERANCE + 1e-12


def summarize(per_seed: dict[int, list[dict]], verdict: str = "loss") -> dict:
    """per_seed: seed -> that seed's bench results. Rows present in every seed are compared; a row's
    gap is taken against the reference of its own seed."""
    seeds = sorted(per_seed)
    by_seed = {s: {r["method"]: r for r in per_seed[s]} for s in seeds}
    names = [r["method"] for r in per_seed[seeds[0]] if all(r["method"] in by_seed[s] for s in seeds)]
    quality = "acc" if verdict == "acc" else "final_eval_loss"
    has_ref = all(REFERENCE in by_seed[s] for s in seeds)
    has_bf16 = all(REFERENCE_BF16 in by_seed[s] for s in seeds)
    rows = []
    for name in names:
        mine = [by_seed[s][name] for s in seeds]
        if verdict == "acc" and any("acc" not in r for r in mine):
            continue
        mb = sum(r["bytes_total"] for r in mine) / len(mine)
        row = {
            "row": name,
            "family": FAMILY.get(name, name),
            "bytes_total": mb,
            "quality": {s: by_seed[s][name][quality] for s in seeds},
            "mean_quality": sum(r[quality] for r in mine) / len(mine),
        }
        if has_ref:
            gaps = {s: _gap(by_seed[s][name], by_seed[s][REFERENCE], verdict) for s in seeds}
            ref_mb = sum(by_seed[s][REFERENCE]["bytes_total"] for s in seeds) / len(seeds)
            row.update(
                vs_fp32=mb / ref_mb,
                gap=gaps,
                mean_gap=sum(gaps.values()) / len(gaps),
                spread=(min(gaps.values()), max(gaps.values())),
                within_every=all(_within(g, verdict) for g in gaps.values()),
            )
            row["within_mean"] = _within(row["mean_gap"], verdict)
        if has_bf16:
            row["vs_bf16"] = mb / (sum(by_seed[s][REFERENCE_BF16]["bytes_total"] for s in seeds) / len(seeds))
        rows.append(row)
    families = {}
    for family in dict.fromkeys(r["family"] for r in rows):
        inside = [r for r in rows if r["family"] == family and r.get("within_mean")]
        families[family] = min(inside, key=lambda r: r["bytes_total"])["row"] if inside else None
    return {"seeds": seeds, "verdict": verdict, "rows": rows, "families": families, "has_ref": has_ref}


def _fmt_gap(g: float, verdict: str) -> str:
    return f"{100 * g:+.1f}" if verdict == "acc" else f"{100 * g:+.2f}%"


def markdown(a: dict) -> str:
    seeds, verdict = a["seeds"], a["verdict"]
    what = "accuracy" if verdict == "acc" else "eval loss"
    fmt_q = (lambda q: f"{q:.3f}") if verdict == "acc" else (lambda q: f"{q:.4f}")
    head = "| row | method | mean total MB | vs fedavg fp32 |" + "".join(f" {what}, seed {s} |" for s in seeds)
    head += f" mean {what} |"
    if a["has_ref"]:
        unit = "points" if verdict == "acc" else "%"
        head += f" vs fedavg, mean ({unit}) | spread over seeds | within: mean / every seed |"
    n_cols = head.count("|") - 1
    lines = [head, "|" + "---|" * n_cols]
    for r in a["rows"]:
        line = f"| {r['row']} | {r['family']} | {r['bytes_total'] / MB:.3f} | "
        line += (f"{100 * r['vs_fp32']:.3f}%" if "vs_fp32" in r else "-") + " |"
        line += "".join(f" {fmt_q(r['quality'][s])} |" for s in seeds) + f" {fmt_q(r['mean_quality'])} |"
        if a["has_ref"]:
            lo, hi = r["spread"]
            line += f" {_fmt_gap(r['mean_gap'], verdict)} | {_fmt_gap(lo, verdict)} to {_fmt_gap(hi, verdict)} |"
            line += f" {'yes' if r['within_mean'] else 'no'} / {'yes' if r['within_every'] else 'no'} |"
        lines.append(line)
    if not a["has_ref"]:
        return "\n".join(lines) + "\n\nNo `fedavg` row in every seed: no line to judge against."
    line = "1 point of FedAvg's accuracy" if verdict == "acc" else f"+{100 * TOLERANCE:g}% of FedAvg's eval loss"
    seeds_text = ", ".join(map(str, seeds))
    lines += ["", f"Within {line} on the mean over seeds {seeds_text} (each row against its own seed's FedAvg):", ""]
    by_row = {r["row"]: r for r in a["rows"]}
    for family, name in a["families"].items():
        if name is None:
            best = max(
                (r for r in a["rows"] if r["family"] == family),
                key=lambda r: r["mean_gap"] if verdict == "acc" else -r["mean_gap"],
            )
            lines.append(f"- {family}: none within; its best {best['row']} at {_fmt_gap(best['mean_gap'], verdict)}")
            continue
        r = by_row[name]
        every = "every seed within" if r["within_every"] else "not within on every seed"
        lo, hi = r["spread"]
        lines.append(
            f"- {family}: {name}, {100 * r['vs_fp32']:.3f}% of FedAvg's bytes, {_fmt_gap(r['mean_gap'], verdict)} "
            f"on the mean ({_fmt_gap(lo, verdict)} to {_fmt_gap(hi, verdict)}; {every})"
        )
    return "\n".join(lines)


def write(per_seed: dict[int, list[dict]], out: Path, verdict: str = "loss") -> tuple[dict, str]:
    """seeds.json and seeds.md in `out`; returns the analysis and its markdown."""
    a = summarize(per_seed, verdict)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps(a, indent=1))
    text = markdown(a)
    (out / "seeds.md").write_text(text + "\n")
    return a, text
