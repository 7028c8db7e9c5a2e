"""The MNIST pen-stroke data: loading (`strokes`) and rendering (`render`)."""

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

__all__ = ["NUM_CLASSES", "PEN_DRAW", "PEN_END_DIGIT", "PEN_END_STROKE", "SPLITS", "Strokes",
           "length_summary", "load_strokes", "rasterize", "rasterize_all", "save_grid"]
