"""Redundancy analysis of a trained transformer (Dalvi et al. 2020), end to end.

model (tinyDOT checkpoint, 'minilm' or a Hugging Face folder) + task
  -> per-layer activations (activations.npy, memory-mapped) and token labels (tokens.csv)
  -> general redundancy: linear CKA between layers (cka.csv), neuron correlation clusters swept
     over the threshold c (clusters.csv)
  -> task-specific redundancy: probes per layer, layer selector, clustering, ranking, retraining
     on the top k% (layers.csv, selections.csv, curves.csv)
  -> figures, summary.json, section.html (a fragment for the HTML report) and report.html.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tinydot.analysis.activations import MINILM, resolve_hf_model
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
from tinydot.errors import ConfigError
from tinydot.executors import progress_bar
from tinydot.io import atomic_path, atomic_write_text


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
        if not isinstance(self.tokens, int) or self.tokens < 200:
            raise ConfigError(f"tokens must be an integer >= 200, got {self.tokens!r}")
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"threshold must be in [0, 1], got {self.threshold}")
        if not ((self.alpha is None or self.alpha > 0) and 0 <= self.l1_ratio <= 1):
            raise ConfigError(f"need alpha > 0 and 0 <= l1_ratio <= 1, got {self.alpha} and {self.l1_ratio}")


def model_kind(model: str) -> str:
    """'tinydot' for a tinyDOT checkpoint (file or run folder), 'hf' for 'minilm' or an HF folder."""
    from tinydot.checkpoint import is_tinydot_checkpoint

    if model == MINILM:
        return "hf"
    if is_tinydot_checkpoint(model):
        return "tinydot"
    if not Path(model).exists():
        raise ConfigError(f"model {model} does not exist; give 'minilm', a Hugging Face model folder "
                          "or a tinyDOT checkpoint")
    if Path(model).is_file():
        raise ConfigError(f"{model} is not a tinyDOT checkpoint; give a checkpoint, 'minilm' or a model folder")
    return "hf"


def _stroke_activations(config: RedundancyConfig, data_dir, progress: bool):
    from tinydot.analysis.activations import stroke_states
    from tinydot.checkpoint import load_model
    from tinydot.data.strokes import load_strokes

    test = load_strokes("test", data_dir)
    order = np.random.default_rng(config.seed).permutation(len(test))
    positions = np.cumsum(test.lengths[order] + 1)
    if positions[-1] < config.tokens:
        raise ConfigError(f"the test split has {positions[-1]:,} positions; ask for at most that many tokens")
    chosen = np.sort(order[:int(np.searchsorted(positions, config.tokens)) + 1])
    sample = test.subset(chosen)
    layers, sequence, pen = stroke_states(load_model(config.model), sample)
    task = stroke_task(config.task, sample.labels[sequence], pen, sequence, config.seed)
    check_split(task.labels, task.split)
    return np.stack(layers), task, {"sequence": chosen[sequence]}


def _text_activations(config: RedundancyConfig, out: Path, progress: bool):
    from tinydot.analysis.activations import load_hf_model, word_states

    task = text_task(config.task, config.tokens, config.seed)
    check_split(task.labels, task.split)  # before anything is written
    tokenizer, model = load_hf_model(config.model)
    states = word_states(tokenizer, model, task.sentences, path=out / "activations.npy", progress=progress)
    return states, task, {"word": [w for sentence in task.sentences for w in sentence]}


def check_model_task(config: RedundancyConfig) -> str:
    """The model's kind, after checking that it exists and that the task fits it."""
    kind = model_kind(config.model)
    if kind == "tinydot" and config.task not in STROKE_TASKS:
        raise ConfigError(f"task {config.task!r} is a text task; a tinyDOT checkpoint takes "
                          f"{' or '.join(STROKE_TASKS)}")
    if kind == "hf":
        if config.task not in TEXT_TASKS:
            raise ConfigError(f"task {config.task!r} needs a tinyDOT checkpoint; a text model takes "
                              f"{' or '.join(TEXT_TASKS)}")
        resolve_hf_model(config.model)
    return kind


def activations_for(config: RedundancyConfig, out: Path, data_dir=None, progress: bool = False):
    """(activations (layers, tokens, width), Task, extra token columns) for a model and task."""
    if check_model_task(config) == "tinydot":
        states, task, extra = _stroke_activations(config, data_dir, progress)
        with atomic_path(out / "activations.npy") as tmp:
            np.save(tmp, states)
        return states, task, extra
    return _text_activations(config, out, progress)


def layer_names(n_layers: int) -> list[str]:
    return ["emb"] + [f"block{i}" for i in range(1, n_layers)]


def _write_csv(frame: pd.DataFrame, path: Path, index: bool = False) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)


def run_redundancy(config: RedundancyConfig, out, *, data_dir=None, progress: bool = True) -> dict:
    """Run the whole analysis into `out`; returns the summary (also written to summary.json)."""
    from tinydot.report.figures import neurons_kept, redundant_fraction, save_figure, similarity_heatmap

    config.check()
    out = Path(out)  # created by the first (atomic) write, once the inputs have passed their checks
    states, task, extra = activations_for(config, out, data_dir, progress)
    n_layers, n_tokens, width = states.shape
    names = layer_names(n_layers)
    _write_csv(pd.DataFrame({**extra, "label": task.labels, "split": task.split}), out / "tokens.csv")

    # general redundancy: layers (CKA) and neurons (correlation clusters), over all tokens
    cka = pd.DataFrame(cka_matrix(list(states)), index=names, columns=names)
    _write_csv(cka, out / "cka.csv", index=True)
    all_neurons = np.ascontiguousarray(states.transpose(1, 0, 2).reshape(n_tokens, n_layers * width))
    sweep = CorrelationClustering().fit(all_neurons).sweep(THRESHOLDS)
    del all_neurons
    _write_csv(sweep, out / "clusters.csv")

    # task-specific redundancy
    bar, counter = progress_bar(None, progress, "probes trained")  # their number depends on the data
    with bar:
        pipeline = TaskRedundancy(DELTAS, config.threshold, alpha=config.alpha, l1_ratio=config.l1_ratio,
                                  progress=lambda: bar.advance(counter)).fit(list(states), task.labels,
                                                                             task.split, task.scored)
    layers_table = pipeline.layers_.assign(name=[names[i] for i in pipeline.layers_["layer"]])
    _write_csv(layers_table, out / "layers.csv")
    _write_csv(pipeline.selections_, out / "selections.csv")
    _write_csv(pipeline.curves_, out / "curves.csv")
    _write_csv(pipeline.alphas_, out / "alphas.csv")

    label = f"{'MiniLM' if config.model == MINILM else Path(config.model).name} / {task.name}"
    save_figure(similarity_heatmap(cka, f"linear CKA between layers, {n_tokens:,} tokens ({label})"),
                out / "cka.png")
    save_figure(redundant_fraction(sweep, f"redundant neurons of {n_layers * width:,} ({label})"),
                out / "redundant_fraction.png")
    save_figure(neurons_kept(pipeline.curves_, pipeline.selections_, pipeline.oracle_["test"], task.metric, label),
                out / "neurons_kept.png")

    summary = {
        "config": asdict(config), "layers": n_layers, "width": width, "neurons": n_layers * width,
        "tokens": {part: int((task.split == part).sum()) for part in ("train", "dev", "test")},
        "classes": int(len(np.unique(task.labels))), "metric": task.metric,
        "majority_test": majority_score(task), "alpha": pipeline.alpha_, "oracle": pipeline.oracle_,
        "selections": pipeline.selections_.to_dict(orient="records"),
        "redundant_fraction": dict(zip(sweep["threshold"].astype(str), sweep["redundant_fraction"])),
        "adjacent_cka": [float(cka.iat[i, i + 1]) for i in range(n_layers - 1)],
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    write_section(out)
    return summary


def majority_score(task: Task) -> float:
    """The test score of always predicting the most frequent training label (the floor to beat)."""
    values, counts = np.unique(task.labels[task.split == "train"], return_counts=True)
    truth = task.labels[task.split == "test"]
    return task_score(truth, np.full(len(truth), values[np.argmax(counts)]), task.scored)


def write_section(out) -> Path:
    """section.html (the analysis as an HTML fragment for a report page, figures embedded) and
    report.html (the same section as a page of its own). Reads only files in `out`."""
    import base64
    import datetime

    from jinja2 import Environment, PackageLoader, select_autoescape

    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    images = {name: "data:image/png;base64," + base64.b64encode((out / f"{name}.png").read_bytes()).decode()
              for name in ("cka", "redundant_fraction", "neurons_kept")}
    env = Environment(loader=PackageLoader("tinydot.report", "templates"), autoescape=select_autoescape())
    context = dict(s=summary, images=images, layers=pd.read_csv(out / "layers.csv"),
                   selections=pd.read_csv(out / "selections.csv"), clusters=pd.read_csv(out / "clusters.csv"),
                   verdict=verdict(summary), config=json.dumps(summary["config"], indent=2),
                   created=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
    atomic_write_text(out / "section.html", env.get_template("redundancy.html.j2").render(**context))
    path = out / "report.html"
    atomic_write_text(path, env.get_template("redundancy_page.html.j2").render(**context))
    return path


def verdict(summary: dict) -> list[str]:
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
