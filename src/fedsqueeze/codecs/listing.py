"""`fedsqueeze codecs list`: every registered stage by kind, with its parameters' types, defaults
and allowed ranges, read from the fields of the stages' Params (so the list cannot drift from them)."""

from __future__ import annotations

from .base import CODECS, Knob

KINDS = (
    ("structure", "what is sent of each tensor (default: every value)"),
    ("values", "how each float is written (default: fp32)"),
    ("bytes", "a lossless pass over the whole body (default: none)"),
)


def allowed(param: Knob) -> str:
    """The values a parameter accepts: `one of a, b`, `in [lo, hi]`, `>= lo`, or its type."""
    if param.choices:
        return "one of " + ", ".join(param.choices)
    kind = {bool: "true or false", int: "integer", float: "number", str: "text"}[param.kind]

    def num(v: float) -> str:
        if param.kind is not int or abs(v) < 10**5:
            return f"{v:g}"
        n = int(v)
        if n & (n + 1) == 0:  # 2**k - 1
            return f"2**{n.bit_length()} - 1"
        return f"2**{n.bit_length() - 1}" if n & (n - 1) == 0 else f"{n:,}"

    if param.low is not None and param.high is not None:
        return f"{kind} in [{num(param.low)}, {num(param.high)}]"
    if param.low is not None:
        return f"{kind} >= {num(param.low)}"
    if param.high is not None:
        return f"{kind} <= {num(param.high)}"
    return kind


def default(param: Knob) -> str:
    return "none" if param.default is None else param.format(param.default)


def catalog() -> list[dict]:
    """One entry per stage: name, kind, doc (first line), params [{name, default, allowed, help}]."""
    rows = []
    for name in CODECS.names():
        stage = CODECS.get(name)
        doc = (stage.__doc__ or "").strip().splitlines()
        rows.append(
            {
                "name": name,
                "kind": stage.kind,
                "doc": doc[0] if doc else "",
                "params": [
                    {"name": key, "default": default(p), "allowed": allowed(p), "help": p.help}
                    for key, p in stage.knobs.items()
                ],
            }
        )
    return rows


def describe() -> str:
    stages = catalog()
    lines = ['A codec is up to one stage of each kind, in this order: "structure > values > bytes".']
    for kind, what in KINDS:
        lines += ["", f"{kind}: {what}"]
        for s in (s for s in stages if s["kind"] == kind):
            lines.append(f"  {s['name']:<12} {s['doc']}")
            width = max((len(p["name"]) for p in s["params"]), default=0)
            for p in s["params"]:
                text = f"      {p['name']:<{width}} = {p['default']:<7} {p['allowed']}"
                lines.append(text + (f"; {p['help']}" if p["help"] else ""))
    lines += ["", 'e.g. uplink.codec = "topk(fraction=0.01) > quantize(bits=8) > zstd"']
    return "\n".join(lines)
