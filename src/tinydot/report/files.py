"""Reading a finished run folder's tables for its figures and pages: a damaged table (empty, not
CSV, a column missing) is refused in one line instead of failing somewhere inside a figure."""

from __future__ import annotations

import os

import pandas as pd

from tinydot.errors import TinydotError

FIX = "re-run the command that wrote it"


def read_table(path: str | os.PathLike, columns: tuple[str, ...] = (), *, rows: bool = True,
               index_col: int | None = None) -> pd.DataFrame:
    """The CSV table at `path`, holding every name in `columns` and (with `rows`) at least one row."""
    try:
        table = pd.read_csv(path, index_col=index_col)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        reason = "empty" if isinstance(err, pd.errors.EmptyDataError) else "not a CSV table"
        raise TinydotError(f"{path} is damaged ({reason}); {FIX}") from None
    if missing := [c for c in columns if c not in table.columns]:
        raise TinydotError(f"{path} is damaged (no column {missing[0]!r}); {FIX}")
    if rows and table.empty:
        raise TinydotError(f"{path} is damaged (no rows); {FIX}")
    return table
