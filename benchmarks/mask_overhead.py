"""Masked training vs dense training: the cost of keeping pruned weights at zero.

Both runs call `tinydot.training.train` with the same data, model (default ModelConfig), batches
and steps; the masked run keeps a 50%-density global magnitude mask. Each is timed twice
(alternating) and the faster time kept. Goal (issue 5): overhead <= 5% of the dense step.

    python benchmarks/mask_overhead.py [--steps 60]
"""

import argparse
import tempfile
import time

import numpy as np

from tinydot.config import ModelConfig, TrainConfig
from tinydot.data import load_strokes
from tinydot.pruning import full_mask, prune
from tinydot.training import init_model, train


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    data = load_strokes("train").subset(np.arange(20_000))
    cfg = ModelConfig()
    tcfg = TrainConfig(steps=args.steps, eval_every=0, checkpoint_every=0)
    model = init_model(cfg, 0)
    mask = prune(model, full_mask(model), 0.5)
    times = {"dense": [], "masked": []}
    for _ in range(2):
        for name, m in (("dense", None), ("masked", mask)):
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                train(data, folder, cfg, tcfg, mask=m, progress=False)
                times[name].append(time.perf_counter() - start)
    dense, masked = min(times["dense"]), min(times["masked"])
    print(f"dense:  {dense / args.steps * 1000:.1f} ms/step")
    print(f"masked: {masked / args.steps * 1000:.1f} ms/step (50% density)")
    print(f"ratio masked / dense: {masked / dense:.3f} (overhead {masked / dense - 1:+.1%}; goal <= +5%)")


if __name__ == "__main__":
    main()
