"""Which prunable weights a trained network uses, and how far IMP can prune before the NLL suffers.

Every prunable weight falls in exactly one of four parts:
  pruned            removed by a pruning mask (IMP level >= 1)
  untouched         kept, but training never gave it a non-zero gradient: the data never reaches
                    it (an embedding row for a position or move the data never shows, ...); it only
                    decays from its initial value, and counting it as "used" would credit the data
                    with weights that exist only because the model was built with them
  trained_to_small  kept and touched, and |w| <= epsilon at the end
  used              kept and touched, and |w| > epsilon
"unused" is pruned + untouched + trained_to_small. Pure functions: tensors in, numbers out.
"""

from __future__ import annotations

import math
from copy import deepcopy

import numpy as np
import pandas as pd
import torch
from torch import nn

from tinydot.pruning.mask import apply_mask

PARTS = ("pruned", "untouched", "trained_to_small", "used")


def usage_masks(model: nn.Module, names: list[str], touched: dict[str, torch.Tensor],
                mask: dict[str, torch.Tensor] | None, epsilon: float) -> dict[str, dict[str, torch.Tensor]]:
    """Per part of PARTS, per prunable tensor: a boolean tensor of the weights in that part."""
    params = dict(model.named_parameters())
    parts: dict[str, dict[str, torch.Tensor]] = {part: {} for part in PARTS}
    for name in names:
        w = params[name].detach()
        kept = mask[name] if mask is not None and name in mask else torch.ones_like(w, dtype=torch.bool)
        hit = touched[name] & kept
        parts["pruned"][name] = ~kept
        parts["untouched"][name] = kept & ~hit
        parts["trained_to_small"][name] = hit & (w.abs() <= epsilon)
        parts["used"][name] = hit & (w.abs() > epsilon)
    return parts


def usage_counts(model: nn.Module, names: list[str], touched: dict[str, torch.Tensor],
                 mask: dict[str, torch.Tensor] | None, epsilon: float, relative_epsilon: float) -> pd.DataFrame:
    """Per prunable tensor: total weights, the count of each part, and `used_relative` (touched, kept
    and |w| > relative_epsilon x the tensor's standard deviation over all its entries)."""
    params = dict(model.named_parameters())
    parts = usage_masks(model, names, touched, mask, epsilon)
    rows = []
    for name in names:
        w = params[name].detach()
        kept_touched = parts["used"][name] | parts["trained_to_small"][name]
        row = {"tensor": name, "total": w.numel(), **{part: int(parts[part][name].sum()) for part in PARTS}}
        row["used_relative"] = int((kept_touched & (w.abs() > relative_epsilon * float(w.std()))).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def usage_fractions(counts: pd.DataFrame) -> dict[str, float]:
    """Each part as a fraction of all prunable weights, plus `unused_fraction` (everything but used)
    and `unused_fraction_relative`; from a `usage_counts` table."""
    total = counts["total"].sum()
    fractions = {f"{part}_fraction": float(counts[part].sum() / total) for part in PARTS}
    fractions["unused_fraction"] = 1 - fractions["used_fraction"]
    fractions["unused_fraction_relative"] = float(1 - counts["used_relative"].sum() / total)
    return fractions


def zero_unused(model: nn.Module, names: list[str], touched: dict[str, torch.Tensor],
                mask: dict[str, torch.Tensor] | None, epsilon: float) -> nn.Module:
    """A copy of `model` with every unused prunable weight (pruned, untouched, trained to small) set to zero."""
    copy = deepcopy(model)  # no re-initialisation: no global random state touched
    used = usage_masks(model, names, touched, mask, epsilon)["used"]
    apply_mask(copy, {name: used[name] for name in names})
    return copy.eval()


def needed_density(densities, nlls, delta: float) -> dict:
    """How far IMP can prune before the held-out NLL rises by more than `delta` (relative).

    densities : (levels,) kept share of the prunable weights per level; level 0 is dense (1.0)
    nlls      : (levels,) held-out NLL (bits) of each level's ticket
    The threshold is nlls[0] * (1 + delta). The needed density is where the NLL crosses it, found by
    linear interpolation in log(density) between the last level within it and the first level above
    it (the first crossing, levels in order). When no level crosses, it is not reached: the needed
    density is only known to be below the last level's, and `needed` is NaN.
    Returns needed, reached, threshold, the bracketing levels and their densities.
    """
    densities, nlls = np.asarray(densities, dtype=float), np.asarray(nlls, dtype=float)
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    threshold = nlls[0] * (1 + delta)
    above = np.flatnonzero(~(nlls <= threshold))  # a diverged ticket (NaN) counts as above
    if len(above) == 0:
        last = len(densities) - 1
        return {"needed": math.nan, "reached": False, "threshold": threshold, "within_level": last,
                "above_level": -1, "within_density": densities[last], "above_density": math.nan}
    hi = int(above[0])
    lo = hi - 1
    t = (threshold - nlls[lo]) / (nlls[hi] - nlls[lo])
    log_needed = np.log(densities[lo]) + t * (np.log(densities[hi]) - np.log(densities[lo]))
    return {"needed": float(np.exp(log_needed)), "reached": True, "threshold": threshold, "within_level": lo,
            "above_level": hi, "within_density": densities[lo], "above_density": densities[hi]}
