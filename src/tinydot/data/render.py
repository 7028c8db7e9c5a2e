"""Stroke sequences -> raster images and PNG grids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tinydot.config import check_seed
from tinydot.data.strokes import FRAME, PEN_END_STROKE, Strokes, check_digit, load_strokes
from tinydot.errors import DataError
from tinydot.io import check_writable_file, save_figure

MAX_GRID = 400  # sequences in one PNG grid (20 x 20; 1000 take a minute to draw)


def rasterize_all(strokes: Strokes, scale: int = 1) -> np.ndarray:
    """Draw every sequence into a float32 image stack of shape (n, FRAME*scale, FRAME*scale), ink = 1.

    Pen-down moves are drawn as straight segments: one pixel per step along the longer axis, the
    nearest pixel on the other (ties round towards larger coordinates); the pen-up jump that
    follows an end-of-stroke step is not drawn. At scale 1, pixel (row y-1, column x-1) holds
    point (x, y); at scale >= 4 lines are thickened so the digit stays legible. Points outside the
    frame are dropped. Vectorized over all segments of all sequences.
    """
    n, max_steps, _ = strokes.steps.shape
    size = FRAME * scale
    images = np.zeros((n, size, size), dtype=np.float32)
    if n == 0:
        return images
    centres = (strokes.positions().astype(np.float64) - 1) * scale + (scale - 1) / 2  # (n, max_steps + 1, 2)
    pen = strokes.steps[:, :, 2]
    drawn = np.arange(max_steps)[None, :] < strokes.lengths[:, None]
    drawn[:, 1:] &= pen[:, :-1] < PEN_END_STROKE  # a step right after a stroke ends is a pen-up jump
    seq, t = np.nonzero(drawn)
    seq, t = np.concatenate([seq, np.arange(n)]), np.concatenate([t, np.zeros(n, dtype=t.dtype)])
    a = centres[seq, t]
    delta = centres[seq, t + 1] - a
    delta[len(delta) - n:] = 0  # plus the start point itself, in case no move is drawn
    count = np.ceil(np.abs(delta).max(axis=1)).astype(np.int64) + 1  # pixels per segment
    which = np.repeat(np.arange(len(a)), count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    frac = k / np.maximum(count[which] - 1, 1)
    pixels = np.floor(a[which] + frac[:, None] * delta[which] + 0.5).astype(np.int64)
    inside = ((pixels >= 0) & (pixels < size)).all(axis=1)
    images[seq[which][inside], pixels[inside, 1], pixels[inside, 0]] = 1.0
    if scale >= 4:
        from scipy import ndimage  # here: every command that loads data imports this module

        images = ndimage.grey_dilation(images, size=(1, scale // 2 + 1, scale // 2 + 1))
    return images


def rasterize(steps: np.ndarray, start, scale: int = 1) -> np.ndarray:
    """One sequence's image (FRAME*scale, FRAME*scale); `steps` (n_steps, 3) without padding, `start` (x, y)."""
    steps = np.asarray(steps, dtype=np.int8)
    single = Strokes(steps[None], np.array([len(steps)], dtype=np.int16), np.zeros(1, dtype=np.int8),
                     np.asarray(start, dtype=np.int8)[None, :2])
    return rasterize_all(single, scale)[0]


def save_grid(images: np.ndarray, path: str | os.PathLike, titles=None, ncols: int | None = None,
              dpi: int = 100) -> None:
    """Save images of shape (n, H, W) as one PNG grid (ink dark on white), optionally titled."""
    from matplotlib.figure import Figure  # here, not at the top: keeps `import tinydot` (and the CLI) fast

    n = len(images)
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = max(1, int(np.ceil(n / ncols)))
    fig = Figure(figsize=(ncols * 0.9, nrows * (1.05 if titles is not None else 0.9)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < n:
            ax.imshow(images[k], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            if titles is not None:
                ax.set_title(str(titles[k]), fontsize=8, pad=2)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95 if titles is not None else 0.99,
                        wspace=0.08, hspace=0.3 if titles is not None else 0.08)
    save_figure(fig, path, dpi)


def show_grid(out: str | os.PathLike, *, split: str = "test", n: int = 64, digit: int | None = None,
              seed: int = 0, scale: int = 4, data_dir=None) -> Path:
    """Draw `n` randomly chosen (seeded) real sequences of `split` into a PNG grid at `out`."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise DataError(f"--out {out} must end in .png")
    if not 1 <= n <= MAX_GRID:
        raise DataError(f"n must be between 1 and {MAX_GRID}, got {n}")
    if not 1 <= scale <= 16:
        raise DataError(f"scale must be between 1 and 16, got {scale}")
    check_digit(digit)
    check_seed(seed)
    check_writable_file(out)
    strokes = load_strokes(split, data_dir)
    candidates = np.arange(len(strokes)) if digit is None else np.flatnonzero(strokes.labels == digit)
    chosen = np.sort(np.random.default_rng(seed).choice(candidates, size=min(n, len(candidates)), replace=False))
    picked = strokes.subset(chosen)
    save_grid(rasterize_all(picked, scale), out, titles=[f"{d} (#{i})" for d, i in zip(picked.labels, chosen)])
    return out
