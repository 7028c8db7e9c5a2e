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
The report layer (`tinydot.report.html.write_study_report`) adds figures/*.png and report.html.
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
import torch

from tinydot.complexity import MEASURES, measure_all, quantile_bins
from tinydot.config import ModelConfig, PruneConfig, StudyConfig, TrainConfig, config_hash
from tinydot.data.strokes import load_strokes, locate_data_dir
from tinydot.errors import ConfigError, TinydotError
from tinydot.executors import check_executor, run_jobs
from tinydot.fits import leave_one_bin_out, ols_table, predict_line
from tinydot.io import atomic_path, atomic_write_text
from tinydot.lottery import run_lottery
from tinydot.training import init_model

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

    def __post_init__(self):
        for m in self.study.measures:
            if m not in MEASURES:
                raise ConfigError(f"unknown study measure {m!r}; choose from {', '.join(MEASURES)}")

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
    seconds: float


# --------------------------------------------------------------------------- data assignment

def assign(strokes, cfg: StudyConfig, seed: int = 0) -> pd.DataFrame:
    """Per train sample: every measure the study needs, its bin per binned measure, held-out flags."""
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


# --------------------------------------------------------------------------- the whole study

def run_study(study: Study, out: str | os.PathLike = "runs", *, data_dir=None, executor: str = "local",
              workers: int = 1, ray_address: str | None = None, progress: bool = True) -> StudyResult:
    """Run (or resume) the study into `out/study-<hash>`: its jobs, job table and fits.

    The report is the report layer's: `tinydot.report.html.write_study_report(result.run_dir)`.
    """
    check_executor(executor, workers)
    started = time.perf_counter()
    run_dir = Path(out) / f"study-{study.hash()}"
    data_dir = str(locate_data_dir(data_dir))
    strokes = load_strokes("train", data_dir)
    assignments_path = run_dir / "assignments.csv"
    assignments = None if assignments_path.exists() else assign(strokes, study.study)  # may refuse: no folder yet
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(study.to_dict(), indent=2) + "\n")
    if assignments is not None:
        with atomic_path(assignments_path) as tmp:
            assignments.to_csv(tmp, index=False)
    specs = [{"run_dir": str(run_dir), "measure": m, "bin": b, "seed": s, "config": study.to_dict(),
              "data_dir": data_dir, "threads": JOB_THREADS}
             for m in study.study.measures for b in range(study.study.bins) for s in range(study.study.seeds)]
    rows = run_jobs(run_job, specs, executor=executor, workers=workers, ray_address=ray_address,
                    progress=progress, description="study jobs")
    jobs = pd.DataFrame(rows)
    ols = ols_table(jobs, study.study.measures, TARGETS)
    loo = leave_one_bin_out(jobs, study.study.measures, TARGETS)
    for name, frame in (("jobs", jobs), ("ols", ols), ("loo", loo)):
        with atomic_path(run_dir / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False)
    return StudyResult(run_dir, jobs, ols, loo, time.perf_counter() - started)


# --------------------------------------------------------------------------- prediction

def load_study(run_dir: str | os.PathLike) -> tuple[Study, pd.DataFrame]:
    """A finished study's configuration and job table; a damaged folder (a truncated or unreadable
    jobs.csv or config.json) is refused with one line."""
    run_dir = Path(run_dir)
    if not (run_dir / "jobs.csv").exists() or not (run_dir / "config.json").exists():
        raise TinydotError(f"{run_dir} is not a finished study run (no jobs.csv / config.json); "
                           "run `tinydot study` first")
    repair = "re-run `tinydot study` with its configuration to rewrite it from the finished jobs"
    try:
        values = json.loads((run_dir / "config.json").read_text())
        text = (run_dir / "jobs.csv").read_text()
        jobs = pd.read_csv(run_dir / "jobs.csv")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TinydotError(f"{run_dir} is damaged: {reason}; {repair}") from None
    finished = len(list((run_dir / "jobs").glob("*/job.json")))
    if not isinstance(values, dict):
        raise TinydotError(f"{run_dir}/config.json is damaged (not a JSON object); {repair}")
    if not text.endswith("\n") or len(jobs) != finished:  # pandas ends every row with a newline
        raise TinydotError(f"{run_dir}/jobs.csv is damaged (truncated: {len(jobs)} rows for {finished} finished "
                           f"jobs); {repair}")
    return Study.from_dict(values), jobs


def predict(run_dir: str | os.PathLike, strokes) -> pd.DataFrame:
    """Predicted unused fraction (95% CI of the line and prediction interval) of `strokes`, from
    its mean complexity alone, by each measure's OLS line and by the L+S model; plus the implied
    number of needed (used) prunable parameters of the study's tinyDOT."""
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
            line = predict_line(x, jobs.loc[x.index, y_col], point)
            rows.append({"model": name, "target": target, "complexity": point if len(point) > 1 else point[0],
                         "predicted_unused_fraction": line["mean"], "ci_low": line["ci_low"],
                         "ci_high": line["ci_high"], "pi_low": line["pi_low"], "pi_high": line["pi_high"],
                         "needed_parameters": prunable * (1 - line["mean"]), "prunable_parameters": prunable,
                         "within_study_range": line["within_range"]})
    return pd.DataFrame(rows)

