"""Magnitude pruning as a pure function: (model, mask) -> a new, smaller mask."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tinydot.errors import ConfigError
from tinydot.pruning.mask import Mask

SCOPES = ("global", "layerwise")


def _check(mask: Mask, fraction: float, scope: str) -> None:
    if not 0 <= fraction < 1:
        raise ConfigError(f"pruning fraction must be in [0, 1), got {fraction}")
    if scope not in SCOPES:
        raise ConfigError(f"pruning scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if not mask:
        raise ConfigError("the mask is empty: nothing is prunable")


def _drop_smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean keep-vector that removes the `count` smallest scores (ties: lower index first)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if count > 0:
        order = torch.from_numpy(np.argsort(scores.numpy(), kind="stable"))
        keep[order[:count]] = False
    return keep


def prune(model: nn.Module, mask: Mask, fraction: float, scope: str = "global") -> Mask:
    """Remove `fraction` of the still-kept weights in `mask`, smallest |w| first.

    scope "global" ranks all masked tensors together; "layerwise" prunes `fraction` of each tensor.
    The number removed is round(fraction * kept) (per tensor for layerwise). Pure: neither the
    model nor `mask` is modified; returns a new mask, a subset of the old one.
    """
    _check(mask, fraction, scope)
    params = dict(model.named_parameters())
    new = {}
    with torch.no_grad():
        if scope == "layerwise":
            for name, keep in mask.items():
                scores = params[name].detach().abs()[keep].double()
                kept = _drop_smallest(scores, round(fraction * len(scores)))
                new_keep = keep.clone()
                new_keep[keep] = kept
                new[name] = new_keep
            return new
        names = list(mask)
        scores = torch.cat([params[n].detach().abs()[mask[n]].double() for n in names])
        kept = _drop_smallest(scores, round(fraction * len(scores)))
        offset = 0
        for name in names:
            count = int(mask[name].sum())
            new_keep = mask[name].clone()
            new_keep[mask[name]] = kept[offset: offset + count]
            new[name] = new_keep
            offset += count
    return new


def random_mask(like: Mask, seed: int) -> Mask:
    """A random mask with the same number of kept weights in every tensor as `like` (a control).

    The tensors draw from one generator in sorted name order, so the result depends only on
    (`like`'s contents, seed), not on the order of its keys: a mask in memory (model order) and
    the same mask read back from mask.safetensors (alphabetical) give the same random mask, and a
    resumed lottery run the same control. The result keeps `like`'s key order.
    """
    generator = torch.Generator().manual_seed(seed)
    drawn = {}
    for name in sorted(like):
        keep = like[name]
        flat = torch.zeros(keep.numel(), dtype=torch.bool)
        flat[torch.randperm(keep.numel(), generator=generator)[: int(keep.sum())]] = True
        drawn[name] = flat.view_as(keep)
    return {name: drawn[name] for name in like}
