"""Sagun et al. on tinyDOT: does the Hessian bulk scale with width, and do outliers follow the data?

Trains small tinyDOTs (same steps and batch size) and measures the loss Hessian on a fixed sample
of their own training data:
  width sweep : d_model in {16, 32, 64} on all 10 digit classes
  class sweep : d_model 32 on the digits {0, 1}, {0..4} and {0..9}
For each model: the top-20 eigenvalues (Lanczos), the outlier count by the largest-gap rule, the
Hutchinson trace, and the "bulk" share of the trace (trace minus the outliers' eigenvalues).

    python experiments/sagun.py --out runs/sagun [--steps 800]
Writes results.csv into --out and prints it.
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from tinydot.analysis.hessian import HessianOperator, HessianSpectrum, sample_batch
from tinydot.config import ModelConfig, TrainConfig
from tinydot.data import load_strokes
from tinydot.training import train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--sequences", type=int, default=64, help="sequences in the Hessian's loss sample")
    args = parser.parse_args()
    strokes = load_strokes("train")
    runs = [("width", d, 10) for d in (16, 32, 64)] + [("classes", 32, c) for c in (2, 5)]
    rows = []
    for sweep, width, classes in runs:
        data = strokes.subset(np.flatnonzero(strokes.labels < classes))
        cfg = ModelConfig(n_layers=2, d_model=width, d_mlp=4 * width)
        result = train(data, args.out / f"d{width}-c{classes}", cfg,
                       TrainConfig(steps=args.steps, tokens_per_batch=4096, warmup_steps=50, eval_every=0),
                       progress=True)
        batch = sample_batch(data, cfg.max_move, args.sequences, seed=0)
        spectrum = HessianSpectrum(top_k=20, lanczos_steps=80, trace_samples=50, density_runs=1).fit(
            HessianOperator(result.model, batch), density=False)
        top = spectrum.eigenvalues_
        rows.append({"sweep": sweep, "d_model": width, "classes": classes, "parameters": result.model.num_params(),
                     "outliers": spectrum.outliers_, "top1": top[0], "top5": top[4], "top20": top[19],
                     "trace": spectrum.trace_, "trace_stderr": spectrum.trace_stderr_,
                     "bulk_trace": spectrum.trace_ - top[: spectrum.outliers_].sum()})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "results.csv", index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
