"""Peak memory of a stretch of work: resident set (Linux: VmHWM, reset through clear_refs) and,
on CUDA, the allocator's high-water mark."""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import torch

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peaks(device: torch.device) -> None:
    try:
        _CLEAR.write_text("5")  # Linux: resets VmHWM to the current RSS
    except OSError:
        pass  # elsewhere the peak stays the process's lifetime peak (still an upper bound)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peaks(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": round(_peak_rss_bytes() / 2**20, 1)}
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def merge_peaks(*found: dict) -> dict[str, float]:
    """The highest of each peak reported (the server's and its clients', on any runtime)."""
    out: dict[str, float] = {}
    for item in found:
        for key in ("peak_rss_mb", "peak_gpu_mb"):
            if key in item:
                out[key] = max(out.get(key, 0.0), float(item[key]))
    return out


def _peak_rss_bytes() -> int:
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
