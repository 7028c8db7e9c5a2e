"""Structured pruning: score and remove whole attention heads, MLP neurons or blocks, and rebuild a
smaller model (a new ModelConfig, fewer parameters, a checkpoint `load_model` reads as any other).
Units live in the trunk both domains share (`tinydot.model.Decoder`), so everything here works on
tinyDOT and TextDOT alike; the data are either encoding (`tinydot.data.batching.encode`).

Units, and what removing one means
  heads    head h of block l: its q, k and v rows of attn.qkv and its columns of attn.proj.
           Removing it equals multiplying the head's output (before attn.proj) by zero, Michel et
           al. (2019)'s head mask. Only for models with n_heads > 1.
  neurons  hidden neuron j of block l's MLP: row j of mlp.0 (and its bias), column j of mlp.2.
           Removing it equals zeroing its GELU output.
  layers   block l as a whole: removing it equals skipping it (the residual stream passes through).
`unit_mask` applies exactly these multiplicative masks with forward hooks, so the equality
"rebuilt model == original model with the units zeroed or skipped" is checked, not assumed.
ModelConfig has one n_heads and one d_mlp for every block, so heads and neurons are removed in equal
numbers from each block (ranked within the block); blocks are ranked against each other.

Importance (higher = keep). Scores are (n_layers, units) tensors; for layers units = 1.
  magnitude  L2 norm of the unit's Linear weights and biases listed above (for a block: its qkv,
             proj, mlp.0 and mlp.2; LayerNorm parameters belong to no head or neuron).
  taylor     first-order Taylor estimate of the loss change when the unit is removed, on held-out
             sequences: mean over sequences of |d NLL_seq / d xi_u| at xi = 1, where xi_u
             multiplies the unit's output (Michel et al. 2019, "Are sixteen heads really better
             than one?"; Molchanov et al. 2017/2019). For a head or neuron, summed over a batch this
             gradient is exactly sum(grad * weight) over the proj / mlp.2 columns (and, for a block
             interpolated as x + xi * (block(x) - x), the first-order change of skipping it); a
             per-sequence mask of shape (B, n_layers, units) yields every sequence's gradient in
             one backward pass, so the absolute value is taken per sequence as Michel et al. do.

Why not Torch-Pruning (`torch-pruning`, evaluated at 1.6.1). Its dependency graph, traced through
tinyDOT, groups mlp.0's output rows with mlp.2's input columns correctly, but (1) it treats
scaled_dot_product_attention as an element-wise op, so pruning q channels maps them one-to-one onto
the attention output; a correct head removal still needs the q, k and v slices of the head chosen
by hand and tinyDOT's n_heads / d_head updated by hand (its `num_heads` support targets HF and timm
attention modules); (2) it cannot remove whole blocks; (3) the residual stream (d_model, shared by
every embedding and output head: seven and three in tinyDOT) is never pruned here, so the only
couplings are the two above; and (4) a rebuilt model needs a new ModelConfig for `load_model`
anyway. The slicing is a few lines per unit kind and is checked against the masked original to
float tolerance; the tests also compare it with Torch-Pruning's result where that package is
installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tinydot.config import ModelConfig
from tinydot.data.batching import Encoded, EncodedText, length_buckets, model_batch
from tinydot.errors import ConfigError
from tinydot.evaluation import evaluate_nll
from tinydot.model import Decoder, build_model

KINDS = ("layers", "heads", "neurons")  # also the order in which a combined removal applies them
IMPORTANCES = ("magnitude", "taylor")
_UNIT_NAMES = {"layers": "blocks", "heads": "heads per block", "neurons": "MLP neurons per block"}
_UNIT_NAME = {"layers": "block", "heads": "head per block", "neurons": "MLP neuron per block"}  # one of them


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown unit kind {kind!r}; choose from {', '.join(KINDS)}")


def check_importance(importance: str) -> None:
    if importance not in IMPORTANCES:
        raise ConfigError(f"unknown importance {importance!r}; choose from {', '.join(IMPORTANCES)}")


def unit_shape(cfg: ModelConfig, kind: str) -> tuple[int, int]:
    """(groups, units per group) of a score or keep tensor: (n_layers, n_heads), (n_layers, d_mlp)
    or (n_layers, 1)."""
    check_kind(kind)
    return cfg.n_layers, {"layers": 1, "heads": cfg.n_heads, "neurons": cfg.d_mlp}[kind]


def removal_count(cfg: ModelConfig, kind: str, fraction: float) -> int:
    """How many units removing `fraction` means: round(fraction * blocks) blocks, or
    round(fraction * n) of the n heads / neurons of every block. At least one unit must stay."""
    check_kind(kind)
    if not 0 <= fraction < 1:
        raise ConfigError(f"the fraction of {kind} to remove must be in [0, 1), got {fraction}")
    total = cfg.n_layers if kind == "layers" else unit_shape(cfg, kind)[1]
    count = round(fraction * total)
    if fraction > 0 and kind == "heads" and cfg.n_heads == 1:
        raise ConfigError("the model has a single attention head per block: heads can be removed only from "
                          "models trained with n_heads > 1")
    if fraction > 0 and total == 1:
        raise ConfigError(f"the model has a single {_UNIT_NAME[kind]}: none can be removed")
    if fraction > 0 and count == 0:
        raise ConfigError(f"removing {fraction} of the {total} {_UNIT_NAMES[kind]} rounds to none; "
                          f"choose at least {1 / total:.3g} (one of them)")
    if count >= total:
        raise ConfigError(f"removing {fraction} of the {total} {_UNIT_NAMES[kind]} would remove all of them; "
                          f"choose a smaller fraction")
    return count


def removal_schedule(total: int, count: int, rounds: int) -> list[int]:
    """Units to remove in each of `rounds` rounds so that `count` of `total` are gone at the end,
    in near-equal steps (like IMP's constant rate, rounded to whole units)."""
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be a positive integer, got {rounds!r}")
    cumulative = [round(count * r / rounds) for r in range(rounds + 1)]
    return [b - a for a, b in zip(cumulative, cumulative[1:])]


# --------------------------------------------------------------------------- masks and scores

@contextlib.contextmanager
def unit_mask(model: Decoder, kind: str, xi: torch.Tensor) -> Iterator[None]:
    """Multiply every unit's output by `xi` while inside the block (forward hooks).

    xi : (n_layers, units) -- one mask for all sequences -- or (B, n_layers, units), one per
         sequence of the batch. 0 removes a unit exactly (a skipped block passes x through).
    """
    groups, units = unit_shape(model.cfg, kind)
    if tuple(xi.shape[-2:]) != (groups, units):
        raise ValueError(f"mask of shape {tuple(xi.shape)} does not end in ({groups}, {units})")

    def per_layer(layer: int) -> torch.Tensor:  # (units,) or (B, 1, units): broadcasts over positions
        m = xi[..., layer, :]
        return m if m.dim() == 1 else m[:, None, :]

    handles = []
    for layer, block in enumerate(model.blocks):
        if kind == "neurons":
            handles.append(block.mlp[1].register_forward_hook(
                lambda mod, args, out, layer=layer: out * per_layer(layer)))
        elif kind == "heads":
            def scale_heads(mod, args, layer=layer):
                (y,) = args  # (B, T, n_heads * d_head), the heads' outputs side by side
                B, T, _ = y.shape
                heads = y.view(B, T, model.cfg.n_heads, -1) * per_layer(layer)[..., None]
                return (heads.reshape(B, T, -1),)
            handles.append(block.attn.proj.register_forward_pre_hook(scale_heads))
        else:
            def skip(mod, args, out, layer=layer):
                x_in, (x_out, present) = args[0], out
                m = per_layer(layer)  # (1,) or (B, 1, 1)
                return x_in + m * (x_out - x_in), present
            handles.append(block.register_forward_hook(skip))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def magnitude_scores(model: Decoder, kind: str) -> torch.Tensor:
    """L2 norm of each unit's Linear weights and biases -> (n_layers, units)."""
    cfg = model.cfg
    d, nh, hs = cfg.d_model, cfg.n_heads, cfg.head_width
    groups, units = unit_shape(cfg, kind)
    rows = []
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        if kind == "neurons":
            squares = mlp[0].weight.pow(2).sum(1) + mlp[0].bias.pow(2) + mlp[2].weight.pow(2).sum(0)
        elif kind == "heads":
            squares = (attn.qkv.weight.view(3, nh, hs, d).pow(2).sum((0, 2, 3))
                       + attn.qkv.bias.view(3, nh, hs).pow(2).sum((0, 2))
                       + attn.proj.weight.view(d, nh, hs).pow(2).sum((0, 2)))
        else:
            linears = (attn.qkv, attn.proj, mlp[0], mlp[2])
            squares = sum(m.weight.pow(2).sum() + m.bias.pow(2).sum() for m in linears).reshape(1)
        rows.append(squares.sqrt())
    return torch.stack(rows).reshape(groups, units)


def taylor_scores(model: Decoder, kind: str, data: Encoded | EncodedText, tokens_per_batch: int = 8192) -> torch.Tensor:
    """Mean over the sequences of `data` of |d NLL_seq / d xi_u| at xi = 1 -> (n_layers, units).

    NLL_seq is the sequence's summed NLL in nats (start point included). Deterministic: the batches
    are a fixed function of the data.
    """
    if len(data) == 0:
        raise ConfigError("taylor importance needs held-out sequences; none were given")
    groups, units = unit_shape(model.cfg, kind)
    total = torch.zeros(groups, units, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for index in length_buckets(data.lengths, tokens_per_batch, np.random.default_rng(0)):
        xi = torch.ones(len(index), groups, units, requires_grad=True)
        with unit_mask(model, kind, xi):
            # sequences are independent: d/d xi[b] is sequence b's
            nll = model.nll(*model_batch(data, index, model.cfg)).sum()
        (grad,) = torch.autograd.grad(nll, xi)
        total += grad.abs().sum(0).double()
    model.train(was_training)
    return (total / len(data)).float()


def importance_scores(model: Decoder, kind: str, importance: str,
                      data: Encoded | EncodedText | None = None) -> torch.Tensor:
    """Scores (n_layers, units) by `importance` ("magnitude" or "taylor", the latter on `data`)."""
    check_importance(importance)
    if importance == "magnitude":
        return magnitude_scores(model, kind)
    if data is None:
        raise ConfigError("taylor importance needs held-out sequences; none were given")
    return taylor_scores(model, kind, data)


def lowest_removed(scores: torch.Tensor, kind: str, count: int) -> torch.Tensor:
    """Keep mask (n_layers, units), True = kept: the `count` lowest-scoring blocks, or the `count`
    lowest-scoring heads / neurons of every block, are removed (ties: lower index first)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if count == 0:
        return keep
    if kind == "layers":
        order = torch.argsort(scores.reshape(-1), stable=True)
        keep.view(-1)[order[:count]] = False
        return keep
    order = torch.argsort(scores, dim=1, stable=True)
    keep.scatter_(1, order[:, :count], False)
    return keep


# --------------------------------------------------------------------------- rebuilding

def _head_width_field(cfg: ModelConfig, n_heads: int) -> int:
    """The d_head to store: 0 (the default) when d_model // n_heads already gives the head width."""
    width = cfg.head_width
    return 0 if cfg.d_model % n_heads == 0 and cfg.d_model // n_heads == width else width


def shrink(model: Decoder, kind: str, keep: torch.Tensor) -> Decoder:
    """A new, smaller model of the same domain holding only the kept units (keep: bool (n_layers, units)).

    Its forward pass equals `model` under `unit_mask(model, kind, keep.float())`. Pure: `model`
    is not modified, and no random numbers are drawn (the new model is built on the meta device
    and takes the sliced weights).
    """
    cfg = model.cfg
    groups, units = unit_shape(cfg, kind)
    if keep.shape != (groups, units) or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a bool tensor of shape ({groups}, {units})")
    counts = keep.sum(1)
    if kind != "layers" and not bool((counts == counts[0]).all()):
        raise ValueError(f"every block must keep the same number of {kind} (ModelConfig has one width)")
    if not bool(keep.any(1).all() if kind != "layers" else keep.any()):
        raise ValueError(f"at least one of the {kind} must be kept")
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    d, hs = cfg.d_model, cfg.head_width
    if kind == "layers":
        kept = [int(i) for i in torch.nonzero(keep[:, 0]).flatten()]
        new_cfg = dataclasses.replace(cfg, n_layers=len(kept))
        state = {_renumber(name, kept): tensor for name, tensor in state.items()
                 if not name.startswith("blocks.") or int(name.split(".")[1]) in kept}
    elif kind == "heads":
        n_kept = int(counts[0])
        new_cfg = dataclasses.replace(cfg, n_heads=n_kept, d_head=_head_width_field(cfg, n_kept))
        for layer in range(cfg.n_layers):
            k, prefix = keep[layer], f"blocks.{layer}.attn."
            state[prefix + "qkv.weight"] = state[prefix + "qkv.weight"].view(3, -1, hs, d)[:, k].reshape(-1, d)
            state[prefix + "qkv.bias"] = state[prefix + "qkv.bias"].view(3, -1, hs)[:, k].reshape(-1)
            state[prefix + "proj.weight"] = state[prefix + "proj.weight"].view(d, -1, hs)[:, k].reshape(d, -1)
    else:
        new_cfg = dataclasses.replace(cfg, d_mlp=int(counts[0]))
        for layer in range(cfg.n_layers):
            k, prefix = keep[layer], f"blocks.{layer}.mlp."
            state[prefix + "0.weight"] = state[prefix + "0.weight"][k]
            state[prefix + "0.bias"] = state[prefix + "0.bias"][k]
            state[prefix + "2.weight"] = state[prefix + "2.weight"][:, k]
    with torch.device("meta"):
        smaller = build_model(new_cfg)
    smaller.load_state_dict({name: t.contiguous() for name, t in state.items()}, assign=True)
    return smaller.train(model.training)


def _renumber(name: str, kept: list[int]) -> str:
    """blocks.<old>.rest -> blocks.<position of old among the kept>.rest; other names unchanged."""
    if not name.startswith("blocks."):
        return name
    _, old, rest = name.split(".", 2)
    return f"blocks.{kept.index(int(old))}.{rest}"


@dataclass
class Removal:
    """One removal step: the rebuilt model, which units of the input model it kept, and their scores."""

    model: Decoder
    kind: str
    keep: torch.Tensor  # bool (n_layers, units) over the input model's units
    scores: torch.Tensor  # (n_layers, units)


def remove_units(model: Decoder, kind: str, count: int, importance: str = "taylor",
                 data: Encoded | EncodedText | None = None) -> Removal:
    """Score the units of `kind`, remove the `count` lowest (per block for heads and neurons) and
    rebuild. `data`: held-out sequences for the taylor importance."""
    total = model.cfg.n_layers if kind == "layers" else unit_shape(model.cfg, kind)[1]
    if not 0 <= count < total:
        raise ConfigError(f"cannot remove {count} of the {total} {_UNIT_NAMES[kind]}; at least one must stay")
    if count and kind == "heads" and model.cfg.n_heads == 1:
        raise ConfigError("the model has a single attention head per block: heads can be removed only from "
                          "models trained with n_heads > 1")
    scores = importance_scores(model, kind, importance, data)
    keep = lowest_removed(scores, kind, count)
    return Removal(shrink(model, kind, keep) if count else model, kind, keep, scores)


def iterative_removal(model: Decoder, kind: str, fraction: float, rounds: int, importance: str = "taylor",
                      data: Encoded | EncodedText | None = None,
                      finetune: Callable[[Decoder, int], Decoder] | None = None) -> list[Removal]:
    """Remove `fraction` of the units of `kind` in `rounds` steps, like IMP: each round re-scores the
    current model, removes the next share, and (if given) calls `finetune(model, round) -> model`,
    whose result the next round starts from. Returns one Removal per round (its model fine-tuned)."""
    count = removal_count(model.cfg, kind, fraction)
    total = model.cfg.n_layers if kind == "layers" else unit_shape(model.cfg, kind)[1]
    steps, current = removal_schedule(total, count, rounds), model
    removals = []
    for round_number, step in enumerate(steps, start=1):
        removal = remove_units(current, kind, step, importance, data)
        if finetune is not None:
            removal.model = finetune(removal.model, round_number)
        removals.append(removal)
        current = removal.model
    return removals


# --------------------------------------------------------------------------- for a study

def fewest_units_within(model: Decoder, kind: str, eval_data: Encoded | EncodedText, delta: float = 0.02,
                        importance: str = "taylor", score_data: Encoded | EncodedText | None = None,
                        fractions=tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))) -> dict:
    """The largest one-shot removal (no fine-tuning) whose NLL on `eval_data` stays within `delta`
    (relative) of the dense NLL, among `fractions`.

    Returns {"kind", "fraction", "removed", "kept", "bits_per_step", "dense_bits_per_step"};
    fraction 0 (nothing removed) when no removal stays within delta. Scores are computed once, on
    the dense model.
    """
    dense = evaluate_nll(model, eval_data)["bits_per_step"]
    scores = importance_scores(model, kind, importance, score_data)
    total = model.cfg.n_layers if kind == "layers" else unit_shape(model.cfg, kind)[1]
    best = {"kind": kind, "fraction": 0.0, "removed": 0, "kept": total, "bits_per_step": dense,
            "dense_bits_per_step": dense}
    for fraction in sorted(fractions):
        count = round(fraction * total)
        if count == 0 or count >= total or count <= best["removed"]:
            continue
        smaller = shrink(model, kind, lowest_removed(scores, kind, count))
        nll = evaluate_nll(smaller, eval_data)["bits_per_step"]
        if nll <= dense * (1 + delta):
            best.update(fraction=float(fraction), removed=count, kept=total - count, bits_per_step=nll)
    return best
