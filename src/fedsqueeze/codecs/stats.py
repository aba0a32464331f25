"""What a blob cost and what it lost: the per-blob statistics that go into rounds.jsonl."""

from __future__ import annotations

import math
import time

from ..tensors import Tensors, fp32_bytes, relative_error
from .chain import Codec


def blob_stats(original: Tensors, blob: bytes, decoded: Tensors, encode_s: float, decode_s: float) -> dict:
    """Statistics of one blob from what was meant, what was sent and what was decoded.
    raw_bytes counts the input as fp32; ratio = wire / raw."""
    raw = fp32_bytes(original)
    return {
        "raw_bytes": raw,
        "wire_bytes": len(blob),
        "ratio": len(blob) / raw if raw else math.inf,
        "rel_error": relative_error(original, decoded),
        "encode_s": encode_s,
        "decode_s": decode_s,
    }


def measure(codec: Codec, tensors: Tensors) -> dict:
    """Encode and decode once with `codec` and report blob_stats (advances a stateful codec)."""
    start = time.perf_counter()
    blob = codec.encode(tensors)
    mid = time.perf_counter()
    decoded = codec.decode(blob)
    end = time.perf_counter()
    return blob_stats(tensors, blob, decoded, mid - start, end - mid)
