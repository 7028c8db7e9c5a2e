"""Training tinyDOT: an importable, seeded, resumable function, for either domain (strokes or text:
`model_config.domain`; the data are encoded by `tinydot.data.batching.encode`).

`train` writes into a run folder:
  checkpoint.safetensors  weights + AdamW state + step + history, in one atomic file (resume point)
  model.safetensors       the final weights with the model config (what `load_model` reads)
  touched.safetensors     per weight of every matrix and embedding: True if any training step gave
                          it a non-zero gradient (an embedding row the data never indexes stays False)
  config.json             model and train configs, and digests of the inputs (data, held-out data,
                          start step, initial weights, mask): another run is refused, not resumed
  metrics.csv             the training curve
  cost.json               wall and CPU seconds, training and evaluation FLOPs, energy (tinydot.cost)
Calling `train` again on the same folder resumes from the last checkpoint, or, if the run is
finished, loads its model and metrics without training again; the batches are a pure function
of (seed, epoch), so a resumed run computes the same numbers as an uninterrupted one. The cost of a
resumed run adds to what its folder recorded before (work redone after a kill included).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tinydot.checkpoint import MODEL_FILE, CheckpointError, load_model, load_tensors, save_model, save_tensors
from tinydot.config import ModelConfig, TrainConfig, changes
from tinydot.cost import CostMeter
from tinydot.data.batching import Encoded, EncodedText, encode, epoch_batches
from tinydot.data.strokes import Strokes, fingerprint
from tinydot.data.text import Sentences
from tinydot.domains import get_domain
from tinydot.errors import ConfigError
from tinydot.evaluation import evaluate_nll
from tinydot.executors import passing_bar
from tinydot.flops import FlopTally
from tinydot.io import atomic_write_csv, atomic_write_text, check_run_kind, hold_folder, read_json
from tinydot.model import Decoder, build_model
from tinydot.pruning.mask import Mask, masked_pairs

CHECKPOINT_FILE = "checkpoint.safetensors"
TOUCHED_FILE = "touched.safetensors"  # per matrix / embedding weight: did training ever give it a gradient?


def init_model(cfg: ModelConfig, seed: int) -> Decoder:
    """A freshly initialised model; the weights depend only on (cfg, seed), not on global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: Decoder, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings, none on biases and norms.

    The fused CPU kernel updates a tensor in one pass instead of one op per moment per parameter
    (the for-loop AdamW cost ~200 small ops a step on the quick model); same update rule.
    """
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, cfg.beta2), fused=True)


class BatchStream:
    """Batches in training order from any global step on: epoch after epoch of length buckets."""

    def __init__(self, encoded: Encoded | EncodedText, cfg: TrainConfig, start_step: int = 0):
        self.encoded, self.cfg = encoded, cfg
        self.epoch, self.position = 0, 0
        self.batches = epoch_batches(encoded.lengths, cfg.tokens_per_batch, cfg.seed, 0)
        for _ in range(start_step):
            self._advance()

    def _advance(self):
        self.position += 1
        if self.position == len(self.batches):
            self.epoch += 1
            self.batches = epoch_batches(self.encoded.lengths, self.cfg.tokens_per_batch, self.cfg.seed, self.epoch)
            self.position = 0

    def next(self) -> np.ndarray:
        index = self.batches[self.position]
        self._advance()
        return index


def load_touched(run_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The touched mask of a finished training run (see `train`)."""
    tensors, metadata = load_tensors(Path(run_dir) / TOUCHED_FILE)
    if metadata.get("format") != "tinydot-touched":
        raise CheckpointError(f"{Path(run_dir) / TOUCHED_FILE} is not a tinydot touched mask")
    return tensors


@dataclass
class TrainResult:
    model: Decoder
    history: pd.DataFrame
    run_dir: Path


def _state_tensors(model, optimizer) -> dict[str, torch.Tensor]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"optim.{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors


def _load_state(tensors, model, optimizer) -> None:
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, i, key = name.split(".", 2)
            optimizer.state[params[int(i)]][key] = value


def training_step(model: Decoder, optimizer: torch.optim.Optimizer, batch: tuple, n_positions: int, *,
                  lr: float, grad_clip: float, masked=(), touched=()) -> float:
    """One optimizer step on `batch` (the model's `nll` arguments); returns the batch's summed NLL (nats).

    The loss is the mean NLL over the `n_positions` scored positions. masked: (parameter, keep)
    pairs whose pruned weights get no gradient and stay exactly zero; touched: (parameter, bool
    tensor) pairs, or-ed with "this step's gradient is non-zero". Gradients are clipped to norm
    `grad_clip` (0: no clipping), then the learning rate is set to `lr` for this step.
    """
    nll = model.nll(*batch)
    optimizer.zero_grad(set_to_none=True)
    (nll.sum() / n_positions).backward()
    for param, keep in masked:
        param.grad.mul_(keep)
    for param, seen in touched:
        if param.grad is not None:
            seen |= param.grad != 0
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    for param, keep in masked:
        param.data.mul_(keep)
    return float(nll.detach().sum())


# config.json's "inputs": what besides the configs decides a run's numbers, as digests
INPUTS = {"data": "the training data", "eval_data": "the held-out data", "start_step": "the start step",
          "init_state": "the initial weights", "mask": "the mask"}


def _tensors_fingerprint(tensors: dict[str, torch.Tensor] | None) -> str | None:
    if tensors is None:
        return None
    names = sorted(tensors)
    return fingerprint(np.array(names), *(tensors[name].detach().cpu().numpy() for name in names))


def _refusal(run_dir: Path, stored, configs: dict, inputs: dict) -> str | None:
    """Why a folder's config.json forbids resuming or reusing it for this run (None: it is this run).

    Configs are compared as configs, so a folder written before a field existed (the field takes its
    default) still resumes; a folder written before its inputs were recorded is taken to match them."""
    try:
        stored_configs = {"model": ModelConfig.from_dict(stored.get("model", {})).to_dict(),
                          "train": TrainConfig.from_dict(stored.get("train", {})).to_dict()}
    except (ConfigError, TypeError, AttributeError):  # a field this version does not know, or a broken file
        return f"{run_dir} holds a run whose config.json this version cannot read"
    changed = changes(stored_configs, configs)
    if changed:
        return f"{run_dir} holds a run with a different configuration ({', '.join(changed)})"
    recorded = stored.get("inputs")
    differ = [INPUTS[key] for key in INPUTS if isinstance(recorded, dict) and recorded.get(key) != inputs[key]]
    if differ:
        return f"{run_dir} holds a run of this configuration on other inputs ({', '.join(differ)})"
    return None


def train(data: Strokes | Sentences, run_dir: str | os.PathLike, model_config: ModelConfig = ModelConfig(),
          train_config: TrainConfig = TrainConfig(), *, eval_data: Strokes | Sentences | None = None,
          init_state: dict[str, torch.Tensor] | None = None, start_step: int = 0,
          mask: Mask | None = None, snapshot_steps: tuple[int, ...] = (), progress: bool = True,
          country: str | None = None, verbose: bool | None = None) -> TrainResult:
    """Train tinyDOT on `data`, checkpointing into `run_dir`; resume if it holds an unfinished run.

    data           : strokes or sentences, as `model_config.domain` says (a ConfigError otherwise).
    eval_data      : sequences for the periodic held-out NLL (the first `eval_sequences` are used).
    init_state     : start from these weights instead of a seeded initialisation (same shapes).
    start_step     : begin the schedule and batch order at this step (rewinding to step k).
    mask           : keep these weights exactly zero throughout (their gradients and AdamW
                     moments stay zero, and the weights are re-zeroed after every step).
    snapshot_steps : also save the weights at these steps as `weights-step{k}.safetensors`.
    The run also records which weights were ever touched by a non-zero gradient (`touched.safetensors`,
    read with `load_touched`), counted from `start_step` on.
    country        : ISO 3166 code for the CO2 of the energy in cost.json (tinydot.cost.resolve_country)
    verbose        : let codecarbon log (None: $TINYDOT_VERBOSE, set by `tinydot --verbose`)
    Returns the trained model and its history (one row per evaluation).
    """
    if len(data) == 0:
        raise ConfigError("no training sequences selected")
    encoded = encode(data, model_config)  # checks that the data fit the model before anything is written
    cfg = train_config
    eval_data = eval_data.subset(np.arange(min(cfg.eval_sequences, len(eval_data)))) if eval_data else None
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with hold_folder(run_dir):  # one process writes a run folder: from its config to its model
        configs = {"model": model_config.to_dict(), "train": train_config.to_dict()}
        inputs = {"data": data.fingerprint, "eval_data": eval_data.fingerprint if eval_data else None,
                  "start_step": start_step, "init_state": _tensors_fingerprint(init_state),
                  "mask": _tensors_fingerprint(mask)}
        config_path = run_dir / "config.json"
        check_run_kind(run_dir, "training")
        if config_path.exists():
            fix = f"choose another output folder or delete {run_dir}"
            refusal = _refusal(run_dir, read_json(config_path, fix), configs, inputs)
            if refusal:
                raise ConfigError(f"{refusal}; {fix}")
        else:
            atomic_write_text(config_path, json.dumps({**configs, "inputs": inputs}, indent=2) + "\n")

        if (run_dir / MODEL_FILE).exists() and (run_dir / "metrics.csv").exists():  # written last: finished
            return TrainResult(load_model(run_dir / MODEL_FILE), pd.read_csv(run_dir / "metrics.csv"), run_dir)

        model = init_model(model_config, cfg.seed)
        if init_state is not None:
            model.load_state_dict(init_state)
        if not 0 <= start_step < cfg.steps:
            raise ConfigError(f"start step {start_step} must lie in [0, {cfg.steps})")
        masked = masked_pairs(model, mask) if mask is not None else []
        for param, keep in masked:
            param.data.mul_(keep)
        optimizer = make_optimizer(model, cfg)
        tracked = [(name, p) for name, p in model.named_parameters() if p.dim() >= 2]  # matrices and embeddings
        touched = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in tracked}
        touched_pairs = [(p, touched[name]) for name, p in tracked]  # the same tensors, updated in place
        step, history = start_step, []
        window = {"nll": 0.0, "tokens": 0, "tokens_total": 0}  # training loss since the last log line
        checkpoint = run_dir / CHECKPOINT_FILE
        if checkpoint.exists():
            tensors, metadata = load_tensors(checkpoint)
            _load_state(tensors, model, optimizer)
            for name, value in tensors.items():
                if name.startswith("touched."):
                    touched[name[8:]].copy_(value)
            step, history = int(metadata["step"]), json.loads(metadata["history"])
            window = json.loads(metadata["window"])

        held_out = encode(eval_data, model_config) if eval_data else None
        stream = BatchStream(encoded, cfg, start_step=step)

        def save_checkpoint():
            touched_tensors = {f"touched.{k}": v for k, v in touched.items()}
            save_tensors(checkpoint, {**_state_tensors(model, optimizer), **touched_tensors},
                         {"step": str(step), "history": json.dumps(history), "window": json.dumps(window)})

        def snapshot():
            if step in snapshot_steps and not (run_dir / f"weights-step{step}.safetensors").exists():
                save_tensors(run_dir / f"weights-step{step}.safetensors", model.state_dict())

        def log(train_bits, tokens, elapsed):
            row = {"step": step, "lr": lr_at(step - 1, cfg), "train_bits_per_position": train_bits,
                   "tokens": tokens, "seconds": elapsed}
            if held_out is not None:
                model.eval()
                row["eval_bits_per_step"] = evaluate_nll(model, held_out)["bits_per_step"]
                model.train()
            history.append(row)

        model.train()
        unit = get_domain(model_config.domain).unit  # of the held-out NLL in the progress bar
        started = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
        flops = FlopTally(model_config, mask)  # counts the forward passes of training steps and evaluations
        with CostMeter(run_dir, counters=flops.totals, country=country, verbose=verbose) as meter, \
                flops.counting(model), \
                passing_bar("training", progress, status=True) as bar:
            task = bar.add_task("train", total=cfg.steps, completed=step, status="")
            snapshot()
            while step < cfg.steps:
                index = stream.next()
                n_tokens = int(encoded.lengths[index].sum())  # the positions scored: padding is not
                nll_sum = training_step(model, optimizer, encoded.batch(index), n_tokens, lr=lr_at(step, cfg),
                                        grad_clip=cfg.grad_clip, masked=masked, touched=touched_pairs)
                step += 1
                snapshot()
                window["nll"] += nll_sum
                window["tokens"] += n_tokens
                window["tokens_total"] += n_tokens
                last = step == cfg.steps
                if last or (cfg.eval_every and step % cfg.eval_every == 0):
                    log(window["nll"] / window["tokens"] / math.log(2), window["tokens_total"],
                        time.perf_counter() - started)
                    window.update(nll=0.0, tokens=0)
                    status = f"train {history[-1]['train_bits_per_position']:.3f} b/pos"
                    if "eval_bits_per_step" in history[-1]:
                        status += f"  eval {history[-1]['eval_bits_per_step']:.3f} {unit}"  # the column's name is both
                    bar.update(task, status=status)
                if last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    # cost first: killed between the two, the steps the checkpoint keeps are all counted (and the
                    # resume counts the ones it redoes again: they were run twice)
                    meter.flush()
                    save_checkpoint()
                bar.update(task, completed=step)

        frame = pd.DataFrame(history)
        atomic_write_csv(frame, run_dir / "metrics.csv")
        save_tensors(run_dir / TOUCHED_FILE, touched, {"format": "tinydot-touched"})
        save_model(run_dir / MODEL_FILE, model, extra={"train_config": cfg.to_dict(), "step": step})
        return TrainResult(model.eval(), frame, run_dir)
