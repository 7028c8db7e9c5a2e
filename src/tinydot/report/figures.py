"""Pure functions that build matplotlib Figures (no pyplot, no global state, no files)."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tinydot.fits import Line, data_sets, fit_ols, is_constant


def complexity_histograms(table: pd.DataFrame, binned: str, edges: pd.DataFrame) -> Figure:
    """One histogram per measure column of `table`; the `binned` measure shows its bin edges."""
    measures = [c for c in table.columns if c not in ("index", "label", "bin")]  # either domain's
    ncols = 4
    nrows = int(np.ceil(len(measures) / ncols))
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, m in zip(axes, measures):
        values = table[m].to_numpy(dtype=float)
        discrete = np.allclose(values, np.round(values)) and np.ptp(values) < 200
        bins = np.arange(values.min() - 0.5, values.max() + 1.5) if discrete else 60
        ax.hist(values, bins=bins, color="#4c72b0" if m != binned else "#dd8452")
        if m == binned:
            for high in edges["high"].to_numpy()[:-1]:
                ax.axvline(high, color="black", lw=1, ls="--")
            ax.set_title(f"{m}  ({len(edges)} quantile bins)", fontsize=9)
        else:
            ax.set_title(m, fontsize=9)
        ax.set_xlabel(m, fontsize=7)
        ax.set_ylabel("samples", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes[len(measures):]:
        ax.set_axis_off()
    return fig


def lottery_curve(table: pd.DataFrame, unit: str = "bits/step") -> Figure:
    """Held-out NLL (in `unit`) against sparsity for the IMP tickets and their two controls; dense as a line."""
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    dense = table.iloc[0]["bits_per_step"]
    pruned = table.iloc[1:]
    ax.axhline(dense, color="gray", ls=":", label="dense")
    ax.plot(pruned["sparsity"], pruned["bits_per_step"], "o-", label="ticket (rewound)")
    for column, label in (("reinit_bits_per_step", "same mask, fresh init"),
                          ("random_bits_per_step", "random mask, same sparsity")):
        if column in pruned and pruned[column].notna().any():
            ax.plot(pruned["sparsity"], pruned[column], "s--", label=label)
    ax.set_xlabel("sparsity of prunable weights")
    ax.set_ylabel(f"held-out NLL ({unit})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def study_histograms(assignments: pd.DataFrame, measures, bins: int) -> Figure:
    """Histogram of each binned measure over the binned train samples, with its quantile bin edges."""
    fig = Figure(figsize=(4.2 * len(measures), 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(measures)))
    for ax, m in zip(axes, measures):
        pool = assignments[assignments[f"bin_{m}"] >= 0]  # text: the train split (valid rows are -1)
        values = pool[m].to_numpy(dtype=float)
        discrete = np.allclose(values, np.round(values)) and np.ptp(values) < 200
        ax.hist(values, bins=np.arange(values.min() - 0.5, values.max() + 1.5) if discrete else 60, color="#4c72b0")
        for edge in pool.groupby(f"bin_{m}")[m].max().to_numpy()[:-1]:
            ax.axvline(edge, color="black", lw=1, ls="--")
        ax.set_title(f"{m}: {bins} equal-count bins", fontsize=9)
        ax.set_xlabel(m)
    axes[0].set_ylabel("train samples\n(held-out classes excluded)" if "held_class" in assignments
                       else "train sentences", fontsize=8)
    return fig


USAGE_PARTS = (("untouched_fraction", "untouched (no gradient)"), ("trained_to_small_fraction", "trained to small"),
               ("unused_fraction", "unused (their sum)"))


def per_bin(jobs: pd.DataFrame, measures) -> Figure:
    """Per binning measure: the dense network's unused weights in their two parts, and the needed
    fraction, against the bin's mean complexity (mean over seeds, bars: one standard deviation)."""
    bins = jobs[jobs["kind"] == "bin"]
    fig = Figure(figsize=(4.2 * len(measures), 5.8), layout="constrained")
    axes = fig.subplots(2, len(measures), squeeze=False)
    for j, m in enumerate(measures):
        part = bins[bins["measure"] == m].groupby("bin")
        mean, sd = part.mean(numeric_only=True), part.std(numeric_only=True).fillna(0)
        x = mean[f"mean_{m}"]
        for column, label in USAGE_PARTS:
            axes[0, j].errorbar(x, mean[column], yerr=sd[column], marker="o", capsize=3, label=label)
        axes[0, j].set_title(f"binned by {m}", fontsize=9)
        axes[0, j].set_ylabel("share of prunable weights, dense")
        axes[0, j].legend(fontsize=7)
        axes[1, j].errorbar(x, mean["needed_fraction"], yerr=sd["needed_fraction"], marker="s", capsize=3,
                            color="#c44e52")
        axes[1, j].set_xlabel(f"bin mean {m}")
        axes[1, j].set_ylabel("needed fraction")
    return fig


def nll_vs_density(curves: pd.DataFrame, jobs: pd.DataFrame, delta: float) -> Figure:
    """Per binning (and the held-out classes): each job's ticket NLL relative to its dense NLL against
    the kept density (seed 0), the 1 + delta threshold, and the interpolated needed point."""
    groups = [g for g in dict.fromkeys(curves["group"])]
    fig = Figure(figsize=(4.2 * len(groups), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(groups)))
    for ax, group in zip(axes, groups):
        for job, part in curves[(curves["group"] == group) & (curves["seed"] == 0)].groupby("job", sort=False):
            relative = part["bits_per_step"] / part["bits_per_step"].iloc[0]
            line, = ax.plot(part["density"], relative, "o-", ms=3, label=part["label"].iloc[0])
            row = jobs[jobs["job"] == job].iloc[0]
            if row["needed_reached"]:
                ax.plot(row["needed_fraction"], 1 + delta, "*", ms=11, color=line.get_color())
        ax.axhline(1 + delta, color="gray", ls=":", lw=1)
        ax.set_xscale("log")
        ticks = [d for d in (1, 0.5, 0.25, 0.1, 0.05, 0.025, 0.01) if d >= curves["density"].min() * 0.9]
        ax.set_xticks(ticks, [f"{d:g}" for d in ticks])
        ax.minorticks_off()
        ax.invert_xaxis()
        ax.set_xlabel("kept density (log)")
        ax.set_ylabel("held-out NLL / dense NLL")
        ax.set_title(group, fontsize=9)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    return fig


def ols_fits(jobs: pd.DataFrame, predictors, targets: dict[str, str], validation: pd.DataFrame) -> Figure:
    """Bin jobs, the OLS line and its 95% confidence band per predictor (columns) and target (rows);
    the held-out classes (red) at their measured value, with the 95% prediction interval."""
    bins = jobs[jobs["kind"] == "bin"]
    fig = Figure(figsize=(3.6 * len(predictors), 2.9 * len(targets)), layout="constrained")
    axes = fig.subplots(len(targets), len(predictors), squeeze=False)
    for i, (target, label) in enumerate(targets.items()):
        fine = bins[np.isfinite(bins[f"{target}_fraction"])]
        for j, m in enumerate(predictors):
            ax = axes[i, j]
            x, y = fine[f"mean_{m}"].to_numpy(), fine[f"{target}_fraction"].to_numpy()
            if is_constant(y):  # OLS would draw its rounding noise as a slope and a p-value
                ax.axhline(y[0], label=f"{y[0]:.3g} in every job")
            elif len(x) >= 3:
                fit = fit_ols(x, y)
                grid = np.linspace(x.min(), x.max(), 50)
                band = fit.get_prediction(np.column_stack([np.ones_like(grid), grid])).summary_frame(alpha=0.05)
                ax.fill_between(grid, band["mean_ci_lower"], band["mean_ci_upper"], alpha=0.25)
                ax.plot(grid, band["mean"], "-", label=f"slope {fit.params[1]:.3g}, p {fit.pvalues[1]:.2g}")
            ax.plot(x, y, "o", color="black", ms=3)
            if not validation.empty:
                held = validation[(validation["target"] == target) & (validation["predictor"] == m)]
                ax.errorbar(held["complexity"], held["predicted"],
                            yerr=[held["predicted"] - held["pi_low"], held["pi_high"] - held["predicted"]],
                            fmt="none", ecolor="#c44e52", alpha=0.6, capsize=2)
                ax.plot(held["complexity"], held["measured"], "D", color="#c44e52", ms=5,
                        label="held-out classes" if "digit" in held else "held-out groups")
            ax.set_xlabel(f"mean {m}", fontsize=8)
            if j == 0:
                ax.set_ylabel(textwrap.fill(label, 32), fontsize=7)  # long labels would run off the figure
            ax.legend(fontsize=6)
            ax.tick_params(labelsize=7)
    return fig


def image_rows(rows: list[np.ndarray], row_labels: list[str], col_labels: list[str]) -> Figure:
    """A grid of images: one row per entry of `rows` (each (n, H, W))."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig = Figure(figsize=(0.8 * n_cols + 1.2, 0.85 * n_rows + 0.3), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, images in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images):
                ax.imshow(images[j], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=7, rotation=0, ha="right", va="center")
            if i == 0:
                ax.set_title(col_labels[j], fontsize=8)
    return fig


def hessian_spectrum(eigenvalues: np.ndarray, outliers: int) -> Figure:
    """Top Hessian eigenvalues by rank; outliers highlighted."""
    fig = Figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.subplots()
    ranks = np.arange(1, len(eigenvalues) + 1)
    ax.plot(ranks, eigenvalues, "o", color="#4c72b0", label="bulk")
    ax.plot(ranks[:outliers], eigenvalues[:outliers], "o", color="#dd8452", label=f"outliers ({outliers})")
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue")
    ax.set_title("top Hessian eigenvalues (Lanczos)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def hessian_density(grid: np.ndarray, density: np.ndarray, bulk_edge) -> Figure:
    """SLQ spectral density (log scale), with the bulk edge marked."""
    fig = Figure(figsize=(5.5, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.semilogy(grid, np.maximum(density, 1e-12))
    if bulk_edge is not None:
        ax.axvline(bulk_edge, color="#dd8452", ls="--", label=f"bulk edge {bulk_edge:.3g}")
        ax.legend(fontsize=8)
    ax.set_ylim(bottom=max(1e-8, float(np.maximum(density, 1e-12).max()) * 1e-8))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title("Hessian spectral density (SLQ)", fontsize=9)
    return fig


def similarity_heatmap(frame: pd.DataFrame, title: str) -> Figure:
    """A labelled heatmap of a square or rectangular similarity table in [0, 1]."""
    fig = Figure(figsize=(1.0 + 0.8 * frame.shape[1], 0.8 + 0.7 * frame.shape[0]), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(frame.to_numpy(), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(frame.shape[1]), frame.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(frame.shape[0]), frame.index, fontsize=8)
    for i in range(frame.shape[0]):
        for j in range(frame.shape[1]):
            value = frame.iat[i, j]
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 else "black")
    ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def redundant_fraction(sweep: pd.DataFrame, title: str) -> Figure:
    """Share of redundant neurons (neurons - clusters) / neurons against the clustering threshold c."""
    fig = Figure(figsize=(4.6, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(sweep["threshold"], 100 * sweep["redundant_fraction"], marker="o")
    ax.set_xlabel("clustering threshold c (distance 1 - |rho|)")
    ax.set_ylabel("redundant neurons (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    return fig


def neurons_kept(curves: pd.DataFrame, selections: pd.DataFrame, oracle: float, metric: str, title: str) -> Figure:
    """Test score of probes on the top-ranked neurons against how many are kept, per delta setting."""
    fig = Figure(figsize=(5.4, 3.4), layout="constrained")
    ax = fig.subplots()
    for (delta_l, delta_n), part in curves.groupby(["delta_L", "delta_N"]):
        line, = ax.plot(part["neurons"], part["test"], marker=".", label=f"LS {delta_l:g}%, CC/LCA {delta_n:g}%")
        chosen = selections[(selections["delta_L"] == delta_l) & (selections["delta_N"] == delta_n)]
        ax.scatter(chosen["neurons"], chosen["test"], s=60, facecolors="none", edgecolors=line.get_color())
    ax.axhline(oracle, color="k", ls="--", lw=1, label="oracle (all neurons)")
    ax.axhline(0.97 * oracle, color="k", ls=":", lw=1, label="97% of oracle")
    ax.set_xscale("log")
    ax.set_xlabel("neurons kept (top-ranked)")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return fig


def cross_domain(studies: list[tuple[str, pd.DataFrame]], predictors, target: str = "needed") -> Figure:
    """Every job's `target` fraction against its mean of each shared predictor (columns), one colour
    per study (bins: dots, held-out jobs: diamonds), and each study's OLS line on its bin jobs drawn
    across the range of both studies (dashed outside its own range: an extrapolation)."""
    fig = Figure(figsize=(4.4 * len(predictors), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(predictors)))
    y_col = f"{target}_fraction"
    for ax, m in zip(axes, predictors):
        x_all = np.concatenate([jobs[f"mean_{m}"].to_numpy(dtype=float) for _, jobs in studies])
        for (label, jobs), colour in zip(studies, ("#4c72b0", "#dd8452", "#55a868")):
            fine = jobs[np.isfinite(jobs[y_col])]
            bins, held = fine[fine["kind"] == "bin"], fine[fine["kind"] != "bin"]
            ax.plot(bins[f"mean_{m}"], bins[y_col], "o", color=colour, ms=4, label=f"{label} bins")
            if len(held):
                ax.plot(held[f"mean_{m}"], held[y_col], "D", color=colour, ms=5, mfc="none",
                        label=f"{label} held out")
            if len(set(data_sets(bins))) >= 3:
                coef = Line(bins[[f"mean_{m}"]], bins[y_col], data_sets(bins)).coef  # the line that predicted
                low, high = bins[f"mean_{m}"].min(), bins[f"mean_{m}"].max()
                for a, b, style in ((x_all.min(), low, "--"), (low, high, "-"), (high, x_all.max(), "--")):
                    grid = np.linspace(a, b, 20)
                    ax.plot(grid, coef[0] + coef[1] * grid, style, color=colour, lw=1)
        ax.set_xlabel(f"mean {m} (per job)", fontsize=8)
        ax.set_ylabel(f"{target} fraction", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    return fig
