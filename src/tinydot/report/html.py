"""The study report: one self-contained HTML file (jinja2 template, figures embedded as PNG data).

It reads only files in the run folder (plus the stroke data for the digit samples' models), so
any finished run can be re-reported.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from tinydot.io import atomic_path, atomic_write_text


def _png(fig, path: Path) -> str:
    """Save `fig` to `path` and return it as a data URI for embedding."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    data = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _samples_figure(run_dir: Path, jobs: pd.DataFrame, measures):
    """One digit of each class from every bin's dense model (seed 0)."""
    from tinydot.checkpoint import load_model
    from tinydot.data.render import rasterize_all
    from tinydot.report.figures import image_rows
    from tinydot.sampling import sample
    from tinydot.study import job_name

    rows, labels = [], []
    for m in measures:
        for b in sorted(jobs[jobs["measure"] == m]["bin"].unique()):
            model = load_model(run_dir / "jobs" / job_name(m, int(b), 0) / "level_0")
            rows.append(rasterize_all(sample(model, np.arange(10), temperature=0.8, seed=0)))
            labels.append(f"{m} bin {b}")
    return image_rows(rows, labels, [str(d) for d in range(10)])


def write_study_report(run_dir: str | Path, data_dir=None) -> Path:
    """Build figures and report.html in `run_dir` from its config, assignments and job tables."""
    from tinydot.report import figures
    from tinydot.study import TARGETS, Study, loo_summary, verdict

    run_dir = Path(run_dir)
    study = Study.from_dict(json.loads((run_dir / "config.json").read_text()))
    jobs = pd.read_csv(run_dir / "jobs.csv")
    ols = pd.read_csv(run_dir / "ols.csv")
    loo = pd.read_csv(run_dir / "loo.csv")
    assignments = pd.read_csv(run_dir / "assignments.csv")
    measures = list(study.study.measures)
    fig_dir = run_dir / "figures"
    images = {
        "histograms": _png(figures.study_histograms(assignments, measures, study.study.bins), fig_dir / "histograms.png"),
        "per_bin": _png(figures.per_bin(jobs, measures), fig_dir / "per_bin.png"),
        "ols": _png(figures.ols_fits(jobs, measures, TARGETS), fig_dir / "ols.png"),
    }
    if study.study.sample_digits:
        images["samples"] = _png(_samples_figure(run_dir, jobs, measures), fig_dir / "samples.png")

    data_summary = {"sequences": len(assignments), "classes": int(assignments["label"].nunique()),
                    "measures": assignments[list(dict.fromkeys([*measures, "L", "S"]))].describe().T.round(3)}
    per_bin_table = (jobs.groupby(["measure", "bin"]).agg(
        complexity=("complexity", "mean"), n_train=("n_train", "mean"), n_held_out=("n_held_out", "mean"),
        dense_unused=("dense_unused_fraction", "mean"), round1_unused=("round1_unused_fraction", "mean"),
        dense_nll=("dense_bits_per_step", "mean"), round1_nll=("round1_bits_per_step", "mean"),
        zeroed_nll=("dense_zeroed_bits_per_step", "mean")).reset_index())
    env = Environment(loader=PackageLoader("tinydot.report", "templates"), autoescape=select_autoescape())
    html = env.get_template("study.html.j2").render(
        run_name=run_dir.name, created=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        config=json.dumps(study.to_dict(), indent=2), study=study, images=images, data_summary=data_summary,
        per_bin=per_bin_table, ols=ols, loo=loo_summary(loo), verdict=verdict(ols, loo),
        prunable=int(jobs["prunable"].iloc[0]), n_jobs=len(jobs), total_seconds=float(jobs["seconds"].sum()))
    path = run_dir / "report.html"
    atomic_write_text(path, html)
    return path
