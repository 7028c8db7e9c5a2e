"""Small stages, one run folder each: complexity tables, digit samples, the Hessian spectrum, SVCCA.

Each runs pure computations from the layers below and writes its tables (CSV, JSON) atomically;
the figures of these folders are drawn by `tinydot.report.pages` from those tables.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from tinydot.analysis.activations import hidden_states
from tinydot.analysis.hessian import HessianOperator, HessianSpectrum, sample_batch
from tinydot.analysis.similarity import SVCCA, intrinsic_dimension
from tinydot.checkpoint import MODEL_FILE, load_model, resolve
from tinydot.complexity import bin_table, quantile_bins, summary
from tinydot.config import check_seed
from tinydot.cost import CostMeter
from tinydot.data.render import rasterize_all, save_grid
from tinydot.data.strokes import NUM_CLASSES, Strokes, check_digit
from tinydot.data.text import Sentences
from tinydot.domains import domain_of, get_domain
from tinydot.errors import ConfigError
from tinydot.executors import passing_bar
from tinydot.io import atomic_write_csv, atomic_write_text, check_run_kind, check_writable_dir, check_writable_file
from tinydot.pruning.mask import load_mask
from tinydot.sampling import check_temperature, sample


def write_complexity(data: Strokes | Sentences, measure: str, k: int, out: str | os.PathLike, *,
                     balanced: bool = False, seed: int = 0, train: Sentences | None = None,
                     index=None) -> dict[str, Path]:
    """Measure `data` (strokes or sentences: every measure of its domain), bin it by `measure` into
    `k` quantile bins, and write into `out`: measures.csv (per sample, with its bin), bins.csv
    (count, low, high and mean per bin), summary.csv and correlations.csv (Pearson, between
    measures); returns {"measures", "bins", "summary", "correlations": path}. The histograms are the
    report's (`tinydot.report.pages.write_complexity_figures(out)`). `balanced` (equal digit classes
    per bin, each class ranked within itself) is for strokes; `train` is the text split whose unigram
    distribution `surprisal` uses (default: `data`); `index` is each sample's position in its split, written
    as measures.csv's first column (default 0..len(data)-1: `data` is a whole split)."""
    domain = domain_of(data)
    domain.check_measure(measure)
    check_seed(seed)
    check_writable_dir(out)
    check_run_kind(out, "complexity")
    if balanced and not isinstance(data, Strokes):
        raise ConfigError("balanced bins need digit classes; the text domain has none")
    if len(data) == 0:
        raise ConfigError("the selection is empty: no samples to measure")
    index = np.arange(len(data)) if index is None else np.asarray(index)
    if index.shape != (len(data),):
        raise ConfigError(f"index has {index.size} entries for {len(data)} samples; give one per sample")
    table = domain.measure(data, train=train)
    table.insert(0, "index", index)
    bins = quantile_bins(table[measure].to_numpy(), k, labels=data.labels if balanced else None, seed=seed)
    table["bin"] = bins
    edges = bin_table(table[measure], bins)
    edges.insert(0, "measure", measure)
    out = Path(out)
    paths = {"measures": out / "measures.csv", "bins": out / "bins.csv", "summary": out / "summary.csv",
             "correlations": out / "correlations.csv"}
    correlations = table[list(domain.measures)].corr()
    for key, frame in (("measures", table), ("bins", edges), ("summary", summary(table, domain.measures)),
                       ("correlations", correlations)):
        atomic_write_csv(frame, paths[key], index=key in ("summary", "correlations"))
    return paths


def save_samples(checkpoint, out, *, digit: int | None = None, n: int = 16, temperature: float = 0.8,
                 seed: int = 0) -> Path:
    """Sample `n` digits of class `digit` (or `n` of each class) from a checkpoint into a PNG grid."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out} must end in .png")
    if not 1 <= n <= 1000:
        raise ConfigError(f"n must be between 1 and 1000, got {n}")
    check_digit(digit)
    check_temperature(temperature)
    check_seed(seed)
    check_writable_file(out)
    model = load_model(checkpoint, domain="strokes")
    digits = np.full(n, digit) if digit is not None else np.repeat(np.arange(NUM_CLASSES), n)
    samples = sample(model, digits, temperature=temperature, seed=seed)
    save_grid(rasterize_all(samples, scale=4), out, titles=list(digits),
              ncols=None if digit is not None else n)
    return out


def write_hessian(checkpoint, out, *, top_k: int = 10, density: bool = True, sequences: int = 64,
                  lanczos_steps: int = 60, trace_samples: int = 50, density_runs: int = 5, seed: int = 0,
                  data_dir=None, progress: bool = True) -> dict:
    """Hessian spectrum of a checkpoint's training loss on a fixed sample of train sequences.

    A lottery level (a run folder holding `mask.safetensors`, or that folder's model.safetensors) is
    analysed over its surviving weights only. Writes eigenvalues.csv, summary.json and (with `density`) density.csv into
    `out`; returns the summary.
    """
    out = check_writable_dir(out)  # before the meter makes the folder
    check_run_kind(out, "hessian")
    check_seed(seed)
    if lanczos_steps < 2:  # each density run takes as many Lanczos steps
        raise ConfigError(f"lanczos_steps must be >= 2, got {lanczos_steps}")
    HessianSpectrum(top_k=top_k, lanczos_steps=lanczos_steps, trace_samples=trace_samples,
                    density_runs=density_runs, density_steps=lanczos_steps).check()  # before any data loads
    with CostMeter(out, record_user_errors=False, resumes=False):  # cost.json: time and energy of the analysis
        return _hessian(checkpoint, out, top_k, density, sequences, lanczos_steps, trace_samples, density_runs,
                        seed, data_dir, progress)


def _hessian(checkpoint, out, top_k, density, sequences, lanczos_steps, trace_samples, density_runs, seed,
             data_dir, progress) -> dict:
    checkpoint = Path(checkpoint)
    model = load_model(checkpoint)  # strokes or text: the train split of the model's own domain
    # a lottery level's mask lies beside its model: the folder or its model.safetensors, the same level
    source = resolve(checkpoint)
    mask_path = source.parent / "mask.safetensors" if source.name == MODEL_FILE else None
    mask = load_mask(mask_path) if mask_path is not None and mask_path.exists() else None
    batch = sample_batch(get_domain(model.cfg.domain).load("train", data_dir), model.cfg, sequences, seed)
    operator = HessianOperator(model, batch, mask)
    spectrum = HessianSpectrum(top_k=top_k, lanczos_steps=lanczos_steps, trace_samples=trace_samples,
                               density_runs=density_runs, density_steps=lanczos_steps, seed=seed)
    expected = lanczos_steps + trace_samples + (density_runs * lanczos_steps if density else 0)
    with passing_bar("Hessian-vector products", progress) as bar:
        task = bar.add_task("hvp", total=expected)
        operator.on_matvec = lambda: bar.advance(task)
        spectrum.fit(operator, density=density)
    eigenvalues = spectrum.eigenvalues_
    summary = {"checkpoint": str(checkpoint), "domain": model.cfg.domain, "coordinates": operator.dim,
               "pruned": mask is not None,
               "sequences": sequences, "loss_nats": operator.loss_value(), "top_eigenvalues": eigenvalues.tolist(),
               "trace": spectrum.trace_, "trace_stderr": spectrum.trace_stderr_, "outliers": spectrum.outliers_,
               "bulk_edge": float(eigenvalues[spectrum.outliers_]) if spectrum.outliers_ < len(eigenvalues) else None,
               "hessian_vector_products": operator.n_matvecs}
    atomic_write_csv(pd.DataFrame({"rank": np.arange(1, len(eigenvalues) + 1), "eigenvalue": eigenvalues,
                             "outlier": np.arange(len(eigenvalues)) < spectrum.outliers_}), out / "eigenvalues.csv")
    if density:
        low, high = spectrum.density_nodes_.min(), spectrum.density_nodes_.max()
        sigma = max((high - low) / 200, 1e-12)
        grid = np.linspace(low - 10 * sigma, high + 10 * sigma, 1000)
        values = spectrum.density(grid, sigma)
        from scipy.integrate import trapezoid  # here: scipy's import is a second that other commands need not pay

        estimate, stderr = spectrum.density_trace()
        summary.update(density_trace=estimate, density_trace_stderr=stderr, density_sigma=sigma,
                       density_integral=float(trapezoid(values, grid)))
        atomic_write_csv(pd.DataFrame({"eigenvalue": grid, "density": values}), out / "density.csv")
    else:  # a density from an earlier run with --density would be drawn as this run's
        for name in ("density.csv", "density.png"):
            (out / name).unlink(missing_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def write_svcca(checkpoints, out, *, sequences: int = 500, keep: float = 0.99, seed: int = 0,
                data_dir=None) -> dict:
    """SVCCA between every layer of one checkpoint (or of two) on the same test tokens.

    checkpoints : one checkpoint (a path) or a list of one or two.
    Writes similarity.csv (rows: layers of the first model, columns: layers of the second, or
    of the same model), dims.csv (intrinsic dimensionality of every layer at `keep`) and
    svcca.json (what was compared) and cost.json into `out`; returns {"similarity": DataFrame, "dims": DataFrame}.
    """
    out = check_writable_dir(out)  # before the meter makes the folder
    check_run_kind(out, "svcca")
    check_seed(seed)
    if isinstance(checkpoints, (str, os.PathLike)):  # one checkpoint, not a sequence of characters
        checkpoints = [checkpoints]
    with CostMeter(out, record_user_errors=False, resumes=False):  # cost.json: time and energy of the analysis
        return _svcca(checkpoints, out, sequences, keep, seed, data_dir)


def _svcca(checkpoints, out: Path, sequences: int, keep: float, seed: int, data_dir) -> dict:
    if not 1 <= len(checkpoints) <= 2:
        raise ConfigError(f"give one or two checkpoints, got {len(checkpoints)}")
    models = [load_model(c) for c in checkpoints]
    domain = models[0].cfg.domain
    if models[-1].cfg.domain != domain:
        raise ConfigError(f"{checkpoints[0]} is a {domain} model but {checkpoints[-1]} a {models[-1].cfg.domain} "
                          "model; compare checkpoints of one domain")
    test = get_domain(domain).load("test", data_dir)  # test strokes, or test sentences for text models
    if not 2 <= sequences <= len(test):
        raise ConfigError(f"sequences must be between 2 and {len(test)}, got {sequences}")
    index = np.sort(np.random.default_rng(seed).choice(len(test), size=sequences, replace=False))
    chosen = test.subset(index)
    layers = [hidden_states(model, chosen) for model in models]
    names = [[f"{'AB'[k] if len(checkpoints) == 2 else ''}{'emb' if i == 0 else f'block{i}'}"
              for i in range(len(states))] for k, states in enumerate(layers)]
    first, second = layers[0], layers[-1]
    matrix = np.array([[SVCCA(keep).fit(X, Y).similarity_ for Y in second] for X in first])
    similarity = pd.DataFrame(matrix, index=names[0], columns=names[-1])
    dims = pd.DataFrame([{"checkpoint": str(c), "layer": name, "intrinsic_dimension": intrinsic_dimension(X, keep),
                          "width": X.shape[1]}
                         for c, states, layer_names in zip(checkpoints, layers, names)
                         for X, name in zip(states, layer_names)])
    out = Path(out)
    atomic_write_csv(similarity, out / "similarity.csv", index=True)
    atomic_write_csv(dims, out / "dims.csv")
    atomic_write_text(out / "svcca.json", json.dumps({"checkpoints": [str(c) for c in checkpoints], "keep": keep,
                                                      "sequences": sequences, "positions": len(first[0]),
                                                      "seed": seed}, indent=2) + "\n")
    return {"similarity": similarity, "dims": dims}
