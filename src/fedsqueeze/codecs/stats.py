"""What a blob cost and what it lost: the per-blob statistics that go into rounds.jsonl."""

from __future__ import annotations

import math
import time

import torch

from ..tensors import Tensors
from .chain import Codec


def relative_error(original: Tensors, decoded: Tensors) -> float:
    """||x - x_hat|| / ||x|| over all tensors of `original` (a missing tensor decodes as zeros).
    0.0 when both are zero; inf when only the original is zero and the decoded is not."""
    err = norm = 0.0
    for name, x in original.items():
        x = x.detach().double()
        y = decoded[name].double() if name in decoded else torch.zeros_like(x)
        err += float(torch.sum((x - y) ** 2))
        norm += float(torch.sum(x**2))
    if norm == 0.0:
        return 0.0 if err == 0.0 else math.inf
    return math.sqrt(err / norm)


def blob_stats(original: Tensors, blob: bytes, decoded: Tensors, encode_s: float, decode_s: float) -> dict:
    """Statistics of a blob already sent: the live path, which must not encode twice (a second
    encode would advance stateful codecs). raw_bytes counts the input as fp32; ratio = wire / raw."""
    raw = 4 * sum(t.numel() for t in original.values())
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
