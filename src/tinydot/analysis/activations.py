"""Per-layer hidden states of tinyDOT: the embedding sum and the output of every block."""

from __future__ import annotations

import numpy as np
import torch

from tinydot.data.batching import Encoded, length_buckets
from tinydot.data.strokes import Strokes
from tinydot.model import TinyDOT


@torch.no_grad()
def hidden_states(model: TinyDOT, strokes: Strokes, tokens_per_batch: int = 8192) -> list[np.ndarray]:
    """Hidden states at every real position of `strokes` (padding excluded).

    Returns n_layers + 1 float32 arrays of shape (n_positions, d_model): the summed input
    embeddings, then the residual stream after each block. Positions are in a fixed order (by
    length bucket), the same for every model, so layers of different checkpoints line up.
    """
    model.eval()
    encoded = Encoded(strokes)
    captured: list[list[torch.Tensor]] = [[] for _ in range(len(model.blocks) + 1)]
    valid: torch.Tensor | None = None

    def keep(layer):
        def hook(module, args, output):
            x = args[0] if layer == 0 else output[0]
            captured[layer].append(x[valid])
        return hook

    handles = [model.blocks[0].register_forward_hook(keep(0))]
    handles += [block.register_forward_hook(keep(i + 1)) for i, block in enumerate(model.blocks)]
    try:
        for index in length_buckets(encoded.lengths, tokens_per_batch, np.random.default_rng(0)):
            inputs, labels, targets = encoded.batch(np.sort(index), model.cfg.max_move)
            valid = targets[..., 2] >= 0
            model(inputs, labels)
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(parts).numpy() for parts in captured]
