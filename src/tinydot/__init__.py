"""tinydot: how over-parameterized is a tiny transformer for its data, and can we tell before training?

The public API is re-exported here; the CLI (`tinydot ...`) is a thin layer over it.
"""

from tinydot.data import Strokes, length_summary, load_strokes, rasterize, rasterize_all, save_grid
from tinydot.errors import ConfigError, DataError, TinydotError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "Strokes", "TinydotError", "length_summary", "load_strokes",
           "rasterize", "rasterize_all", "save_grid"]
