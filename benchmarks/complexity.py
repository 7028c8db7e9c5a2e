"""All seven complexity measures for all 70,000 sequences: vectorized vs a per-sample loop.

Baseline (same run): a straightforward loop that computes each sample's measures on its own
(numpy FFT per sample, Python loops over steps). Goal (issue 4): all 70k in <= 2 s.

    python benchmarks/complexity.py   # needs TINYDOT_DATA, or data in the user cache
"""

import math
import time
import zlib

import numpy as np

from tinydot.complexity import measure_all
from tinydot.data import load_strokes
from tinydot.data.strokes import PEN_DRAW, PEN_END_STROKE


def per_sample(steps):
    """Every measure of one sequence (steps: (L, 3) without padding), the obvious way."""
    flow, turning, jumps, strokes, previous, after_marker = [], 0.0, 0.0, 0, None, False
    for dx, dy, pen in steps.tolist():
        if after_marker:
            jumps += math.hypot(dx, dy)
            previous = None
        elif pen == PEN_DRAW:
            z = complex(dx, dy)
            if previous is not None:
                turning += abs(math.atan2((z * previous.conjugate()).imag, (z * previous.conjugate()).real))
            flow.append(z)
            previous = z
        if pen >= PEN_END_STROKE:
            strokes += 1
            previous = None
        after_marker = pen >= PEN_END_STROKE
    power = np.abs(np.fft.fft(np.array(flow))) ** 2 / len(flow)
    S = power[1:].sum() / power.sum() if power.sum() > 0 else 0.0
    p = power[1:] / power[1:].sum() if len(flow) >= 3 and power[1:].sum() > 0 else np.array([])
    p = p[p > 0]
    entropy = float(-(p * np.log(p)).sum() / math.log(len(flow) - 1)) if len(p) else 0.0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = len(c.compress(steps.tobytes()) + c.flush()) / len(steps)
    return len(steps), S, entropy, turning, strokes, jumps, packed


def main():
    splits = [load_strokes("train"), load_strokes("test")]
    measure_all(splits[1].subset(np.arange(100)))  # warm up
    start = time.perf_counter()
    tables = [measure_all(s) for s in splits]
    fast = time.perf_counter() - start
    start = time.perf_counter()
    rows = [per_sample(s.steps[i, : s.lengths[i]]) for s in splits for i in range(len(s))]
    slow = time.perf_counter() - start
    loop = np.array(rows)
    vec = np.concatenate([t.drop(columns="label").to_numpy(dtype=float) for t in tables])
    assert np.allclose(loop, vec), "the loop and the vectorized measures disagree"
    n = sum(len(s) for s in splits)
    print(f"vectorized: {fast:.2f} s for {n:,} sequences (goal <= 2 s)")
    print(f"per-sample loop: {slow:.2f} s")
    print(f"ratio loop / vectorized: {slow / fast:.1f}x (identical results)")


if __name__ == "__main__":
    main()
