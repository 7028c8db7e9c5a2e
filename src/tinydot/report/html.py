"""Self-contained HTML pages (jinja2 templates, figures embedded as PNG data) of study and
redundancy run folders, and the verdicts written from their numbers.

Everything here reads only the files a stage wrote into its run folder (plus, for the study's
digit samples, the job checkpoints in that folder), so any finished run can be re-reported.
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

from tinydot.checkpoint import load_model
from tinydot.data.render import rasterize_all
from tinydot.fits import loo_summary
from tinydot.io import atomic_path, atomic_write_text
from tinydot.report import figures
from tinydot.sampling import sample
from tinydot.study import TARGETS, Study, job_name


def _environment() -> Environment:
    return Environment(loader=PackageLoader("tinydot.report", "templates"), autoescape=select_autoescape())


def _now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


def _png(fig, path: Path) -> str:
    """Save `fig` to `path` and return it as a data URI for embedding."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    data = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return "data:image/png;base64," + base64.b64encode(data).decode()


# --------------------------------------------------------------------------- the study

def study_verdict(ols: pd.DataFrame, loo: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """Plain sentences generated from the fitted numbers (not fixed text)."""
    sentences = []
    summary = loo_summary(loo)
    for row in ols[ols["model"] != "L+S"].itertuples():
        direction = "rises" if row.coef > 0 else "falls"
        significant = row.p_value < alpha
        s = (f"{TARGETS[row.target].capitalize()} {direction} by {abs(row.coef):.3g} per unit of {row.term} "
             f"(95% CI [{row.ci_low:.3g}, {row.ci_high:.3g}], p = {row.p_value:.3g}, R² = {row.r2:.2f}, "
             f"n = {row.n} jobs): ")
        s += ("the slope is significantly different from zero at the 5% level." if significant else
              "the data do not show a slope distinguishable from zero at the 5% level.")
        loo_row = summary[(summary["measure"] == row.term) & (summary["target"] == row.target)].iloc[0]
        better = loo_row.mae < loo_row.baseline_mae
        s += (f" Leaving one bin out, the line predicts that bin's unused fraction with mean absolute error "
              f"{loo_row.mae:.3g}, {'better' if better else 'no better'} than ignoring complexity "
              f"({loo_row.baseline_mae:.3g}).")
        sentences.append(s)
    return sentences


def _samples_figure(run_dir: Path, jobs: pd.DataFrame, measures):
    """One digit of each class from every bin's dense model (seed 0)."""
    rows, labels = [], []
    for m in measures:
        for b in sorted(jobs[jobs["measure"] == m]["bin"].unique()):
            model = load_model(run_dir / "jobs" / job_name(m, int(b), 0) / "level_0")
            rows.append(rasterize_all(sample(model, np.arange(10), temperature=0.8, seed=0)))
            labels.append(f"{m} bin {b}")
    return figures.image_rows(rows, labels, [str(d) for d in range(10)])


def write_study_report(run_dir: str | Path) -> Path:
    """Build figures and report.html in `run_dir` from its config, assignments and job tables."""
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
    html = _environment().get_template("study.html.j2").render(
        run_name=run_dir.name, created=_now(), config=json.dumps(study.to_dict(), indent=2), study=study,
        images=images, data_summary=data_summary, per_bin=per_bin_table, ols=ols, loo=loo_summary(loo),
        verdict=study_verdict(ols, loo), prunable=int(jobs["prunable"].iloc[0]), n_jobs=len(jobs),
        total_seconds=float(jobs["seconds"].sum()))
    path = run_dir / "report.html"
    atomic_write_text(path, html)
    return path


# --------------------------------------------------------------------------- redundancy

def redundancy_verdict(summary: dict) -> list[str]:
    """Plain sentences comparing the result with the paper's headline (97% with <= 10% of neurons)."""
    metric, oracle = summary["metric"], summary["oracle"]
    lines = [f"Oracle probe on all {summary['neurons']:,} neurons: test {metric} {oracle['test']:.3f} "
             f"(dev {oracle['dev']:.3f}); always predicting the majority label scores {summary['majority_test']:.3f}."]
    for row in summary["selections"]:
        meets = row["oracle_share"] >= 0.97 and row["neuron_share"] <= 0.10
        lines.append(
            f"With delta_L = {row['delta_L']:g}% and delta_N = {row['delta_N']:g}%: layers 0..{row['layer']} selected, "
            f"{row['neurons']:,} neurons kept ({100 * row['neuron_share']:.1f}% of all), test {metric} "
            f"{row['test']:.3f} = {100 * row['oracle_share']:.1f}% of the oracle - the paper's headline "
            f"(>= 97% of performance with <= 10% of neurons) {'holds' if meets else 'does not hold'} here.")
    return lines


def write_redundancy_report(out: str | Path) -> Path:
    """cka.png, redundant_fraction.png, neurons_kept.png, section.html (the analysis as an HTML
    fragment for a report page, figures embedded) and report.html (the same section as a page of
    its own), from the tables and summary.json that `run_redundancy` wrote into `out`."""
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    cka = pd.read_csv(out / "cka.csv", index_col=0)
    clusters = pd.read_csv(out / "clusters.csv")
    curves, selections = pd.read_csv(out / "curves.csv"), pd.read_csv(out / "selections.csv")
    label, tokens = summary["label"], sum(summary["tokens"].values())
    drawn = {
        "cka": figures.similarity_heatmap(cka, f"linear CKA between layers, {tokens:,} tokens ({label})"),
        "redundant_fraction": figures.redundant_fraction(clusters, f"redundant neurons of {summary['neurons']:,} "
                                                                   f"({label})"),
        "neurons_kept": figures.neurons_kept(curves, selections, summary["oracle"]["test"], summary["metric"], label),
    }
    images = {name: _png(fig, out / f"{name}.png") for name, fig in drawn.items()}
    context = dict(s=summary, images=images, layers=pd.read_csv(out / "layers.csv"), selections=selections,
                   clusters=clusters, verdict=redundancy_verdict(summary),
                   config=json.dumps(summary["config"], indent=2), created=_now())
    env = _environment()
    atomic_write_text(out / "section.html", env.get_template("redundancy.html.j2").render(**context))
    path = out / "report.html"
    atomic_write_text(path, env.get_template("redundancy_page.html.j2").render(**context))
    return path

