"""CPU latency of the dense model and its structurally pruned versions, and quantized file sizes.

For each model (dense; MLP neurons removed; a block removed; heads removed when n_heads > 1) it
times a forward pass over a fixed batch and `tinydot.sampling.sample` of two digits of each class,
interleaving the models in every repeat and keeping medians; ratios are against the dense model
measured in the same run. Sampling stops when every sequence has ended, so models that draw longer
digits decode more positions: the per-position time is the fair comparison. Finally it writes the
packed quantized checkpoint at 8/4/3/2 bits (RTN; GPFQ's packed size is the same) and compares its
size with the float32 model.safetensors.

    python benchmarks/structured.py [--checkpoint RUN] [--repeats 7] [--threads 1]

Without --checkpoint it uses an untrained default-shaped model (latency does not depend on the
weights, but sampled lengths do).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tinydot.checkpoint import load_model, save_model, save_tensors
from tinydot.config import ModelConfig
from tinydot.data.batching import make_inputs
from tinydot.pruning.structured import lowest_removed, magnitude_scores, removal_count, shrink
from tinydot.quantization import pack_model, quantize_model
from tinydot.sampling import sample
from tinydot.training import init_model


def variants(dense):
    """(name, model) pairs: dense first, then one-shot magnitude removals the model allows."""
    out = [("dense", dense)]
    plans = [("neurons", 0.25), ("neurons", 0.5), ("neurons", 0.75), ("layers", 1 / dense.cfg.n_layers)]
    if dense.cfg.n_heads > 1:
        plans.append(("heads", 0.5))
    for kind, fraction in plans:
        if dense.cfg.n_layers == 1 and kind == "layers":
            continue
        count = removal_count(dense.cfg, kind, fraction)
        smaller = shrink(dense, kind, lowest_removed(magnitude_scores(dense, kind), kind, count))
        out.append((f"-{count} " + ("blocks" if kind == "layers" else f"{kind} per block"), smaller.eval()))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dense = load_model(args.checkpoint) if args.checkpoint else init_model(ModelConfig(), 0).eval()
    models = variants(dense)

    g = torch.Generator().manual_seed(0)
    moves = torch.randint(-3, 4, (32, 64, 3), generator=g)
    moves[..., 2] = torch.randint(0, 3, (32, 64), generator=g)
    inputs, labels = make_inputs(moves, dense.cfg.max_move), torch.arange(32) % 10
    digits = np.repeat(np.arange(10), 2)

    forward = {name: [] for name, _ in models}
    sampling = {name: [] for name, _ in models}
    positions = {}
    with torch.no_grad():
        for _, model in models:  # warm-up
            model(inputs, labels)
        for _ in range(args.repeats):
            for name, model in models:
                start = time.perf_counter()
                model(inputs, labels)
                forward[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                drawn = sample(model, digits, seed=0)
                sampling[name].append(time.perf_counter() - start)
                positions[name] = int(min(drawn.lengths.max() + 1, model.cfg.max_len - 1))

    base = {k: statistics.median(v[name]) for k, v, name in (("f", forward, "dense"), ("s", sampling, "dense"))}
    base["p"] = base["s"] / positions["dense"]
    print(f"{args.threads} thread(s), {args.repeats} interleaved repeats, medians; forward: batch 32 x 64 positions; "
          f"sampling: {len(digits)} digits; ratio: model time / dense time (below 1: faster than dense)")
    print(f"{'model':22s} {'params':>8s} {'forward ms':>11s} {'ratio':>6s} {'sample ms':>10s} {'positions':>9s} "
          f"{'ms/position':>11s} {'ratio':>6s}")
    for name, model in models:
        f, s = statistics.median(forward[name]), statistics.median(sampling[name])
        per = s / positions[name]
        print(f"{name:22s} {model.num_params():8,d} {f * 1e3:11.2f} {f / base['f']:6.3f} {s * 1e3:10.1f} "
              f"{positions[name]:9d} {per * 1e3:11.3f} {per / base['p']:6.3f}")

    with tempfile.TemporaryDirectory() as folder:
        float_path = Path(folder) / "model.safetensors"
        save_model(float_path, dense)
        float_bytes = float_path.stat().st_size
        print(f"\non-disk size, {dense.num_params():,} parameters: float32 model.safetensors {float_bytes:,} bytes")
        for bits in (8, 4, 3, 2):
            path = Path(folder) / f"q{bits}.safetensors"
            save_tensors(path, *pack_model(quantize_model(dense, bits, "rtn")))
            size = path.stat().st_size
            print(f"  {bits} bits: {size:9,d} bytes  ratio {size / float_bytes:.3f}  "
                  f"({8 * size / dense.num_params():.2f} file bits per parameter)")


if __name__ == "__main__":
    main()
