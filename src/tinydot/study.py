"""The study: training-data complexity -> how many parameters tinyDOT uses, and a predictor.

For each complexity measure the train split is cut into K equal-count quantile bins; each bin
keeps a held-out share for its own test NLL. For every (measure, bin, seed) job, tinyDOT of a
fixed size is trained from the same initial weights (per seed) with the same number of steps and
batch size (so the same token budget, up to bucketing), then the first lottery-ticket round is
run; the job records the unused fraction (|w| <= epsilon) of the dense and of the round-1
network, the held-out NLL and the bin's mean complexity. OLS lines (statsmodels) of unused
fraction against bin complexity, per measure and with the measures together, are the result;
refitted on the job table they predict the unused fraction of new data from its complexity alone.

A run folder `runs/study-<hash>` (hash of the non-default configuration) holds:
  config.json       the study, model, train and prune configs
  assignments.csv   per train sample: its measures, its bin per measure, held-out flags
  jobs/<job>/       one lottery run per job (resumable) and its job.json row
  jobs.csv          one row per job             ols.csv   OLS fits      loo.csv  leave-one-bin-out
  figures/*.png     report.html
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tinydot.config import ModelConfig, PruneConfig, StudyConfig, TrainConfig, config_hash
from tinydot.errors import ConfigError, TinydotError
from tinydot.io import atomic_path, atomic_write_text

TARGETS = {"dense": "unused fraction, dense", "round1": "unused fraction, after round 1"}
JOB_THREADS = 1  # every job pins one torch thread: identical numbers under every executor

PRESETS: dict[str, dict[str, dict]] = {
    # <= 10 minutes on 2 cores: 2 measures x 5 bins x 1 seed, a 2-layer d_model-32 tinyDOT
    "quick": {
        "study": {"measures": ["L", "S"], "bins": 5, "seeds": 1},
        "model": {"n_layers": 2, "d_model": 32, "d_mlp": 128},
        "train": {"steps": 800, "tokens_per_batch": 4096, "lr": 3e-3, "warmup_steps": 50,
                  "eval_every": 0, "checkpoint_every": 200},
        "prune": {"levels": 1, "fraction": 0.2, "controls": False},
    },
    # the fuller experiment: 6 bins x 2 seeds per measure, the default 185k-parameter tinyDOT
    "paper": {
        "study": {"measures": ["L", "S"], "bins": 6, "seeds": 2},
        "model": {},
        "train": {"steps": 500, "warmup_steps": 50, "eval_every": 0, "checkpoint_every": 100},
        "prune": {"levels": 1, "fraction": 0.2, "controls": False},
    },
}


@dataclass(frozen=True)
class Study:
    """Everything that defines a study run; its hash names the run folder."""

    study: StudyConfig = StudyConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    prune: PruneConfig = PruneConfig(levels=1, controls=False)

    @classmethod
    def from_dict(cls, values: dict) -> Study:
        unknown = sorted(set(values) - {"study", "model", "train", "prune"})
        if unknown:
            raise ConfigError(f"unknown study config section(s) {', '.join(unknown)}; "
                              "known: study, model, train, prune")
        prune = {"levels": 1, "controls": False, **values.get("prune", {})}
        return cls(StudyConfig.from_dict(values.get("study", {})), ModelConfig.from_dict(values.get("model", {})),
                   TrainConfig.from_dict(values.get("train", {})), PruneConfig.from_dict(prune))

    @classmethod
    def preset(cls, name: str, overrides: dict | None = None) -> Study:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        values = {section: dict(v) for section, v in PRESETS[name].items()}
        for section, fields in (overrides or {}).items():
            values.setdefault(section, {}).update(fields)
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        return {"study": self.study.to_dict(), "model": self.model.to_dict(), "train": self.train.to_dict(),
                "prune": self.prune.to_dict()}

    def hash(self) -> str:
        return config_hash(self.study, self.model, self.train, self.prune)


@dataclass
class StudyResult:
    run_dir: Path
    jobs: pd.DataFrame
    ols: pd.DataFrame
    loo: pd.DataFrame
    report: Path
    seconds: float


# --------------------------------------------------------------------------- data assignment

def assign(strokes, cfg: StudyConfig, seed: int = 0) -> pd.DataFrame:
    """Per train sample: every measure the study needs, its bin per binned measure, held-out flags."""
    from tinydot.complexity import measure_all, quantile_bins

    needed = list(dict.fromkeys([*cfg.measures, "L", "S"]))
    table = measure_all(strokes, needed)
    table.insert(0, "index", np.arange(len(strokes)))
    rng = np.random.default_rng([seed, 1])
    for m in cfg.measures:
        bins = quantile_bins(table[m].to_numpy(), cfg.bins, labels=strokes.labels if cfg.balanced else None,
                             seed=seed)
        held = np.zeros(len(table), dtype=bool)
        for b in range(cfg.bins):
            members = np.flatnonzero(bins == b)
            held[rng.permutation(members)[: int(round(cfg.held_out_fraction * len(members)))]] = True
        table[f"bin_{m}"] = bins
        table[f"held_out_{m}"] = held
    return table


# --------------------------------------------------------------------------- one job

def job_name(measure: str, bin_index: int, seed: int) -> str:
    return f"{measure}-bin{bin_index}-seed{seed}"


def run_job(spec: dict) -> dict:
    """Train, prune once, count: one (measure, bin, seed) job. Resumable; returns its row."""
    import torch

    from tinydot.data.strokes import load_strokes
    from tinydot.pruning.lottery import run_lottery
    from tinydot.training import init_model

    torch.set_num_threads(spec["threads"])
    folder = Path(spec["run_dir"]) / "jobs" / job_name(spec["measure"], spec["bin"], spec["seed"])
    done = folder / "job.json"
    if done.exists():
        return json.loads(done.read_text())
    started = time.perf_counter()
    study = Study.from_dict(spec["config"])
    measure, b, seed = spec["measure"], spec["bin"], spec["seed"]
    table = pd.read_csv(Path(spec["run_dir"]) / "assignments.csv")
    strokes = load_strokes("train", spec["data_dir"])
    in_bin = table[f"bin_{measure}"].to_numpy() == b
    held = table[f"held_out_{measure}"].to_numpy()
    train_index = np.flatnonzero(in_bin & ~held)
    if study.study.max_train_per_bin:
        train_index = np.sort(np.random.default_rng([seed, b]).permutation(train_index)[
            : study.study.max_train_per_bin])
    test_index = np.flatnonzero(in_bin & held)
    train_cfg = dataclasses.replace(study.train, seed=seed)
    init = init_model(study.model, seed).state_dict()  # the same initial weights in every bin
    result = run_lottery(strokes.subset(train_index), folder, strokes.subset(test_index), study.model, train_cfg,
                         study.prune, init_state=init, max_level=1, progress=False)
    dense, round1 = result.table.iloc[0], result.table.iloc[1]
    row = {"measure": measure, "bin": b, "seed": seed, "n_train": len(train_index), "n_held_out": len(test_index),
           "complexity": float(table.loc[train_index, measure].mean()),
           **{f"mean_{m}": float(table.loc[train_index, m].mean()) for m in ("L", "S")},
           "prunable": int(dense["prunable"]),
           "dense_unused_fraction": float(dense["unused_fraction"]),
           "round1_unused_fraction": float(round1["unused_fraction"]),
           "dense_unused_fraction_relative": float(dense["unused_fraction_relative"]),
           "round1_unused_fraction_relative": float(round1["unused_fraction_relative"]),
           "dense_bits_per_step": float(dense["bits_per_step"]),
           "round1_bits_per_step": float(round1["bits_per_step"]),
           "dense_zeroed_bits_per_step": float(dense["zeroed_bits_per_step"]),
           "seconds": time.perf_counter() - started}
    atomic_write_text(done, json.dumps(row, indent=2) + "\n")
    return row


# --------------------------------------------------------------------------- analysis

def fit_ols(x: np.ndarray, y: np.ndarray):
    """statsmodels OLS of y on [1, x] (x may have several columns)."""
    import statsmodels.api as sm

    return sm.OLS(np.asarray(y, dtype=float), sm.add_constant(np.asarray(x, dtype=float), has_constant="add")).fit()


def ols_table(jobs: pd.DataFrame, measures) -> pd.DataFrame:
    """Slope, 95% CI, p-value and R^2 of unused fraction vs bin complexity, per measure and target;
    plus one model with the mean L and mean S of every job together."""
    rows = []
    for target in TARGETS:
        y_col = f"{target}_unused_fraction"
        for m in measures:
            part = jobs[jobs["measure"] == m]
            fit = fit_ols(part["complexity"], part[y_col])
            low, high = fit.conf_int(0.05)[1]
            rows.append({"model": m, "target": target, "term": m, "coef": fit.params[1], "ci_low": low,
                         "ci_high": high, "p_value": fit.pvalues[1], "r2": fit.rsquared, "n": int(fit.nobs),
                         "intercept": fit.params[0]})
        fit = fit_ols(jobs[["mean_L", "mean_S"]], jobs[y_col])
        for k, term in enumerate(("L", "S"), start=1):
            low, high = fit.conf_int(0.05)[k]
            rows.append({"model": "L+S", "target": target, "term": term, "coef": fit.params[k], "ci_low": low,
                         "ci_high": high, "p_value": fit.pvalues[k], "r2": fit.rsquared, "n": int(fit.nobs),
                         "intercept": fit.params[0]})
    return pd.DataFrame(rows)


def leave_one_bin_out(jobs: pd.DataFrame, measures) -> pd.DataFrame:
    """Predict each bin's mean unused fraction from a line fitted to the other bins, and compare
    with the no-complexity baseline (the other bins' mean)."""
    rows = []
    for target in TARGETS:
        y_col = f"{target}_unused_fraction"
        for m in measures:
            part = jobs[jobs["measure"] == m]
            for b in sorted(part["bin"].unique()):
                rest, held = part[part["bin"] != b], part[part["bin"] == b]
                fit = fit_ols(rest["complexity"], rest[y_col])
                x = held["complexity"].mean()
                predicted = fit.params[0] + fit.params[1] * x
                actual = held[y_col].mean()
                rows.append({"measure": m, "target": target, "bin": int(b), "complexity": x, "actual": actual,
                             "predicted": predicted, "error": predicted - actual,
                             "baseline_error": rest[y_col].mean() - actual})
    return pd.DataFrame(rows)


def loo_summary(loo: pd.DataFrame) -> pd.DataFrame:
    return loo.groupby(["measure", "target"], sort=False).agg(
        mae=("error", lambda e: float(np.abs(e).mean())),
        rmse=("error", lambda e: float(np.sqrt((e ** 2).mean()))),
        baseline_mae=("baseline_error", lambda e: float(np.abs(e).mean()))).reset_index()


# --------------------------------------------------------------------------- the whole study

def run_study(study: Study, out: str | os.PathLike = "runs", *, data_dir=None, executor: str = "local",
              workers: int = 1, ray_address: str | None = None, progress: bool = True) -> StudyResult:
    """Run (or resume) the study into `out/study-<hash>` and write its report."""
    from tinydot.data.strokes import load_strokes
    from tinydot.data.strokes import locate_data_dir
    from tinydot.executors import check_executor, run_jobs

    check_executor(executor, workers)
    started = time.perf_counter()
    run_dir = Path(out) / f"study-{study.hash()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(study.to_dict(), indent=2) + "\n")
    data_dir = str(locate_data_dir(data_dir))
    strokes = load_strokes("train", data_dir)
    assignments_path = run_dir / "assignments.csv"
    if not assignments_path.exists():
        with atomic_path(assignments_path) as tmp:
            assign(strokes, study.study).to_csv(tmp, index=False)
    specs = [{"run_dir": str(run_dir), "measure": m, "bin": b, "seed": s, "config": study.to_dict(),
              "data_dir": data_dir, "threads": JOB_THREADS}
             for m in study.study.measures for b in range(study.study.bins) for s in range(study.study.seeds)]
    rows = run_jobs(run_job, specs, executor=executor, workers=workers, ray_address=ray_address,
                    progress=progress, description="study jobs")
    jobs = pd.DataFrame(rows)
    ols = ols_table(jobs, study.study.measures)
    loo = leave_one_bin_out(jobs, study.study.measures)
    for name, frame in (("jobs", jobs), ("ols", ols), ("loo", loo)):
        with atomic_path(run_dir / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False)
    from tinydot.report.html import write_study_report

    report = write_study_report(run_dir, data_dir=data_dir)
    return StudyResult(run_dir, jobs, ols, loo, report, time.perf_counter() - started)


# --------------------------------------------------------------------------- prediction

def load_study(run_dir: str | os.PathLike) -> tuple[Study, pd.DataFrame]:
    run_dir = Path(run_dir)
    if not (run_dir / "jobs.csv").exists() or not (run_dir / "config.json").exists():
        raise TinydotError(f"{run_dir} is not a finished study run (no jobs.csv / config.json); "
                           "run `tinydot study` first")
    return Study.from_dict(json.loads((run_dir / "config.json").read_text())), pd.read_csv(run_dir / "jobs.csv")


def predict(run_dir: str | os.PathLike, strokes) -> pd.DataFrame:
    """Predicted unused fraction (95% CI of the line and prediction interval) of `strokes`, from
    its mean complexity alone, by each measure's OLS line and by the L+S model; plus the implied
    number of needed (used) prunable parameters of the study's tinyDOT."""
    from tinydot.complexity import measure_all

    study, jobs = load_study(run_dir)
    if len(strokes) == 0:
        raise ConfigError("the selection to predict for is empty")
    means = measure_all(strokes, list(dict.fromkeys([*study.study.measures, "L", "S"]))).mean()
    prunable = int(jobs["prunable"].iloc[0])
    rows = []
    for target in TARGETS:
        y_col = f"{target}_unused_fraction"
        models = [(m, jobs[jobs["measure"] == m][["complexity"]], [means[m]]) for m in study.study.measures]
        models.append(("L+S", jobs[["mean_L", "mean_S"]], [means["L"], means["S"]]))
        for name, x, point in models:
            fit = fit_ols(x, jobs.loc[x.index, y_col])
            frame = fit.get_prediction(np.array([[1.0, *point]])).summary_frame(alpha=0.05).iloc[0]
            train_range = x.min().to_numpy(), x.max().to_numpy()
            inside = bool(np.all(np.array(point) >= train_range[0]) and np.all(np.array(point) <= train_range[1]))
            rows.append({"model": name, "target": target, "complexity": point if len(point) > 1 else point[0],
                         "predicted_unused_fraction": frame["mean"], "ci_low": frame["mean_ci_lower"],
                         "ci_high": frame["mean_ci_upper"], "pi_low": frame["obs_ci_lower"],
                         "pi_high": frame["obs_ci_upper"], "needed_parameters": prunable * (1 - frame["mean"]),
                         "prunable_parameters": prunable, "within_study_range": inside})
    return pd.DataFrame(rows)


def verdict(ols: pd.DataFrame, loo: pd.DataFrame, alpha: float = 0.05) -> list[str]:
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
