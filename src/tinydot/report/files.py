"""Reading a finished run folder's tables and summaries for its figures and pages: a damaged file
(empty, not CSV or JSON, a column or key missing) is refused in one line instead of failing
somewhere inside a figure."""

from __future__ import annotations

import os

import pandas as pd

from tinydot.errors import TinydotError
from tinydot.io import read_json

FIX = "re-run the command that wrote it"


def read_table(path: str | os.PathLike, columns: tuple[str, ...] = (), *, rows: bool = True,
               index_col: int | None = None, empty: bool = False) -> pd.DataFrame:
    """The CSV table at `path`, holding every name in `columns` and (with `rows`) at least one row.
    `empty`: a file without columns (pandas writes an empty frame as a bare newline) is an empty table."""
    try:
        table = pd.read_csv(path, index_col=index_col)
    except pd.errors.EmptyDataError:
        if empty:
            return pd.DataFrame()
        raise TinydotError(f"{path} is damaged (empty); {FIX}") from None
    except (pd.errors.ParserError, UnicodeDecodeError):
        raise TinydotError(f"{path} is damaged (not a CSV table); {FIX}") from None
    if missing := [c for c in columns if c not in table.columns]:
        raise TinydotError(f"{path} is damaged (no column {missing[0]!r}); {FIX}")
    if rows and table.empty:
        raise TinydotError(f"{path} is damaged (no rows); {FIX}")
    return table


def read_summary(path: str | os.PathLike, keys: tuple[str, ...]) -> dict:
    """A run's JSON summary holding `keys`."""
    summary = read_json(path)
    if not isinstance(summary, dict) or (missing := [k for k in keys if k not in summary]):
        what = f"no {missing[0]!r}" if isinstance(summary, dict) else "not a JSON object"
        raise TinydotError(f"{path} is damaged ({what}); {FIX}")
    return summary
