"""Bits per kept position against the entropy of the mask, for random masks of several densities:
which encoding codecs/positions.py picks and what it costs beside a bitmap and LEB128 deltas.

    python benchmarks/positions.py [N]      (N elements per tensor, default 1,000,000)
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from fedsqueeze.codecs import positions, wire
from fedsqueeze.codecs.entry import Entry

NAMES = {positions.DELTAS: "deltas", positions.INT32: "int32", positions.BITMAP: "bitmap", positions.RICE: "rice"}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rng = np.random.default_rng(0)
    print(f"| density | mode | bits / kept entry | entropy | bitmap | deltas | encode ms | decode ms |  (n = {n:,})")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for d in (0.001, 0.005, 0.02, 0.05, 0.12, 0.3, 0.5):
        pos = np.sort(rng.choice(n, int(n * d), replace=False)).astype(np.int64)
        w = wire.Writer()
        t0 = time.perf_counter()
        positions.write(w, np.array([n]), np.array([pos.size]), pos)
        section = w.getvalue()
        t1 = time.perf_counter()
        _, decoded = positions.read(wire.Reader(section), [Entry("t", (n,), n)])
        t2 = time.perf_counter()
        assert decoded[0].tolist() == pos.tolist()
        mode = int(wire.Reader(section).varints(1, "meta")[0] % positions.MODES)
        entropy = -(d * math.log2(d) + (1 - d) * math.log2(1 - d)) / d
        deltas = 8 * wire.encode_varints(np.diff(np.concatenate(([-1], pos))) - 1).size / pos.size
        print(
            f"| {d:g} | {NAMES[mode]} | {8 * len(section) / pos.size:.2f} | {entropy:.2f} | {n / pos.size:.2f} | "
            f"{deltas:.2f} | {1e3 * (t1 - t0):.1f} | {1e3 * (t2 - t1):.1f} |"
        )


if __name__ == "__main__":
    main()
