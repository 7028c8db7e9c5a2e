"""Stroke sequences -> raster images and PNG grids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from tinydot.data.strokes import FRAME, PEN_END_STROKE, Strokes
from tinydot.io import atomic_path


def rasterize(steps: np.ndarray, start, scale: int = 1) -> np.ndarray:
    """Draw one sequence into a (FRAME*scale, FRAME*scale) float32 image with ink = 1.

    steps : int array of shape (n_steps, 3), the sequence's ``(dx, dy, pen)`` rows (no padding).
    start : the absolute start point (x, y), 1-based.

    Pen-down moves are drawn as straight segments: one pixel per step along the longer axis, the
    nearest pixel on the other (ties round towards larger coordinates); the pen-up jump that follows an end-of-stroke step is not drawn. At scale 1
    pixel (row y-1, column x-1) holds point (x, y); at larger scales the line is thickened so the
    digit stays legible. Points outside the frame are dropped.
    """
    steps = np.asarray(steps)
    points = np.cumsum(np.concatenate([np.asarray(start)[None, :2], steps[:, :2]]), axis=0).astype(float)
    pen_up = np.zeros(len(steps), dtype=bool)
    pen_up[1:] = steps[:-1, 2] >= PEN_END_STROKE  # a step right after a stroke ends is a jump
    size = FRAME * scale
    image = np.zeros((size, size), dtype=np.float32)
    centres = (points - 1) * scale + (scale - 1) / 2  # pixel centre of each point
    segments = [(centres[t], centres[t + 1]) for t in range(len(steps)) if not pen_up[t]]
    segments.append((centres[0], centres[0]))
    for a, b in segments:
        n = int(np.ceil(np.abs(b - a).max())) + 1
        line = np.floor(a + np.linspace(0.0, 1.0, n)[:, None] * (b - a) + 0.5).astype(int)  # ties round up
        inside = ((line >= 0) & (line < size)).all(axis=1)
        image[line[inside, 1], line[inside, 0]] = 1.0
    if scale >= 4:
        image = ndimage.grey_dilation(image, size=(scale // 2 + 1, scale // 2 + 1))
    return image


def rasterize_all(strokes: Strokes, scale: int = 1) -> np.ndarray:
    """All sequences of `strokes` as images: float32 array (n, FRAME*scale, FRAME*scale)."""
    return np.stack([rasterize(strokes.steps[i, : strokes.lengths[i]], strokes.starts[i], scale)
                     for i in range(len(strokes))]) if len(strokes) else np.zeros((0, FRAME * scale, FRAME * scale))


def save_grid(images: np.ndarray, path: str | os.PathLike, titles=None, ncols: int | None = None,
              dpi: int = 100) -> None:
    """Save images of shape (n, H, W) as one PNG grid (ink dark on white), optionally titled."""
    from matplotlib.figure import Figure

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def show_grid(out: str | os.PathLike, *, split: str = "test", n: int = 64, digit: int | None = None,
              seed: int = 0, scale: int = 4, data_dir=None) -> Path:
    """Draw `n` randomly chosen (seeded) real sequences of `split` into a PNG grid at `out`."""
    from tinydot.data.strokes import NUM_CLASSES, load_strokes
    from tinydot.errors import DataError

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise DataError(f"--out {out} must end in .png")
    if n < 1:
        raise DataError(f"--n must be at least 1, got {n}")
    if not 1 <= scale <= 16:
        raise DataError(f"--scale must be between 1 and 16, got {scale}")
    if digit is not None and not 0 <= digit < NUM_CLASSES:
        raise DataError(f"--digit must be between 0 and {NUM_CLASSES - 1}, got {digit}")
    strokes = load_strokes(split, data_dir)
    candidates = np.arange(len(strokes)) if digit is None else np.flatnonzero(strokes.labels == digit)
    chosen = np.sort(np.random.default_rng(seed).choice(candidates, size=min(n, len(candidates)), replace=False))
    picked = strokes.subset(chosen)
    save_grid(rasterize_all(picked, scale), out, titles=[f"{d} (#{i})" for d, i in zip(picked.labels, chosen)])
    return out
