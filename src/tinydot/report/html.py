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
from tinydot.domains import get_domain
from tinydot.errors import ConfigError
from tinydot.fits import (cross_domain_predictions, cross_domain_summary, held_out_column, is_constant,
                          loo_summary, predictor_ranking)
from tinydot.io import atomic_path, atomic_write_csv, atomic_write_text, check_run_kind, enclosing_study
from tinydot.report import figures
from tinydot.report.files import read_table
from tinydot.sampling import sample
from tinydot.study import TARGETS, job_name, load_study


def _environment() -> Environment:
    return Environment(loader=PackageLoader("tinydot.report", "templates"),
                       autoescape=select_autoescape(enabled_extensions=("html", "j2")))


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

def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _clustered(row) -> str:
    """', p = x with errors clustered by data set (G clusters)' when the table has it."""
    p = row.get("p_cluster", np.nan)
    return f" ({_fmt(p)} with errors clustered by data set, {int(row['clusters'])} clusters)" if np.isfinite(p) else ""


def _cluster_caveat(significant: pd.DataFrame, alpha: float) -> str:
    """' None of them is once ...' when clustering the errors by data set takes every slope past alpha."""
    p = significant["p_cluster"] if "p_cluster" in significant else pd.Series(dtype=float)
    if p.isna().all() or (p < alpha).any():
        return ""
    return (f" None of them is once errors are clustered by data set (smallest p = {_fmt(p.min())}): "
            "treat it as no evidence.")


def _correlated(bins: pd.DataFrame, terms) -> str:
    """' (these measures correlate ...)' when several measures are significant: across the bin jobs
    they may move together, and then they are one effect counted more than once."""
    terms = list(terms)
    if len(terms) < 2:
        return ""
    r = bins[[f"mean_{t}" for t in terms]].corr().abs().to_numpy()
    top = float(r[np.triu_indices(len(terms), 1)].max())
    return (f" ({', '.join(terms)} move together across the bin jobs, |r| up to {top:.2f}: "
            "possibly one effect counted more than once)" if np.isfinite(top) and top >= 0.7 else "")


def _constant(bins: pd.DataFrame, target: str) -> float | None:
    """The value a target has in every bin job (finite values; `is_constant`), or None when it varies."""
    values = bins[f"{target}_fraction"]
    values = values[np.isfinite(values)]
    return float(values.iloc[0]) if is_constant(values) else None


def study_verdict(jobs: pd.DataFrame, ols: pd.DataFrame, validation: pd.DataFrame, delta: float,
                  alpha: float = 0.05, targets: dict[str, str] = TARGETS) -> list[str]:
    """Plain sentences generated from the fitted and measured numbers (not fixed text)."""
    bins = jobs[jobs["kind"] == "bin"]
    prunable = int(jobs["prunable"].iloc[0])
    sentences = []
    reached = bins[bins["needed_reached"].astype(bool)]
    text = "embedding_weights" in jobs  # the text study counts the trunk only
    embedding = f"; the {int(jobs['embedding_weights'].iloc[0]):,}-weight word embedding is not counted" if text else ""
    what = "the trunk" if text else "tinyDOT"
    if len(reached):
        needed = reached["needed_fraction"]
        sentences.append(
            f"How many parameters this data needs: across {len(reached)} bin jobs the tickets cross "
            f"{100 * delta:g}% above the dense NLL (interpolated between the pruning levels around the crossing) "
            f"at {_fmt(needed.min())} to {_fmt(needed.max())} of the "
            f"{prunable:,} prunable weights{' of the trunk' if text else ''} (mean {_fmt(needed.mean())}, about "
            f"{needed.mean() * prunable:,.0f} weights{embedding}): {what} of this size is over-parameterized about "
            f"{1 / needed.mean():.1f}x for one bin of this data.")
    if len(reached) < len(bins):
        sentences.append(f"{len(bins) - len(reached)} of {len(bins)} bin jobs never lost {100 * delta:g}% within their "
                         "pruning levels: their needed fraction is only known to be below the last level's density "
                         "and is left out of the fits (more levels would bracket it).")
    for target, label in targets.items():
        start = label[:1].upper() + label[1:]  # not capitalize(): it would lower MLP and GPFQ
        rows = ols[(ols["target"] == target) & (ols["model"] != "joint")]
        if rows.empty:
            continue
        significant = rows[rows["p_value"] < alpha]
        if _constant(bins, target) is not None:  # as ols_table found: no slope, no p-value
            sentences.append(f"{start}: {_fmt(rows['intercept'].iloc[0])} in every bin job "
                             f"(n = {int(rows['n'].iloc[0])}), so no complexity measure moves it.")
        elif significant.empty:
            sentences.append(f"{start}: no single complexity measure shows a slope distinguishable from "
                             f"zero at the 5% level (smallest p = {_fmt(rows['p_value'].min())}).")
        else:
            best = significant.sort_values("p_value").iloc[0]
            direction = "rises" if best["coef"] > 0 else "falls"
            sentences.append(
                f"{start} {direction} with {best['term']} (slope {_fmt(best['coef'])}, 95% CI "
                f"[{_fmt(best['ci_low'])}, {_fmt(best['ci_high'])}], p = {_fmt(best['p_value'])}{_clustered(best)}, "
                f"R² = {best['r2']:.2f}, n = {int(best['n'])} jobs); {len(significant)} of {len(rows)} measures are "
                "significant at the 5% level" + _correlated(bins, significant["term"]) + "."
                + _cluster_caveat(significant, alpha))
    parts = ols[(ols["model"] == "L") & ols["target"].isin(["untouched", "trained_to_small"])].set_index("target")
    if len(parts) == 2:
        significant = parts[parts["p_value"] < alpha]
        carrier = (significant["coef"].abs().idxmax().replace("_", "-") + " part carries more of it"
                   if len(significant) else "neither slope is distinguishable from zero at the 5% level")
        sentences.append(
            f"Which part carries the complexity effect on unused weights: against L the untouched share has slope "
            f"{_fmt(parts.loc['untouched', 'coef'])} (p = {_fmt(parts.loc['untouched', 'p_value'])}) and the "
            f"trained-to-small share {_fmt(parts.loc['trained_to_small', 'coef'])} (p = "
            f"{_fmt(parts.loc['trained_to_small', 'p_value'])}): {carrier}.")
    seeds = int(bins["seed"].nunique())
    sentences.append(
        f"How far to trust the p-values: {len(ols)} coefficients were tested without correction, and the jobs are not "
        "independent (bins of different measures share sequences; the jobs of a seed share initial weights), so "
        "p-values and intervals are optimistic; "
        + ("the spread of the slope over seeds is the sturdier evidence." if seeds > 1 else
           f"with one seed per bin ({len(bins)} bin jobs) there is no spread over seeds to check them against and no "
           "clustered p-value, so every slope here is a first look, not a finding (the paper preset runs 3 seeds)."))
    if "unigram_bits_per_step" in jobs:  # text: is there anything to need beyond word frequencies?
        beats = jobs["dense_bits_per_step"] < jobs["unigram_bits_per_step"]
        sentences.append(
            f"Is the question meaningful: the dense model beats the add-one unigram of its own training sentences "
            f"on its held-out sentences in {int(beats.sum())} of {len(jobs)} jobs (dense "
            f"{_fmt(jobs['dense_bits_per_step'].mean())} vs unigram {_fmt(jobs['unigram_bits_per_step'].mean())} "
            "bits/word on average)" + ("." if beats.all() else "; where it does not, the needed fraction measures "
                                       "a model that has not yet learnt even the word frequencies.") +
            " The needed fraction counts the trunk only (the word embedding is reported apart).")
    if not validation.empty:
        ranking = predictor_ranking(validation)
        key = held_out_column(validation)
        noun = "classes" if key == "digit" else "valid groups"
        for target in ("needed", "unused", "neurons", "bits"):
            part = ranking[ranking["target"] == target]
            if part.empty:
                continue
            best, held = part.iloc[0], ", ".join(str(d) for d in sorted(validation[key].unique()))
            constant = _constant(bins, target)
            if constant is not None:  # every line is that constant: nothing to rank
                sentences.append(
                    f"On the held-out {noun} ({held}), every line predicts the {target} fraction the bin jobs all "
                    f"had, {_fmt(constant)}: mean absolute error {_fmt(best['mae'])}, so there is no best "
                    "predictor to name.")
                continue
            sentences.append(
                f"On the held-out {noun} ({held}), the best "
                f"predictor of the {target} fraction is {best['predictor']}: mean absolute error {_fmt(best['mae'])}, "
                f"{'better' if best['beats_baseline'] else 'no better'} than ignoring complexity "
                f"({_fmt(best['baseline_mae'])}); its 95% prediction intervals covered {best['covered']:.0%} of the "
                "measurements.")
    return sentences


def _job_names(jobs: pd.DataFrame) -> pd.Series:
    key = held_out_column(jobs)
    return pd.Series([job_name(r.measure, int(r.bin if r.kind == "bin" else getattr(r, key)), int(r.seed))
                      for r in jobs.itertuples()], index=jobs.index)


def _held_out_label(kind: str, value: int) -> str:
    return f"digit {value}" if kind == "class" else f"group {value}"


def study_curves(run_dir: Path, jobs: pd.DataFrame) -> pd.DataFrame:
    """Every job's per-level table (jobs/<job>/results.csv), labelled for the NLL-vs-density figure."""
    frames, key = [], held_out_column(jobs)
    for r, name in zip(jobs.itertuples(), _job_names(jobs)):
        table = read_table(run_dir / "jobs" / name / "results.csv", ("density", "bits_per_step"))
        group = f"binned by {r.measure}" if r.kind == "bin" else ("held-out classes" if r.kind == "class"
                                                                   else f"held-out groups ({r.measure})")
        label = f"bin {r.bin}" if r.kind == "bin" else _held_out_label(r.kind, getattr(r, key))
        frames.append(table.assign(job=name, group=group, label=label, seed=r.seed))
    return pd.concat(frames, ignore_index=True)


def _samples_figure(run_dir: Path, jobs: pd.DataFrame, measures):
    """One digit of each class from every bin's dense model (seed 0)."""
    rows, labels = [], []
    for m in measures:
        for b in sorted(jobs[(jobs["kind"] == "bin") & (jobs["measure"] == m)]["bin"].unique()):
            model = load_model(run_dir / "jobs" / job_name(m, int(b), 0) / "level_0")
            rows.append(rasterize_all(sample(model, np.arange(10), temperature=0.8, seed=0)))
            labels.append(f"{m} bin {b}")
    return figures.image_rows(rows, labels, [str(d) for d in range(10)])


def write_study_report(run_dir: str | Path) -> Path:
    """Build figures and report.html in `run_dir` from its config, assignments and tables."""
    run_dir = Path(run_dir)
    study, jobs = load_study(run_dir)  # refuses a damaged or truncated config.json or jobs.csv in one line
    tables = {"jobs": jobs, **{name: _read_table(run_dir / f"{name}.csv") for name in ("ols", "loo", "validation",
                                                                                       "seed_slopes")}}
    if not tables["ols"].empty and "p_cluster" not in tables["ols"]:  # written before clustered errors existed
        tables["ols"] = tables["ols"].assign(p_cluster=np.nan, clusters=0)
    jobs = tables["jobs"].assign(job=lambda frame: _job_names(frame))
    assignments = read_table(run_dir / "assignments.csv", tuple(f"bin_{m}" for m in study.study.measures))
    measures, predictors = list(study.study.measures), list(study.study.predictors)
    fig_dir = run_dir / "figures"
    drawn = {t: label for t, label in study.targets.items() if t != "unused"}  # unused: its two parts are drawn
    images = {
        "histograms": _png(figures.study_histograms(assignments, measures, study.study.bins),
                           fig_dir / "histograms.png"),
        "per_bin": _png(figures.per_bin(jobs, measures), fig_dir / "per_bin.png"),
        "curves": _png(figures.nll_vs_density(study_curves(run_dir, jobs), jobs, study.prune.delta),
                       fig_dir / "nll_vs_density.png"),
        "ols": _png(figures.ols_fits(jobs, predictors, drawn, tables["validation"]), fig_dir / "ols.png"),
    }
    if study.study.sample_digits:
        images["samples"] = _png(_samples_figure(run_dir, jobs, measures), fig_dir / "samples.png")

    data_summary = _data_summary(assignments, study)
    columns = {"n_train": "mean", "needed_fraction": "mean", "untouched_fraction": "mean",
               "trained_to_small_fraction": "mean", "unused_fraction": "mean", "dense_bits_per_step": "mean",
               "dense_zeroed_bits_per_step": "mean", "levels": "max", "needed_reached": "mean"}
    bins, key = jobs[jobs["kind"] == "bin"], held_out_column(jobs)
    per_bin_table = bins.groupby(["measure", "bin"]).agg(
        complexity=("complexity", "mean"), **{k: (k, how) for k, how in columns.items()}).reset_index()
    per_class_table = jobs[jobs["kind"] != "bin"].groupby(key).agg(
        **{f"mean_{m}": (f"mean_{m}", "mean") for m in measures}, **{k: (k, how) for k, how in columns.items()}
    ).reset_index()
    validation = tables["validation"]
    if not validation.empty:  # the template names the held-out job by one column, digit or group
        validation = validation.assign(held_out=validation[key])
    html = _environment().get_template("study.html.j2").render(
        cost=study_cost(jobs), rightsized=rightsize_results(run_dir),
        run_name=run_dir.name, created=_now(), config=json.dumps(study.to_dict(), indent=2), study=study,
        images=images, data_summary=data_summary, per_bin=per_bin_table, per_class=per_class_table,
        ols=tables["ols"], seed_slopes=_slope_spread(tables["seed_slopes"]), loo=loo_summary(tables["loo"])
        if not tables["loo"].empty else pd.DataFrame(), validation=validation,
        ranking=predictor_ranking(validation), targets=study.targets, measures=measures,
        verdict=study_verdict(jobs, tables["ols"], validation, study.prune.delta, targets=study.targets),
        prunable=int(jobs["prunable"].iloc[0]), n_jobs=len(jobs), total_seconds=float(jobs["seconds"].sum()),
        held_out_name=key, embedding=_embedding_table(jobs))
    path = run_dir / "report.html"
    atomic_write_text(path, html)
    return path


def _data_summary(assignments: pd.DataFrame, study) -> dict:
    """What the Data section says: samples, binned samples, the classes binned (strokes) or the
    held-out groups' sizes (text), and the recorded measures' statistics over the binned samples."""
    if study.study.domain == "strokes":
        binned = assignments[~assignments["held_class"]]
        return {"sequences": len(assignments), "binned": len(binned),
                "classes": sorted(set(assignments["label"]) - set(study.study.held_out_classes)),
                "measures": binned[study.recorded_measures].describe().T.round(3)}
    train = assignments[assignments["split"] == "train"]
    held = assignments[assignments["group"] >= 0]
    groups = held.groupby("group").agg(sentences=("index", "size"),
                                       **{m: (m, "mean") for m in study.recorded_measures}).reset_index()
    return {"sequences": len(train), "binned": len(train), "held_out_sentences": len(held), "groups": groups,
            "held_out_split": study.domain.eval_split,
            "measures": train[study.recorded_measures].describe().T.round(3)}


def _embedding_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Text: per job, the word embedding left out of the prunable set, and the unigram baseline."""
    if "embedding_weights" not in jobs:
        return pd.DataFrame()
    columns = ["job", "n_train", "vocabulary_seen_fraction", "embedding_untouched_fraction",
               "embedding_trained_to_small_fraction", "embedding_used_fraction", "dense_bits_per_step",
               "unigram_bits_per_step"]
    return jobs[columns]


def study_cost(jobs: pd.DataFrame) -> dict:
    """The study's training cost, summed over its jobs (from their cost.json files via jobs.csv)."""
    if "cost_cpu_seconds" not in jobs:
        return {}
    energy = jobs["cost_energy_kwh"]
    return {"jobs": len(jobs), "cpu_hours": jobs["cost_cpu_seconds"].sum() / 3600,
            "wall_hours": jobs["cost_wall_seconds"].sum() / 3600, "tflops": jobs["cost_train_flops_dense"].sum() / 1e12,
            "tflops_sparse": jobs["cost_train_flops_sparse"].sum() / 1e12,
            "kwh": float(energy.sum()) if energy.notna().all() else None,
            "co2_kg": float(jobs["cost_co2_kg"].sum()) if jobs["cost_co2_kg"].notna().all() else None,
            "modes": sorted(set(jobs["energy_mode"].dropna()))}


def rightsize_results(run_dir: Path) -> list[dict]:
    """Every `tinydot rightsize` run of this study: its summary and its two-row table."""
    found = []
    for folder in sorted((run_dir / "rightsize").glob("*/")):
        if (folder / "rightsize.csv").exists() and (folder / "summary.json").exists():
            summary = json.loads((folder / "summary.json").read_text())
            found.append({"summary": summary, "table": pd.read_csv(folder / "rightsize.csv"),
                          "samples": get_domain(summary.get("domain", "strokes")).samples})
    return found


def _read_table(path: Path) -> pd.DataFrame:
    """A fitted table, empty when the study has none (e.g. no held-out classes: pandas writes a table
    without columns as a bare newline)."""
    return read_table(path, rows=False, empty=True)


def _slope_spread(seed_slopes: pd.DataFrame) -> pd.DataFrame:
    """Per (target, predictor): the slope's mean and standard deviation over seeds, and how many
    seeds give p < 0.05."""
    if seed_slopes.empty or seed_slopes["seed"].nunique() < 2:
        return pd.DataFrame()
    return seed_slopes.groupby(["target", "predictor"], sort=False).agg(
        seeds=("seed", "nunique"), mean=("slope", "mean"), sd=("slope", "std"),
        significant=("p_value", lambda p: int((p < 0.05).sum()))).reset_index()


# --------------------------------------------------------------------------- two studies side by side

SHARED_PREDICTORS = ("L", "compressed_bytes")  # measured in both domains (tinydot.data.text_measures)
UNITS = {
    "strokes": {"L": "pen steps", "compressed_bytes": "deflate bytes per pen step (3 raw bytes a step)",
                "prunable": "every matrix and embedding (the class embedding is left out of the usage shares only)"},
    "text": {"L": "words", "compressed_bytes": "deflate bytes per word of the sentence's characters (~5.65 raw "
                                               "bytes a word with its space)",
             "prunable": "the trunk: positional embedding, attention and MLP matrices (not the word embedding)"},
}


def comparison_verdict(summary: pd.DataFrame, labels: list[str]) -> list[str]:
    """Plain sentences from the cross-domain summary: does one study's line predict the other's jobs?"""
    sentences = []
    for r in summary.itertuples():
        source, target = r.direction.split(" -> ")
        answer = "yes" if r.beats_baseline else "no"
        sentences.append(
            f"Does the {source} line of the {r.target} fraction on {r.predictor} predict the {target} jobs? {answer}: "
            f"its mean absolute error on the {r.n_predicted} {target} jobs is {_fmt(r.mae)} against "
            f"{_fmt(r.baseline_mae)} for the {target} jobs' own mean (and {_fmt(r.source_mean_mae)} for the mean of "
            f"the {source} bin jobs); its 95% prediction intervals covered {r.coverage:.0%} of them, and "
            f"{r.within_range:.0%} of the {target} jobs lie inside the {r.predictor} range the line was fitted on "
            f"(slope {_fmt(r.slope)} from {r.n_fit} {source} bin jobs)."
            + (f" {r.impossible:.0%} of its predictions lie outside [0, 1], where no fraction can be: there the line "
               "is carried far beyond its data, and its intervals' coverage means nothing."
               if getattr(r, "impossible", 0) > 0 else ""))
    need = "a direction needs 3 bins of its source and 3 jobs of its target with a finite fraction"
    if summary.empty:
        sentences.append(f"No direction could be scored: {need} ({', '.join(labels)}).")
        return sentences
    fitted = set(summary["direction"])
    for source, target in ((labels[0], labels[1]), (labels[1], labels[0])):
        if f"{source} -> {target}" not in fitted:
            sentences.append(f"The {source} line does not predict the {target} jobs here: {need}.")
    if not summary["beats_baseline"].any():
        where = "in no direction" if len(fitted) == 2 else f"in the one direction fitted ({next(iter(fitted))})"
        sentences.append(f"No: {where} and for no shared measure does one domain's line predict the other's "
                         "needed fraction better than the other domain's own mean. That is a finding, not a failure "
                         "of the comparison: in these two studies, length and compressibility do not carry one "
                         "domain's needed fraction over to the other.")
    return sentences


def write_comparison(run_a: str | Path, run_b: str | Path, out: str | Path,
                     target: str = "needed") -> tuple[Path, pd.DataFrame, list[str]]:
    """compare.html (and cross_domain.png, predictions.csv, summary.csv) in `out`: two finished
    studies side by side, each one's line predicting the other's jobs from the shared measures.
    Returns the page's path, the summary table (`tinydot.fits.cross_domain_summary`) and the page's
    verdict sentences (`comparison_verdict`: one per summary row, then the overall answer)."""
    runs = [Path(run_a), Path(run_b)]
    loaded = [load_study(run) for run in runs]  # one line if either is not a finished study
    check_run_kind(out, "compare")
    domains = [study.study.domain for study, _ in loaded]
    labels = [d if domains.count(d) == 1 else f"{d} ({run.name})" for d, run in zip(domains, runs)]
    if runs[0].resolve() == runs[1].resolve():
        raise ConfigError(f"{runs[0]} is given twice; compare two different study run folders")
    if loaded[0][0].hash() == loaded[1][0].hash():  # a copy: its line would predict its own jobs
        raise ConfigError(f"{runs[0]} and {runs[1]} hold runs of the same study configuration (config hash "
                          f"{loaded[0][0].hash()}); compare two different studies")
    if (study_dir := enclosing_study(out)) is not None:  # a study's folder belongs to the study (report, figures)
        raise ConfigError(f"--out {out} is inside the study folder {study_dir}; choose a folder outside every study")
    for (_, jobs), run in zip(loaded, runs):
        missing = [m for m in SHARED_PREDICTORS if f"mean_{m}" not in jobs]
        if missing:
            raise ConfigError(f"{run} records no job means of {', '.join(missing)}; re-run it with them among "
                              "study.predictors")
    predictions = pd.concat([
        cross_domain_predictions(loaded[i][1], loaded[1 - i][1], SHARED_PREDICTORS, target,
                                 direction=f"{labels[i]} -> {labels[1 - i]}") for i in (0, 1)], ignore_index=True)
    summary = cross_domain_summary(predictions)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("predictions", predictions), ("summary", summary)):
        atomic_write_csv(frame, out / f"{name}.csv")
    image = _png(figures.cross_domain([(label, jobs) for label, (_, jobs) in zip(labels, loaded)],
                                      SHARED_PREDICTORS, target), out / "cross_domain.png")
    sides = [_side(label, run, study, jobs) for label, run, (study, jobs) in zip(labels, runs, loaded)]
    verdict = comparison_verdict(summary, labels)
    html = _environment().get_template("compare.html.j2").render(
        created=_now(), sides=sides, summary=summary, target=target, image=image, verdict=verdict,
        predictors=SHARED_PREDICTORS)
    path = out / "compare.html"
    atomic_write_text(path, html)
    return path, summary, verdict


def _side(label: str, run: Path, study, jobs: pd.DataFrame) -> dict:
    """One study's column of the comparison: its OLS rows, its per-bin decomposition, its units."""
    ols = _read_table(run / "ols.csv")
    bins = jobs[jobs["kind"] == "bin"]
    decomposition = bins.groupby(["measure", "bin"]).agg(
        mean_L=("mean_L", "mean"), mean_compressed_bytes=("mean_compressed_bytes", "mean"),
        untouched=("untouched_fraction", "mean"), trained_to_small=("trained_to_small_fraction", "mean"),
        used=("used_fraction", "mean"), needed=("needed_fraction", "mean"),
        dense_nll=("dense_bits_per_step", "mean")).reset_index()
    return {"label": label, "run": run.name, "domain": study.study.domain, "units": UNITS[study.study.domain],
            "unit_nll": "bits/step" if study.study.domain == "strokes" else "bits/word",
            "model": f"{study.model.n_layers} layers x d_model {study.model.d_model}",
            "prunable": int(jobs["prunable"].iloc[0]), "jobs": len(jobs),
            "ols": ols[ols["model"] != "joint"] if not ols.empty else ols, "decomposition": decomposition}


# --------------------------------------------------------------------------- redundancy

def redundancy_verdict(summary: dict) -> list[str]:
    """Plain sentences comparing the result with the paper's headline (97% with <= 10% of neurons)."""
    metric, oracle = summary["metric"], summary["oracle"]
    lines = [f"Oracle probe on all {summary['neurons']:,} neurons: test {metric} {oracle['test']:.3f} "
             f"(dev {oracle['dev']:.3f}); always predicting the majority label scores {summary['majority_test']:.3f}."]
    if not oracle["test"] > summary["majority_test"]:
        lines.append("The oracle probe does no better than the majority label: there is nothing for a subset of "
                     "neurons to keep, so the lines below say nothing about redundancy (too few labelled tokens, or a "
                     "task the model has not learnt; try more --tokens).")
        return lines + [f"With delta_L = {row['delta_L']:g}% and delta_N = {row['delta_N']:g}%: {_neurons(row)} "
                        f"kept, test {metric} {row['test']:.3f}." for row in summary["selections"]]
    for row in summary["selections"]:
        start = (f"With delta_L = {row['delta_L']:g}% and delta_N = {row['delta_N']:g}%: layers 0..{row['layer']} "
                 f"selected, {_neurons(row)} kept ({100 * row['neuron_share']:.1f}% of all), test {metric} "
                 f"{row['test']:.3f}")
        if not row["test"] > summary["majority_test"]:  # e.g. a clustered probe that learnt nothing (dev 0)
            lines.append(f"{start}: no better than the majority label, so this selection says nothing about "
                         "redundancy (its probe on the kept neurons learnt nothing; try more --tokens).")
            continue
        meets = row["oracle_share"] >= 0.97 and row["neuron_share"] <= 0.10
        lines.append(f"{start} = {100 * row['oracle_share']:.1f}% of the oracle - the paper's headline (>= 97% of "
                     f"performance with <= 10% of neurons) {'holds' if meets else 'does not hold'} here.")
    return lines


def _neurons(row: dict) -> str:
    return f"{row['neurons']:,} neuron{'s' if row['neurons'] != 1 else ''}"


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

