"""Strokes -> model tensors, in length buckets so that no compute goes to padding."""

from __future__ import annotations

import numpy as np
import torch

from tinydot.data.strokes import PEN_DRAW, Strokes

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
    """

    def __init__(self, strokes: Strokes):
        n = len(strokes)
        self.moves = np.zeros((n, strokes.steps.shape[1] + 1, 3), dtype=np.int8)
        self.moves[:, 0, :2] = strokes.starts
        self.moves[:, 0, 2] = PEN_DRAW
        self.moves[:, 1:] = strokes.steps
        self.lengths = strokes.lengths.astype(np.int64) + 1
        self.labels = strokes.labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, index, max_move: int, positions: int | None = None):
        """Tensors for the sequences `index`: inputs (B, T, 5), labels (B,), targets (B, T, 3).

        T is the longest selected sequence, or `positions` if given (padding to a fixed length).
        """
        index = np.asarray(index)
        T = positions or int(self.lengths[index].max())
        targets = torch.from_numpy(self.moves[index, :T].astype(np.int64))  # (B, T, 3)
        padding = torch.from_numpy(np.arange(T)[None, :] >= self.lengths[index][:, None])
        targets[..., 2][padding] = IGNORE
        return make_inputs(targets, max_move), torch.from_numpy(self.labels[index]), targets


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
