"""Facts about the real MNIST stroke data (60k train / 10k test), checked on the shipped archives."""

import numpy as np

from tinydot.data import PEN_END_DIGIT, PEN_END_STROKE, NUM_CLASSES
from tinydot.data.strokes import FRAME


def test_counts(train, test_split):
    assert len(train) == 60_000 and len(test_split) == 10_000
    assert train.steps.dtype == np.int8 and train.lengths.dtype == np.int16
    assert np.array_equal(np.bincount(test_split.labels, minlength=10),
                          [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])  # MNIST's test counts


def test_length_range(train, test_split):
    rows = np.concatenate([train.lengths, test_split.lengths]) + 1  # the archive counts the start row too
    assert rows.min() == 13 and rows.max() == 117


def test_class_mean_lengths(train, test_split):
    means = {}
    for name, split in (("train", train), ("test", test_split)):
        means[name] = np.array([split.lengths[split.labels == c].mean() for c in range(NUM_CLASSES)])
    # the digit 1 is shortest (about 20 rows with the start point), 8 longest (about 52)
    assert means["train"].argmin() == 1 and means["train"].argmax() == 8
    assert abs(means["train"][1] + 1 - 20) < 1.0 and abs(means["train"][8] + 1 - 52) < 1.0
    # the real test set (leading padding) matches train; upstream's trailing "test" copy would too,
    # but only because it *is* train -- so also check the test labels are not train's first 10k
    assert np.abs(means["train"] - means["test"]).max() < 2.0
    assert not np.array_equal(test_split.lengths, train.lengths[:10_000])


def test_every_sequence_ends_once_with_end_of_digit(train, test_split):
    for split in (train, test_split):
        n = len(split)
        pen = split.steps[:, :, 2]
        assert np.array_equal((pen == PEN_END_DIGIT).sum(axis=1), np.ones(n))
        assert np.array_equal(pen[np.arange(n), split.lengths - 1], np.full(n, PEN_END_DIGIT))
        beyond = np.arange(split.steps.shape[1]) >= split.lengths[:, None]
        assert not split.steps[beyond].any()
        # marker steps (end of stroke / digit) never move the pen
        markers = pen >= PEN_END_STROKE
        assert not split.steps[markers][:, :2].any()


def test_every_sequence_stays_inside_its_frame(train, test_split):
    for split in (train, test_split):
        positions = split.positions()
        assert positions.min() >= 1 and positions.max() <= FRAME
