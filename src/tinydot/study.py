"""The study: how many parameters does this data need, and can complexity tell before training?

The train split minus a few held-out digit classes is cut, per binning measure, into K equal-count
quantile bins; each bin keeps a share of its sequences for its own held-out NLL. Every
(measure, bin, seed) job trains tinyDOT of a fixed size from the same initial weights (per seed)
for the same token budget, then runs iterative magnitude pruning with rewinding (to step
`prune.rewind_step`) until a ticket's held-out NLL exceeds the dense NLL by more than delta. Per job:
  - the dense network's prunable weights split into untouched (no gradient ever: the data never
    reaches them), trained to small (|w| <= epsilon) and used (tinydot.pruning.usage);
  - the needed fraction: the density at which the tickets' NLL crosses (1 + delta) x dense,
    interpolated in log density between the bracketing levels (NaN, "not reached", otherwise);
  - the mean of every predictor measure over its training sequences.
Each held-out class is trained and pruned the same way, on as many sequences as a bin when
`study.max_train_per_bin` caps both (every preset does; 0 trains each on all its sequences). OLS lines
(statsmodels) of each target against each measure, fitted on the bin jobs, predict the held-out
classes from their complexity alone; the report compares prediction and measurement.

The text domain (`study.domain = "text"`, Penn Treebank sentences) runs the same stage through
`tinydot.domains`: its measures, loading and batching are the domain's, training and pruning are
the same code. Text has no classes to hold out, so its held-out data are three *groups* of the
valid split (which no bin job ever uses, not even for its held-out NLL), cut at the tertiles of
`study.held_out_measure` (type_token_ratio by default: not a binning measure, and the groups
differ in length and surprisal as well). Each group keeps held_out_fraction of its sentences for
its NLL and trains like a bin; every text job (bins and groups alike) trains on the same number of
sentences, the smallest group's share capped by max_train_per_bin, so the held-out groups differ
from the bins in complexity and not in data size. Jobs are named `valid-ttr<g>-seed<s>`.
The text study prunes and counts the trunk only (`TEXT_PRUNABLE`: positional embedding, attention
and MLP matrices): the tied 10,000 x d word embedding would otherwise hold ~92% of the prunable
weights of a d_model-32 model, and its rows follow the vocabulary rather than the data's
complexity. The needed fraction and the usage shares are fractions of the trunk; each job reports
the word embedding apart (its untouched / trained-to-small / used shares, and the share of the
vocabulary its training sentences contain) and the add-one unigram NLL of its held-out sentences
(the dense model must beat it, or the question is meaningless).

A run folder `runs/study-<hash>` (hash of the non-default configuration and the study edition):
  config.json       the study, model, train and prune configs
  assignments.csv   per train sample: its measures, held-out class flag, its bin per measure, held-out flags
                    (text: per train and valid sentence: split, index, measures, bins, group, held-out flags)
  jobs/<job>/       one lottery run per job (resumable), its results.csv and job.json row
  jobs.csv          one row per job          ols.csv     OLS fits        seed_slopes.csv
  loo.csv           leave-one-bin-out        validation.csv  held-out classes: predicted vs measured
  costs.csv         per job: wall and CPU seconds, training FLOPs, energy and CO2 (codecarbon; see tinydot.cost)
The report layer (`tinydot.report.html.write_study_report`) adds figures/*.png and report.html.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tinydot.checkpoint import load_model
from tinydot.complexity import measure_all, quantile_bins
from tinydot.config import (PRESET_NAMES, ModelConfig, PruneConfig, StudyConfig, TrainConfig, check_domain_name,
                            check_preset_name, config_hash)
from tinydot.cost import total_cost
from tinydot.data.batching import encode
from tinydot.data.strokes import Strokes, load_strokes
from tinydot.data.text import Sentences
from tinydot.domains import DOMAINS, Domain, get_domain
from tinydot.errors import ConfigError, TinydotError
from tinydot.executors import check_executor, run_jobs
from tinydot.fits import (HELD_OUT_COLUMNS, held_out_column, held_out_validation, leave_one_bin_out, ols_table,
                          predict_targets, seed_slopes)
from tinydot.io import (atomic_write_csv, atomic_write_text, check_exists, check_writable_dir, enclosing_study,
                        read_json, run_kind)
from tinydot.lottery import run_lottery
from tinydot.ngram import unigram_perplexity
from tinydot.pruning.mask import full_mask
from tinydot.pruning.structured import fewest_units_within
from tinydot.pruning.usage import needed_density, usage_counts, usage_fractions
from tinydot.quantization import fewest_bits_within
from tinydot.sizing import smallest_config
from tinydot.training import init_model, load_touched

STUDY_EDITION = 3  # joins the hash and config.json: folders of earlier editions are never resumed or misread
TARGETS = {
    "needed": "needed fraction (ticket within delta of the dense NLL)",
    "unused": "unused fraction, dense (untouched + trained to small)",
    "untouched": "untouched fraction, dense (never a gradient)",
    "trained_to_small": "trained-to-small fraction, dense (|w| <= epsilon)",
}
COMPRESSION_TARGETS = {
    "neurons": "MLP neurons needed (fewest kept within delta, one-shot Taylor removal, no fine-tuning)",
    "bits": "bits needed / 32 (narrowest GPFQ code width within delta; scales not counted)",
}
CALIBRATION_SEQUENCES = 128  # training sequences that score neurons (Taylor) and calibrate GPFQ
JOB_THREADS = 1  # every job pins one torch thread: identical numbers under every executor

# The text study prunes the trunk only (see the module docstring): every Linear weight of the blocks
# and the positional embedding; neither the word embedding nor, when untied, the output matrix.
TEXT_PRUNABLE = DOMAINS["text"].prunable  # the trunk: positional embedding, attention and MLP matrices
HELD_OUT_GROUPS = 3  # text: the valid split's tertiles of held_out_measure
SHORT_NAMES = {"type_token_ratio": "ttr", "compressed_bytes": "gzip"}  # in the names of held-out group jobs

# What a study of each domain sets unless its config says otherwise (StudyConfig's own defaults are
# the stroke study's): the text measures, no digit classes, a text model, the trunk as prunable set.
DOMAIN_DEFAULTS: dict[str, dict[str, dict]] = {
    "strokes": {},
    "text": {
        "study": {"measures": ["L", "surprisal"],
                  "predictors": ["L", "compressed_bytes", "surprisal", "type_token_ratio"],
                  "held_out_classes": [], "balanced": False, "sample_digits": False,
                  "held_out_measure": "type_token_ratio"},
        "model": {"domain": "text", "vocab_size": DOMAINS["text"].model_config.vocab_size},
        "prune": {"prunable": list(TEXT_PRUNABLE)},
    },
}
# every job records these measures besides the predictors and binning measures (the ones the two
# domains share, L and compressed_bytes, are what `tinydot compare` predicts across domains with)
ALWAYS_RECORDED = {"strokes": ("L", "S"), "text": ("L", "compressed_bytes")}

PRESETS: dict[str, dict[str, dict[str, dict]]] = {
    "strokes": {
        # <= 10 minutes on 2 cores: 2 measures x 3 bins + 3 held-out classes, 1 seed, a 2-layer d_model-32
        # tinyDOT (42,005 parameters), 400 steps, IMP removing 40% per level until the NLL rises by 1%
        "quick": {
            "study": {"measures": ["L", "S"], "bins": 3, "seeds": 1, "max_train_per_bin": 3000},
            "model": {"n_layers": 2, "d_model": 32, "d_mlp": 128},
            "train": {"steps": 400, "tokens_per_batch": 4096, "lr": 3e-3, "warmup_steps": 40,
                      "eval_every": 0, "checkpoint_every": 100},
            "prune": {"levels": 6, "fraction": 0.4, "rewind_step": 20, "controls": False},
        },
        # the fuller experiment: 2 measures x 4 bins + 3 classes, 3 seeds, a 3-layer d_model-48 tinyDOT,
        # 400 steps, 40% per level (600 steps at 30% per level took ~9 min a job: over 2 hours)
        "paper": {
            "study": {"measures": ["L", "S"], "bins": 4, "seeds": 3, "max_train_per_bin": 4000,
                      "compression_targets": True},
            "model": {"n_layers": 3, "d_model": 48, "d_mlp": 192},
            "train": {"steps": 400, "tokens_per_batch": 4096, "warmup_steps": 40, "eval_every": 0,
                      "checkpoint_every": 100},
            "prune": {"levels": 6, "fraction": 0.4, "rewind_step": 20, "controls": False},
        },
    },
    "text": {
        # aimed at <= 10 minutes on 2 cores: 2 measures x 3 bins + 3 valid groups, 1 seed, a 2-layer
        # d_model-32 TextDOT (28,352 prunable trunk weights beside the 320,000-weight word embedding),
        # 200 steps of ~1024 positions on ~1,000 sentences per job (the valid tertiles' size), IMP
        # removing a quarter of the trunk per level until the NLL rises by 1% (down to density 0.1):
        # after 200 steps half the trunk already costs 1.3-4% (two smoke jobs, README), so coarser
        # levels would bracket every job between densities 1 and 0.5
        "quick": {
            "study": {"domain": "text", "bins": 3, "seeds": 1, "max_train_per_bin": 1000},
            "model": {"n_layers": 2, "d_model": 32, "d_mlp": 128},
            "train": {"steps": 200, "tokens_per_batch": 1024, "lr": 3e-3, "warmup_steps": 20,
                      "eval_every": 0, "checkpoint_every": 100},
            "prune": {"levels": 8, "fraction": 0.25, "rewind_step": 10, "controls": False},
        },
        # 2 measures x 4 bins + 3 valid groups, 3 seeds, a 3-layer d_model-48 TextDOT (68.5 min on 2 cores)
        "paper": {
            "study": {"domain": "text", "bins": 4, "seeds": 3, "max_train_per_bin": 1000},
            "model": {"n_layers": 3, "d_model": 48, "d_mlp": 192},
            "train": {"steps": 400, "tokens_per_batch": 1024, "warmup_steps": 40, "eval_every": 0,
                      "checkpoint_every": 200},
            "prune": {"levels": 8, "fraction": 0.3, "rewind_step": 20, "controls": False},
        },
    },
}

assert all(tuple(presets) == PRESET_NAMES for presets in PRESETS.values())  # the names the CLI checks early


@dataclass(frozen=True)
class Study:
    """Everything that defines a study run; its hash names the run folder.

    The study's own prune default trains no controls (`PruneConfig(levels=5, controls=False)`; a
    job's answer needs none), while `PruneConfig()` keeps the lottery command's `controls=True`:
    `Study(prune=PruneConfig(levels=3))` trains both controls at every level of every job, about 3x
    the work. `Study.from_dict` and the presets start from the study's default.
    """

    study: StudyConfig = StudyConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    prune: PruneConfig = PruneConfig(levels=5, controls=False)

    def __post_init__(self):
        domain = self.domain
        for m in (*self.study.measures, *self.study.predictors, *filter(None, [self.study.held_out_measure])):
            domain.check_measure(m, "study measure")
        if self.model.domain != domain.name:
            raise ConfigError(f"the study's domain is {domain.name} but its model section's domain is "
                              f"{self.model.domain}; leave model domain out (the study sets it)")
        if self.prune.rewind_step >= self.train.steps:
            raise ConfigError(f"prune rewind_step ({self.prune.rewind_step}) must be smaller than the training "
                              f"steps ({self.train.steps})")

    @classmethod
    def from_dict(cls, values: dict) -> Study:
        unknown = sorted(set(values) - {"study", "model", "train", "prune"})
        if unknown:
            raise ConfigError(f"unknown study config section(s) {', '.join(unknown)}; "
                              "known: study, model, train, prune")
        domain = values.get("study", {}).get("domain", "strokes")
        defaults = DOMAIN_DEFAULTS[get_domain(domain).name] if isinstance(domain, str) else {}
        sections = {k: {**defaults.get(k, {}), **values.get(k, {})} for k in ("study", "model", "train", "prune")}
        prune = {"levels": 5, "controls": False, **sections["prune"]}
        return cls(StudyConfig.from_dict(sections["study"]), ModelConfig.from_dict(sections["model"]),
                   TrainConfig.from_dict(sections["train"]), PruneConfig.from_dict(prune))

    @classmethod
    def preset(cls, name: str, overrides: dict | None = None, domain: str = "strokes") -> Study:
        """A preset of `domain` (PRESETS[domain][name]) with `overrides` ({section: {field: value}}) on top."""
        presets = PRESETS[get_domain(domain).name]
        check_preset_name(name)
        values = {section: dict(v) for section, v in presets[name].items()}
        for section, fields in (overrides or {}).items():
            values.setdefault(section, {}).update(fields)
        given = overrides or {}  # the preset's own sections name its domain; the config's may not differ
        named = {section: check_domain_name(given[section]["domain"])  # an unknown name is refused as such
                 for section in ("study", "model") if "domain" in given.get(section, {})}
        if len(set(named.values())) > 1:
            raise ConfigError(f"the config's study domain is {named['study']!r} but its model domain is "
                              f"{named['model']!r}; make them agree")
        for section, chosen in named.items():
            if chosen != domain:
                raise ConfigError(f"the config's {section} domain is {chosen!r}, but the study runs the {domain} "
                                  f"domain; give --domain {chosen}")
        return cls.from_dict(values)

    @property
    def domain(self) -> Domain:
        return get_domain(self.study.domain)

    def to_dict(self) -> dict:
        return {"study": self.study.to_dict(), "model": self.model.to_dict(), "train": self.train.to_dict(),
                "prune": self.prune.to_dict()}

    def hash(self) -> str:
        return config_hash(self.study, self.model, self.train, self.prune, extra={"study_edition": STUDY_EDITION})

    @property
    def targets(self) -> dict[str, str]:
        """The targets this study fits: TARGETS, and COMPRESSION_TARGETS when asked for."""
        return {**TARGETS, **(COMPRESSION_TARGETS if self.study.compression_targets else {})}

    @property
    def recorded_measures(self) -> list[str]:
        """Every measure a job records the mean of: the predictors, the binning measures, the
        domain's ALWAYS_RECORDED (strokes: L and S) and, for text, the held-out groups' measure."""
        extra = [*ALWAYS_RECORDED[self.study.domain], *filter(None, [self.study.held_out_measure])]
        return list(dict.fromkeys([*self.study.predictors, *self.study.measures, *extra]))


@dataclass
class StudyResult:
    """What `run_study` returns: the run folder and its tables (jobs.csv, ols.csv, loo.csv,
    validation.csv; the rest are files in `run_dir`), and how long this call took in seconds."""

    run_dir: Path
    jobs: pd.DataFrame
    ols: pd.DataFrame
    loo: pd.DataFrame
    validation: pd.DataFrame
    seconds: float


# --------------------------------------------------------------------------- data assignment

def assign(data: Strokes | Sentences, study: Study, seed: int = 0, *,
           held_out: Sentences | None = None) -> pd.DataFrame:
    """Per sample: every recorded measure, its bin per binning measure and the held-out flags of
    its bin's NLL; held-out classes (strokes) or groups (text, from `held_out`: the valid split)
    are set apart as described in the module docstring."""
    if study.study.domain == "strokes":
        return _assign_classes(data, study, seed)
    if held_out is None:
        raise ValueError(f"a {study.study.domain} study needs the held-out split ({study.domain.eval_split})")
    return _assign_groups(data, held_out, study, seed)


def _holder(rng: np.random.Generator, fraction: float, n: int):
    """hold(groups) -> bool (n,): `fraction` of each group's members (index arrays), drawn from `rng`."""
    def hold(groups) -> np.ndarray:
        held = np.zeros(n, dtype=bool)
        for members in groups:
            held[rng.permutation(members)[: int(round(fraction * len(members)))]] = True
        return held
    return hold


def _assign_groups(train: Sentences, valid: Sentences, study: Study, seed: int) -> pd.DataFrame:
    """Text: train sentences in quantile bins per binning measure (bin -1 and group -1 mark the
    other split), and the valid sentences in HELD_OUT_GROUPS tertiles of held_out_measure. Columns:
    split, index (within its split), the recorded measures, bin_<m>, held_out_<m>, group, held_out_group."""
    cfg, domain = study.study, study.domain
    rng = np.random.default_rng([seed, 1])
    parts = []
    for split, data in (("train", train), (domain.eval_split, valid)):
        table = domain.measure(data, tuple(study.recorded_measures), train=train)  # surprisal: train unigrams
        table.insert(0, "index", np.arange(len(data)))
        table.insert(0, "split", split)
        parts.append(table)
    table_train, table_valid = parts
    hold = _holder(rng, cfg.held_out_fraction, len(train))
    for m in cfg.measures:
        bins = quantile_bins(table_train[m].to_numpy(), cfg.bins, seed=seed)
        table_train[f"bin_{m}"] = bins
        table_train[f"held_out_{m}"] = hold([np.flatnonzero(bins == b) for b in range(cfg.bins)])
        table_valid[f"bin_{m}"] = -1
        table_valid[f"held_out_{m}"] = False
    groups = quantile_bins(table_valid[cfg.held_out_measure].to_numpy(), HELD_OUT_GROUPS, seed=seed)
    table_valid["group"] = groups
    table_valid["held_out_group"] = _holder(rng, cfg.held_out_fraction, len(valid))(
        [np.flatnonzero(groups == g) for g in range(HELD_OUT_GROUPS)])
    table_train["group"] = -1
    table_train["held_out_group"] = False
    return pd.concat([table_train, table_valid], ignore_index=True)


def _assign_classes(strokes: Strokes, study: Study, seed: int = 0) -> pd.DataFrame:
    """Strokes: per train sample, every recorded measure, whether its class is held out, its bin per
    binning measure (-1 for held-out classes: the bins are cut from the other classes only) and
    held-out flags for the NLL of its bin (or of its class)."""
    cfg = study.study
    table = measure_all(strokes, study.recorded_measures)
    table.insert(0, "index", np.arange(len(strokes)))
    held_class = np.isin(strokes.labels, cfg.held_out_classes)
    table["held_class"] = held_class
    hold = _holder(np.random.default_rng([seed, 1]), cfg.held_out_fraction, len(table))
    pool = np.flatnonzero(~held_class)
    for m in cfg.measures:
        bins = np.full(len(table), -1)
        labels = strokes.labels[pool] if cfg.balanced else None
        bins[pool] = quantile_bins(table[m].to_numpy()[pool], cfg.bins, labels=labels, seed=seed)
        table[f"bin_{m}"] = bins
        table[f"held_out_{m}"] = hold([np.flatnonzero(bins == b) for b in range(cfg.bins)])
    table["held_out_class"] = hold([np.flatnonzero(strokes.labels == c) for c in cfg.held_out_classes])
    return table


# --------------------------------------------------------------------------- one job

def job_name(measure: str, bin_index: int, seed: int) -> str:
    """A bin job's folder name; a held-out class job is measure 'digit', bin = the class; a held-out
    text group is measure '<split>-<short measure>' (e.g. 'valid-ttr'), bin = the group."""
    if measure == "digit" or measure.startswith(f"{DOMAINS['text'].eval_split}-"):
        return f"{measure}{bin_index}-seed{seed}"
    return f"{measure}-bin{bin_index}-seed{seed}"


def group_measure_name(study: Study) -> str:
    """The `measure` of a text study's held-out group jobs, e.g. 'valid-ttr'."""
    m = study.study.held_out_measure
    return f"{study.domain.eval_split}-{SHORT_NAMES.get(m, m)}"


def job_specs(study: Study, run_dir: Path, data_dir: str | None) -> list[dict]:
    common = {"run_dir": str(run_dir), "config": study.to_dict(), "data_dir": data_dir, "threads": JOB_THREADS}
    cfg = study.study
    bins = [{"kind": "bin", "measure": m, "bin": b, "seed": s}
            for m in cfg.measures for b in range(cfg.bins) for s in range(cfg.seeds)]
    if cfg.domain == "strokes":
        held = [{"kind": "class", "measure": "digit", "bin": c, "seed": s}
                for c in cfg.held_out_classes for s in range(cfg.seeds)]
    else:
        held = [{"kind": "group", "measure": group_measure_name(study), "bin": g, "seed": s}
                for g in range(HELD_OUT_GROUPS) for s in range(cfg.seeds)]
    return [{**spec, **common} for spec in bins + held]


def job_row(table: pd.DataFrame, study: Study, spec: dict, train_index, test_index, folder: Path) -> dict:
    """A finished job's row: its data, the dense network's weight usage and the needed fraction."""
    dense = table.iloc[0]
    needed = needed_density(table["density"], table["bits_per_step"], study.prune.delta)
    # which digit classes a job sees is the design's choice (a bin never sees the held-out classes,
    # a class job sees one): their embedding rows are untouched whatever the data's complexity, so
    # the study's usage shares leave the class embedding out
    counts = pd.read_csv(folder / "level_0" / "used.csv")
    shares = usage_fractions(counts[counts["tensor"] != "emb_class.weight"])
    key = HELD_OUT_COLUMNS["class" if study.study.domain == "strokes" else "group"]  # digit or group
    return {"kind": spec["kind"], "measure": spec["measure"], "bin": spec["bin"] if spec["kind"] == "bin" else -1,
            key: spec["bin"] if spec["kind"] != "bin" else -1, "seed": spec["seed"],
            "n_train": len(train_index), "n_held_out": len(test_index),
            "prunable": int(dense["prunable"]),
            "needed_fraction": needed["needed"], "needed_reached": needed["reached"],
            "needed_within_density": needed["within_density"], "needed_above_density": needed["above_density"],
            "levels": len(table) - 1,
            **{k: shares[k] for k in ("unused_fraction", "untouched_fraction", "trained_to_small_fraction",
                                      "used_fraction", "unused_fraction_relative")},
            "dense_bits_per_step": float(dense["bits_per_step"]), "threshold_bits_per_step": needed["threshold"],
            "dense_zeroed_bits_per_step": float(dense["zeroed_bits_per_step"])}


def compression_row(folder: Path, train: Strokes | Sentences, held_out: Strokes | Sentences, study: Study) -> dict:
    """The dense model's fewest MLP neurons and fewest bits whose held-out NLL stays within delta
    (either domain: for text the bits quantize every matrix and embedding, the tied word matrix too)."""
    model = load_model(folder / "level_0")
    calibration = encode(train.subset(np.arange(min(CALIBRATION_SEQUENCES, len(train)))), study.model)
    data, delta = encode(held_out, study.model), study.prune.delta
    neurons = fewest_units_within(model, "neurons", data, delta, "taylor", calibration)
    bits = fewest_bits_within(model, data, delta, "gpfq", calibration, bits=(8, 6, 5, 4, 3, 2))
    return {"neurons_fraction": neurons["kept"] / (neurons["kept"] + neurons["removed"]),
            "neurons_kept": neurons["kept"],  # all of them when no removal stays within delta
            # more than 8 bits needed: not reached within the widths tried (NaN, left out of the fits)
            "bits_fraction": bits["bits"] / 32 if bits["bits"] <= 8 else np.nan, "bits_needed": bits["bits"]}


COST_COLUMNS = ("wall_seconds", "cpu_seconds", "train_flops_dense", "train_flops_sparse", "energy_kwh", "co2_kg")


def job_cost(folder: Path) -> dict:
    """What a job's training runs cost (every cost.json of its lottery run), as `cost_*` columns."""
    total = total_cost(folder) or {}
    row = {f"cost_{k}": total.get(k) for k in COST_COLUMNS}
    row["energy_mode"] = total.get("energy_mode")
    return row


def cost_status(rows: list[dict]) -> str:
    """The progress bar's running total: CPU time and (estimated) energy of the finished jobs."""
    cpu = sum(r.get("cost_cpu_seconds") or 0 for r in rows)
    energy = [r.get("cost_energy_kwh") for r in rows]
    kwh = f"{sum(energy) * 1000:.2f} Wh" if energy and None not in energy else "energy n/a"
    return f"{cpu / 60:.1f} CPU-min, {kwh}"


def stroke_job_data(spec: dict, study: Study, table: pd.DataFrame):
    """A stroke job's data (the train split), its assignment rows, and its train and held-out indices."""
    strokes = load_strokes("train", spec["data_dir"])
    seed = spec["seed"]
    if spec["kind"] == "bin":
        members = table[f"bin_{spec['measure']}"].to_numpy() == spec["bin"]
        held = table[f"held_out_{spec['measure']}"].to_numpy()
    else:
        members = strokes.labels == spec["bin"]
        held = table["held_out_class"].to_numpy()
    train_index = np.flatnonzero(members & ~held)
    if study.study.max_train_per_bin:
        train_index = np.sort(np.random.default_rng([seed, spec["bin"], spec["kind"] == "class"]).permutation(
            train_index)[: study.study.max_train_per_bin])
    test_index = np.flatnonzero(members & held)
    return strokes, table, train_index, test_index


def text_job_data(spec: dict, study: Study, table: pd.DataFrame):
    """A text job's split (train for a bin, valid for a held-out group), that split's assignment
    rows, and its train and held-out indices; every job trains on the same number of sentences and
    is scored on the same number (`text_sizes`)."""
    domain = study.domain
    split = "train" if spec["kind"] == "bin" else domain.eval_split
    rows = table[table["split"] == split].reset_index(drop=True)
    column = f"bin_{spec['measure']}" if spec["kind"] == "bin" else "group"
    flags = f"held_out_{spec['measure']}" if spec["kind"] == "bin" else "held_out_group"
    members, held = rows[column].to_numpy() == spec["bin"], rows[flags].to_numpy(dtype=bool)
    n_train, n_test = text_sizes(table, study)
    rng = np.random.default_rng([spec["seed"], spec["bin"], spec["kind"] == "group"])
    train_index = np.sort(rng.permutation(np.flatnonzero(members & ~held))[:n_train])
    test_index = np.sort(rng.permutation(np.flatnonzero(members & held))[:n_test])
    return domain.load(split, spec["data_dir"]), rows, train_index, test_index


def text_sizes(table: pd.DataFrame, study: Study) -> tuple[int, int]:
    """Sentences every text job trains on and is scored on: the smallest bin's or group's share,
    the training one capped by max_train_per_bin. Bins and held-out groups then differ in
    complexity, not in data size (a bin holds ~10x the sentences of a valid tertile)."""
    parts = [(table[f"bin_{m}"] == b, table[f"held_out_{m}"].astype(bool))
             for m in study.study.measures for b in range(study.study.bins)]
    parts += [(table["group"] == g, table["held_out_group"].astype(bool)) for g in range(HELD_OUT_GROUPS)]
    n_train = min(int((members & ~held).sum()) for members, held in parts)
    n_test = min(int((members & held).sum()) for members, held in parts)
    cap = study.study.max_train_per_bin
    return (min(n_train, cap) if cap else n_train), n_test


def word_embedding_row(folder: Path, study: Study, train: Sentences, held_out: Sentences) -> dict:
    """Text: what the study leaves out of its prunable set, reported apart (the dense run): the word
    embedding's untouched / trained-to-small / used shares, the share of the vocabulary that the
    job's training sentences hold (<eos> included), and the add-one unigram NLL of the held-out
    sentences (bits per word, <eos> predicted as in evaluate_nll) that the dense model must beat."""
    model = load_model(folder / "level_0")
    names = ["emb_token.weight"]
    counts = usage_counts(model, names, load_touched(folder / "level_0"), full_mask(model, names),
                          study.prune.epsilon, study.prune.relative_epsilon)
    shares = usage_fractions(counts)
    vocab = study.model.vocab_size
    return {"embedding_weights": int(counts["total"].sum()),
            **{f"embedding_{k}": shares[k] for k in ("untouched_fraction", "trained_to_small_fraction",
                                                     "used_fraction")},
            "vocabulary_seen_fraction": len(np.unique(train.stream())) / vocab,
            "unigram_bits_per_step": float(np.log2(unigram_perplexity(train.stream(), held_out.stream(), vocab,
                                                                      add=1.0)))}


def run_job(spec: dict) -> dict:
    """Train, prune until the NLL suffers, count: one job. Resumable; returns its row."""
    torch.set_num_threads(spec["threads"])
    run_dir = Path(spec["run_dir"])
    folder = run_dir / "jobs" / job_name(spec["measure"], spec["bin"], spec["seed"])
    done = folder / "job.json"
    if done.exists():
        return read_json(done, "delete it to run this job again")
    started = time.perf_counter()
    study = Study.from_dict(spec["config"])
    seed = spec["seed"]
    table = pd.read_csv(run_dir / "assignments.csv")
    if study.study.domain == "strokes":
        data, table, train_index, test_index = stroke_job_data(spec, study, table)
    else:
        data, table, train_index, test_index = text_job_data(spec, study, table)
    train_cfg = dataclasses.replace(study.train, seed=seed)
    init = init_model(study.model, seed).state_dict()  # the same initial weights in every job of a seed
    result = run_lottery(data.subset(train_index), folder, data.subset(test_index), study.model, train_cfg,
                         study.prune, init_state=init, stop_above_delta=True, progress=False)
    row = job_row(result.table, study, spec, train_index, test_index, folder)
    row.update({f"mean_{m}": float(table[m].iloc[train_index].mean()) for m in study.recorded_measures})
    row["complexity"] = row[f"mean_{spec['measure']}"] if spec["kind"] == "bin" else np.nan
    if study.study.domain != "strokes":
        row.update(word_embedding_row(folder, study, data.subset(train_index), data.subset(test_index)))
    if study.study.compression_targets:
        row.update(compression_row(folder, data.subset(train_index), data.subset(test_index), study))
    row.update(job_cost(folder))
    row["seconds"] = time.perf_counter() - started
    atomic_write_text(done, json.dumps(row, indent=2) + "\n")
    return row


# --------------------------------------------------------------------------- the whole study

def check_bins(assignments: pd.DataFrame, study: Study) -> None:
    for m in study.study.measures:
        counts = assignments.loc[assignments[f"bin_{m}"] >= 0].groupby(f"bin_{m}").size()
        if len(counts) < study.study.bins or counts.min() < 20:
            raise ConfigError(f"{len(assignments):,} train samples cannot fill {study.study.bins} bins of {m} with "
                              "at least 20 sequences each; use fewer bins")
    if "group" in assignments:
        counts = assignments.loc[assignments["group"] >= 0].groupby("group").size()
        if len(counts) < HELD_OUT_GROUPS or counts.min() < 20:
            raise ConfigError(f"the {study.domain.eval_split} split cannot fill {HELD_OUT_GROUPS} held-out groups "
                              "with at least 20 sentences each")


def analyse(jobs: pd.DataFrame, study: Study) -> dict[str, pd.DataFrame]:
    """The study's tables from its job table (pure)."""
    predictors, targets = list(study.study.predictors), study.targets
    return {"ols": ols_table(jobs, predictors, targets), "seed_slopes": seed_slopes(jobs, predictors, targets),
            "loo": leave_one_bin_out(jobs, predictors, targets),
            "validation": held_out_validation(jobs, predictors, targets)}


def _run_folder(out: Path, study: Study) -> Path:
    """out/study-<hash>; or `out` itself when it is this study's run folder (given by mistake for its parent)."""
    if (holder := enclosing_study(out)) is not None:  # a study inside a study: its jobs' folders are not runs' homes
        raise ConfigError(f"--out {out} is inside the study folder {holder}; choose a folder outside every study")
    kind = run_kind(out)
    if kind not in (None, "study"):  # another command's run folder: the study would mix into its files
        raise ConfigError(f"{out} holds a {kind} run; --out takes a folder that holds study run folders: choose "
                          "another one")
    if kind is None:
        return out / f"study-{study.hash()}"
    try:  # the same study: the same hash (non-default fields and edition), as for a folder found under its parent
        values = json.loads((out / "config.json").read_text())
        same = read_study_config(dict(values), out).hash() == study.hash()
    except (OSError, ValueError, TypeError, TinydotError):  # unreadable, another edition, a broken field
        same = False
    if same:
        return out
    raise ConfigError(f"{out} is the run folder of another study; --out takes the folder that holds run folders "
                      f"(e.g. {out.parent})")


def run_study(study: Study, out: str | os.PathLike = "runs", *, data_dir=None, executor: str = "local",
              workers: int = 1, ray_address: str | None = None, progress: bool = True) -> StudyResult:
    """Run (or resume) the study into `out/study-<hash>`: its jobs, job table and fits.

    The report is the report layer's: `tinydot.report.html.write_study_report(result.run_dir)`.
    """
    if ray_address and executor != "ray":
        raise ConfigError(f"a Ray address is for the ray executor (--executor ray); got {ray_address!r} with "
                          f"executor {executor!r}")
    check_executor(executor, workers, ray_address)  # an unreachable cluster before the folder is written
    started = time.perf_counter()
    run_dir = _run_folder(check_writable_dir(out), study)
    domain = study.domain
    data_dir = domain.locate(data_dir)
    assignments_path = run_dir / "assignments.csv"
    if assignments_path.exists():
        assignments = pd.read_csv(assignments_path)
    else:
        train = domain.load("train", data_dir)
        held_out = domain.load(domain.eval_split, data_dir) if domain.name != "strokes" else None
        assignments = assign(train, study, held_out=held_out)
        check_bins(assignments, study)  # before the run folder exists
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json",
                      json.dumps({**study.to_dict(), "edition": STUDY_EDITION}, indent=2) + "\n")
    if not assignments_path.exists():
        atomic_write_csv(assignments, assignments_path)
    rows = run_jobs(run_job, job_specs(study, run_dir, data_dir), executor=executor, workers=workers,
                    ray_address=ray_address, progress=progress, description="study jobs", status=cost_status)
    jobs = pd.DataFrame(rows)
    tables = analyse(jobs, study)
    tables["costs"] = jobs[["kind", "measure", "bin", held_out_column(jobs), "seed",
                            *[f"cost_{k}" for k in COST_COLUMNS], "energy_mode"]]
    for name, frame in {"jobs": jobs, **tables}.items():
        atomic_write_csv(frame, run_dir / f"{name}.csv")
    return StudyResult(run_dir, jobs, tables["ols"], tables["loo"], tables["validation"],
                       time.perf_counter() - started)


# --------------------------------------------------------------------------- prediction

def load_study(run_dir: str | os.PathLike) -> tuple[Study, pd.DataFrame]:
    """A finished study's configuration and job table; a damaged folder (a truncated or unreadable
    jobs.csv or config.json, jobs whose job.json is gone) is refused with one line."""
    run_dir = Path(run_dir)
    check_exists(run_dir, "study run folder")
    if not run_dir.is_dir():
        raise TinydotError(f"{run_dir} is a file, not a study run folder; give the folder that holds its jobs.csv")
    missing = [name for name in ("jobs.csv", "config.json") if not (run_dir / name).exists()]
    if missing:
        unfinished = (run_dir / "assignments.csv").exists()  # a study that was stopped before its job table
        raise TinydotError(f"{run_dir} is not a finished study run (no {' or '.join(missing)}); " + (
            "run the same `tinydot study` command again to finish it" if unfinished else "run `tinydot study` first"))
    repair = "re-run `tinydot study` with its configuration to rewrite it from the finished jobs"
    try:
        values = json.loads((run_dir / "config.json").read_text())
        text = (run_dir / "jobs.csv").read_text()
        jobs = pd.read_csv(io.StringIO(text))  # the text once: its last newline tells a truncated file
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TinydotError(f"{run_dir} is damaged: {reason}; {repair}") from None
    finished = len(list((run_dir / "jobs").glob("*/job.json")))
    if not isinstance(values, dict):
        raise TinydotError(f"{run_dir}/config.json is damaged (not a JSON object); {repair}")
    if len(jobs) > finished and text.endswith("\n"):
        raise TinydotError(f"{run_dir}/jobs holds the job.json of only {finished} of the {len(jobs)} jobs in jobs.csv "
                           f"(deleted or moved?); re-run `tinydot study` with its configuration to redo those jobs "
                           f"and rewrite the table")
    if not text.endswith("\n") or len(jobs) != finished:  # pandas ends every row with a newline
        raise TinydotError(f"{run_dir}/jobs.csv is damaged (truncated: {len(jobs)} rows for {finished} finished "
                           f"jobs); {repair}")
    return read_study_config(values, run_dir), jobs


def read_study_config(values: dict, run_dir: Path) -> Study:
    """A run folder's Study, refused in one line when an older edition of the study wrote it."""
    if not {"edition", "study"} & set(values):
        raise TinydotError(f"{run_dir}/config.json is damaged (no study configuration); re-run `tinydot study` "
                           "with its configuration")
    edition = values.pop("edition", 1)  # edition 1 wrote none
    if edition != STUDY_EDITION:
        raise TinydotError(f"{run_dir} was written by edition {edition} of the study (this tinydot reads edition "
                           f"{STUDY_EDITION}); re-run `tinydot study` with its configuration")
    return Study.from_dict(values)


# why a finished study can have no needed-fraction line (predict then returns only the other targets)
NO_NEEDED_LINE = ("fewer than 3 of its bin jobs reached a pruning level past delta; run a study with more or larger "
                  "pruning levels")


def predict(run_dir: str | os.PathLike, data: Strokes | Sentences, *, train: Sentences | None = None) -> pd.DataFrame:
    """Every target of `data` predicted from its mean complexity alone (95% CI of the line and
    95% prediction interval) by each predictor's OLS line and the joint model; for the needed
    fraction also the implied number of needed parameters of the study's model and the smallest
    default-shaped model of its domain that holds them (for the prediction and both ends of its
    interval), counted over the study's prunable weights (`tinydot.sizing`).

    data  : Strokes for a stroke study, Sentences for a text study.
    train : required for text (strokes ignore it): the sentences whose unigram distribution
            `surprisal` uses; the study measured with the Penn Treebank train split, so pass that.
    A target gets rows only where at least 3 bin jobs have a value for it: when fewer reached the
    needed point, there are no "needed" rows (and no parameter counts or recommended model), only
    the other targets' (`tinydot predict` says so).
    """
    study, jobs = load_study(run_dir)
    domain = study.domain
    if not isinstance(data, domain.data_type):
        raise ConfigError(f"{run_dir} is a {domain.name} study; predict for {domain.name} data "
                          f"({domain.data_type.__name__}), not {type(data).__name__}")
    if len(data) == 0:
        raise ConfigError("the selection to predict for is empty")
    if domain.name == "text" and train is None:
        raise ConfigError("predicting for a text study needs the train sentences (surprisal's unigram "
                          "distribution, as the study measured it)")
    means = domain.measure(data, tuple(study.recorded_measures), train=train).mean().to_dict()
    frame = predict_targets(jobs, list(study.study.predictors), study.targets, means)
    if frame.empty:
        raise ConfigError(f"{run_dir} has no line to predict with: fewer than 3 of its bin jobs have a value for "
                          "any target; run a study with more bins or seeds")
    prunable = int(jobs["prunable"].iloc[0])
    frame["prunable_parameters"] = prunable
    needed = frame["target"] == "needed"
    for column in ("mean", "pi_low", "pi_high"):
        frame.loc[needed, f"needed_parameters_{column}"] = (frame.loc[needed, column].clip(0, 1) * prunable).round()
    recommended = []
    for r in frame.itertuples():
        if r.target != "needed":
            recommended.append("")
            continue
        shapes = [smallest_config(getattr(r, f"needed_parameters_{c}"), study.model, study.prune.prunable)
                  for c in ("mean", "pi_low", "pi_high")]
        recommended.append(" / ".join(f"{cfg.n_layers}x{cfg.d_model} ({count:,})" for cfg, count in shapes))
    frame["recommended_model"] = recommended
    return frame
