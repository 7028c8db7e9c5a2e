"""The figures of every kind of run folder, drawn from the tables its stage wrote, and
`write_report(run_dir)`, which recognises the kind of a finished run folder and (re)writes its
figures and pages. Nothing here computes a result; it reads files and draws them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tinydot.domains import get_domain
from tinydot.errors import TinydotError
from tinydot.io import check_run_folder, run_kind, save_figure
from tinydot.report import figures
from tinydot.report.compression import write_compress_figures
from tinydot.report.files import read_summary, read_table
from tinydot.report.html import write_redundancy_report, write_study_report


def write_lottery_figures(run_dir: str | Path) -> list[Path]:
    """nll_vs_sparsity.png from a lottery run's results.csv (bits per word for a text model's)."""
    run_dir = Path(run_dir)
    path = run_dir / "nll_vs_sparsity.png"
    try:
        domain = json.loads((run_dir / "config.json").read_text())["model"].get("domain", "strokes")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # a folder without its config: the default
        domain = "strokes"
    table = read_table(run_dir / "results.csv", ("level", "sparsity", "bits_per_step"))
    save_figure(figures.lottery_curve(table, get_domain(domain).unit), path)
    return [path]


def write_complexity_figures(run_dir: str | Path) -> list[Path]:
    """histograms.png (every measure; the binned one with its bin edges) from measures.csv and bins.csv."""
    run_dir = Path(run_dir)
    edges = read_table(run_dir / "bins.csv", ("measure", "high"))
    path = run_dir / "histograms.png"
    save_figure(figures.complexity_histograms(read_table(run_dir / "measures.csv"), edges["measure"].iloc[0], edges),
                path)
    return [path]


def write_hessian_figures(run_dir: str | Path) -> list[Path]:
    """spectrum.png (top eigenvalues, outliers marked) and, when estimated, density.png."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir / "summary.json", ("outliers", "bulk_edge"))
    eigenvalues = read_table(run_dir / "eigenvalues.csv", ("eigenvalue",))["eigenvalue"].to_numpy()
    paths = [run_dir / "spectrum.png"]
    save_figure(figures.hessian_spectrum(eigenvalues, summary["outliers"]), paths[0])
    if (run_dir / "density.csv").exists():
        density = read_table(run_dir / "density.csv", ("eigenvalue", "density"))
        paths.append(run_dir / "density.png")
        save_figure(figures.hessian_density(density["eigenvalue"].to_numpy(), density["density"].to_numpy(),
                                            summary["bulk_edge"]), paths[1])
    return paths


def write_svcca_figures(run_dir: str | Path) -> list[Path]:
    """similarity.png: the layer-by-layer SVCCA table as a heatmap."""
    run_dir = Path(run_dir)
    info = read_summary(run_dir / "svcca.json", ("keep", "positions"))
    similarity = read_table(run_dir / "similarity.csv", index_col=0)
    if not all(pd.api.types.is_numeric_dtype(t) for t in similarity.dtypes):  # read_table refused an empty one
        raise TinydotError(f"{run_dir / 'similarity.csv'} is damaged (not a table of numbers); re-run tinydot svcca")
    title = f"SVCCA ({info['keep']:.0%} variance), {info['positions']:,} test positions"
    path = run_dir / "similarity.png"
    save_figure(figures.similarity_heatmap(similarity, title), path)
    return [path]


# per kind of run folder (`io.run_kind`): the files it holds once finished, and the function that reports it
WRITERS = {
    "study": (("jobs.csv", "ols.csv"), write_study_report),
    "redundancy": ((), write_redundancy_report),
    "lottery": (("results.csv",), write_lottery_figures),
    "hessian": (("summary.json",), write_hessian_figures),
    "svcca": (("similarity.csv",), write_svcca_figures),
    "complexity": ((), write_complexity_figures),
    "compress": (("results.csv",), write_compress_figures),
    "quantize": (("results.csv",), write_compress_figures),
}


def write_report(run_dir: str | Path) -> list[Path]:
    """Recognise a finished run folder by its files (`io.run_kind`) and (re)write its figures and pages."""
    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    kind = run_kind(run_dir)
    if kind in WRITERS:
        finished, writer = WRITERS[kind]
        if all((run_dir / name).exists() for name in finished):
            written = writer(run_dir)
            return [written] if isinstance(written, Path) else written
        kept = " (finished parts are kept)" if kind in ("study", "lottery", "compress", "quantize") else ""
        raise TinydotError(f"{run_dir} holds an unfinished {kind} run: run the command that made it again to finish "
                           f"it{kept}, then draw its report")
    raise TinydotError(f"{run_dir} holds no report to draw: give a finished study, redundancy, lottery, hessian, "
                       "svcca, complexity, compress or quantize folder (a training run has none; see `tinydot eval`)")
