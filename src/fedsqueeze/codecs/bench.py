"""Codec benchmark on one update: bytes, error and speed of each codec configuration.

The CLI (`fedsqueeze codecs bench`) builds a real LoRA update and prints these rows. Each
configuration gets a fresh codec per repetition, so stateful codecs report their first message
(lowrank from a random start, not warm-started) and every repetition yields the same blob.
"""

from __future__ import annotations

import statistics
import time

from ..tensors import Layout, Tensors, fp32_bytes, relative_error
from .chain import build_codec

DEFAULT_CONFIGS = [
    "fp32",
    "fp16",
    "bf16",
    "zstd",
    "quantize(bits=8)",
    "quantize(bits=4)",
    "quantize(bits=8) > zstd",
    "topk(fraction=0.1)",
    "topk(fraction=0.01) > quantize(bits=8) > zstd",
    "topk(fraction=0.01, scope=global) > quantize(bits=8) > zstd",
    "topk(fraction=0.01) > quantize(bits=4) > zstd",
    "randk(fraction=0.1)",
    "lowrank(rank=4)",
    "lowrank(rank=4) > fp16",
    "sparse > zstd",
]

KEYS = ("codec", "wire_bytes", "raw_bytes", "ratio", "rel_error", "encode_ms", "decode_ms")


def run_bench(update: Tensors, layout: Layout, configs: list[str] | None = None, repeats: int = 5) -> list[dict]:
    """One dict per configuration with exactly KEYS; times are medians over `repeats` runs (after
    one warm-up), ratio = wire_bytes / raw_bytes (raw = the update as fp32)."""
    raw = fp32_bytes(update)
    rows = []
    for spec in configs or DEFAULT_CONFIGS:
        build_codec(spec, layout).decode(build_codec(spec, layout).encode(update))  # warm-up
        encode_s, decode_s = [], []
        for _ in range(max(1, repeats)):
            codec = build_codec(spec, layout)
            t0 = time.perf_counter()
            blob = codec.encode(update)
            t1 = time.perf_counter()
            decoded = codec.decode(blob)
            t2 = time.perf_counter()
            encode_s.append(t1 - t0)
            decode_s.append(t2 - t1)
        rows.append(
            {
                "codec": spec,
                "wire_bytes": len(blob),
                "raw_bytes": raw,
                "ratio": len(blob) / raw if raw else float("inf"),
                "rel_error": relative_error(update, decoded),
                "encode_ms": 1000 * statistics.median(encode_s),
                "decode_ms": 1000 * statistics.median(decode_s),
            }
        )
    return rows
