"""Complexity measures against hand-computed values and reference formulas; quantile binning."""

import math

import numpy as np
import pytest

from tinydot.complexity import MEASURES, bin_table, measure_all, quantile_bins
from tinydot.data.strokes import PEN_DRAW, PEN_END_DIGIT, PEN_END_STROKE, Strokes
from tinydot.errors import ConfigError

D, E, Z = PEN_DRAW, PEN_END_STROKE, PEN_END_DIGIT


def strokes_of(*sequences, start=(5, 5)) -> Strokes:
    width = max(len(s) for s in sequences)
    steps = np.zeros((len(sequences), width, 3), dtype=np.int8)
    for i, s in enumerate(sequences):
        steps[i, : len(s)] = s
    n = len(sequences)
    return Strokes(steps, np.array([len(s) for s in sequences], dtype=np.int16), np.zeros(n, dtype=np.int8),
                   np.tile(np.array(start, dtype=np.int8), (n, 1)))


LINE = [(1, 0, D)] * 10 + [(0, 0, Z)]
SQUARE = [(1, 0, D), (1, 0, D), (0, 1, D), (0, 1, D), (-1, 0, D), (-1, 0, D), (0, -1, D), (0, -1, D), (0, 0, Z)]
OCTAGON = [(1, 0, D), (1, 1, D), (0, 1, D), (-1, 1, D), (-1, 0, D), (-1, -1, D), (0, -1, D), (1, -1, D), (0, 0, Z)]
JUMP = [(1, 0, D), (1, 0, D), (0, 0, E), (5, 5, D), (0, 1, D), (0, 1, D), (0, 0, Z)]


def reference_spectrum(flow):
    """The periodogram by the DFT's definition (an O(n^2) sum), independent of numpy's FFT."""
    z = np.array([complex(dx, dy) for dx, dy in flow])
    n = len(z)
    t = np.arange(n)
    Z = np.array([(z * np.exp(-2j * np.pi * k * t / n)).sum() for k in range(n)])
    return np.abs(Z) ** 2 / n


def reference_entropy(flow):
    p = reference_spectrum(flow)[1:]
    p = p / p.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / math.log(len(flow) - 1))


@pytest.fixture(scope="module")
def shapes():
    return measure_all(strokes_of(LINE, SQUARE, OCTAGON, JUMP))


def test_straight_line(shapes):
    row = shapes.iloc[0]
    assert row.L == 11 and row.S == 0 and row.turning == 0 and row.spectral_entropy == 0
    assert row.strokes == 1 and row.pen_up_travel == 0


def test_square(shapes):
    row = shapes.iloc[1]
    assert row.L == 9
    assert row.S == pytest.approx(1.0)  # the path closes: no drift at all
    assert row.turning == pytest.approx(3 * math.pi / 2)  # three right-angle corners
    flow = [(dx, dy) for dx, dy, _ in SQUARE[:-1]]
    assert row.spectral_entropy == pytest.approx(reference_entropy(flow))


def test_circle_like_octagon(shapes):
    row = shapes.iloc[2]
    assert row.L == 9 and row.S == pytest.approx(1.0)
    assert row.turning == pytest.approx(7 * math.pi / 4)  # seven 45-degree turns
    flow = [(dx, dy) for dx, dy, _ in OCTAGON[:-1]]
    assert row.spectral_entropy == pytest.approx(reference_entropy(flow))


def test_pen_up_jump(shapes):
    row = shapes.iloc[3]
    # flow is 1, 1, i, i (the jump and the marker are not flow): mean 0.5+0.5i, mean power 1
    assert row.L == 7 and row.S == pytest.approx(1 - 0.5)
    assert row.turning == 0  # the turn across the jump is not a turn of the pen on paper
    assert row.strokes == 2 and row.pen_up_travel == pytest.approx(math.sqrt(50))


def test_S_is_the_non_dc_share_of_the_reference_periodogram(train):
    sample = train.subset(np.arange(0, 60_000, 601))
    table = measure_all(sample, ["S"])
    for i in range(0, len(sample), 10):
        steps = sample.steps[i, : sample.lengths[i]]
        pen = steps[:, 2]
        after_marker = np.concatenate([[False], pen[:-1] >= E])
        flow = steps[(pen == D) & ~after_marker, :2]
        power = reference_spectrum(flow)
        assert table.S[i] == pytest.approx(power[1:].sum() / power.sum())


def test_measures_ignore_the_start_point_and_rotation(train):
    sample = train.subset(np.arange(200))
    moved = Strokes(sample.steps, sample.lengths, sample.labels, np.full_like(sample.starts, 3))
    rotated_steps = sample.steps.copy()
    rotated_steps[:, :, 0], rotated_steps[:, :, 1] = -sample.steps[:, :, 1], sample.steps[:, :, 0]
    rotated = Strokes(rotated_steps, sample.lengths, sample.labels, sample.starts)
    base = measure_all(sample)
    assert base.equals(measure_all(moved))
    turned = measure_all(rotated)
    for m in ("L", "S", "spectral_entropy", "turning", "strokes", "pen_up_travel"):
        assert np.allclose(base[m], turned[m]), m


def test_regular_sequences_compress_better():
    noisy = [(int(a), int(b), D) for a, b in np.random.default_rng(0).integers(-1, 2, size=(40, 2))] + [(0, 0, Z)]
    table = measure_all(strokes_of([(1, 0, D)] * 40 + [(0, 0, Z)], noisy), ["compressed_bytes"])
    assert table.compressed_bytes[0] < 0.5 * table.compressed_bytes[1]


def test_real_measures_are_in_range(train):
    table = measure_all(train.subset(np.arange(5000)))
    assert list(table.columns) == ["label", *MEASURES]
    assert table.S.between(0, 1).all() and table.spectral_entropy.between(0, 1).all()
    assert (table.strokes >= 1).all() and (table.turning >= 0).all()


def test_quantile_bins_have_equal_counts_and_cover_everything(train):
    values = train.lengths[:10_001].astype(float)  # integer lengths: many ties
    bins = quantile_bins(values, 7)
    counts = np.bincount(bins)
    assert len(counts) == 7 and counts.max() - counts.min() <= 1 and counts.sum() == len(values)
    edges = bin_table(values, bins)
    assert (edges.high.to_numpy()[:-1] <= edges.low.to_numpy()[1:]).all()  # bins are ordered


def test_balanced_bins_hold_each_class_equally(train):
    sample = train.subset(np.arange(3000))
    bins = quantile_bins(sample.lengths, 4, labels=sample.labels)
    for c in range(10):
        counts = np.bincount(bins[sample.labels == c], minlength=4)
        assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("values,k,message", [
    ([1.0, 2.0, 3.0], 1, "bins must be an integer >= 2"),
    ([1.0, 2.0, 3.0], 4, "4 bins are more than the 3 samples"),
    ([], 2, "empty selection"),
])
def test_bad_binning(values, k, message):
    with pytest.raises(ConfigError, match=message):
        quantile_bins(values, k)


def test_unknown_measure_suggests_a_name():
    with pytest.raises(ConfigError, match=r"unknown measure 'turnin' \(did you mean turning\?\)"):
        measure_all(strokes_of(LINE), ["turnin"])


def test_rounding_noise_does_not_decide_bins():
    values = np.array([0.1 + 0.2, 0.3, 0.3, 0.7, 0.7, 0.7 + 1e-15, 0.9, 0.9])  # 0.1 + 0.2 != 0.3 in floats
    for seed in range(20):  # ties are broken by the seed alone, exactly as for exactly equal values
        assert np.array_equal(quantile_bins(values, 2, seed=seed), quantile_bins(np.round(values, 9), 2, seed=seed))
