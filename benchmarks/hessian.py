"""Top-5 Hessian eigenvalues: tinydot's Lanczos vs PyHessian 0.1's power iteration with deflation.

Same model (an untrained-then-briefly-trained ~20k-parameter tinyDOT), same batch (32 train
sequences cut to 40 positions), one run. Accuracy is measured against a converged reference (200
Lanczos steps, float64). Goal (issue 7): at least 2x faster at equal or better accuracy. If
PyHessian is not installed (`pip install pyhessian==0.1 --no-deps`), the baseline is a plain power
iteration with deflation written here, run the way PyHessian runs it (tol 1e-3, float32).

    python benchmarks/hessian.py
"""

import statistics
import tempfile
import time

import numpy as np
import torch

from tinydot.analysis.hessian import HessianOperator, HessianSpectrum
from tinydot.config import ModelConfig, TrainConfig
from tinydot.data import load_strokes
from tinydot.data.batching import Encoded
from tinydot.training import train

CONFIG = ModelConfig(n_layers=2, d_model=20, d_mlp=80)
REPEATS = 5
DECLARED_STEPS = 20  # the setting the ratio is quoted for, fixed before looking at the reference


class LossModel(torch.nn.Module):
    """PyHessian calls criterion(model(inputs), targets): model returns the summed NLL."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.nll(*batch).sum()


def power_iteration_top(operator, k, tol=1e-3, max_iter=100, seed=0):
    """The classic baseline: power iteration, deflating found eigenvectors (as PyHessian does)."""
    generator = torch.Generator().manual_seed(seed)
    values, vectors = [], []
    for _ in range(k):
        v = torch.randn(operator.dim, generator=generator, dtype=operator.dtype)
        v /= v.norm()
        value = None
        for _ in range(max_iter):
            for u in vectors:
                v -= (v @ u) * u
            v /= v.norm()
            hv = operator.matvec(v)
            new = float(hv @ v)
            v = hv / hv.norm()
            if value is not None and abs(value - new) / (abs(value) + 1e-6) < tol:
                value = new
                break
            value = new
        values.append(value)
        vectors.append(v)
    return np.array(values)


def main():
    torch.manual_seed(0)
    data = load_strokes("train")
    with tempfile.TemporaryDirectory() as folder:
        model = train(data.subset(np.arange(5000)), folder, CONFIG,
                      TrainConfig(steps=100, tokens_per_batch=4096, warmup_steps=10, eval_every=0),
                      progress=False).model
    index = np.flatnonzero(data.lengths >= 39)[:32]
    batch = Encoded(data.subset(index)).batch(np.arange(32), CONFIG.max_move, 40)  # (32, 40) positions
    batch = (batch[0][:, :40], batch[1], batch[2][:, :40])
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters; batch {tuple(batch[0].shape[:2])}")

    reference = HessianSpectrum(top_k=5, lanczos_steps=200, trace_samples=2, density_runs=1).fit(
        HessianOperator(model, batch), density=False).eigenvalues_

    def error(values):
        return float(np.max(np.abs(np.sort(values)[::-1] - reference) / np.abs(reference)))

    def ours(steps):
        start = time.perf_counter()
        operator = HessianOperator(model, batch, dtype=torch.float32)
        spectrum = HessianSpectrum(top_k=5, lanczos_steps=steps, trace_samples=2, density_runs=1)
        spectrum.fit(operator, density=False)
        return time.perf_counter() - start, error(spectrum.eigenvalues_)

    try:
        from pyhessian import hessian as pyhessian

        name = "PyHessian 0.1"

        def baseline():
            start = time.perf_counter()
            wrapped = LossModel(model).float()
            count = float((batch[2][..., 2] >= 0).sum())
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):  # needs double backward
                engine = pyhessian(wrapped, lambda out, _: out / count, data=(batch, None), cuda=False)
                values, _ = engine.eigenvalues(top_n=5)
            return time.perf_counter() - start, error(np.array(values))
    except ImportError:
        name = "power iteration with deflation (PyHessian not installed)"

        def baseline():
            start = time.perf_counter()
            values = power_iteration_top(HessianOperator(model, batch, dtype=torch.float32), 5)
            return time.perf_counter() - start, error(np.array(values))

    # single timings of these sub-second runs vary by +-30% here: interleave repeats, take medians
    pairs = [(baseline(), ours(DECLARED_STEPS)) for _ in range(REPEATS)]
    baseline_time = statistics.median(b[0] for b, _ in pairs)
    baseline_error = max(b[1] for b, _ in pairs)
    ours_time = statistics.median(o[0] for _, o in pairs)
    ours_error = max(o[1] for _, o in pairs)
    sweep = {steps: ours(steps) for steps in (15, 30, 40)}
    sweep[DECLARED_STEPS] = (ours_time, ours_error)

    print("reference top-5 (200-step Lanczos, float64): " + ", ".join(f"{v:.5g}" for v in reference))
    print(f"{name}: {baseline_time:.2f} s (median of {REPEATS}), max relative error {baseline_error:.2e}")
    for steps, (seconds, err) in sorted(sweep.items()):
        print(f"tinydot Lanczos ({steps} steps, float32): {seconds:.2f} s, max relative error {err:.2e}")
    ratio = baseline_time / ours_time
    print(f"ratio baseline / tinydot at the declared {DECLARED_STEPS} steps (medians of {REPEATS}): {ratio:.2f}x "
          f"(goal >= 2x: {'met' if ratio >= 2 else 'missed'}; accuracy equal or better: "
          f"{'yes' if ours_error <= baseline_error else 'no'})")


if __name__ == "__main__":
    main()
