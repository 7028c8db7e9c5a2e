"""Redundancy analysis of a trained transformer (Dalvi et al. 2020), end to end.

model (tinyDOT checkpoint, 'minilm' or a Hugging Face folder) + task
  -> per-layer activations (activations.npy, memory-mapped) and token labels (tokens.csv)
  -> general redundancy: linear CKA between layers (cka.csv), neuron correlation clusters swept
     over the threshold c (clusters.csv)
  -> task-specific redundancy: probes per layer, layer selector, clustering, ranking, retraining
     on the top k% (layers.csv, selections.csv, curves.csv)
  -> summary.json. The report layer (`tinydot.report.html.write_redundancy_report`) draws the
     figures and writes section.html (a fragment for a report page) and report.html.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tinydot.analysis.activations import (
    MINILM,
    load_hf_model,
    ptb_ids,
    resolve_hf_model,
    stroke_states,
    textdot_word_states,
    word_states,
)
from tinydot.analysis.neurons import (
    DELTAS,
    THRESHOLDS,
    CorrelationClustering,
    TaskRedundancy,
    check_split,
    task_score,
)
from tinydot.analysis.similarity import cka_matrix
from tinydot.analysis.tasks import STROKE_TASKS, TEXT_TASKS, Task, check_task, stroke_task, text_task
from tinydot.checkpoint import is_tinydot_checkpoint, load_config, load_model, where_models_are
from tinydot.config import check_seed
from tinydot.data.strokes import load_strokes
from tinydot.data.text import UNK_WORD, load_sentences
from tinydot.cost import CostMeter
from tinydot.errors import ConfigError
from tinydot.executors import progress_bar
from tinydot.io import atomic_path, atomic_write_csv, atomic_write_text, check_run_kind, check_writable_dir


@dataclass(frozen=True)
class RedundancyConfig:
    model: str
    task: str
    tokens: int = 10_000
    seed: int = 0
    threshold: float = 0.3  # the correlation-clustering cut used inside the task pipeline
    alpha: float | None = None  # elastic-net strength of the probes; None: chosen on dev from ALPHAS
    l1_ratio: float = 0.5

    def check(self) -> None:
        check_task(self.task)
        check_seed(self.seed)
        if not isinstance(self.tokens, int) or self.tokens < 200:
            raise ConfigError(f"tokens must be an integer >= 200, got {self.tokens!r}")
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        if not 0 <= self.l1_ratio <= 1:
            raise ConfigError(f"l1_ratio must be in [0, 1], got {self.l1_ratio}")


def model_kind(model: str) -> str:
    """'tinydot' for a tinyDOT checkpoint (file or run folder), 'hf' for 'minilm' or an HF folder."""
    if model == MINILM:
        return "hf"
    if is_tinydot_checkpoint(model):
        return "tinydot"
    if not Path(model).exists():
        raise ConfigError(f"model {model} does not exist; give 'minilm', a Hugging Face model folder "
                          "or a tinyDOT checkpoint")
    if Path(model).is_file():
        raise ConfigError(f"{model} is not a tinyDOT checkpoint; give a checkpoint, 'minilm' or a model folder")
    if hint := where_models_are(model):  # a tinydot run folder without a model is no Hugging Face model either
        raise ConfigError(hint)
    return "hf"


def _stroke_activations(config: RedundancyConfig, data_dir, progress: bool):
    test = load_strokes("test", data_dir)
    order = np.random.default_rng(config.seed).permutation(len(test))
    positions = np.cumsum(test.lengths[order] + 1)
    if positions[-1] < config.tokens:
        raise ConfigError(f"the test split has {positions[-1]:,} positions; ask for at most that many tokens")
    chosen = np.sort(order[:int(np.searchsorted(positions, config.tokens)) + 1])
    sample = test.subset(chosen)
    layers, sequence, pen = stroke_states(load_model(config.model, domain="strokes"), sample)
    task = stroke_task(config.task, sample.labels[sequence], pen, sequence, config.seed)
    check_split(task.labels, task.split)
    return np.stack(layers), task, {"sequence": chosen[sequence]}


def _text_activations(config: RedundancyConfig, out: Path, progress: bool):
    task = text_task(config.task, config.tokens, config.seed)
    check_split(task.labels, task.split)  # before anything is written
    tokenizer, model = load_hf_model(config.model)
    states = word_states(tokenizer, model, task.sentences, path=out / "activations.npy", progress=progress)
    return states, task, {"word": [w for sentence in task.sentences for w in sentence]}


def _textdot_activations(config: RedundancyConfig, data_dir, progress: bool):
    """A TextDOT on a text task's sentences, their words looked up in the Penn Treebank vocabulary."""
    task = text_task(config.task, config.tokens, config.seed)
    check_split(task.labels, task.split)  # before anything is written
    sentences, _ = ptb_ids(task.sentences, load_sentences("train", data_dir).vocabulary)
    states = textdot_word_states(load_model(config.model, domain="text"), sentences)
    return states, task, {"word": [w for sentence in task.sentences for w in sentence],
                          "unknown": sentences.vocabulary[sentences.tokens] == UNK_WORD}


def check_model_task(config: RedundancyConfig) -> str:
    """The model's kind ('tinydot' strokes, 'textdot', 'hf'), after checking that it exists and
    that the task fits it."""
    kind = model_kind(config.model)
    if kind == "tinydot" and load_config(config.model).domain == "text":  # the metadata only
        if config.task not in TEXT_TASKS:
            raise ConfigError(f"task {config.task!r} is a stroke task; a text tinyDOT checkpoint takes "
                              f"{' or '.join(TEXT_TASKS)}")
        return "textdot"
    if kind == "tinydot" and config.task not in STROKE_TASKS:
        raise ConfigError(f"task {config.task!r} is a text task; a stroke tinyDOT checkpoint takes "
                          f"{' or '.join(STROKE_TASKS)}")
    if kind == "hf":
        # a folder that is no model at all is said so first (not "a text model"); for minilm the task
        # comes first, then whether its package is installed
        if config.model != MINILM:
            resolve_hf_model(config.model)
        if config.task not in TEXT_TASKS:
            raise ConfigError(f"task {config.task!r} needs a tinyDOT checkpoint; a text model takes "
                              f"{' or '.join(TEXT_TASKS)}")
        if config.model == MINILM:
            resolve_hf_model(config.model)
    return kind


def activations_for(config: RedundancyConfig, out: Path, data_dir=None, progress: bool = False):
    """(activations (layers, tokens, width), Task, extra token columns) for a model and task."""
    kind = check_model_task(config)
    if kind in ("tinydot", "textdot"):
        activations = _stroke_activations if kind == "tinydot" else _textdot_activations
        states, task, extra = activations(config, data_dir, progress)
        with atomic_path(out / "activations.npy") as tmp:
            np.save(tmp, states)
        return states, task, extra
    return _text_activations(config, out, progress)


def layer_names(n_layers: int) -> list[str]:
    return ["emb"] + [f"block{i}" for i in range(1, n_layers)]


def run_redundancy(config: RedundancyConfig, out, *, data_dir=None, progress: bool = True) -> dict:
    """Run the whole analysis into `out`; returns the summary (also written to summary.json, and
    its time and energy to cost.json)."""
    config.check()
    out = check_writable_dir(out)  # nothing stays in it unless the inputs pass their checks
    check_run_kind(out, "redundancy")
    with CostMeter(out, record_user_errors=False, resumes=False):
        return _redundancy(config, out, data_dir, progress)


def _redundancy(config: RedundancyConfig, out: Path, data_dir, progress: bool) -> dict:
    states, task, extra = activations_for(config, out, data_dir, progress)
    n_layers, n_tokens, width = states.shape
    names = layer_names(n_layers)
    atomic_write_csv(pd.DataFrame({**extra, "label": task.labels, "split": task.split}), out / "tokens.csv")

    # general redundancy: layers (CKA) and neurons (correlation clusters), over all tokens
    cka = pd.DataFrame(cka_matrix(list(states)), index=names, columns=names)
    atomic_write_csv(cka, out / "cka.csv", index=True)
    all_neurons = np.ascontiguousarray(states.transpose(1, 0, 2).reshape(n_tokens, n_layers * width))
    sweep = CorrelationClustering().fit(all_neurons).sweep(THRESHOLDS)
    del all_neurons
    atomic_write_csv(sweep, out / "clusters.csv")

    # task-specific redundancy
    bar, counter = progress_bar(None, progress, "probes trained")  # their number depends on the data
    with bar:
        pipeline = TaskRedundancy(DELTAS, config.threshold, alpha=config.alpha, l1_ratio=config.l1_ratio,
                                  progress=lambda: bar.advance(counter)).fit(list(states), task.labels,
                                                                             task.split, task.scored)
    layers_table = pipeline.layers_.assign(name=[names[i] for i in pipeline.layers_["layer"]])
    atomic_write_csv(layers_table, out / "layers.csv")
    atomic_write_csv(pipeline.selections_, out / "selections.csv")
    atomic_write_csv(pipeline.curves_, out / "curves.csv")
    atomic_write_csv(pipeline.alphas_, out / "alphas.csv")

    label = f"{'MiniLM' if config.model == MINILM else Path(config.model).name} / {task.name}"
    summary = {
        "config": asdict(config), "label": label, "layers": n_layers, "width": width, "neurons": n_layers * width,
        "tokens": {part: int((task.split == part).sum()) for part in ("train", "dev", "test")},
        "classes": int(len(np.unique(task.labels))), "metric": task.metric,
        "majority_test": majority_score(task), "alpha": pipeline.alpha_, "oracle": pipeline.oracle_,
        "selections": pipeline.selections_.to_dict(orient="records"),
        "redundant_fraction": dict(zip(sweep["threshold"].astype(str), sweep["redundant_fraction"])),
        "adjacent_cka": [float(cka.iat[i, i + 1]) for i in range(n_layers - 1)],
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    return summary


def majority_score(task: Task) -> float:
    """The test score of always predicting the most frequent training label (the floor to beat)."""
    values, counts = np.unique(task.labels[task.split == "train"], return_counts=True)
    truth = task.labels[task.split == "test"]
    return task_score(truth, np.full(len(truth), values[np.argmax(counts)]), task.scored)

