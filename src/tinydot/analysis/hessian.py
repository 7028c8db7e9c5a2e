"""The loss Hessian of tinyDOT on a fixed data sample: Hessian-vector products, top eigenvalues
by Lanczos, the trace by Hutchinson, and the spectral density by stochastic Lanczos quadrature.

Coordinates: every parameter entry, except that a pruned model's masked entries are left out
altogether -- the Hessian studied is the principal submatrix over the surviving weights, so
pruned coordinates never show up as zero eigenvalues.

Computation is in float64 by default (the model is copied), so Lanczos with full
re-orthogonalisation reproduces the exact eigenvalues of small models to ~1e-10.

Bulk / outlier split (`outlier_count`): among the top-k positive eigenvalues sorted in
decreasing order, the outliers are those above the largest ratio gap lambda_i / lambda_{i+1};
if no gap exceeds `min_gap` (2 by default) there are no outliers.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from tinydot.config import ModelConfig
from tinydot.data.batching import encode, scored_positions
from tinydot.errors import ConfigError
from tinydot.pruning.mask import apply_mask


class HessianOperator:
    """H restricted to the free coordinates: `matvec(v)` for v of shape (dim,), float64 numpy or torch.

    model : a TinyDOT or TextDOT (copied; the original is untouched; its masked weights are set to zero)
    batch : the model's `nll` arguments, e.g. `sample_batch(data, model.cfg, n, seed)`; the loss is
            the mean NLL over its scored (non-padding) positions
    mask  : optional {name: BoolTensor}; False entries are excluded coordinates
    """

    def __init__(self, model, batch, mask=None, dtype=torch.float64):
        model = copy.deepcopy(model).to(dtype).eval()
        mask = mask or {}
        self.names = [n for n, _ in model.named_parameters()]
        apply_mask(model, mask)  # a pruned model sits at zero in its pruned coordinates
        params = dict(model.named_parameters())
        self.params = [params[n] for n in self.names]
        self.shapes = [p.shape for p in self.params]
        self.free = [mask[n].reshape(-1) if n in mask else None for n in self.names]  # None: all free
        self.sizes = [int(f.sum()) if f is not None else p.numel() for f, p in zip(self.free, self.params)]
        self.dim = sum(self.sizes)
        self.dtype = dtype
        self.n_matvecs = 0
        self.on_matvec = None  # optional callback after every product (progress bars)
        count = scored_positions(batch)
        with sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention kernel has no double backward
            self._loss = model.nll(*batch).sum() / count
            # the gradient's graph is built once; every H v is then one backward pass through it
            self._grad = torch.autograd.grad(self._loss, self.params, create_graph=True)

    def _expand(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Free coordinates (dim,) -> one tensor per parameter, zero at excluded coordinates."""
        out, offset = [], 0
        for shape, free, size in zip(self.shapes, self.free, self.sizes):
            chunk = v[offset: offset + size]
            if free is not None:
                full = torch.zeros(free.numel(), dtype=self.dtype)
                full[free] = chunk
                chunk = full
            out.append(chunk.reshape(shape))
            offset += size
        return out

    def _flatten(self, tensors) -> torch.Tensor:
        parts = []
        for tensor, free in zip(tensors, self.free):
            flat = tensor.reshape(-1)
            parts.append(flat[free] if free is not None else flat)
        return torch.cat(parts)

    def loss_value(self) -> float:
        return float(self._loss.detach())

    def matvec(self, v) -> torch.Tensor:
        """H v by differentiating (gradient . v) once more (Pearlmutter's trick)."""
        v = torch.as_tensor(v, dtype=self.dtype)
        directions = self._expand(v)
        dot = sum((g * d).sum() for g, d in zip(self._grad, directions))
        with sdpa_kernel(SDPBackend.MATH):
            hv = torch.autograd.grad(dot, self.params, retain_graph=True)
        self.n_matvecs += 1
        if self.on_matvec is not None:
            self.on_matvec()
        return self._flatten(hv)


MAX_LANCZOS_STEPS = 500  # 500 float64 vectors of the default tinyDOT's 185,077 weights: ~0.7 GB


def lanczos(operator: HessianOperator, steps: int, start: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """`steps` Lanczos iterations with full re-orthogonalisation from `start`.

    Returns the tridiagonal matrix's eigenvalues (Ritz values, ascending) and the squared first
    components of its eigenvectors (the quadrature weights of SLQ), both of shape (m,), where m
    <= steps (it stops early on an invariant subspace).
    """
    q = start / torch.linalg.norm(start)
    basis = [q]
    alphas, betas = [], []
    for j in range(steps):
        w = operator.matvec(basis[-1])
        alpha = float(w @ basis[-1])
        Q = torch.stack(basis)
        w = w - Q.T @ (Q @ w)  # full re-orthogonalisation, applied twice for stability
        w = w - Q.T @ (Q @ w)
        alphas.append(alpha)
        beta = float(torch.linalg.norm(w))
        if j == steps - 1 or beta < 1e-10 * max(1.0, abs(alpha)):
            break
        betas.append(beta)
        basis.append(w / beta)
    T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    values, vectors = np.linalg.eigh(T)
    return values, vectors[0] ** 2


def outlier_count(top: np.ndarray, min_gap: float = 2.0) -> int:
    """Number of eigenvalues above the largest ratio gap among the positive top eigenvalues."""
    top = np.sort(np.asarray(top))[::-1]
    top = top[top > 0]
    if len(top) < 2:
        return 0
    ratios = top[:-1] / top[1:]
    best = int(np.argmax(ratios))
    return best + 1 if ratios[best] >= min_gap else 0


class HessianSpectrum:
    """Top eigenvalues, trace and spectral density of the loss Hessian.

    Parameters
    ----------
    top_k : eigenvalues wanted (largest algebraic)
    lanczos_steps : Lanczos iterations for the top eigenvalues (>= top_k, <= MAX_LANCZOS_STEPS = 500:
                    every step keeps one vector of all weights; more is more accurate)
    trace_samples : Rademacher probes for Hutchinson's trace
    density_runs, density_steps : SLQ: independent Lanczos runs and their length
    seed : seeds every random vector

    Attributes after fit
    --------------------
    eigenvalues_ : (top_k,) descending          trace_, trace_stderr_ : Hutchinson estimate
    density_nodes_, density_weights_ : (runs, m) SLQ quadrature (weights of a run sum to 1)
    outliers_ : int, by `outlier_count`          dim_ : number of coordinates
    """

    def __init__(self, top_k: int = 10, lanczos_steps: int = 60, trace_samples: int = 50,
                 density_runs: int = 5, density_steps: int = 60, min_gap: float = 2.0, seed: int = 0):
        self.top_k = top_k
        self.lanczos_steps = lanczos_steps
        self.trace_samples = trace_samples
        self.density_runs = density_runs
        self.density_steps = density_steps
        self.min_gap = min_gap
        self.seed = seed

    def check(self, dim: int | None = None) -> HessianSpectrum:
        """A ConfigError for settings that cannot run; with `dim` (the operator's size) also a top_k above it."""
        if dim is not None and self.top_k > dim:
            raise ConfigError(f"top_k must be at most the {dim} coordinates, got {self.top_k}")
        if not 1 <= self.top_k <= MAX_LANCZOS_STEPS:  # more would need more Lanczos steps than allowed
            raise ConfigError(f"top_k must be between 1 and {MAX_LANCZOS_STEPS}, got {self.top_k}")
        if self.lanczos_steps < self.top_k:
            raise ConfigError(f"lanczos_steps ({self.lanczos_steps}) must be >= top_k ({self.top_k})")
        for name, value, least in (("trace_samples", self.trace_samples, 2), ("density_runs", self.density_runs, 1),
                                   ("density_steps", self.density_steps, 2)):
            if value < least:
                raise ConfigError(f"{name} must be >= {least}, got {value}")
        for name, value in (("lanczos_steps", self.lanczos_steps), ("density_steps", self.density_steps)):
            if value > MAX_LANCZOS_STEPS:  # full re-orthogonalisation keeps every Lanczos vector in memory
                raise ConfigError(f"{name} must be at most {MAX_LANCZOS_STEPS} (each step keeps a vector of every "
                                  f"weight in memory), got {value}")
        return self

    def fit(self, operator: HessianOperator, density: bool = True) -> HessianSpectrum:
        dim = operator.dim
        self.check(dim)
        self.dim_ = dim
        generator = torch.Generator().manual_seed(self.seed)
        start = torch.randn(dim, generator=generator, dtype=operator.dtype)
        values, _ = lanczos(operator, min(self.lanczos_steps, dim), start)
        self.eigenvalues_ = np.sort(values)[::-1][: self.top_k]
        self.outliers_ = outlier_count(self.eigenvalues_, self.min_gap)
        samples = []
        for _ in range(self.trace_samples):
            z = torch.randint(0, 2, (dim,), generator=generator).to(operator.dtype) * 2 - 1
            samples.append(float(z @ operator.matvec(z)))
        self.trace_ = float(np.mean(samples))
        self.trace_stderr_ = float(np.std(samples, ddof=1) / math.sqrt(len(samples)))
        if density:
            nodes, weights = [], []
            for _ in range(self.density_runs):
                z = torch.randint(0, 2, (dim,), generator=generator).to(operator.dtype) * 2 - 1
                theta, tau = lanczos(operator, min(self.density_steps, dim), z)
                pad = self.density_steps - len(theta)
                nodes.append(np.pad(theta, (0, pad)))
                weights.append(np.pad(tau, (0, pad)))
            self.density_nodes_, self.density_weights_ = np.array(nodes), np.array(weights)
        return self

    def density(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """The SLQ spectral density smoothed by a Gaussian of width `sigma`, on `grid`."""
        kernel = np.exp(-0.5 * ((grid[:, None, None] - self.density_nodes_[None]) / sigma) ** 2)
        kernel /= sigma * math.sqrt(2 * math.pi)
        return (kernel * self.density_weights_[None]).sum(axis=(1, 2)) / len(self.density_nodes_)

    def density_mass(self, low: float, high: float) -> float:
        """The SLQ estimate of the share of eigenvalues in [low, high] (mean over runs)."""
        inside = (self.density_nodes_ >= low) & (self.density_nodes_ <= high)
        return float((self.density_weights_ * inside).sum(axis=1).mean())

    def density_spread(self) -> float:
        """The SLQ estimate of the standard deviation of all eigenvalues (the bulk's width)."""
        first = (self.density_nodes_ * self.density_weights_).sum(axis=1).mean()
        second = (self.density_nodes_ ** 2 * self.density_weights_).sum(axis=1).mean()
        return float(np.sqrt(max(second - first ** 2, 0.0)))

    def density_trace(self) -> tuple[float, float]:
        """dim x the density's first moment (an estimate of the trace), and its standard error over runs."""
        per_run = self.dim_ * (self.density_nodes_ * self.density_weights_).sum(axis=1)
        stderr = float(per_run.std(ddof=1) / math.sqrt(len(per_run))) if len(per_run) > 1 else float("nan")
        return float(per_run.mean()), stderr


def sample_batch(data, cfg: ModelConfig, sequences: int, seed: int):
    """A fixed batch of `sequences` randomly chosen (seeded) strokes or sentences, encoded for a
    model of config `cfg`: the model's `nll` arguments."""
    if not 1 <= sequences <= len(data):
        raise ConfigError(f"sequences must be between 1 and {len(data)}, got {sequences}")
    index = np.sort(np.random.default_rng(seed).choice(len(data), size=sequences, replace=False))
    return encode(data.subset(index), cfg).batch(np.arange(sequences))
