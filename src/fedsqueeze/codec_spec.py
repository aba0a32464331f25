"""The codec spec grammar:

    chain  := stage ( ">" stage )*
    stage  := NAME [ "(" [ NAME "=" VALUE ( "," NAME "=" VALUE )* ] ")" ]

e.g. "topk(fraction=0.01) > quantize(bits=8, rounding=stochastic) > zstd". VALUE is a number, true /
false or a bare word (quotes optional). Every mistake is a ConfigError that fits on one line.
"""

from __future__ import annotations

import re

from .errors import ConfigError

_STAGE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*", re.DOTALL)
_PARAM = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*", re.DOTALL)


def parse_spec(spec: str) -> list[tuple[str, dict[str, str]]]:
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty codec spec {spec!r}; e.g. 'fp32' or 'topk(fraction=0.01) > quantize(bits=8) > zstd'")
    stages = []
    for part in spec.split(">"):
        m = _STAGE.fullmatch(part)
        if not m:
            raise ConfigError(
                f"cannot parse codec stage {part.strip()!r} in {spec!r}; expected name or name(key=value, ...)"
            )
        name, args = m.group(1), m.group(2)
        params: dict[str, str] = {}
        if args is not None and args.strip():
            for item in args.split(","):
                p = _PARAM.fullmatch(item)
                if not p or not p.group(2):
                    raise ConfigError(f"cannot parse parameter {item.strip()!r} of codec {name!r}; expected key=value")
                key, value = p.group(1), p.group(2).strip("'\"")
                if key in params:
                    raise ConfigError(f"codec {name!r}: parameter {key!r} given twice")
                params[key] = value
        stages.append((name, params))
    return stages
