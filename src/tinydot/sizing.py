"""Right-sizing: the smallest tinyDOT of the default shape that holds a number of parameters.

"Default-shaped" keeps the base config's proportions: the MLP is as many times wider than the
residual stream as in the base (4x by default), the head count divides d_model, and only the width
(d_model, in steps of 8) and the depth (1 .. base n_layers) shrink. Either domain (the model class
comes from the config); the weights counted are the prunable ones, by default every matrix and
embedding, or those a study's `prunable` patterns name (the text study: the trunk only).
Pure: configs in, configs out.
"""

from __future__ import annotations

import dataclasses

import torch

from tinydot.config import ModelConfig
from tinydot.model import build_model
from tinydot.pruning.mask import prunable_names


def prunable_count(cfg: ModelConfig, patterns: tuple[str, ...] | None = None) -> int:
    """Prunable weights of a model of this config: matrices and embeddings, or the parameters
    matching `patterns` (fnmatch, as `tinydot.config.PruneConfig.prunable`)."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(cfg)
    params = dict(model.named_parameters())
    return sum(params[name].numel() for name in prunable_names(model, patterns))


def shrunk(base: ModelConfig, d_model: int, n_layers: int) -> ModelConfig:
    ratio = base.d_mlp / base.d_model
    return dataclasses.replace(base, d_model=d_model, n_layers=n_layers, d_mlp=max(1, round(ratio * d_model)))


def smallest_config(needed: float, base: ModelConfig,
                    patterns: tuple[str, ...] | None = None) -> tuple[ModelConfig, int]:
    """The default-shaped config with the fewest prunable weights (counted as `prunable_count`
    does) that is at least `needed` (the base itself if none smaller is); returns (config, its
    prunable count)."""
    best = (base, prunable_count(base, patterns))
    for n_layers in range(1, base.n_layers + 1):
        for d_model in range(8, base.d_model + 1, 8):
            if d_model % base.n_heads:
                continue
            cfg = shrunk(base, d_model, n_layers)
            count = prunable_count(cfg, patterns)
            if needed <= count < best[1]:
                best = (cfg, count)
    return best
