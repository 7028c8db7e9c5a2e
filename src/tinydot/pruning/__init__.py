"""Lottery tickets: masks, magnitude pruning, iterative magnitude pruning with rewinding."""

from tinydot.pruning.magnitude import prune, random_mask
from tinydot.pruning.mask import Mask, apply_mask, density, full_mask, load_mask, prunable_names, save_mask

__all__ = ["Mask", "apply_mask", "density", "full_mask", "load_mask", "prunable_names", "prune",
           "random_mask", "save_mask"]
