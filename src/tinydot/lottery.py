"""Iterative magnitude pruning (IMP) with rewinding, its controls, and 'used parameter' counts.

A lottery run folder:
  config.json                      model, train and prune configs
  level_0/                         the dense run (a `train` run folder) + weights at the rewind step
  level_i/mask.safetensors         the IMP mask of level i (pruned from level i-1's trained weights)
  level_i/                         the ticket: rewound survivors, retrained with the same schedule
  level_i/reinit/, level_i/random/ controls: same mask with a fresh init; a random mask of the
                                   same per-tensor sparsity with the rewound weights
  level_i/results.json             that level's row; a level with this file is skipped on re-runs
  level_i/used.csv                 per-tensor used/unused counts
  results.csv                      the table (the report layer draws nll_vs_sparsity.png from it)

Every prunable weight of every level is pruned, untouched (training never gave it a non-zero
gradient: the data never reaches it), trained to small (touched, |w| <= epsilon) or used (touched,
|w| > epsilon); see tinydot.pruning.usage. The default epsilon = 1e-3 is 1/20 of the initialisation
std (0.02): a weight this small moves a d_model-wide dot product by well under 1% of its typical
size. A scale-free variant counts |w| > relative_epsilon x the tensor's standard deviation. Each row
also reports the held-out NLL (on `eval_data`) with every unused weight set to zero
(`zeroed_bits_per_step`), so the claim that they are unused is checked, not assumed.

Either domain: the `*bits_per_step` columns are bits per pen step for strokes and bits per word
for text (`evaluation.evaluate_nll`), as the model config's domain says.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tinydot.checkpoint import load_model, load_tensors
from tinydot.config import ModelConfig, PruneConfig, TrainConfig, changes
from tinydot.data.batching import Encoded, EncodedText, encode
from tinydot.data.strokes import Strokes
from tinydot.data.text import Sentences
from tinydot.errors import ConfigError
from tinydot.evaluation import evaluate_nll
from tinydot.io import atomic_write_csv, atomic_write_text, check_run_kind, read_json
from tinydot.model import Decoder
from tinydot.pruning.magnitude import prune, random_mask
from tinydot.pruning.mask import Mask, density, full_mask, load_mask, prunable_names, save_mask
from tinydot.pruning.usage import usage_counts, usage_fractions, zero_unused
from tinydot.training import init_model, load_touched, train

CONTROL_SEED_OFFSET = 10_000  # fresh inits and random masks use seeds far from the run's own


@dataclass
class LotteryResult:
    """What `run_lottery` returns: one row per level (results.csv) and the run folder."""

    table: pd.DataFrame
    run_dir: Path

    def stays_within(self, tolerance: float) -> pd.Series:
        """The sparsest level whose ticket NLL is within `tolerance` (relative) of the dense NLL."""
        dense = self.table.iloc[0]["bits_per_step"]
        ok = self.table[self.table["bits_per_step"] <= dense * (1 + tolerance)]
        return ok.iloc[-1]


def _level_row(level: int, model: Decoder, mask: Mask, names, held_out: Encoded | EncodedText, cfg: PruneConfig,
               level_dir: Path):
    touched = load_touched(level_dir)
    counts = usage_counts(model, names, touched, mask, cfg.epsilon, cfg.relative_epsilon)
    atomic_write_csv(counts, level_dir / "used.csv")
    return {
        "level": level, "density": density(mask), "sparsity": 1 - density(mask),
        "kept": int(sum(int(m.sum()) for m in mask.values())), "prunable": int(counts["total"].sum()),
        "bits_per_step": evaluate_nll(model, held_out)["bits_per_step"],
        "used": int(counts["used"].sum()), **usage_fractions(counts),
        "zeroed_bits_per_step": evaluate_nll(zero_unused(model, names, touched, mask, cfg.epsilon),
                                             held_out)["bits_per_step"],
    }


def _differences(stored, configs: dict, stop_above_delta: bool) -> list[str]:
    """Where a folder's stored configuration and these would train other levels, as "section.field
    stored -> given" (none: the same run). The number of levels is free: level k does not depend on
    how many follow it, so a re-run with more levels adds them and one with fewer reports fewer.
    delta decides which levels are trained only with `stop_above_delta`; otherwise it is the
    summary's tolerance, free to change on a re-run. A folder written before the held-out count was
    recorded is taken to match it."""
    if not isinstance(stored, dict) or not isinstance(stored.get("prune", {}), dict):
        return ["config.json (damaged)"]
    stored = {"eval_sequences": configs["eval_sequences"], **stored}
    free = {"levels"} if stop_above_delta else {"levels", "delta"}
    stored, configs = ({**c, "prune": {k: v for k, v in c.get("prune", {}).items() if k not in free}}
                       for c in (stored, configs))
    return changes(stored, configs)


def run_lottery(data: Strokes | Sentences, run_dir: str | os.PathLike, eval_data: Strokes | Sentences,
                model_config: ModelConfig = ModelConfig(), train_config: TrainConfig = TrainConfig(),
                prune_config: PruneConfig = PruneConfig(), *, init_state: dict | None = None,
                stop_above_delta: bool = False, progress: bool = True) -> LotteryResult:
    """Dense training, then `levels` rounds of prune -> rewind -> retrain, with controls.

    Resumable at two depths: a finished level (its results.json) is skipped, and an unfinished
    training run resumes from its last checkpoint. With `stop_above_delta` (as every study job
    runs), no further level is trained once a ticket's NLL exceeds the dense NLL by more than
    prune_config.delta (relative): the needed density is bracketed. Returns a LotteryResult: the
    per-level table (`.table`, as results.csv) and the run folder.
    """
    cfg, k = prune_config, prune_config.rewind_step
    if k >= train_config.steps:
        raise ConfigError(f"rewind step {k} must be smaller than the training steps ({train_config.steps})")
    if len(eval_data) == 0:
        raise ConfigError("the lottery needs at least one held-out sequence to score its levels")
    if type(data) is not type(eval_data):
        raise ConfigError(f"the training data are {type(data).__name__} but the held-out data "
                          f"{type(eval_data).__name__}")
    held_out = encode(eval_data, model_config)  # the wrong domain, vocabulary or length: refused before the folder
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    configs = {"model": model_config.to_dict(), "train": train_config.to_dict(), "prune": cfg.to_dict(),
               "eval_sequences": len(eval_data)}  # the levels' NLLs are on these; another count is another run
    config_path = run_dir / "config.json"
    check_run_kind(run_dir, "lottery")
    if config_path.exists():
        stored = read_json(config_path, f"choose another output folder or delete {run_dir}")
        differ = _differences(stored, json.loads(json.dumps(configs)), stop_above_delta)
        if differ:
            raise ConfigError(f"{run_dir} holds a lottery run with a different configuration ({', '.join(differ)}); "
                              "choose another output folder or delete it")
        if "eval_sequences" not in stored and any(run_dir.glob("level_*/results.json")):
            del configs["eval_sequences"]  # scored before the count was recorded: not known, so not written
    atomic_write_text(config_path, json.dumps(configs, indent=2) + "\n")
    skeleton = init_model(model_config, 0)  # for parameter names and shapes only
    names = prunable_names(skeleton, cfg.prunable)

    def trained(folder: Path, **kwargs) -> Decoder:  # a finished run folder returns at once
        return train(data, folder, model_config, train_config, progress=progress, **kwargs).model

    rows = []
    for level in range(cfg.levels + 1):
        lost = level > 1 and not rows[-1]["bits_per_step"] <= rows[0]["bits_per_step"] * (1 + cfg.delta)
        if stop_above_delta and lost:
            break  # the previous ticket already lost more than delta: the needed density is bracketed
        level_dir = run_dir / f"level_{level}"
        results = level_dir / "results.json"
        if results.exists():
            rows.append(read_json(results, f"delete it to score level {level} again"))
            continue
        if level == 0:
            mask = full_mask(skeleton, names)
            model = trained(level_dir, init_state=init_state, snapshot_steps=(k,))
            row = _level_row(0, model, mask, names, held_out, cfg, level_dir)
            row.update(reinit_bits_per_step=math.nan, random_bits_per_step=math.nan)
        else:
            previous = run_dir / f"level_{level - 1}"
            old_mask = load_mask(previous / "mask.safetensors") if level > 1 else full_mask(skeleton, names)
            mask_path = level_dir / "mask.safetensors"
            if mask_path.exists():
                mask = load_mask(mask_path)
            else:
                mask = prune(load_model(previous), old_mask, cfg.fraction, cfg.scope)
                save_mask(mask_path, mask)
            rewind = load_tensors(run_dir / "level_0" / f"weights-step{k}.safetensors")[0]
            model = trained(level_dir, init_state=rewind, start_step=k, mask=mask, snapshot_steps=(k,))
            row = _level_row(level, model, mask, names, held_out, cfg, level_dir)
            row["reinit_bits_per_step"] = row["random_bits_per_step"] = math.nan
            if cfg.controls:
                seed = train_config.seed + CONTROL_SEED_OFFSET + level
                fresh = init_model(model_config, seed).state_dict()
                reinit = trained(level_dir / "reinit", init_state=fresh, start_step=k, mask=mask)
                shuffled = trained(level_dir / "random", init_state=rewind, start_step=k,
                                   mask=random_mask(mask, seed))
                row["reinit_bits_per_step"] = evaluate_nll(reinit, held_out)["bits_per_step"]
                row["random_bits_per_step"] = evaluate_nll(shuffled, held_out)["bits_per_step"]
        atomic_write_text(results, json.dumps(row, indent=2) + "\n")
        rows.append(row)

    table = pd.DataFrame(rows)
    atomic_write_csv(table, run_dir / "results.csv")
    return LotteryResult(table, run_dir)
