"""Pruning's pure functions: masks, magnitude pruning, structured removal of heads / neurons / blocks,
and the usage split of weights (untouched, trained to small, used). The lottery stage
(`tinydot.lottery`) runs iterative magnitude pruning with rewinding over them."""

from tinydot.pruning.magnitude import prune, random_mask
from tinydot.pruning.mask import Mask, apply_mask, density, full_mask, load_mask, prunable_names, save_mask

__all__ = ["Mask", "apply_mask", "density", "full_mask", "load_mask", "prunable_names", "prune",
           "random_mask", "save_mask"]
