"""The domains' data: MNIST pen strokes (`strokes`, `render`) and Penn Treebank text (`text`)."""

from tinydot.data.render import rasterize, rasterize_all, save_grid
from tinydot.data.strokes import (
    NUM_CLASSES,
    PEN_DRAW,
    PEN_END_DIGIT,
    PEN_END_STROKE,
    SPLITS,
    Strokes,
    length_summary,
    load_strokes,
)
from tinydot.data.text import Sentences, count_summary, load_all_sentences, load_sentences

__all__ = ["NUM_CLASSES", "PEN_DRAW", "PEN_END_DIGIT", "PEN_END_STROKE", "SPLITS", "Sentences", "Strokes",
           "count_summary", "length_summary", "load_all_sentences", "load_sentences", "load_strokes",
           "rasterize", "rasterize_all", "save_grid"]
