"""Training throughput: tinydot's length-bucketed training step vs a naive padded loop.

Both run the same model (default ModelConfig) with AdamW on the real train split. Measured in
one run:
  real   the training step as `tinydot.training.train` runs it: length buckets of ~8192 positions
  naive  fixed batches of random sequences, every one padded to the full 117 positions
Throughput counts real positions (start point + pen steps) per second; padding is work but not
progress. Also prints model-FLOPs utilisation against a matmul peak measured on the spot.
Goal (issue 3): >= 3x the naive loop.

    python benchmarks/train_throughput.py [--steps 30]
"""

import argparse
import time

import numpy as np
import torch

from tinydot.config import ModelConfig, TrainConfig
from tinydot.data import load_strokes
from tinydot.data.batching import Encoded, epoch_batches
from tinydot.training import init_model, make_optimizer


def matmul_peak(n=1024, repeats=20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def flops_per_position(cfg: ModelConfig, context: float) -> float:
    """Training FLOPs per position: 3 x forward (2 per weight of every matmul + attention scores)."""
    d = cfg.d_model
    per_block = 2 * (3 * d * d + d * d + 2 * d * cfg.d_mlp) + 2 * 2 * context * d  # matmuls + QK^T, AV
    moves = 2 * cfg.max_move + 1
    heads = 2 * (d * 3 + d * moves + d * d + d * moves)
    return 3 * (cfg.n_layers * per_block + heads)


def run(encoded, batches, model, cfg, steps, pad_to=None):
    optimizer = make_optimizer(model, TrainConfig())
    scored, spent = 0, 0.0
    for i in range(steps + 3):
        start = time.perf_counter()  # batch building is part of the step
        inputs, labels, targets = encoded.batch(batches[i % len(batches)], cfg.max_move, pad_to)
        nll = model.nll(inputs, labels, targets)
        n = int((targets[..., 2] >= 0).sum())
        loss = nll.sum() / n
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if i >= 3:  # warm-up steps are not timed
            spent += time.perf_counter() - start
            scored += n
    return scored / spent


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    cfg, tcfg = ModelConfig(), TrainConfig()
    encoded = Encoded(load_strokes("train"))
    bucketed = epoch_batches(encoded.lengths, tcfg.tokens_per_batch, seed=0, epoch=0)
    # naive: the same positions per batch as padded to 117 would hold: 8192 // 117 = 70 sequences
    per_batch = tcfg.tokens_per_batch // int(encoded.lengths.max())
    order = np.random.default_rng(0).permutation(len(encoded))
    naive_batches = [order[i: i + per_batch] for i in range(0, len(order) - per_batch, per_batch)]

    peak = matmul_peak()
    real = run(encoded, bucketed, init_model(cfg, 0), cfg, args.steps)
    naive = run(encoded, naive_batches, init_model(cfg, 0), cfg, args.steps, pad_to=int(encoded.lengths.max()))
    mean_context = float((encoded.lengths ** 2).sum() / encoded.lengths.sum() / 2)
    mfu = real * flops_per_position(cfg, mean_context) / peak
    print(f"model: {init_model(cfg, 0).num_params():,} parameters, {cfg.n_layers} layers, d_model {cfg.d_model}")
    print(f"matmul peak (1024^2, measured now): {peak / 1e9:.1f} GFLOP/s")
    print(f"naive padded loop: {naive:,.0f} positions/s")
    print(f"tinydot training step: {real:,.0f} positions/s  (MFU {mfu:.1%})")
    print(f"ratio tinydot / naive: {real / naive:.2f}x (goal >= 3x)")


if __name__ == "__main__":
    main()
