"""Figures of a compress or quantize run folder, drawn from its results.csv.

`removal_curve` and `bits_curve` are pure (a table in, a Figure out); `write_compress_figures`
reads a run folder and writes its PNG (`tinydot report` redraws it too).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from tinydot.checkpoint import MODEL_FILE, load_config
from tinydot.domains import Domain, get_domain
from tinydot.errors import TinydotError
from tinydot.io import read_json, run_kind, save_figure
from tinydot.report.files import read_table

REMOVAL_FIGURE = "nll_vs_removed.png"
BITS_FIGURE = "nll_vs_bits.png"


def removal_curve(table: pd.DataFrame, unit: str = "bits/step") -> Figure:
    """Test NLL against the fraction of parameters removed, right after removal and after fine-tuning."""
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    dense = table.iloc[0]
    removed = 1 - table["params"] / dense["params"]
    ax.axhline(dense["bits_per_step"], color="gray", ls=":", label="dense")
    ax.plot(removed, table["bits_per_step"], "o-", label="after removal")
    if table["finetuned_bits_per_step"].notna().any():
        tuned = table["finetuned_bits_per_step"].notna()
        ax.plot(removed[tuned], table.loc[tuned, "finetuned_bits_per_step"], "s--", label="after fine-tuning")
    for x, row in zip(removed.iloc[1:], table.iloc[1:].itertuples()):
        ax.annotate(f"L{row.n_layers} H{row.n_heads} M{row.d_mlp}", (x, row.bits_per_step), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("fraction of parameters removed")
    ax.set_ylabel(f"test NLL ({unit})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def bits_curve(table: pd.DataFrame, unit: str = "bits/step") -> Figure:
    """Test NLL against stored bits per quantized weight (scales included), one line per method."""
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    dense = table[table["method"] == "float32"]
    if len(dense):
        ax.axhline(dense["bits_per_step"].iloc[0], color="gray", ls=":", label="float32")
    for method, rows in table[table["method"] != "float32"].groupby("method"):
        rows = rows.sort_values("bits")
        ax.plot(rows["bits_per_weight"], rows["bits_per_step"], "o-", label=method.upper())
        for row in rows.itertuples():
            ax.annotate(f"{row.bits} b", (row.bits_per_weight, row.bits_per_step), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("stored bits per quantized weight (scales included)")
    ax.set_ylabel(f"test NLL ({unit})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def compression_domain(run_dir: str | os.PathLike) -> Domain:
    """The domain of a compress or quantize run folder: that of the checkpoint it was made from
    (config.json's source), or, if that file is gone, of a model it wrote."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    source = config.get("source", "") if isinstance(config, dict) else ""
    for path in ([Path(source)] if source else []) + [run_dir / MODEL_FILE, *sorted(run_dir.glob(f"*/{MODEL_FILE}"))]:
        if path.is_file():
            return get_domain(load_config(path).domain)
    raise TinydotError(f"{run_dir}: cannot tell which domain its model is: the source checkpoint {source} is "
                       "gone and the folder holds no model file")


def compression_unit(run_dir: str | os.PathLike) -> str:
    """The NLL unit of a compress or quantize run folder: bits/step or bits/word."""
    return compression_domain(run_dir).unit


def write_compress_figures(run_dir: str | os.PathLike, unit: str | None = None) -> Path:
    """Draw the figure of a compress or quantize run folder from its results.csv; returns its path.
    unit: the NLL's, if the caller knows it already (else `compression_unit` reads it)."""
    run_dir = Path(run_dir)
    unit = unit or compression_unit(run_dir)
    quantize = run_kind(run_dir) == "quantize"
    table = read_table(run_dir / "results.csv", ("bits_per_step", "method", "bits_per_weight") if quantize
                       else ("bits_per_step", "params", "finetuned_bits_per_step"))
    fig = bits_curve(table, unit) if quantize else removal_curve(table, unit)
    path = run_dir / (BITS_FIGURE if quantize else REMOVAL_FIGURE)
    save_figure(fig, path)
    return path
