"""Masks: a mapping from parameter name to a boolean tensor of that parameter's shape (True = kept)."""

from __future__ import annotations

import fnmatch
import os

import torch
from torch import nn

from tinydot.checkpoint import CheckpointError, load_tensors, save_tensors
from tinydot.errors import ConfigError

Mask = dict[str, torch.Tensor]


def prunable_names(model: nn.Module, patterns: tuple[str, ...] | None = None) -> list[str]:
    """Names of the parameters that pruning may touch.

    Default: the weights of every Linear and Embedding (matrices and embeddings), not norms or
    biases. With `patterns`, the parameters whose names match any of these fnmatch patterns.
    """
    if patterns is None:
        return [f"{module_name}.weight" if module_name else "weight"
                for module_name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Embedding))]
    names = [name for name, _ in model.named_parameters() if any(fnmatch.fnmatch(name, p) for p in patterns)]
    if not names:
        raise ConfigError(f"no parameter matches the prunable patterns {list(patterns)}")
    return names


def full_mask(model: nn.Module, names: list[str] | None = None) -> Mask:
    params = dict(model.named_parameters())
    return {name: torch.ones_like(params[name], dtype=torch.bool) for name in (names or prunable_names(model))}


def density(mask: Mask) -> float:
    """Fraction of masked weights kept."""
    kept = sum(int(m.sum()) for m in mask.values())
    return kept / sum(m.numel() for m in mask.values())


def apply_mask(model: nn.Module, mask: Mask) -> None:
    """Zero the pruned weights of `model` in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, keep in mask.items():
            params[name].mul_(keep)


def masked_pairs(model: nn.Module, mask: Mask) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """(parameter, float mask) pairs for the hot loop of masked training."""
    params = dict(model.named_parameters())
    return [(params[name], keep.to(params[name].dtype)) for name, keep in mask.items()]


def save_mask(path: str | os.PathLike, mask: Mask) -> None:
    save_tensors(path, mask, {"format": "tinydot-mask"})


def load_mask(path: str | os.PathLike) -> Mask:
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != "tinydot-mask" or any(t.dtype != torch.bool for t in tensors.values()):
        raise CheckpointError(f"{path} is not a tinydot mask")
    return tensors
