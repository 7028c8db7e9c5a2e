"""Rendering: known pixels for a hand-made sequence, and real sequences stay inside the frame."""

import numpy as np

from tinydot.data import rasterize, rasterize_all, save_grid
from tinydot.data.strokes import PEN_DRAW, PEN_END_DIGIT, PEN_END_STROKE


def test_known_sequence_renders_to_known_pixels():
    # start (2, 3); right, right; end of stroke; jump (+3, +2) to (7, 5); down to (7, 6); end.
    steps = np.array([[1, 0, PEN_DRAW], [1, 0, PEN_DRAW], [0, 0, PEN_END_STROKE], [3, 2, PEN_DRAW],
                      [0, 1, PEN_DRAW], [0, 0, PEN_END_DIGIT]])
    image = rasterize(steps, (2, 3))
    expected = np.zeros((28, 28), dtype=np.float32)
    expected[2, 1:4] = 1  # row y-1 = 2, columns x-1 = 1..3
    expected[4:6, 6] = 1  # the stroke after the (undrawn) jump
    assert np.array_equal(image, expected)


def test_long_pen_down_move_is_drawn_without_gaps():
    image = rasterize(np.array([[4, 2, PEN_DRAW], [0, 0, PEN_END_DIGIT]]), (1, 1))
    rows, cols = np.nonzero(image)
    assert cols.tolist() == [0, 1, 2, 3, 4] and rows.tolist() == [0, 1, 1, 2, 2]  # y = 0, .5, 1, 1.5, 2


def test_points_outside_the_frame_are_dropped():
    image = rasterize(np.array([[5, 0, PEN_DRAW], [0, 0, PEN_END_DIGIT]]), (26, 1))
    assert image.sum() == 3  # x = 26, 27, 28 inside; 29..31 outside


def test_real_sequences_render_their_points(test_split):
    sample = test_split.subset(np.arange(0, 10_000, 97))
    images = rasterize_all(sample)
    positions = sample.positions()
    for i in range(len(sample)):
        x, y = positions[i, : sample.lengths[i] + 1].T
        assert images[i][y - 1, x - 1].all()  # every visited point is inked ...
        assert images[i].sum() <= sample.lengths[i] * 30  # ... and ink is bounded by the path


def test_grid_png_is_written(tmp_path, test_split):
    path = tmp_path / "grid.png"
    save_grid(rasterize_all(test_split.subset(np.arange(6)), scale=4), path, titles=list("abcdef"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temp file left behind
