"""Analytic FLOP counts of tinyDOT, from its shape and the batches it actually processed.

What is counted: every matrix multiplication, one multiply-add = 2 FLOPs.
  per block   qkv (d -> 3i), the attention scores Q K^T and the weighted sum A V (each 2*B*T*T_k*i
              over all heads, T_k = cached + new positions: the full T x T_k rectangle, although the
              causal mask discards half of it; that is what a dense kernel computes), the output
              projection (i -> d), the MLP (d -> d_mlp -> d); i = n_heads x head width, the
              attention's inner width: d, unless `tinydot compress` removed heads
  heads       strokes: pen (d -> 3), dx (d -> 2*max_move+1), and dy given dx: dy_in (d -> d),
              then head_dy (d -> 2*max_move+1); all three at every position, padding included.
              text: the softmax over the vocabulary (d -> vocab_size) at every position; tied or
              not, it is one matrix product, named by the matrix it multiplies (`emb_token.weight`
              when tied, else `head.weight`)
What is not counted (elementwise work, O(B*T*d) against the matmuls' O(B*T*d^2); a few percent
of the total for the default shape): the embeddings (a lookup is a memory read, counted as 0 FLOPs,
and so is the sum of the seven embeddings), biases, LayerNorm, GELU, softmax, residual adds,
cross-entropy, gradient clipping and the AdamW update.

A training step is forward + backward = 3 x forward: the backward of every matmul computes the
gradient of its input and of its weight, each as many multiply-adds as the forward product
(attention likewise: dQ and dK from dS, dV and dA, four products against the forward's two).
Evaluation is forward only.

Dense and sparse. Masked weights are zeros in dense tensors, so the kernels actually run do the
dense work. A sparse kernel would skip them: its work for a Linear layer is 2 * tokens * (kept
weights) forward, and the same factor 3 for a training step (the gradient of the input skips the
pruned weights, the gradient of a pruned weight is not needed). Attention's T^2 terms multiply
activations, not weights, so pruning leaves them unchanged, and pruned embedding rows save nothing
(a lookup costs 0 here), except in a text model's tied word embedding, whose kept weights are also
the ones its softmax multiplies.

Checked against torch.utils.flop_counter.FlopCounterMode in tests/test_flops.py: exactly equal
when attention runs through the math kernel (two batched matmuls). With the default CPU kernel
(`_scaled_dot_product_flash_attention_for_cpu`) FlopCounterMode has no formula for attention and
counts none of it, so it reports exactly our count minus the attention terms.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from tinydot.config import ModelConfig
from tinydot.data.batching import PEN_STATES
from tinydot.model import Decoder
from tinydot.pruning.mask import Mask

TRAIN_STEP_FACTOR = 3  # forward + backward (gradients of inputs and of weights)


def linear_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of every weight the model of `cfg` multiplies a hidden state
    by, by parameter name: its Linear weights, and the tied word embedding of a text model."""
    d, moves, inner = cfg.d_model, 2 * cfg.max_move + 1, cfg.n_heads * cfg.head_width
    shapes = {}
    for i in range(cfg.n_layers):
        shapes[f"blocks.{i}.attn.qkv.weight"] = (3 * inner, d)
        shapes[f"blocks.{i}.attn.proj.weight"] = (d, inner)
        shapes[f"blocks.{i}.mlp.0.weight"] = (cfg.d_mlp, d)
        shapes[f"blocks.{i}.mlp.2.weight"] = (d, cfg.d_mlp)
    if cfg.domain == "text":
        shapes["emb_token.weight" if cfg.tie_embeddings else "head.weight"] = (cfg.vocab_size, d)
    else:
        shapes.update({"head_pen.weight": (PEN_STATES, d), "head_dx.weight": (moves, d),
                       "dy_in.weight": (d, d), "head_dy.weight": (moves, d)})
    return shapes


def kept_weights(cfg: ModelConfig, mask: Mask) -> dict[str, int]:
    """Weights a sparse kernel multiplies, per Linear weight: the mask's kept count, or all of them
    for a weight the mask does not cover. Mask entries of other parameters (embeddings, except a text
    model's tied softmax matrix) are ignored."""
    kept = {}
    for name, shape in linear_shapes(cfg).items():
        if name in mask:
            if tuple(mask[name].shape) != shape:
                raise ValueError(f"mask for {name} has shape {tuple(mask[name].shape)}, the model's is {shape}")
            kept[name] = int(mask[name].sum())
        else:
            kept[name] = shape[0] * shape[1]
    return kept


def forward_flops(cfg: ModelConfig, batch_size: int, positions: int, *, cached: int = 0,
                  kept: dict[str, int] | None = None) -> int:
    """FLOPs of one forward pass over inputs (batch_size, positions), padding included.

    cached : positions already in the key/value cache (incremental decoding); attention spans
             cached + positions keys.
    kept   : weights kept per Linear weight (`kept_weights`) for a sparse kernel's work; None: dense.
    """
    shapes = linear_shapes(cfg)
    weights = sum(kept[name] if kept is not None else out * inp for name, (out, inp) in shapes.items())
    tokens = batch_size * positions
    inner = cfg.n_heads * cfg.head_width  # the queries' and values' width over all heads
    attention = cfg.n_layers * 2 * (2 * tokens * (cached + positions) * inner)  # Q K^T and A V
    return 2 * tokens * weights + attention


def train_step_flops(cfg: ModelConfig, batch_size: int, positions: int, *,
                     kept: dict[str, int] | None = None) -> int:
    """FLOPs of one training step (forward + backward) over inputs (batch_size, positions)."""
    return TRAIN_STEP_FACTOR * forward_flops(cfg, batch_size, positions, kept=kept)


@dataclass
class FlopTally:
    """Running FLOP totals of training steps and evaluation passes, dense and for a sparse kernel.

    mask : the pruning mask the model trains under (None: a dense model, sparse = dense).
    """

    cfg: ModelConfig
    mask: Mask | None = None
    train_dense: int = 0
    train_sparse: int = 0
    eval_dense: int = 0
    eval_sparse: int = 0
    _kept: dict[str, int] | None = field(init=False, repr=False, default=None)

    def __post_init__(self):
        if self.mask is not None:
            self._kept = kept_weights(self.cfg, self.mask)

    def add_train_step(self, batch_size: int, positions: int) -> None:
        self.train_dense += train_step_flops(self.cfg, batch_size, positions)
        self.train_sparse += train_step_flops(self.cfg, batch_size, positions, kept=self._kept)

    def add_eval(self, batch_size: int, positions: int, cached: int = 0) -> None:
        self.eval_dense += forward_flops(self.cfg, batch_size, positions, cached=cached)
        self.eval_sparse += forward_flops(self.cfg, batch_size, positions, cached=cached, kept=self._kept)

    def totals(self) -> dict[str, int]:
        return {"train_flops_dense": self.train_dense, "train_flops_sparse": self.train_sparse,
                "eval_flops_dense": self.eval_dense, "eval_flops_sparse": self.eval_sparse}

    @contextlib.contextmanager
    def counting(self, model: Decoder) -> Iterator[FlopTally]:
        """Count every forward pass of `model` inside the block, from the shape of its inputs.

        A forward pass with gradients enabled counts as a training step (its backward is assumed
        to follow, as in `train`); without gradients, as evaluation (forward only).
        """
        def count(module, args, kwargs):
            inputs = args[0] if args else kwargs["inputs"]
            batch_size, positions = inputs.shape[:2]
            if torch.is_grad_enabled():
                self.add_train_step(batch_size, positions)
            else:
                cached = kwargs.get("offset", args[3] if len(args) > 3 else 0)
                self.add_eval(batch_size, positions, cached=cached)

        handle = model.register_forward_pre_hook(count, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
