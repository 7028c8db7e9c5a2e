"""Strokes or sentences -> model tensors, in length buckets so that no compute goes to padding.

Both encodings (`Encoded` for strokes, `EncodedText` for sentences) offer the same three things,
which is all that training and evaluation use:
    lengths      int64 (n,): positions per sample, each one a prediction the model is scored on
    len(encoded) samples
    batch(index) the model's arguments for the samples `index`: `model.nll(*encoded.batch(index))`
`encode(data, cfg)` picks the encoding for a model config and checks that the data fit the model.
"""

from __future__ import annotations

import numpy as np
import torch

from tinydot.config import ModelConfig
from tinydot.data.strokes import PEN_DRAW, Strokes
from tinydot.data.text import Sentences
from tinydot.errors import ConfigError

# The encoding that tinyDOT reads (tinydot.model imports these).
PEN_STATES = 3  # draw, end of stroke, end of digit (targets)
BOS = 3  # the pen input at position 0
FRAME_SLOTS = 30  # absolute pen positions 1..28, with 0 and 29 for "outside the frame"

# Columns of the integer input tensor (B, T, 5) and target tensor (B, T, 3).
IN_DX, IN_DY, IN_PEN, IN_X, IN_Y = range(5)
OUT_DX, OUT_DY, OUT_PEN = range(3)
IGNORE = -1  # target pen of padding positions


class Encoded:
    """A split as moves m_0..m_L per sequence: the start point as a move from (0, 0), then the steps.

    moves   : int8 array (n, max_steps + 1, 3) of (dx, dy, pen), zero after position lengths[i]
    lengths : int64 array (n,), positions per sequence = pen steps + 1
    labels  : int64 array (n,)
    max_move: the model's largest |dx|, |dy|: the offset of the move embeddings (`make_inputs`)
    """

    def __init__(self, strokes: Strokes, max_move: int = 28):
        self.max_move = max_move
        n = len(strokes)
        self.moves = np.zeros((n, strokes.steps.shape[1] + 1, 3), dtype=np.int8)
        self.moves[:, 0, :2] = strokes.starts
        self.moves[:, 0, 2] = PEN_DRAW
        self.moves[:, 1:] = strokes.steps
        self.lengths = strokes.lengths.astype(np.int64) + 1
        self.labels = strokes.labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, index, max_move: int | None = None, positions: int | None = None):
        """Tensors for the sequences `index`: inputs (B, T, 5), labels (B,), targets (B, T, 3).

        T is the longest selected sequence, or `positions` if given (padding to a fixed length).
        max_move defaults to the one given at construction.
        """
        index = np.asarray(index)
        max_move = self.max_move if max_move is None else max_move
        T = positions or int(self.lengths[index].max())
        targets = torch.from_numpy(self.moves[index, :T].astype(np.int64))  # (B, T, 3)
        padding = torch.from_numpy(np.arange(T)[None, :] >= self.lengths[index][:, None])
        targets[..., 2][padding] = IGNORE
        return make_inputs(targets, max_move), torch.from_numpy(self.labels[index]), targets


class EncodedText:
    """A split of sentences for the text model: sentence i has lengths[i] = words + 1 positions
    (inputs <eos> w_1..w_L, targets w_1..w_L <eos>: every sentence end is predicted and scored).

    sentences : the `Sentences` it encodes
    lengths   : int64 array (n,), positions per sentence
    """

    def __init__(self, sentences: Sentences):
        self.sentences = sentences
        self.lengths = sentences.lengths.astype(np.int64) + 1

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, index, positions: int | None = None):
        """Tensors for the sentences `index`: inputs (B, T) and targets (B, T), IGNORE after each
        sentence end; T is the longest selected sentence + 1, or `positions` if given."""
        inputs, targets = self.sentences.padded(index, positions, ignore=IGNORE)
        return torch.from_numpy(inputs), torch.from_numpy(targets)


def model_batch(encoded: Encoded | EncodedText, index, cfg: ModelConfig) -> tuple:
    """The `model.nll` arguments for the samples `index`, as a model of config `cfg` reads them
    (strokes: encoded with the model's max_move, whatever the encoding was built with)."""
    return encoded.batch(index, cfg.max_move) if isinstance(encoded, Encoded) else encoded.batch(index)


def scored_mask(batch: tuple) -> torch.Tensor:
    """Bool (B, T): the positions of a batch (either encoding's `batch(...)` tensors) that are scored,
    not padding. Stroke targets (B, T, 3) mark padding in their pen channel, text targets (B, T) themselves."""
    targets = batch[-1]
    return (targets[..., OUT_PEN] if targets.dim() == 3 else targets) != IGNORE


def scored_positions(batch: tuple) -> int:
    """How many positions of a batch are scored (`scored_mask`)."""
    return int(scored_mask(batch).sum())


def encode(data: Strokes | Sentences, cfg: ModelConfig) -> Encoded | EncodedText:
    """The encoding of `data` for a model of config `cfg`; a ConfigError if they do not fit
    (the other domain's data, a vocabulary of another size, a digit class beyond n_classes, a move
    beyond max_move, a sample longer than max_len)."""
    kind = "text" if isinstance(data, Sentences) else "strokes" if isinstance(data, Strokes) else None
    if kind is None:
        raise TypeError(f"cannot encode {type(data).__name__}; expected Strokes or Sentences")
    if kind != cfg.domain:
        raise ConfigError(f"the data are {kind} but the model config is for the {cfg.domain} domain; "
                          f"set model domain to {kind!r} or give {cfg.domain} data")
    if kind == "text" and len(data.vocabulary) != cfg.vocab_size:
        raise ConfigError(f"the text has a vocabulary of {len(data.vocabulary):,} words but the model "
                          f"config has vocab_size {cfg.vocab_size:,}; set vocab_size to {len(data.vocabulary)}")
    if kind == "strokes" and len(data) and int(data.labels.max()) >= cfg.n_classes:
        top = int(data.labels.max())
        raise ConfigError(f"the data hold digit class {top} but the model config has n_classes {cfg.n_classes} "
                          f"(classes 0..{cfg.n_classes - 1}); set n_classes >= {top + 1}")
    encoded = EncodedText(data) if kind == "text" else Encoded(data, cfg.max_move)
    if kind == "strokes" and len(data):
        xy = encoded.moves[..., :2]  # int8; padding rows are zero
        largest = max(int(xy.max()), -int(xy.min()))
        if largest > cfg.max_move:
            raise ConfigError(f"the data hold a move of {largest} pixels but the model config has max_move "
                              f"{cfg.max_move}; set max_move >= {largest}")
    longest = int(encoded.lengths.max(initial=0))
    if longest > cfg.max_len:
        raise ConfigError(f"the longest sample needs {longest} positions but the model has max_len "
                          f"{cfg.max_len}; set model max_len >= {longest}")
    return encoded


def make_inputs(moves: torch.Tensor, max_move: int):
    """Model inputs for moves (B, T, 3): position t sees move t-1 (BOS at t = 0) and the pen's position after it.

    Padding positions (pen = IGNORE) may hold anything: causal attention keeps them from
    influencing real positions, and their targets are ignored.
    """
    B, T, _ = moves.shape
    previous = torch.zeros(B, T, 3, dtype=torch.long)
    previous[:, 1:] = moves[:, :-1]
    previous[:, 0, 2] = BOS
    previous[..., 2] = previous[..., 2].clamp(min=0)
    position = torch.cumsum(previous[..., :2], dim=1).clamp(0, FRAME_SLOTS - 1)
    inputs = torch.stack([previous[..., 0] + max_move, previous[..., 1] + max_move, previous[..., 2],
                          position[..., 0], position[..., 1]], dim=-1)
    return inputs


def length_buckets(lengths: np.ndarray, tokens_per_batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Split all indices into batches of similar length, each with at most `tokens_per_batch` positions.

    Sequences are sorted by length (ties broken at random by `rng`), cut greedily into batches,
    and the batch order is shuffled. Returns index arrays.
    """
    order = rng.permutation(len(lengths))
    order = order[np.argsort(lengths[order], kind="stable")]
    batches, start = [], 0
    while start < len(order):
        # the batch is padded to its last (longest) member: grow it while that still fits
        stop = start + 1
        while stop < len(order) and lengths[order[stop]] * (stop + 1 - start) <= tokens_per_batch:
            stop += 1
        batches.append(order[start:stop])
        start = stop
    return [batches[i] for i in rng.permutation(len(batches))]


def epoch_batches(lengths: np.ndarray, tokens_per_batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batches of one epoch: a pure function of (seed, epoch), so a resumed run sees the same ones."""
    return length_buckets(lengths, tokens_per_batch, np.random.default_rng([seed, epoch]))
