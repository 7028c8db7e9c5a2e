"""Helpers shared by test modules (importable: pytest puts this folder on sys.path for conftest.py)."""

import torch

from tinydot.config import ModelConfig
from tinydot.model import Decoder
from tinydot.training import init_model


def perturbed_model(cfg: ModelConfig, seed: int = 0) -> Decoder:
    """A model of either domain whose units have distinct magnitudes, as after training."""
    model = init_model(cfg, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return model.eval()
