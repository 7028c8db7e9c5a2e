"""The `tinydot` command line: parse arguments, call the Python API, print a short summary.

User mistakes raise `TinydotError`; `main` prints its one-line message and exits with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from tinydot.errors import TinydotError

app = typer.Typer(help="tinydot: data complexity, lottery tickets and prunability of a tiny transformer.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Inspect the MNIST pen-stroke data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
DataDirOption = typer.Option(None, "--data-dir", help="Folder with the four stroke archives "
                             "(default: $TINYDOT_DATA, else the user cache, downloading if needed).")


@data_app.command("info")
def data_info(data_dir: Optional[Path] = DataDirOption,
              split: Optional[str] = typer.Option(None, help="Only this split (train or test).")) -> None:
    """Counts and length statistics (pen steps) per split and digit class."""
    from tinydot.data import SPLITS, length_summary, load_strokes

    names = [split] if split else list(SPLITS)
    summary = length_summary({name: load_strokes(name, data_dir) for name in names})
    table = Table(title="MNIST pen strokes: pen steps per sequence (start point excluded)")
    for column in summary.columns:
        table.add_column(column, justify="left" if column in ("split", "digit") else "right")
    for row in summary.itertuples(index=False):
        table.add_row(row.split, str(row.digit), f"{row.count:,}", f"{row.mean:.1f}", f"{row.std:.1f}",
                      f"{row.min:.0f}", f"{row.median:.0f}", f"{row.max:.0f}",
                      end_section=row.digit == "all")
    console.print(table)


@data_app.command("show")
def data_show(out: Path = typer.Option(..., "--out", help="PNG file to write."),
              split: str = typer.Option("test", help="train or test."),
              n: int = typer.Option(64, "--n", help="How many sequences to draw."),
              digit: Optional[int] = typer.Option(None, help="Only this digit class (0-9)."),
              seed: int = typer.Option(0, help="Seed for picking the sequences."),
              scale: int = typer.Option(4, help="Pixels per 28x28-frame pixel."),
              data_dir: Optional[Path] = DataDirOption) -> None:
    """Render sequences of real digits to a PNG grid."""
    from tinydot.data.render import show_grid

    path = show_grid(out, split=split, n=n, digit=digit, seed=seed, scale=scale, data_dir=data_dir)
    console.print(f"wrote {path}")


def main() -> None:
    try:
        app()
    except TinydotError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
