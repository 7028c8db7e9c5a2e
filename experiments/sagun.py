"""Sagun et al. on tinyDOT: does the Hessian bulk scale with width, and do outliers follow the data?

Trains small tinyDOTs (same steps and batch size, several seeds) and measures the loss Hessian on a
fixed sample of their own training data:
  width sweep : d_model in {16, 32, 64} on all 10 digit classes
  class sweep : d_model 32 on the digits {0, 1}, {0..4} and {0..9}
For each model: the top-20 eigenvalues (Lanczos), the outlier count by the largest-gap rule, the
Hutchinson trace, and from the SLQ density the bulk's shape: the share of eigenvalues within 1% of
the top eigenvalue from zero ("near zero"), and the standard deviation of the whole spectrum.

    python experiments/sagun.py --out runs/sagun [--steps 800] [--seeds 3]
Writes results.csv (one row per model and seed) and summary.csv (mean and sd over seeds) into --out.
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from tinydot.analysis.hessian import HessianOperator, HessianSpectrum, sample_batch
from tinydot.config import ModelConfig, TrainConfig
from tinydot.data import load_strokes
from tinydot.training import train


def measure(data, cfg, folder, steps, seed, sequences):
    result = train(data, folder, cfg, TrainConfig(steps=steps, tokens_per_batch=4096, warmup_steps=50,
                                                  eval_every=0, seed=seed), progress=False)
    batch = sample_batch(data, cfg, sequences, seed=0)
    spectrum = HessianSpectrum(top_k=20, lanczos_steps=80, trace_samples=50, density_runs=3, density_steps=80,
                               seed=seed).fit(HessianOperator(result.model, batch))
    top = [float(v) for v in spectrum.eigenvalues_]
    return {"parameters": result.model.num_params(), "outliers": spectrum.outliers_, "top1": top[0],
            "top5": top[4], "top20": top[19], "trace": spectrum.trace_, "trace_stderr": spectrum.trace_stderr_,
            "mean_eigenvalue": spectrum.trace_ / spectrum.dim_,
            "near_zero_share": spectrum.density_mass(-0.01 * top[0], 0.01 * top[0]),
            "spread": spectrum.density_spread()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sequences", type=int, default=64, help="sequences in the Hessian's loss sample")
    args = parser.parse_args()
    strokes = load_strokes("train")
    runs = [("width", d, 10) for d in (16, 32, 64)] + [("classes", 32, c) for c in (2, 5)]
    rows = []
    for seed in range(args.seeds):
        for sweep, width, classes in runs:
            data = strokes.subset(np.flatnonzero(strokes.labels < classes))
            cfg = ModelConfig(n_layers=2, d_model=width, d_mlp=4 * width)
            row = {"sweep": sweep, "d_model": width, "classes": classes, "seed": seed,
                   **measure(data, cfg, args.out / f"d{width}-c{classes}-s{seed}", args.steps, seed, args.sequences)}
            rows.append(row)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "results.csv", index=False)
    columns = ["outliers", "top1", "top20", "trace", "mean_eigenvalue", "near_zero_share", "spread"]
    summary = table.groupby(["d_model", "classes"])[columns].agg(["mean", "std"])
    summary.to_csv(args.out / "summary.csv")
    with pd.option_context("display.width", 200, "display.precision", 4):
        print(summary)


if __name__ == "__main__":
    main()
