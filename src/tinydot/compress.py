"""Compressing a trained tinyDOT: structured pruning (`run_compress`) and quantization (`run_quantize`).
Either domain: the checkpoint's config says which (strokes: MNIST test / train sequences; text: Penn
Treebank test / train sentences, and every NLL below is then in bits per word).

A compress run folder:
  config.json                   the source checkpoint (path, sha256) and the compress settings
  round_<r>/model.safetensors   the model right after round r's removal (a `load_model` checkpoint)
  round_<r>/keep.safetensors    which units of round r-1's model were kept (bool, per kind)
  round_<r>/finetune/           the fine-tuning run (a `train` run folder), if finetune_steps > 0
  round_<r>/results.json        round r's row; a round with this file is skipped on re-runs
  model.safetensors             the final model (fine-tuned if fine-tuning)
  results.csv                   one row per round (round 0: the dense model): its shape (n_heads and d_mlp
                                per block), parameters, NLLs, file size; removed_heads and removed_neurons
                                count per block, removed_layers blocks, all since round 0

A quantize run folder:
  config.json                   the source checkpoint and the quantize settings
  bits_<b>/quantized.safetensors  b-bit codes, bit-packed, with per-channel scales: the real size
  bits_<b>/model.safetensors    the dequantized model (what `load_model` reads)
  bits_<b>/results.json         that bit width's row; skipped on re-runs
  results.csv                   one row per bit width (first: the float32 model)

NLL is the exact test NLL (bits/step; text: bits/word) on the first `eval_sequences` test sequences. Taylor scores
use the last `score_sequences` test sequences (held out, disjoint from the evaluated ones); GPFQ's
calibration uses `calibration_sequences` training sequences drawn with `seed`. Figures are drawn
from results.csv by tinydot.report.compression.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tinydot.checkpoint import MODEL_FILE, load_model, load_tensors, resolve, save_model, save_tensors
from tinydot.config import TrainConfig, check_seed
from tinydot.data.batching import Encoded, EncodedText, encode
from tinydot.data.strokes import Strokes
from tinydot.data.text import Sentences
from tinydot.domains import domain_of, get_domain
from tinydot.errors import ConfigError
from tinydot.evaluation import evaluate_nll
from tinydot.io import atomic_write_csv, atomic_write_text, check_run_kind, read_json, sha256_file
from tinydot.model import Decoder
from tinydot.pruning.structured import (KINDS, check_importance, remove_units, removal_count, removal_schedule,
                                        unit_shape)
from tinydot.quantization import bits_per_weight, check_bits, check_method, pack_model, quantize_model, unpack_model
from tinydot.training import train

PACKED_FILE = "quantized.safetensors"


@dataclass(frozen=True)
class CompressConfig:
    heads: float = 0.0  # fraction of each block's heads to remove
    neurons: float = 0.0  # fraction of each block's MLP neurons to remove
    layers: float = 0.0  # fraction of the blocks to remove
    importance: str = "taylor"  # or "magnitude"
    rounds: int = 1  # removal rounds (IMP-like); fine-tuning after each
    finetune_steps: int = 0  # optimizer steps of fine-tuning after each round (0: none)
    finetune_lr: float = 1e-3  # peak learning rate of the fine-tuning (linear warmup, cosine decay)
    eval_sequences: int = 2000
    score_sequences: int = 1000
    seed: int = 0  # fine-tuning batch order

    def fractions(self) -> dict[str, float]:
        return {kind: getattr(self, kind) for kind in KINDS}

    def check(self) -> None:
        for kind, fraction in self.fractions().items():
            if not 0 <= fraction < 1:
                raise ConfigError(f"{kind} must be a fraction in [0, 1), got {fraction}")
        if not any(self.fractions().values()):
            raise ConfigError("nothing to remove: give a fraction with --heads, --neurons or --layers")
        check_importance(self.importance)
        for name, minimum in (("rounds", 1), ("finetune_steps", 0), ("eval_sequences", 1), ("score_sequences", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
        check_seed(self.seed, "seed")
        if not 0 < self.finetune_lr <= 1:
            raise ConfigError(f"finetune_lr must be in (0, 1], got {self.finetune_lr}")


@dataclass(frozen=True)
class QuantizeConfig:
    bits: tuple[int, ...] = (8, 4, 3, 2)
    method: str = "gpfq"  # or "rtn"
    calibration_sequences: int = 256
    eval_sequences: int = 2000
    seed: int = 0  # which training sequences calibrate

    def check(self) -> None:
        if not self.bits:
            raise ConfigError("give at least one bit width")
        for b in self.bits:
            check_bits(b)
        if len(set(self.bits)) != len(self.bits):
            raise ConfigError(f"bit widths must not repeat, got {list(self.bits)}")
        check_method(self.method)
        for name in ("calibration_sequences", "eval_sequences"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        check_seed(self.seed, "seed")


def _start_run(out: Path, checkpoint, section: str, settings: dict) -> None:
    """Write config.json, or check that an existing run folder was made with the same settings from
    the same checkpoint (the same bytes, however its path is spelt)."""
    source = resolve(checkpoint).resolve()
    configs = {"source": str(source), "source_sha256": sha256_file(source), section: settings}
    path = out / "config.json"
    check_run_kind(out, section)  # a folder another command wrote, with or without a config.json
    if path.exists():
        stored = read_json(path, f"choose another output folder or delete {out}")
        given = json.loads(json.dumps(configs))
        if not isinstance(stored, dict) or not isinstance(stored.get(section, {}), dict):
            raise ConfigError(f"{out}/config.json is damaged; choose another output folder or delete it")
        if section not in stored:  # a config.json no command of tinydot wrote (run_kind knows the others)
            raise ConfigError(f"{out} holds a different kind of run, not a {section} run; choose another output "
                              "folder")
        if stored.get("source_sha256") != given["source_sha256"]:
            raise ConfigError(f"{out} holds a {section} run of another checkpoint ({stored.get('source')}); "
                              "choose another output folder or delete it")
        if isinstance(stored[section].get("bits"), list):  # widths in any order (older folders kept the order given)
            stored[section]["bits"] = sorted(stored[section]["bits"], reverse=True)
        changed = [f"{k} {stored[section].get(k)!r} -> {v!r}" for k, v in given[section].items()
                   if stored[section].get(k) != v]
        if changed:
            raise ConfigError(f"{out} holds a {section} run with other settings ({', '.join(changed)}); "
                              "choose another output folder or delete it")
        return
    atomic_write_text(path, json.dumps(configs, indent=2) + "\n")


def _test_slices(test: Strokes | Sentences, cfg, eval_sequences: int,
                 score_sequences: int = 0) -> tuple[Encoded | EncodedText, Encoded | EncodedText | None]:
    """The evaluated test sequences (the first ones) and the scoring ones (the last, disjoint),
    encoded for a model of config `cfg`."""
    if eval_sequences + score_sequences > len(test):
        asked = f"eval_sequences + score_sequences ({eval_sequences} + {score_sequences}) exceed" if score_sequences \
            else f"eval_sequences {eval_sequences} exceeds"
        raise ConfigError(f"{asked} the {len(test)} test {domain_of(test).samples}")
    evaluated = encode(test.subset(np.arange(eval_sequences)), cfg)
    scored = encode(test.subset(np.arange(len(test) - score_sequences, len(test))), cfg) if score_sequences else None
    return evaluated, scored


# --------------------------------------------------------------------------- structured pruning

def _shape_row(model: Decoder) -> dict:
    cfg = model.cfg
    return {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_mlp": cfg.d_mlp, "params": model.num_params()}


def _finetune(model: Decoder, folder: Path, train_data: Strokes | Sentences, cfg: CompressConfig,
              progress: bool) -> Decoder:
    train_config = TrainConfig(steps=cfg.finetune_steps, lr=cfg.finetune_lr, warmup_steps=cfg.finetune_steps // 10,
                               eval_every=0, checkpoint_every=max(1, cfg.finetune_steps // 4), seed=cfg.seed)
    return train(train_data, folder, model.cfg, train_config, init_state=model.state_dict(), progress=progress).model


def run_compress(checkpoint, out, *, heads: float = 0.0, neurons: float = 0.0, layers: float = 0.0,
                 importance: str = "taylor", rounds: int = 1, finetune_steps: int = 0, finetune_lr: float = 1e-3,
                 eval_sequences: int = 2000, score_sequences: int = 1000, seed: int = 0, data_dir=None,
                 progress: bool = True) -> pd.DataFrame:
    """Remove fractions of the heads / MLP neurons / blocks of a trained checkpoint in `rounds`
    rounds (each re-scores the current model, then optionally fine-tunes), writing a run folder
    (see the module docstring). Resumable: finished rounds are skipped, fine-tuning resumes.
    Returns the results table (one row per round, round 0 = the source model)."""
    cfg = CompressConfig(heads, neurons, layers, importance, rounds, finetune_steps, finetune_lr, eval_sequences,
                         score_sequences, seed)
    cfg.check()
    dense = load_model(checkpoint)
    counts = {kind: removal_count(dense.cfg, kind, f) for kind, f in cfg.fractions().items()}
    totals = {kind: dense.cfg.n_layers if kind == "layers" else unit_shape(dense.cfg, kind)[1] for kind in KINDS}
    schedules = {kind: removal_schedule(totals[kind], counts[kind], rounds) for kind in KINDS}
    if not all(any(schedules[kind][r] for kind in KINDS) for r in range(rounds)):
        most = max(counts.values())
        go = f"{most} units of one kind go" if most != 1 else "1 unit of one kind goes"
        raise ConfigError(f"rounds {rounds} would leave rounds that remove nothing: {go} (per block for heads "
                          f"and neurons); choose fewer rounds ({most} or fewer always work)")
    domain = get_domain(dense.cfg.domain)
    test = domain.load("test", data_dir)
    evaluated, scored = _test_slices(test, dense.cfg, eval_sequences, score_sequences if importance == "taylor" else 0)
    train_data = domain.load("train", data_dir) if finetune_steps else None
    out = Path(out)
    _start_run(out, checkpoint, "compress", asdict(cfg))

    rows = [{"round": 0, **_shape_row(dense), "removed_layers": 0, "removed_heads": 0, "removed_neurons": 0,
             "bits_per_step": evaluate_nll(dense, evaluated)["bits_per_step"], "finetuned_bits_per_step": math.nan,
             "file_bytes": resolve(checkpoint).stat().st_size}]
    current = dense
    for r in range(1, rounds + 1):
        folder = out / f"round_{r}"
        if (folder / "results.json").exists():
            rows.append(read_json(folder / "results.json", "delete it to redo this step"))
            current = load_model(folder / "finetune" if finetune_steps else folder)
            continue
        if (folder / MODEL_FILE).exists():  # removed before an interruption: same units, no re-scoring
            current = load_model(folder)
        else:
            keeps = {}
            for kind in KINDS:  # blocks first, then heads and neurons of the surviving blocks
                if schedules[kind][r - 1]:
                    removal = remove_units(current, kind, schedules[kind][r - 1], importance, scored)
                    current, keeps[kind] = removal.model, removal.keep
            save_tensors(folder / "keep.safetensors", keeps, {"format": "tinydot-keep"})
            save_model(folder / MODEL_FILE, current, extra={"compress": asdict(cfg), "round": r})
        row = {"round": r, **_shape_row(current),
               **{f"removed_{kind}": sum(schedules[kind][:r]) for kind in KINDS},
               "bits_per_step": evaluate_nll(current, evaluated)["bits_per_step"], "finetuned_bits_per_step": math.nan,
               "file_bytes": (folder / MODEL_FILE).stat().st_size}
        if finetune_steps:
            current = _finetune(current, folder / "finetune", train_data, cfg, progress)
            row["finetuned_bits_per_step"] = evaluate_nll(current, evaluated)["bits_per_step"]
        atomic_write_text(folder / "results.json", json.dumps(row, indent=2) + "\n")
        rows.append(row)

    save_model(out / MODEL_FILE, current, extra={"compress": asdict(cfg), "source": str(resolve(checkpoint).resolve())})
    table = pd.DataFrame(rows)
    atomic_write_csv(table, out / "results.csv")
    return table


# --------------------------------------------------------------------------- quantization

def load_packed(path) -> Decoder:
    """The dequantized model from a packed quantized file (a `run_quantize` bits_<b> folder or file)."""
    path = Path(path)
    tensors, metadata = load_tensors(path / PACKED_FILE if path.is_dir() else path)
    return unpack_model(tensors, metadata)


def run_quantize(checkpoint, out, *, bits=(8, 4, 3, 2), method: str = "gpfq", calibration_sequences: int = 256,
                 eval_sequences: int = 2000, seed: int = 0, data_dir=None) -> pd.DataFrame:
    """Quantize a trained checkpoint at each bit width in `bits` with `method` (gpfq or rtn),
    writing a run folder (see the module docstring); finished bit widths are skipped on re-runs.
    Returns the results table (first row: the float32 model)."""
    bits = (bits,) if isinstance(bits, int) else bits  # one width or several
    cfg = QuantizeConfig(tuple(bits), method, calibration_sequences, eval_sequences, seed)
    cfg.check()
    cfg = replace(cfg, bits=tuple(sorted(cfg.bits, reverse=True)))  # the same widths in any order: the same run
    model = load_model(checkpoint)
    domain = get_domain(model.cfg.domain)
    evaluated, _ = _test_slices(domain.load("test", data_dir), model.cfg, eval_sequences)
    calibration = None
    if method == "gpfq":
        train_data = domain.load("train", data_dir)
        if calibration_sequences > len(train_data):
            raise ConfigError(f"calibration_sequences {calibration_sequences} exceeds the {len(train_data)} "
                              f"training {domain.samples}")
        chosen = np.sort(np.random.default_rng(seed).permutation(len(train_data))[:calibration_sequences])
        calibration = encode(train_data.subset(chosen), model.cfg)
    out = Path(out)
    _start_run(out, checkpoint, "quantize", {**asdict(cfg), "bits": list(cfg.bits)})

    float_bytes = resolve(checkpoint).stat().st_size
    dense = evaluate_nll(model, evaluated)["bits_per_step"]
    rows = [{"bits": 32, "method": "float32", "bits_per_step": dense, "relative_change": 0.0,
             "bits_per_weight": 32.0, "params": model.num_params(), "file_bytes": float_bytes, "size_ratio": 1.0}]
    for b in cfg.bits:
        folder = out / f"bits_{b}"
        if (folder / "results.json").exists():
            rows.append(read_json(folder / "results.json", "delete it to redo this step"))
            continue
        quantized = quantize_model(model, b, method, calibration)
        tensors, metadata = pack_model(quantized)
        save_tensors(folder / PACKED_FILE, tensors, metadata)
        save_model(folder / MODEL_FILE, quantized.model, extra={"quantize": {"bits": b, "method": method}})
        nll = evaluate_nll(quantized.model, evaluated)["bits_per_step"]
        packed_bytes = (folder / PACKED_FILE).stat().st_size
        row = {"bits": b, "method": method, "bits_per_step": nll, "relative_change": nll / dense - 1,
               "bits_per_weight": bits_per_weight(quantized), "params": model.num_params(),
               "file_bytes": packed_bytes, "size_ratio": packed_bytes / float_bytes}
        atomic_write_text(folder / "results.json", json.dumps(row, indent=2) + "\n")
        rows.append(row)
    table = pd.DataFrame(rows)
    atomic_write_csv(table, out / "results.csv")
    return table
