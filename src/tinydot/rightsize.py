"""Right-sizing: train the model a study predicts is enough, beside the study's own model, and
compare what each costs and how well each models the data.

`run_rightsize(study_dir, "train:1")` predicts the needed fraction of the selection from its
complexity alone (the predictor that did best on the study's held-out data), builds the smallest
default-shaped model holding that many of the study's prunable weights (tinydot.sizing), and
trains it and the study's model on the selection with the study's training config (the same token
budget, seed 0). Both are scored on the matching test data: NLL in bits per step (strokes) or per
word (text), and for strokes the recognizability of samples of the selection's classes. A stroke
study takes `train` or `train:DIGIT`; a text study `train` (all of Penn Treebank's train split,
scored on its test split; there are no classes, so no recognizability).
Written into `<study>/rightsize/<split>-<digit|all>/` (one right-sizing per selection; another
predictor for the same selection is refused):
  request.json              the selection and predictor, written before training
  reference/, rightsized/   the two training runs (resumable; each with its cost.json)
  rightsize.csv             one row per model: shape, parameters, training FLOPs, CPU seconds,
                            energy, CO2, test NLL (`test_bits_per_step`: bits per word for text),
                            recognizability (empty for text)
  summary.json              the prediction it acted on, the NLL's unit, and whether the right-sized
                            model stayed within delta of the reference's NLL
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from tinydot.config import did_you_mean
from tinydot.cost import read_cost
from tinydot.data.strokes import digit_subset
from tinydot.errors import ConfigError
from tinydot.evaluation import evaluate_nll, load_or_train_classifier, recognizability
from tinydot.fits import predictor_ranking
from tinydot.io import atomic_write_csv, atomic_write_text, read_json
from tinydot.sizing import smallest_config
from tinydot.study import NO_NEEDED_LINE, load_study, predict
from tinydot.training import train

RECOGNIZABILITY_SAMPLES = 50  # per class


def parse_selection(data: str) -> tuple[str, int | None]:
    """'train' or 'train:7' -> (split, digit or None)."""
    split, colon, digit = data.partition(":")
    if colon and not (digit.isdigit() and 0 <= int(digit) <= 9):
        raise ConfigError(f"data {data!r}: the digit after ':' must be 0..9")
    return split, int(digit) if digit else None


def best_predictor(study_dir: Path) -> str:
    """The predictor with the lowest error on the needed fraction of the study's held-out classes
    (text: valid groups), else L."""
    path = study_dir / "validation.csv"
    try:
        ranking = predictor_ranking(pd.read_csv(path))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return "L"
    needed = ranking[ranking["target"] == "needed"] if not ranking.empty else ranking
    return str(needed.iloc[0]["predictor"]) if len(needed) else "L"


def predictor_beats_baseline(study_dir: Path, predictor: str) -> bool | None:
    """Did `predictor` beat ignoring complexity on the study's held-out classes or groups (None: not known)?"""
    try:
        ranking = predictor_ranking(pd.read_csv(study_dir / "validation.csv"))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None
    row = ranking[(ranking["target"] == "needed") & (ranking["predictor"] == predictor)] if len(ranking) else ranking
    return bool(row.iloc[0]["beats_baseline"]) if len(row) else None


def _earlier_predictor(out: Path) -> str | None:
    """The predictor a right-sizing folder was started with (request.json, written before training), if any."""
    for name in ("request.json", "summary.json"):  # summary.json: a folder from before request.json
        if (out / name).is_file():
            record = read_json(out / name, f"move {out} away and run again")
            if not isinstance(record, dict) or not isinstance(record.get("predictor"), str):
                raise ConfigError(f"{out / name} is damaged (no predictor); move {out} away and run again")
            return record["predictor"]
    return None


def run_rightsize(study_dir: str | os.PathLike, data: str = "train", *, data_dir=None,
                  predictor: str | None = None, progress: bool = True) -> dict:
    """Predict, build, train and compare (see the module docstring); returns the table, the
    summary and the run folder."""
    study_dir = Path(study_dir)
    study, jobs = load_study(study_dir)
    domain = study.domain
    if predictor is not None and predictor not in study.study.predictors:  # before any data loads
        known = study.study.predictors
        raise ConfigError(f"predictor {predictor!r} is not one of the study's{did_you_mean(predictor, known)}; "
                          f"choose one of {', '.join(known)}")
    split, digit = parse_selection(data)
    if split != "train":
        raise ConfigError(f"data {data}: right-sizing trains on the selection and scores on the test split; "
                          f"give {'train or train:DIGIT' if domain.name == 'strokes' else 'train'}")
    if domain.name == "strokes":
        selection = digit_subset(domain.load(split, data_dir), digit)
        test = digit_subset(domain.load("test", data_dir), digit)
    else:
        if digit is not None:
            raise ConfigError(f"data {data}: a {domain.name} study has no classes; give train")
        selection, test = domain.load("train", data_dir), domain.load("test", data_dir)
    frame = predict(study_dir, selection, train=selection)  # train: text's surprisal unigrams (strokes ignore it)
    predictor = predictor or best_predictor(study_dir)
    if not (frame["target"] == "needed").any():
        raise ConfigError(f"{study_dir} has no needed-fraction line to size a model by: {NO_NEEDED_LINE}")
    row = frame[(frame["target"] == "needed") & (frame["model"] == predictor)]
    if row.empty:
        raise ConfigError(f"the study has no needed-fraction line for predictor {predictor!r}; "
                          f"choose one of {', '.join(study.study.predictors)}")
    row = row.iloc[0]
    needed = float(np.clip(row["mean"], 0, 1)) * int(row["prunable_parameters"])
    small, small_prunable = smallest_config(needed, study.model, study.prune.prunable)
    out = study_dir / "rightsize" / f"{split}-{'all' if digit is None else digit}"
    earlier = _earlier_predictor(out)
    if earlier not in (None, predictor):  # one right-sizing per selection: another predictor would replace it
        raise ConfigError(f"{out} holds the right-sizing by predictor {earlier}; give --predictor {earlier} to see "
                          f"(or finish) it, or move that folder away to size by {predictor}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "request.json", json.dumps({"data": data, "predictor": predictor}) + "\n")
    if domain.name == "strokes":
        classifier = load_or_train_classifier(domain.load("train", data_dir), progress)
        digits = [digit] if digit is not None else list(range(10))

        def recognizable(model) -> float:
            quality = recognizability(model, classifier, per_class=RECOGNIZABILITY_SAMPLES, seed=0)
            return float(np.mean([quality["per_class"][d] for d in digits]))
    else:
        def recognizable(model) -> None:  # text has no classes to recognise
            return None
    rows = []
    for name, cfg in (("reference", study.model), ("rightsized", small)):
        model = train(selection, out / name, cfg, study.train, progress=progress).model
        cost = read_cost(out / name) or {}
        rows.append({"model": name, "n_layers": cfg.n_layers, "d_model": cfg.d_model, "d_mlp": cfg.d_mlp,
                     "parameters": model.num_params(), "prunable": small_prunable if name == "rightsized"
                     else int(row["prunable_parameters"]),
                     "train_flops": cost.get("train_flops_dense"), "cpu_seconds": cost.get("cpu_seconds"),
                     "wall_seconds": cost.get("wall_seconds"), "energy_kwh": cost.get("energy_kwh"),
                     "co2_kg": cost.get("co2_kg"), "energy_mode": cost.get("energy_mode"),
                     "test_bits_per_step": evaluate_nll(model, test)["bits_per_step"],
                     "recognizability": recognizable(model)})
    table = pd.DataFrame(rows)
    atomic_write_csv(table, out / "rightsize.csv")
    reference, rightsized = rows
    summary = {
        "data": data, "domain": domain.name, "unit": domain.unit, "predictor": predictor,
        "predicted_needed_fraction": float(row["mean"]),
        "pi": [float(row["pi_low"]), float(row["pi_high"])], "needed_weights": needed,
        "delta": study.prune.delta, "test_sequences": len(test), "train_sequences": len(selection),
        "study_train_sequences": int(jobs.loc[jobs["kind"] == "bin", "n_train"].max()),
        "predictor_beats_baseline": predictor_beats_baseline(study_dir, predictor),
        # the right-sized model's test NLL relative to the reference's (0.02: 2% worse; negative: better)
        "nll_change": rightsized["test_bits_per_step"] / reference["test_bits_per_step"] - 1,
        "within_delta": bool(rightsized["test_bits_per_step"]
                             <= reference["test_bits_per_step"] * (1 + study.prune.delta)),
        "flops_saved": 1 - rightsized["train_flops"] / reference["train_flops"],
        "parameters_saved": 1 - rightsized["parameters"] / reference["parameters"],
        # what the FLOPs do not say: the measured CPU time (negative when the smaller model cost more)
        "cpu_saved": 1 - rightsized["cpu_seconds"] / reference["cpu_seconds"] if reference["cpu_seconds"] else None,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return {"table": table, "summary": summary, "run_dir": out}
