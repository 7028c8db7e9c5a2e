"""Generating digits: ancestral sampling from tinyDOT with a key/value cache, seeded."""

from __future__ import annotations

import numpy as np
import torch

from tinydot.config import check_seed
from tinydot.data.batching import make_inputs
from tinydot.data.strokes import FRAME, NUM_CLASSES, PEN_DRAW, PEN_END_DIGIT, Strokes
from tinydot.errors import ConfigError
from tinydot.model import TinyDOT

# Softmax temperatures allowed: far below 0.05 the logits / temperature overflow (and sampling is
# greedy anyway); far above 10 every move is equally likely and the samples are noise.
TEMPERATURES = (0.05, 10.0)


def check_temperature(temperature) -> float:
    """A sampling temperature must be a number in TEMPERATURES (0.05..10)."""
    low, high = TEMPERATURES
    ok = isinstance(temperature, (int, float, np.number)) and not isinstance(temperature, bool)
    if not (ok and low <= temperature <= high):  # NaN and infinities fail the comparison too
        raise ConfigError(f"temperature must be between {low} and {high:g}, got {temperature}")
    return float(temperature)


def _draw(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def sample(model: TinyDOT, digits, *, temperature: float = 0.8, seed: int = 0) -> Strokes:
    """Sample one sequence per entry of `digits` (ints 0..9); the same seed gives the same digits.

    `temperature` must lie in 0.05..10 (`TEMPERATURES`) and `seed` in 0..2**32 - 1.

    The start point is drawn inside the frame (1..28 on both axes); a sequence that reaches the
    model's last position without ending gets an end-of-digit step there.
    """
    if not isinstance(model, TinyDOT):
        raise ConfigError(f"sample draws digits from a strokes model (TinyDOT), not a {type(model).__name__}")
    digits = np.asarray(digits, dtype=np.int64).reshape(-1)
    check_temperature(temperature)
    check_seed(seed)
    if len(digits) == 0 or digits.min() < 0 or digits.max() >= min(NUM_CLASSES, model.cfg.n_classes):
        raise ConfigError(f"digits must be a non-empty list of classes 0..{min(NUM_CLASSES, model.cfg.n_classes) - 1}")
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    B, M, T = len(digits), model.cfg.max_move, model.cfg.max_len - 1  # T: positions m_0..m_{T-1}
    labels = torch.from_numpy(digits)
    moves = torch.zeros(B, T, 3, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    lengths = torch.full((B,), T, dtype=torch.long)
    inside = torch.full((2 * M + 1,), float("-inf"))
    inside[M + 1: M + 1 + FRAME] = 0.0  # start coordinates 1..28, as a move from the origin
    past = None
    for t in range(T):
        # the new position's inputs depend on the previous move and the pen position after it
        step_inputs = make_inputs(moves[:, : t + 1], M)[:, t: t + 1]
        h, past = model(step_inputs, labels, past=past, offset=t)
        h = h[:, 0]
        if t == 0:
            pen = torch.full((B,), PEN_DRAW, dtype=torch.long)
            dx = _draw(model.head_dx(h) + inside, temperature, generator)
            dy = _draw(model.dy_logits(h, dx) + inside, temperature, generator)
        else:
            pen = _draw(model.head_pen(h), temperature, generator)
            if t == T - 1:
                pen[:] = PEN_END_DIGIT
            dx = _draw(model.head_dx(h), temperature, generator)
            dy = _draw(model.dy_logits(h, dx), temperature, generator)
        draw = pen == PEN_DRAW
        moves[:, t] = torch.stack([torch.where(draw, dx - M, 0), torch.where(draw, dy - M, 0), pen], dim=1)
        ended = (pen == PEN_END_DIGIT) & ~done
        lengths[ended] = t
        done |= ended
        moves[done & ~ended, t] = 0  # finished sequences stay zero-padded
        if bool(done.all()):
            break
    steps = moves[:, 1:].numpy()
    starts = moves[:, 0, :2].numpy()
    return Strokes(steps.astype(np.int8), lengths.numpy().astype(np.int16), digits.astype(np.int8),
                   starts.astype(np.int8), split="sampled")
