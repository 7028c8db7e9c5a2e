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


CheckpointOption = typer.Option(..., "--checkpoint", help="A run folder or its model.safetensors.")


def _load_configs(config: Optional[Path]) -> tuple[dict, dict]:
    import json

    from tinydot.errors import ConfigError

    if config is None:
        return {}, {}
    try:
        values = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read config file {config}: {err}") from None
    if not isinstance(values, dict) or set(values) - {"model", "train"}:
        raise ConfigError(f"config file {config} must be a JSON object with 'model' and/or 'train' sections")
    return values.get("model", {}), values.get("train", {})


@app.command("train")
def train_cmd(out: Path = typer.Option(..., "--out", help="Run folder (resumed if it holds an unfinished run)."),
              config: Optional[Path] = typer.Option(None, help="JSON file with 'model' and 'train' sections."),
              steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
              d_model: Optional[int] = typer.Option(None, help="Residual width."),
              n_layers: Optional[int] = typer.Option(None, help="Transformer blocks."),
              n_heads: Optional[int] = typer.Option(None, help="Attention heads."),
              lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
              seed: Optional[int] = typer.Option(None, help="Seed for weights and batch order."),
              data_dir: Optional[Path] = DataDirOption) -> None:
    """Train tinyDOT on the train split (periodic NLL on the test split)."""
    from tinydot.config import ModelConfig, TrainConfig
    from tinydot.data import load_strokes
    from tinydot.evaluation import evaluate_nll
    from tinydot.training import train

    model_values, train_values = _load_configs(config)
    overrides = {"d_model": d_model, "n_layers": n_layers, "n_heads": n_heads}
    model_values.update({k: v for k, v in overrides.items() if v is not None})
    train_values.update({k: v for k, v in {"steps": steps, "lr": lr, "seed": seed}.items() if v is not None})
    model_config, train_config = ModelConfig.from_dict(model_values), TrainConfig.from_dict(train_values)
    test = load_strokes("test", data_dir)
    result = train(load_strokes("train", data_dir), out, model_config, train_config, eval_data=test)
    nll = evaluate_nll(result.model, test)
    seconds = result.history["seconds"].iloc[-1]
    console.print(f"trained {result.model.num_params():,} parameters for {train_config.steps} steps "
                  f"in {seconds / 60:.1f} min; test NLL {nll['bits_per_step']:.4f} bits/step; checkpoint {out}")


@app.command("sample")
def sample_cmd(checkpoint: Path = CheckpointOption,
               out: Path = typer.Option(..., "--out", help="PNG file to write."),
               digit: Optional[int] = typer.Option(None, help="Digit to draw (default: a grid of all ten)."),
               n: int = typer.Option(16, "--n", help="Samples (per digit when drawing all ten)."),
               temperature: float = typer.Option(0.8, help="Softmax temperature."),
               seed: int = typer.Option(0, help="Sampling seed.")) -> None:
    """Generate digits of a requested class and draw them to a PNG grid."""
    from tinydot.sampling import save_samples

    path = save_samples(checkpoint, out, digit=digit, n=n, temperature=temperature, seed=seed)
    console.print(f"wrote {path}")


@app.command("eval")
def eval_cmd(checkpoint: Path = CheckpointOption,
             per_class: int = typer.Option(100, help="Samples per digit for recognizability."),
             temperature: float = typer.Option(0.8, help="Sampling temperature."),
             seed: int = typer.Option(0, help="Sampling seed."),
             out: Optional[Path] = typer.Option(None, "--out", help="Also write the results as JSON here."),
             data_dir: Optional[Path] = DataDirOption) -> None:
    """Test NLL (bits/step), the stroke classifier's accuracy, and recognizability of samples."""
    import json

    from tinydot.checkpoint import load_model
    from tinydot.evaluation import evaluate
    from tinydot.io import atomic_write_text

    result = evaluate(load_model(checkpoint), data_dir=data_dir, per_class=per_class,
                      temperature=temperature, seed=seed)
    console.print(f"test NLL            {result['test_bits_per_step']:.4f} bits/step "
                  f"({result['test_steps']:,} steps; start point {result['test_start_bits']:.2f} bits)")
    console.print(f"classifier accuracy {result['classifier_test_accuracy']:.2%} on the real test split")
    console.print(f"recognizability     {result['recognizability']:.2%} of {result['samples']:,} samples "
                  f"at temperature {temperature}")
    console.print("per digit           " + "  ".join(f"{d}:{p:.0%}" for d, p in enumerate(result["per_class"])))
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")


@app.command("complexity")
def complexity_cmd(out: Path = typer.Option(..., "--out", help="Folder for the tables and plots."),
                   split: str = typer.Option("train", help="train or test."),
                   measure: str = typer.Option("S", help="Measure to bin by (L, S, spectral_entropy, turning, "
                                                          "strokes, pen_up_travel, compressed_bytes)."),
                   bins: int = typer.Option(5, help="Number of equal-count quantile bins."),
                   digit: Optional[int] = typer.Option(None, help="Only this digit class."),
                   balanced: bool = typer.Option(False, help="Equal counts of every class in every bin."),
                   seed: int = typer.Option(0, help="Seed for breaking ties between equal values."),
                   data_dir: Optional[Path] = DataDirOption) -> None:
    """Per-sample complexity measures, quantile bins and histograms."""
    import numpy as np
    import pandas as pd

    from tinydot.complexity import write_complexity
    from tinydot.data import load_strokes
    from tinydot.errors import ConfigError

    strokes = load_strokes(split, data_dir)
    if digit is not None:
        if not 0 <= digit <= 9:
            raise ConfigError(f"--digit must be between 0 and 9, got {digit}")
        strokes = strokes.subset(np.flatnonzero(strokes.labels == digit))
    paths = write_complexity(strokes, measure, bins, out, balanced=balanced, seed=seed)
    summary = pd.read_csv(paths["summary"], index_col=0)
    table = Table(title=f"complexity of {len(strokes):,} {split} samples")
    for column in ("measure", "mean", "std", "min", "10%", "50%", "90%", "max"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for name, row in summary.iterrows():
        table.add_row(name, *(f"{row[c]:.3g}" for c in ("mean", "std", "min", "10%", "50%", "90%", "max")))
    console.print(table)
    edges = pd.read_csv(paths["bins"])
    console.print(f"{measure} bin edges: " + "  ".join(f"[{r.low:.3g}, {r.high:.3g}]" for r in edges.itertuples()))
    console.print(f"wrote {out}/: measures.csv, bins.csv, summary.csv, histograms.png")


def main() -> None:
    try:
        app()
    except TinydotError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
