"""Training-data complexity: per-sample measures of a stroke sequence, and quantile bins.

Every measure depends only on the pen steps, never on the start point, and is computed for all
sequences at once (`measure_all`). The *flow* of a sample is its sequence of pen-down moves
v_1..v_n (each (dx, dy), written as the complex number z_t = dx_t + i dy_t), taken stroke after
stroke: the end-of-stroke markers (zero moves) and the pen-up jumps between strokes are left out.

Measures (`MEASURES`):

L                 number of pen steps, start row excluded (markers and jumps included).
S                 mean spectral density of the flow, DC removed, in units of the flow's mean power:
                  with Z_k the DFT of z_1..z_n (no window) and P_k = |Z_k|^2 / n its periodogram,
                      S = (1/n) * sum_{k != 0} P_k / ((1/n) * sum_t |z_t|^2).
                  By Parseval this is exactly 1 - |mean z|^2 / mean |z|^2: the share of the flow's
                  power that is *not* a constant drift. 0 for a straight line (one direction
                  throughout), near 1 for a closed loop (the pen comes back, so the mean flow
                  vanishes). It measures how much the drawing direction varies, and is independent
                  of the step length; the unnormalised mean spectral density would only be the
                  mean squared step length (Parseval), which carries almost no information here
                  (in-stroke steps are 1 or sqrt 2 long, but for the last move of
                  ~3% of sequences, up to 18 pixels). Samples with no pen-down move get 0.
spectral_entropy  Shannon entropy of the normalised non-DC periodogram, p_k = P_k / sum_{j != 0} P_j,
                  divided by log(n - 1) so it lies in [0, 1]: 1 when the direction changes at all
                  time scales equally, near 0 when one slow turn dominates. 0 when n < 3 or the
                  flow has no non-DC power.
turning           total absolute turning angle in radians: sum over consecutive pen-down moves
                  inside the same stroke of |angle(v_{t+1}) - angle(v_t)| (wrapped to [0, pi]).
strokes           number of strokes (end-of-stroke markers, the final one included).
pen_up_travel     summed Euclidean length of the pen-up jumps between strokes, in pixels.
compressed_bytes  bytes per pen step of the steps' raw-deflate encoding (zlib, level 9, no header):
                  a Kolmogorov-style proxy for how regular the sequence is.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from tinydot.config import did_you_mean
from tinydot.data.strokes import PEN_DRAW, PEN_END_STROKE, Strokes
from tinydot.errors import ConfigError

MEASURES = ("L", "S", "spectral_entropy", "turning", "strokes", "pen_up_travel", "compressed_bytes")


def check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise ConfigError(f"unknown measure {measure!r}{did_you_mean(measure, MEASURES)}; "
                          f"choose from {', '.join(MEASURES)}")


def _flow(strokes: Strokes):
    """The flow of every sample, flattened in sample order.

    Returns rows (m,) the sample of each pen-down move, z (m,) the moves as complex numbers,
    same (m,) whether the previous move belongs to the same stroke of the same sample, and
    counts (N,) the moves per sample.
    """
    steps = strokes.steps
    width = steps.shape[1]
    pen = steps[:, :, 2]
    real = np.arange(width)[None, :] < strokes.lengths[:, None]
    marker = real & (pen >= PEN_END_STROKE)
    draw = real & (pen == PEN_DRAW)
    draw[:, 1:] &= ~marker[:, :-1]  # the step after a stroke ends is a pen-up jump, not flow
    rows, cols = np.nonzero(draw)  # row-major: each sample's pen-down moves in order
    z = steps[rows, cols, 0] + 1j * steps[rows, cols, 1].astype(np.float64)
    stroke_id = np.cumsum(marker, axis=1)[rows, cols]  # a marker between two moves starts a new stroke
    same = np.zeros(len(rows), dtype=bool)
    same[1:] = (stroke_id[1:] == stroke_id[:-1]) & (rows[1:] == rows[:-1])
    return rows, z, same, draw.sum(axis=1)


def _spectral(rows: np.ndarray, z: np.ndarray, counts: np.ndarray):
    """S and spectral entropy for each sample, from one batched FFT per distinct flow length."""
    n_samples = len(counts)
    S = np.zeros(n_samples)
    entropy = np.zeros(n_samples)
    padded = np.zeros((n_samples, max(int(counts.max(initial=0)), 1)), dtype=np.complex128)
    padded[rows, np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)] = z  # left-aligned
    for n in np.unique(counts):
        if n == 0:
            continue
        group = np.flatnonzero(counts == n)
        spectrum = np.fft.fft(padded[group, :n], axis=1)
        power = (spectrum.real ** 2 + spectrum.imag ** 2) / n  # periodogram P_k, (g, n)
        total = power.sum(axis=1)
        non_dc = power[:, 1:]
        S[group] = np.clip(np.divide(non_dc.sum(axis=1), total, out=np.zeros(len(group)), where=total > 0), 0, 1)
        if n >= 3:
            mass = non_dc.sum(axis=1, keepdims=True)
            p = np.divide(non_dc, mass, out=np.zeros_like(non_dc), where=mass > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
            entropy[group] = np.clip(h / np.log(n - 1), 0, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return S, entropy


def _turning(rows: np.ndarray, z: np.ndarray, same: np.ndarray, n_samples: int) -> np.ndarray:
    turn = np.zeros(len(z))
    turn[1:] = np.abs(np.angle(z[1:] * np.conj(z[:-1])))  # turn between consecutive moves, [0, pi]
    return np.bincount(rows, weights=np.where(same, turn, 0.0), minlength=n_samples)


def _compressed_bytes(strokes: Strokes) -> np.ndarray:
    out = np.empty(len(strokes))
    for i, (steps, length) in enumerate(zip(strokes.steps, strokes.lengths)):
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = steps[:length].tobytes()
        out[i] = len(compressor.compress(data) + compressor.flush()) / length
    return out


def measure_all(strokes: Strokes, measures=MEASURES) -> pd.DataFrame:
    """A table with one row per sequence: `label` and each requested measure."""
    for m in measures:
        check_measure(m)
    table = {"label": strokes.labels.astype(int)}
    if {"S", "spectral_entropy", "turning"} & set(measures):
        rows, z, same, counts = _flow(strokes)
    if {"S", "spectral_entropy"} & set(measures):
        S, entropy = _spectral(rows, z, counts)
    pen = strokes.steps[:, :, 2]
    real = np.arange(pen.shape[1])[None, :] < strokes.lengths[:, None]
    for m in measures:
        if m == "L":
            table[m] = strokes.lengths.astype(int)
        elif m == "S":
            table[m] = S
        elif m == "spectral_entropy":
            table[m] = entropy
        elif m == "turning":
            table[m] = _turning(rows, z, same, len(strokes))
        elif m == "strokes":
            table[m] = ((pen >= PEN_END_STROKE) & real).sum(axis=1)
        elif m == "pen_up_travel":
            jump = np.zeros_like(real)
            jump[:, 1:] = (pen[:, :-1] >= PEN_END_STROKE) & real[:, 1:]
            length = np.hypot(strokes.steps[:, :, 0].astype(float), strokes.steps[:, :, 1])
            table[m] = np.where(jump, length, 0.0).sum(axis=1)
        elif m == "compressed_bytes":
            table[m] = _compressed_bytes(strokes)
    return pd.DataFrame(table)


# --------------------------------------------------------------------------- binning

def quantile_bins(values, k: int, *, labels=None, seed: int = 0) -> np.ndarray:
    """Assign each value to one of `k` equal-count bins by rank (bin 0 = least complex).

    Ties are broken at random (seeded), so bins stay equal-sized even when many values are equal
    (L is an integer). Values are compared after rounding to 9 decimals, so that equal measures
    whose floating-point rounding differs (S of two different samples with the same flow shape,
    say) count as ties instead of letting rounding noise pick their bins. With `labels`, ranks
    are taken within each class, so every bin holds the same number of samples of each class
    (up to one). Returns int array (n,) with values 0..k-1.
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        raise ConfigError("cannot bin an empty selection")
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"bins must be an integer >= 2, got {k!r}")
    if k > n:
        raise ConfigError(f"{k} bins are more than the {n} samples selected")
    if not np.isfinite(values).all():
        raise ConfigError("cannot bin non-finite values")
    if labels is not None and len(labels) != n:
        raise ConfigError(f"labels must give one class per value: {len(labels)} labels for {n} values")
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(np.asarray(labels) == c)
                                                    for c in np.unique(labels)]
    rng = np.random.default_rng(seed)
    bins = np.empty(n, dtype=np.int64)
    for members in groups:
        if len(members) < k:
            raise ConfigError(f"{k} bins are more than the {len(members)} samples of one class; "
                              "use fewer bins or no per-class balancing")
        shuffled = members[rng.permutation(len(members))]
        order = shuffled[np.argsort(np.round(values[shuffled], 9), kind="stable")]
        bins[order] = np.arange(len(members)) * k // len(members)
    return bins


def bin_table(values, bins: np.ndarray) -> pd.DataFrame:
    """Per bin: count, the value range (edges) and the mean."""
    frame = pd.DataFrame({"value": np.asarray(values, dtype=float), "bin": bins})
    table = frame.groupby("bin")["value"].agg(count="count", low="min", high="max", mean="mean")
    return table.reset_index()


def summary(table: pd.DataFrame, measures=MEASURES) -> pd.DataFrame:
    """Per measure (the columns of `table` among `measures`): mean, std, quantiles."""
    measures = [c for c in table.columns if c in measures]
    return table[measures].describe(percentiles=[0.1, 0.5, 0.9]).T
