"""The `tinydot` command line: parse arguments, call the Python API, print a short summary.

User mistakes raise `TinydotError`; `main` prints its one-line message and exits with status 2.
Each command imports the API it calls inside its own function, so that `tinydot --help` and a
mistyped command answer without loading torch, pandas and matplotlib (~4 s). For the same reason a
command first checks what needs none of them (its paths, its config file, the --domain and --preset
names), then imports; the API checks those again, in the same words, for its own callers.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich import table as rich_table
from typer.core import TyperGroup

# none of these imports torch, pandas or matplotlib
from tinydot.config import (ModelConfig, PruneConfig, TrainConfig, check_domain_name, check_preset_name,
                            check_seed)
from tinydot.errors import ConfigError, TinydotError
from tinydot.io import atomic_write_text, check_exists, check_run_folder, check_writable_dir, check_writable_file

if TYPE_CHECKING:
    from tinydot.domains import Domain

try:  # recent typer carries its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # older typer runs on click
    from click.exceptions import UsageError


def option_words(message: str, params) -> str:
    """`message` with the API's field names (top_k, bins) written as the command's options (--top-k, --bins).

    The API names a field at the start of its message ("top_k must be ...", "calibration_sequences 300
    exceeds ...", "data test:x: the digit ...") and a second one in a comparison ("... must be >=
    top_k (10)", "... exceed ..., density_runs >= 1"); only those places change, so prose ("the test sequences"),
    config-file fields ("model n_heads must be") and lists of them ("known: d_mlp, d_model") stay.
    """
    for param in params:
        flags = [opt for opt in getattr(param, "opts", ()) if opt.startswith("--")]
        if not flags or not param.name:
            continue
        name = re.escape(param.name)
        message = re.sub(rf"^{name}(?= (?:must |exceeds? |\(|\+ |\d|\S+[:,] ))", flags[0], message)
        if "_" in param.name:
            message = re.sub(rf"(?:(?<=>= )|(?<=, )|(?<=\+ )){name}(?= (?:\(|>=|<=|must ))", flags[0], message)
    return message


class _Group(TyperGroup):
    """A command group whose subcommands' user errors name their options as the user typed them."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TinydotError as err:
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            if command is not None and len(err.args) == 1 and isinstance(err.args[0], str):
                err.args = (option_words(err.args[0], command.params),)
            raise


# plain help (rich_markup_mode=None): typer's boxed help lists every flag as taking a <bool> value
app = typer.Typer(help="tinydot: data complexity, lottery tickets and prunability of a tiny transformer.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None,
                  cls=_Group)
data_app = typer.Typer(help="Inspect the data: MNIST pen strokes or Penn Treebank text.", no_args_is_help=True,
                       rich_markup_mode=None, cls=_Group)


@app.callback()
def options(verbose: bool = typer.Option(False, "--verbose", help="Let codecarbon (energy accounting) log."),
            country: Optional[str] = typer.Option(None, "--country", help="ISO 3166 code whose grid mix turns the "
                                                  "energy of every run into CO2 (default: $TINYDOT_COUNTRY, the "
                                                  "locale's territory, else USA).")) -> None:
    """Options for every command."""
    from tinydot.cost import resolve_country

    if verbose:
        os.environ["TINYDOT_VERBOSE"] = "1"
    if country is not None:  # checked here: one line if unknown or empty
        os.environ["TINYDOT_COUNTRY"] = resolve_country(country, source="--country")[0]
        os.environ["TINYDOT_COUNTRY_SOURCE"] = "--country"  # what cost.json records as its source
app.add_typer(data_app, name="data")

# long paths stay on one line when the output is piped; piped output (a log, CI) has no width, and rich
# would squeeze tables into 80 columns, so it gets 200 unless $COLUMNS says otherwise
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200)
err_console = Console(stderr=True, emoji=False, highlight=False, soft_wrap=True)  # errors and notes: one line each


class Table(rich_table.Table):
    """rich's Table whose cells fold onto a second line where the width runs out, instead of being
    cut to "1.17e+…"."""

    def add_column(self, *args, **kwargs) -> None:
        kwargs.setdefault("overflow", "fold")
        super().add_column(*args, **kwargs)


DataDirOption = typer.Option(None, "--data-dir", help="Folder with the four stroke archives "
                             "(default: $TINYDOT_DATA, else the user cache, downloading if needed); "
                             "when the data are text (a text model or study), with "
                             "ptb.train.txt, ptb.valid.txt, ptb.test.txt "
                             "(default: the treebank package).")
StrokeDataDirOption = typer.Option(None, "--data-dir", help="Folder with the four stroke archives (default: "
                                   "$TINYDOT_DATA, else the user cache, downloading if needed).")
DomainOption = typer.Option("strokes", "--domain", help="strokes (MNIST pen strokes) or text (Penn Treebank words).")


@data_app.command("info")
def data_info(data_dir: Optional[Path] = DataDirOption,
              split: Optional[str] = typer.Option(None, help="Only this split (train or test; text: or valid)."),
              domain: str = DomainOption) -> None:
    """Counts and length statistics per split: pen steps per digit class, or sentences and words."""
    check_domain_name(domain)
    from tinydot.data import SPLITS, length_summary, load_strokes
    from tinydot.domains import get_domain

    if get_domain(domain).name == "text":
        _text_info(data_dir, split)
        return
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


def _text_info(data_dir: Optional[Path], split: Optional[str]) -> None:
    from tinydot.data import count_summary, load_all_sentences, load_sentences

    splits = {split: load_sentences(split, data_dir)} if split else load_all_sentences(data_dir)
    summary = count_summary(splits)
    table = Table(title="Penn Treebank (Mikolov split): sentences and words (sentence ends not counted), "
                        "against the published counts")
    for column in ("split", "sentences", "published", "words", "published", "shared vocabulary", "match"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for r in summary.itertuples(index=False):
        table.add_row(r.split, f"{r.sentences:,}", f"{r.published_sentences:,}", f"{r.tokens:,}",
                      f"{r.published_tokens:,}", f"{r.vocabulary:,}", "yes" if r.matches else "NO")
    console.print(table)


@data_app.command("show")
def data_show(out: Path = typer.Option(..., "--out", help="PNG file to write."),
              split: str = typer.Option("test", help="train or test."),
              n: int = typer.Option(64, "--n", help="How many sequences to draw (1..400)."),
              digit: Optional[int] = typer.Option(None, help="Only this digit class (0-9)."),
              seed: int = typer.Option(0, help="Seed for picking the sequences."),
              scale: int = typer.Option(4, help="Pixels per 28x28-frame pixel (1..16)."),
              data_dir: Optional[Path] = StrokeDataDirOption) -> None:
    """Render sequences of real digits to a PNG grid."""
    from tinydot.data.render import show_grid

    path = show_grid(out, split=split, n=n, digit=digit, seed=seed, scale=scale, data_dir=data_dir)
    console.print(f"wrote {path}")


CheckpointOption = typer.Option(..., "--checkpoint", help="A run folder or its model.safetensors.")


def _load_json_object(path: Path, sections: set[str]) -> dict:
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    expected = f"a JSON object whose keys are among {', '.join(sorted(sections))}, each holding an object of fields"
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must be {expected}")
    unknown = sorted(set(values) - sections)
    if unknown:
        raise ConfigError(f"config file {path} has a section {unknown[0]!r} this command does not take; it must be "
                          f"{expected}")
    wrong = [key for key, value in values.items() if not isinstance(value, dict)]
    if wrong:
        raise ConfigError(f"config file {path}: section {wrong[0]!r} must be an object of fields; "
                          f"it must be {expected}")
    return values


def _note_short_run(train_config: TrainConfig) -> None:
    """After a run that ended before its warm-up did (e.g. --steps 30 with the default 200 warm-up
    steps), one line on stderr: allowed, but the learning rate never reached the peak the config names."""
    if train_config.warmup_steps >= train_config.steps:
        err_console.print(f"note: warmup_steps ({train_config.warmup_steps}) >= steps ({train_config.steps}): the "
                          f"learning rate never reached its peak ({train_config.lr:g}); set train.warmup_steps in a "
                          "--config file for a shorter warm-up")


def _domain_configs(chosen: Domain, model_values: dict, train_values: dict) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs of train and lottery: the chosen domain's defaults with the
    config file's and the options' values over them (a config file of the other domain is refused)."""
    if check_domain_name(model_values.get("domain", chosen.name)) != chosen.name:
        raise ConfigError(f"the config file's model domain is {model_values['domain']!r}, but the command runs "
                          f"--domain {chosen.name}; give --domain {model_values['domain']}")
    return (ModelConfig.from_dict({**chosen.model_config.non_default(), **model_values}),
            TrainConfig.from_dict({**chosen.train_config.non_default(), **train_values}))


def _load_configs(config: Optional[Path]) -> tuple[dict, dict]:
    if config is None:
        return {}, {}
    values = _load_json_object(config, {"model", "train"})
    return values.get("model", {}), values.get("train", {})


@app.command("train")
def train_cmd(out: Path = typer.Option(..., "--out", help="Run folder (resumed if it holds an unfinished run)."),
              domain: str = DomainOption,
              config: Optional[Path] = typer.Option(None, help="JSON file with 'model' and 'train' sections."),
              steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
              d_model: Optional[int] = typer.Option(None, help="Residual width."),
              d_mlp: Optional[int] = typer.Option(None, help="MLP width (default with --d-model: 4 x d_model)."),
              n_layers: Optional[int] = typer.Option(None, help="Transformer blocks."),
              n_heads: Optional[int] = typer.Option(None, help="Attention heads."),
              lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
              seed: Optional[int] = typer.Option(None, help="Seed for weights and batch order."),
              data_dir: Optional[Path] = DataDirOption) -> None:
    """Train tinyDOT on the train split (periodic NLL on the test split; text: on the valid split).

    Defaults: the stroke model, or for --domain text the text model of `tinydot.domains.TEXT`; the
    config file and the options apply over them."""
    check_writable_dir(out)
    model_values, train_values = _load_configs(config)
    check_domain_name(domain)
    from tinydot.domains import get_domain
    from tinydot.evaluation import evaluate_nll
    from tinydot.training import train

    chosen = get_domain(domain)
    overrides = {"d_model": d_model, "d_mlp": d_mlp, "n_layers": n_layers, "n_heads": n_heads}
    if d_model is not None and d_mlp is None and "d_mlp" not in model_values:
        overrides["d_mlp"] = 4 * d_model  # the recipe's MLP (both domains' defaults are 4 x d_model)
    model_config, train_config = _domain_configs(
        chosen, {**model_values, **{k: v for k, v in overrides.items() if v is not None}},
        {**train_values, **{k: v for k, v in {"steps": steps, "lr": lr, "seed": seed}.items() if v is not None}})
    held_out = chosen.load(chosen.eval_split, data_dir)
    result = train(chosen.load("train", data_dir), out, model_config, train_config, eval_data=held_out)
    test = held_out if chosen.eval_split == "test" else chosen.load("test", data_dir)
    nll = evaluate_nll(result.model, test)
    seconds = result.history["seconds"].iloc[-1]
    periodic = min(train_config.eval_sequences, len(held_out))  # what metrics.csv's held-out NLL averages over
    periodic = f"the first {periodic:,} {chosen.eval_split} {chosen.samples}" if periodic else "no held-out NLL"
    console.print(f"trained {result.model.num_params():,} parameters for {train_config.steps} steps "
                  f"in {seconds / 60:.1f} min; test NLL {chosen.describe_nll(nll)} on all {len(test):,} test "
                  f"{chosen.samples} (metrics.csv: {periodic}); checkpoint {out}")
    _note_short_run(train_config)


@app.command("sample")
def sample_cmd(checkpoint: Path = CheckpointOption,
               out: Path = typer.Option(..., "--out", help="PNG file to write."),
               digit: Optional[int] = typer.Option(None, help="Digit to draw (default: a grid of all ten)."),
               n: int = typer.Option(16, "--n", help="Samples, 1..1000 (per digit when drawing all ten)."),
               temperature: float = typer.Option(0.8, help="Softmax temperature (0.05..10)."),
               seed: int = typer.Option(0, help="Sampling seed (0..2**32-1).")) -> None:
    """Generate digits of a requested class and draw them to a PNG grid."""
    from tinydot.runs import save_samples

    path = save_samples(checkpoint, out, digit=digit, n=n, temperature=temperature, seed=seed)
    console.print(f"wrote {path}")


@app.command("eval")
def eval_cmd(checkpoint: Path = CheckpointOption,
             per_class: Optional[int] = typer.Option(None, help="Samples per digit for recognizability, "
                                                     "1..1000 (strokes; default 100)."),
             temperature: Optional[float] = typer.Option(None, help="Sampling temperature, 0.05..10 (strokes; "
                                                         "default 0.8)."),
             seed: Optional[int] = typer.Option(None, help="Sampling seed, 0..2**32-1 (strokes; default 0)."),
             out: Optional[Path] = typer.Option(None, "--out", help="Also write the results as JSON here."),
             data_dir: Optional[Path] = DataDirOption) -> None:
    """Test NLL (bits/step), the stroke classifier's accuracy, and recognizability of samples.

    A text checkpoint: test NLL in bits/word and perplexity over the whole PTB test split (every
    sentence end counted); it draws no samples, so the sampling options are refused."""
    if out is not None:
        check_writable_file(out)  # before the evaluation, which takes minutes
        if out.suffix.lower() != ".json":
            raise ConfigError(f"--out {out} must end in .json (the results are written as JSON)")
    check_exists(checkpoint, "checkpoint")
    from tinydot.checkpoint import load_model
    from tinydot.domains import get_domain
    from tinydot.evaluation import evaluate, evaluate_nll

    model = load_model(checkpoint)
    sampling = {"per_class": per_class, "temperature": temperature, "seed": seed}
    given = {name: value for name, value in sampling.items() if value is not None}  # the rest: evaluate's defaults
    if model.cfg.domain == "text":
        if given:
            options = ", ".join("--" + name.replace("_", "-") for name in given)
            one = len(given) == 1
            raise ConfigError(f"{options} only appl{'ies' if one else 'y'} to a strokes checkpoint (samples and their "
                              f"recognizability); a text checkpoint is scored on PTB test alone: drop "
                              f"{'it' if one else 'them'}")
        text = get_domain("text")
        result = evaluate_nll(model, text.load("test", data_dir))
        console.print(f"test NLL {text.describe_nll(result)} on {result['steps']:,} predictions "
                      f"({result['sequences']:,} sentences)")
        if out is not None:
            atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        return
    result = evaluate(model, data_dir=data_dir, progress=True, **given)
    console.print(f"test NLL            {result['test_bits_per_step']:.4f} bits/step "
                  f"({result['test_steps']:,} steps; start point {result['test_start_bits']:.2f} bits)")
    console.print(f"classifier accuracy {result['classifier_test_accuracy']:.2%} on the real test split")
    console.print(f"recognizability     {result['recognizability']:.2%} of {result['samples']:,} samples "
                  f"at temperature {result['temperature']}")
    console.print("per digit           " + "  ".join(f"{d}:{p:.0%}" for d, p in enumerate(result["per_class"])))
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")


def _parse_rewind(rewind: str) -> int:
    if rewind == "init":
        return 0
    if rewind.startswith("step:") and rewind[5:].isdigit():
        return int(rewind[5:])
    raise ConfigError(f"--rewind must be 'init' or 'step:K' (e.g. step:200), got {rewind!r}")


@app.command("lottery")
def lottery_cmd(out: Path = typer.Option(..., "--out", help="Run folder (finished levels are skipped on re-runs; "
                                                        "more --levels add levels)."),
                domain: str = DomainOption,
                levels: int = typer.Option(5, help="Pruning rounds after the dense run."),
                fraction: float = typer.Option(0.2, help="Fraction of surviving weights pruned per round."),
                rewind: str = typer.Option("init", help="'init' or 'step:K' (late rewinding)."),
                scope: str = typer.Option("global", help="global or layerwise."),
                epsilon: float = typer.Option(1e-3, help="A weight is used when |w| > epsilon."),
                relative_epsilon: float = typer.Option(0.05, help="Relative variant: |w| > this x tensor std."),
                controls: bool = typer.Option(True, help="Train the reinit and random-mask controls."),
                delta: float = typer.Option(0.01, help="Tolerance of the summary line: the sparsest ticket whose "
                                            "held-out NLL stays within (1 + delta) x dense (the study's needed "
                                            "density)."),
                config: Optional[Path] = typer.Option(None, help="JSON file with 'model' and 'train' sections."),
                steps: Optional[int] = typer.Option(None, help="Optimizer steps per training run."),
                eval_sequences: int = typer.Option(10_000, help="Held-out sequences (text: sentences) for each "
                                                   "level's NLL, the first ones of the test split (text: the valid "
                                                   "split)."),
                data_dir: Optional[Path] = DataDirOption) -> None:
    """Iterative magnitude pruning with rewinding, controls and used-parameter counts.

    Defaults: the stroke model, or for --domain text the text model of `tinydot.domains.TEXT`, whose
    trunk (not the word embedding) is pruned, as in the text study."""
    check_writable_dir(out)
    if eval_sequences < 1:
        raise ConfigError(f"--eval-sequences must be a positive integer, got {eval_sequences}")
    model_values, train_values = _load_configs(config)
    if steps is not None:
        train_values["steps"] = steps
    check_domain_name(domain)
    prune_values = dict(levels=levels, fraction=fraction, scope=scope, rewind_step=_parse_rewind(rewind),
                        epsilon=epsilon, relative_epsilon=relative_epsilon, controls=controls, delta=delta)
    PruneConfig(**prune_values)  # its one-line refusals before the imports
    import numpy as np

    from tinydot.domains import get_domain
    from tinydot.lottery import run_lottery
    from tinydot.report.pages import write_lottery_figures

    chosen = get_domain(domain)
    model_config, train_config = _domain_configs(chosen, model_values, train_values)
    prune_config = PruneConfig(**prune_values, prunable=chosen.prunable)
    split = chosen.load(chosen.eval_split, data_dir)
    held_out = split.subset(np.arange(min(eval_sequences, len(split))))
    result = run_lottery(chosen.load("train", data_dir), out, held_out, model_config, train_config, prune_config)
    write_lottery_figures(out)
    table = Table(title=f"lottery tickets: {chosen.eval_split} NLL in {chosen.unit} on the first {len(held_out):,} "
                        f"{chosen.eval_split} {chosen.samples}")
    columns = {"level": "level", "sparsity": "sparsity", "bits_per_step": "ticket", "reinit_bits_per_step": "reinit",
               "random_bits_per_step": "random", "unused_fraction": "unused", "unused_fraction_relative": "unused rel",
               "zeroed_bits_per_step": "zeroed"}
    for header in columns.values():
        table.add_column(header, justify="right")
    for row in result.table[list(columns)].itertuples(index=False):
        table.add_row(str(row.level), *(f"{v:.4f}" for v in row[1:]))
    console.print(table)
    best = result.stays_within(prune_config.delta)
    console.print(f"the ticket stays within {100 * prune_config.delta:g}% of dense {chosen.eval_split} NLL up to "
                  f"sparsity {best['sparsity']:.3f} (level {int(best['level'])}); wrote {out}/results.csv and "
                  "nll_vs_sparsity.png")
    _note_short_run(train_config)


@app.command("study")
def study_cmd(preset: str = typer.Option("quick", help="quick (<= 10 min on 2 cores) or paper."),
              domain: str = DomainOption,
              config: Optional[Path] = typer.Option(None, help="JSON with 'study', 'model', 'train', 'prune' "
                                                                  "sections, applied over the preset."),
              out: Path = typer.Option(Path("runs"), "--out", help="Parent folder of the run folder."),
              workers: int = typer.Option(2, help="Parallel jobs (each uses one torch thread)."),
              executor: str = typer.Option("local", help="local (process pool) or ray."),
              ray_address: Optional[str] = typer.Option(None, help="Address of a running Ray cluster."),
              data_dir: Optional[Path] = DataDirOption) -> None:
    """Complexity bins -> train -> prune until the NLL suffers -> OLS -> held-out data -> HTML report.

    The held-out data are digit classes for strokes, and for --domain text three groups of the valid split.
    The run folder is <out>/study-<hash>: the same command again resumes it (kill -9 included), as
    does giving that run folder itself as --out. Sizes other than the preset's come from --config.
    """
    overrides = _load_json_object(config, {"study", "model", "train", "prune"}) if config else None
    check_writable_dir(out)
    check_domain_name(domain)
    check_preset_name(preset)
    from tinydot.domains import get_domain
    from tinydot.study import Study, run_study

    chosen = get_domain(domain).name  # one line naming the choices, before any file is written
    study = Study.preset(preset, overrides, domain=chosen)
    result = run_study(study, out, data_dir=data_dir, executor=executor, workers=workers, ray_address=ray_address)
    from tinydot.report.html import write_study_report  # matplotlib and jinja2: not for a refused config

    report = write_study_report(result.run_dir)
    table = Table(title="OLS of each target on each complexity measure (bin jobs)")
    for column in ("target", "measure", "slope", "95% CI", "p", "R^2", "n"):
        table.add_column(column, justify="left" if column in ("target", "measure") else "right")
    for r in result.ols[result.ols["model"] != "joint"].itertuples():
        table.add_row(r.target, r.term, f"{r.coef:.4g}", f"[{r.ci_low:.3g}, {r.ci_high:.3g}]", f"{r.p_value:.3g}",
                      f"{r.r2:.3f}", str(r.n))
    console.print(table)
    held = result.validation[result.validation["target"] == "needed"] if not result.validation.empty else None
    if held is None or held.empty:
        console.print("held-out data: no needed fraction to check (fewer than 3 bin jobs, or none of the held-out "
                      "jobs, reached a pruning level past delta; see the report)")
    else:
        key = "digit" if "digit" in held else "group"
        table = Table(title=f"held-out {'classes' if key == 'digit' else 'valid groups'}: needed fraction "
                            "predicted from complexity vs measured")
        for column in (key, "measure", "predicted", "95% PI", "measured", "covered", "baseline err"):
            table.add_column(column, justify="left" if column == "measure" else "right")
        for r in held.itertuples():
            table.add_row(str(getattr(r, key)), r.predictor, f"{r.predicted:.4f}", f"[{r.pi_low:.4f}, {r.pi_high:.4f}]",
                          f"{r.measured:.4f}", "yes" if r.covered else "no", f"{r.baseline_error:+.4f}")
        console.print(table)
    console.print(f"study finished: {len(result.jobs)} jobs (this run {result.seconds / 60:.1f} min; jobs finished by "
                  f"earlier runs are kept); report {report}")


@app.command("compare")
def compare_cmd(first: Path = typer.Argument(..., help="A finished study run folder (e.g. the stroke study)."),
                second: Path = typer.Argument(..., help="Another finished study run folder (e.g. the text study)."),
                out: Path = typer.Option(..., "--out", help="Folder for compare.html and its tables.")) -> None:
    """Two studies side by side: does one domain's line predict the other's needed fraction (L, compressed_bytes)?"""
    for study in (first, second):
        check_exists(study, "study run folder")
    check_writable_dir(out)
    from tinydot.report.html import write_comparison

    path, summary, verdict = write_comparison(first, second, out)
    if not summary.empty:
        table = Table(title="one study's line predicting the other's needed fraction")
        for column in ("direction", "measure", "MAE", "baseline MAE", "PI coverage", "outside [0, 1]",
                       "beats baseline"):
            table.add_column(column, justify="left" if column in ("direction", "measure") else "right")
        for r in summary.itertuples():
            table.add_row(r.direction, r.predictor, f"{r.mae:.4f}", f"{r.baseline_mae:.4f}", f"{r.coverage:.0%}",
                          f"{r.impossible:.0%}", "yes" if r.beats_baseline else "no")
        console.print(table)
    for sentence in verdict[len(summary):]:  # the overall answer (the table said the rest)
        console.print(sentence)
    console.print(f"wrote {path}")


@app.command("predict")
def predict_cmd(study: Path = typer.Option(..., "--study", help="A finished study run folder."),
                data: str = typer.Option("test", "--data", help="SPLIT or SPLIT:DIGIT, e.g. test or train:7; "
                                         "for a text study a split: train, valid or test."),
                data_dir: Optional[Path] = DataDirOption) -> None:
    """Predict how many parameters a dataset needs from its complexity alone (no training)."""
    check_exists(study, "study run folder")
    from tinydot.data.strokes import digit_subset
    from tinydot.rightsize import parse_selection
    from tinydot.study import NO_NEEDED_LINE, load_study, predict

    domain = load_study(study)[0].domain
    train = None
    if domain.name == "strokes":
        split, digit = parse_selection(data)
        selection = digit_subset(domain.load(split, data_dir), digit)
    else:
        split, colon, _ = data.partition(":")
        if colon:
            raise ConfigError(f"--data {data}: a {domain.name} study predicts for a whole split; "
                              f"give one of {', '.join(domain.splits)}")
        selection = domain.load(split, data_dir)
        train = selection if split == "train" else domain.load("train", data_dir)  # surprisal's unigrams
    frame = predict(study, selection, train=train)
    needed = frame[frame["target"] == "needed"]
    prunable = int(frame["prunable_parameters"].iloc[0])
    if needed.empty:
        console.print(f"no needed-fraction line to predict with: {NO_NEEDED_LINE}")
    else:
        table = Table(title=f"needed fraction of {prunable:,} prunable weights for {data} ({len(selection):,} "
                            f"{domain.samples}), from complexity alone")
        for column in ("measure", "needed", "95% PI", "needed weights (PI)", "smallest model: layers x d_model "
                       "(prunable), at the prediction / PI ends", "in range"):
            table.add_column(column, justify="left" if column.startswith(("measure", "smallest")) else "right")
        for r in needed.itertuples():
            table.add_row(r.model, f"{r.mean:.4f}", f"[{r.pi_low:.4f}, {r.pi_high:.4f}]",
                          f"{r.needed_parameters_mean:,.0f} [{r.needed_parameters_pi_low:,.0f}, "
                          f"{r.needed_parameters_pi_high:,.0f}]", r.recommended_model,
                          "yes" if r.within_range else "no")
        console.print(table)
    for title, targets in (("the dense network's unused weights, predicted (fractions of the prunable weights)",
                            ("unused", "untouched", "trained_to_small")),
                           ("compression, predicted (neurons: fraction of the MLP's neurons kept; bits: bits per "
                            "weight / 32)", ("neurons", "bits"))):
        rows = frame[frame["target"].isin(targets)]
        if rows.empty:  # a study without compression targets
            continue
        table = Table(title=title)
        for column in ("target", "measure", "predicted", "95% CI", "95% PI"):
            table.add_column(column, justify="left" if column in ("target", "measure") else "right")
        for r in rows.itertuples():
            table.add_row(r.target, r.model, f"{r.mean:.4f}", f"[{r.ci_low:.4f}, {r.ci_high:.4f}]",
                          f"[{r.pi_low:.4f}, {r.pi_high:.4f}]")
        console.print(table)


@app.command("rightsize")
def rightsize_cmd(study: Path = typer.Option(..., "--study", help="A finished study run folder."),
                  data: str = typer.Option("train", "--data", help="SPLIT or SPLIT:DIGIT to train on, e.g. "
                                           "train:1; for a text study: train."),
                  predictor: Optional[str] = typer.Option(None, help="Complexity measure whose line predicts "
                                                          "(default: the best on the study's held-out classes "
                                                          "or groups)."),
                  data_dir: Optional[Path] = DataDirOption) -> None:
    """Train the model the study predicts is enough beside the study's own; compare cost and quality.

    Trains two models on the selection (the study's and the smaller one; each resumable) into
    <study>/rightsize/<split>-<digit|all>/, then rewrites the study's report with the comparison.
    """
    check_exists(study, "study run folder")
    from tinydot.report.html import write_study_report
    from tinydot.rightsize import run_rightsize

    result = run_rightsize(study, data, data_dir=data_dir, predictor=predictor)
    summary = result["summary"]
    table = Table(title=f"right-sizing for {data}: predicted needed fraction "
                        f"{summary['predicted_needed_fraction']:.3f} (95% PI [{summary['pi'][0]:.3f}, "
                        f"{summary['pi'][1]:.3f}], by {summary['predictor']})")
    for column in ("model", "layers x d_model", "parameters", "train FLOPs", "CPU s", "energy (Wh)",
                   f"test NLL ({summary['unit']})", "recognizable"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in result["table"].itertuples():
        energy = "n/a" if r.energy_kwh is None or r.energy_kwh != r.energy_kwh else f"{1000 * r.energy_kwh:.3f}"
        recognizable = "n/a" if r.recognizability is None else f"{r.recognizability:.0%}"  # text: no classes
        table.add_row(r.model, f"{r.n_layers} x {r.d_model}", f"{r.parameters:,}", f"{r.train_flops:.3g}",
                      f"{r.cpu_seconds:.1f}", energy, f"{r.test_bits_per_step:.4f}", recognizable)
    console.print(table)
    limit = f"{100 * summary['delta']:g}%"
    verdict = (f"stays within {limit} of" if summary["within_delta"] else f"is more than {limit} worse than") + \
        f" the reference's test NLL ({100 * summary['nll_change']:+.1f}%)"
    measured = str(result["table"]["energy_mode"].iloc[0]).startswith("measured")
    cpu = summary.get("cpu_saved")
    cpu = ("" if cpu is None else f" and {100 * cpu:.0f}% less CPU time" if cpu >= 0 else
           f" but {-100 * cpu:.0f}% more CPU time (at this size per-call overheads, not FLOPs, set a step's time)")
    console.print(f"the right-sized model {verdict}, with "
                  f"{100 * summary['flops_saved']:.0f}% fewer training FLOPs{cpu}; energy is "
                  f"{'measured' if measured else 'an estimate'} (see cost.json); wrote {result['run_dir']}")
    write_study_report(study)


@app.command("hessian")
def hessian_cmd(checkpoint: Path = CheckpointOption,
                out: Path = typer.Option(..., "--out", help="Folder for tables and plots."),
                top_k: int = typer.Option(10, help="Top eigenvalues (Lanczos)."),
                density: bool = typer.Option(False, "--density", help="Also estimate the spectral density (SLQ)."),
                sequences: int = typer.Option(64, help="Train sequences (text: sentences) in the fixed loss sample."),
                lanczos_steps: int = typer.Option(60, help="Lanczos iterations (top eigenvalues and each SLQ run; "
                                                  "at most 500)."),
                trace_samples: int = typer.Option(50, help="Hutchinson probes for the trace."),
                density_runs: int = typer.Option(5, help="Independent SLQ runs for the density."),
                seed: int = typer.Option(0, help="Seed for the sample and the random vectors."),
                data_dir: Optional[Path] = DataDirOption) -> None:
    """Hessian of the training loss: top eigenvalues, trace, density, bulk/outlier split."""
    check_writable_dir(out)  # write_hessian's first checks, then its checkpoint's
    check_seed(seed)
    check_exists(checkpoint, "checkpoint")
    from tinydot.domains import get_domain
    from tinydot.report.pages import write_hessian_figures
    from tinydot.runs import write_hessian

    summary = write_hessian(checkpoint, out, top_k=top_k, density=density, sequences=sequences,
                            lanczos_steps=lanczos_steps, trace_samples=trace_samples, density_runs=density_runs,
                            seed=seed, data_dir=data_dir)
    write_hessian_figures(out)
    console.print(f"{summary['coordinates']:,} coordinates{' (surviving weights only)' if summary['pruned'] else ''}; "
                  f"loss {summary['loss_nats']:.4f} nats on {sequences} {get_domain(summary['domain']).samples}")
    console.print("top eigenvalues: " + ", ".join(f"{v:.4g}" for v in summary["top_eigenvalues"]))
    slq = f"; SLQ trace {summary['density_trace']:.4g}" if density else ""
    if density and density_runs > 1:  # one run has no spread (its standard error is NaN)
        slq += f" +- {summary['density_trace_stderr']:.2g}"
    console.print(f"trace (Hutchinson) {summary['trace']:.4g} +- {summary['trace_stderr']:.2g}; "
                  f"outliers {summary['outliers']}{slq}")
    console.print(f"wrote {out}/")


@app.command("svcca")
def svcca_cmd(checkpoint: list[Path] = typer.Option(..., "--checkpoint", help="A run folder or file; repeat the "
                                                      "option for a second (--checkpoint A --checkpoint B)."),
              out: Path = typer.Option(..., "--out", help="Folder for tables and plots."),
              sequences: int = typer.Option(500, help="Test sequences (text: sentences) whose positions are compared "
                                                "(at least 2)."),
              keep: float = typer.Option(0.99, help="Share of variance each SVD keeps."),
              data_dir: Optional[Path] = DataDirOption) -> None:
    """SVCCA similarity between layers (of one checkpoint, or across two) and intrinsic dimensionality."""
    check_writable_dir(out)
    for path in checkpoint:
        check_exists(path, "checkpoint")
    from tinydot.report.pages import write_svcca_figures
    from tinydot.runs import write_svcca

    result = write_svcca(checkpoint, out, sequences=sequences, keep=keep, data_dir=data_dir)
    write_svcca_figures(out)
    console.print(result["similarity"].round(3).to_string())
    console.print(result["dims"].to_string(index=False))
    console.print(f"wrote {out}/")


@app.command("redundancy")
def redundancy_cmd(model: str = typer.Option(..., "--model", help="'minilm', a Hugging Face model folder, or a "
                                              "tinyDOT checkpoint (file or run folder)."),
                   task: str = typer.Option(..., "--task", help="ner or pos (text models); digit or pen (tinyDOT)."),
                   out: Path = typer.Option(..., "--out", help="Folder for activations, tables, figures, "
                                            "section.html."),
                   tokens: int = typer.Option(10_000, help="Tokens (words or pen positions) to analyse (>= 200), "
                                              "split about 80/10/10 by whole sentences or sequences: a few hundred "
                                              "can leave dev or test under their 10 tokens."),
                   seed: int = typer.Option(0, help="Seed for the token sample and the split."),
                   threshold: float = typer.Option(0.3, help="Correlation-clustering cut c of the task pipeline."),
                   alpha: Optional[float] = typer.Option(None, help="Elastic-net strength of the probes "
                                                         "(default: chosen on dev from 1e-3, 1e-4, 1e-5)."),
                   data_dir: Optional[Path] = DataDirOption) -> None:
    """General and task-specific redundancy of a transformer (Dalvi et al. 2020)."""
    check_writable_dir(out)
    from tinydot.redundancy import RedundancyConfig, run_redundancy
    from tinydot.report.html import redundancy_verdict, write_redundancy_report

    config = RedundancyConfig(model=model, task=task, tokens=tokens, seed=seed, threshold=threshold, alpha=alpha)
    summary = run_redundancy(config, out, data_dir=data_dir)
    report = write_redundancy_report(out)
    for sentence in redundancy_verdict(summary):
        console.print(escape(sentence))
    fractions = ", ".join(f"c={c}: {100 * f:.0f}%" for c, f in summary["redundant_fraction"].items())
    console.print(f"redundant neurons by threshold: {fractions}")
    console.print(f"wrote {report} (and section.html, figures, tables)")


@app.command("complexity")
def complexity_cmd(out: Path = typer.Option(..., "--out", help="Folder for the tables and plots."),
                   split: str = typer.Option("train", help="train or test (text: or valid)."),
                   measure: Optional[str] = typer.Option(None, help="Measure to bin by: strokes L, S (default), "
                                                         "spectral_entropy, turning, strokes, pen_up_travel, "
                                                         "compressed_bytes; text L, compressed_bytes, surprisal "
                                                         "(default), type_token_ratio."),
                   bins: int = typer.Option(5, help="Number of equal-count quantile bins."),
                   digit: Optional[int] = typer.Option(None, help="Only this digit class."),
                   balanced: bool = typer.Option(False, help="Equal counts of every class in every bin (each class "
                                                 "ranked within itself: bin ranges overlap)."),
                   seed: int = typer.Option(0, help="Seed for breaking ties between equal values."),
                   domain: str = DomainOption,
                   data_dir: Optional[Path] = DataDirOption) -> None:
    """Per-sample complexity measures, quantile bins and histograms."""
    check_writable_dir(out)
    check_seed(seed)
    check_domain_name(domain)
    import numpy as np
    import pandas as pd

    from tinydot.data.strokes import digit_subset
    from tinydot.domains import get_domain
    from tinydot.report.pages import write_complexity_figures
    from tinydot.runs import write_complexity

    chosen = get_domain(domain)
    main_measure = {"strokes": "S", "text": "surprisal"}[chosen.name]
    measure = measure or main_measure
    chosen.check_measure(measure)
    if chosen.name == "text":
        if digit is not None:
            raise ConfigError("--digit is for strokes; the text domain has no digit classes")
        data = chosen.load(split, data_dir)
        paths = write_complexity(data, measure, bins, out, balanced=balanced, seed=seed,
                                 train=chosen.load("train", data_dir))
    else:
        whole = chosen.load(split, data_dir)
        data = digit_subset(whole, digit)
        index = None if digit is None else np.flatnonzero(whole.labels == digit)  # positions in the split
        paths = write_complexity(data, measure, bins, out, balanced=balanced, seed=seed, index=index)
    write_complexity_figures(out)
    summary = pd.read_csv(paths["summary"], index_col=0)
    table = Table(title=f"complexity of {len(data):,} {split} samples")
    for column in ("measure", "mean", "std", "min", "10%", "50%", "90%", "max"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for name, row in summary.iterrows():
        table.add_row(name, *(f"{row[c]:.3g}" for c in ("mean", "std", "min", "10%", "50%", "90%", "max")))
    console.print(table)
    edges = pd.read_csv(paths["bins"])
    console.print(f"{measure} bin edges: " + "  ".join(f"[{r.low:.3g}, {r.high:.3g}]" for r in edges.itertuples()))
    correlations = pd.read_csv(paths["correlations"], index_col=0)
    pairs = dict.fromkeys([("L", main_measure), ("L", measure)] if measure != "L" else [("L", main_measure)])
    console.print("Pearson " + "; ".join(f"r({a}, {b}) = {correlations.loc[a, b]:.3f}" for a, b in pairs))
    console.print(f"wrote {out}/: measures.csv, bins.csv, summary.csv, correlations.csv, histograms.png")


@app.command("report")
def report_cmd(run: Path = typer.Argument(..., help="A finished run folder (study, redundancy, lottery, "
                                                  "hessian, svcca, complexity, compress or quantize).")) -> None:
    """(Re)write the figures and HTML pages of a finished run folder from its tables."""
    check_run_folder(run)  # write_report's first check, before its imports
    from tinydot.report.pages import write_report

    for path in write_report(run):
        console.print(f"wrote {path}")


@app.command("compress")
def compress_cmd(checkpoint: Path = CheckpointOption,
                 out: Path = typer.Option(..., "--out", help="Run folder (finished rounds are skipped on re-runs)."),
                 heads: float = typer.Option(0.0, help="Fraction of each block's attention heads to remove."),
                 neurons: float = typer.Option(0.0, help="Fraction of each block's MLP neurons to remove."),
                 layers: float = typer.Option(0.0, help="Fraction of the blocks to remove."),
                 importance: str = typer.Option("taylor", help="taylor (first-order, on held-out sequences) "
                                                "or magnitude."),
                 rounds: int = typer.Option(1, help="Removal rounds, each re-scoring the current model."),
                 finetune_steps: int = typer.Option(0, help="Fine-tuning steps after each round (0: none)."),
                 finetune_lr: float = typer.Option(1e-3, help="Peak learning rate of the fine-tuning."),
                 eval_sequences: int = typer.Option(2000, help="Test sequences for the NLL (the first ones)."),
                 score_sequences: int = typer.Option(1000, help="Held-out test sequences for taylor scores "
                                                     "(the last ones)."),
                 seed: int = typer.Option(0, help="Seed of the fine-tuning batch order."),
                 data_dir: Optional[Path] = DataDirOption) -> None:
    """Structured pruning: remove attention heads, MLP neurons or blocks and rebuild a smaller model."""
    check_writable_dir(out)
    check_exists(checkpoint, "checkpoint")
    import math

    from tinydot.compress import run_compress
    from tinydot.report.compression import compression_domain, write_compress_figures

    table = run_compress(checkpoint, out, heads=heads, neurons=neurons, layers=layers, importance=importance,
                         rounds=rounds, finetune_steps=finetune_steps, finetune_lr=finetune_lr,
                         eval_sequences=eval_sequences, score_sequences=score_sequences, seed=seed, data_dir=data_dir)
    domain = compression_domain(out)
    figure = write_compress_figures(out, domain.unit)
    result = Table(title=f"structured pruning ({importance}): test NLL in {domain.unit} on {eval_sequences:,} "
                         f"{domain.samples}")
    for column in ("round", "layers", "heads per block", "d_mlp", "params", "NLL", "fine-tuned"):
        result.add_column(column, justify="right")
    for r in table.itertuples():
        result.add_row(str(r.round), str(r.n_layers), str(r.n_heads), str(r.d_mlp), f"{r.params:,}",
                       f"{r.bits_per_step:.4f}",
                       "" if math.isnan(r.finetuned_bits_per_step) else f"{r.finetuned_bits_per_step:.4f}")
    console.print(result)
    console.print(f"wrote {out}/model.safetensors, results.csv and {figure.name}")


@app.command("quantize")
def quantize_cmd(checkpoint: Path = CheckpointOption,
                 out: Path = typer.Option(..., "--out", help="Run folder (finished bit widths are skipped)."),
                 bits: list[int] = typer.Option([4], "--bits", help="Bits per weight, 2..8 (repeat for several)."),
                 method: str = typer.Option("gpfq", help="gpfq (greedy path following, calibrated) or rtn."),
                 calibration_sequences: int = typer.Option(256, help="Training sequences that calibrate GPFQ."),
                 eval_sequences: int = typer.Option(2000, help="Test sequences for the NLL (the first ones)."),
                 seed: int = typer.Option(0, help="Seed choosing the calibration sequences."),
                 data_dir: Optional[Path] = DataDirOption) -> None:
    """Post-training quantization of every Linear and Embedding weight (per-channel, symmetric)."""
    check_writable_dir(out)
    check_exists(checkpoint, "checkpoint")
    from tinydot.compress import run_quantize
    from tinydot.report.compression import compression_domain, write_compress_figures

    table = run_quantize(checkpoint, out, bits=tuple(bits), method=method,
                         calibration_sequences=calibration_sequences, eval_sequences=eval_sequences, seed=seed,
                         data_dir=data_dir)
    domain = compression_domain(out)
    figure = write_compress_figures(out, domain.unit)
    result = Table(title=f"quantization: test NLL in {domain.unit} on {eval_sequences:,} {domain.samples}")
    for column in ("bits", "method", "NLL", "change", "stored bits/weight", "file bytes", "vs float32"):
        result.add_column(column, justify="right")
    for r in table.itertuples():
        result.add_row(str(r.bits), r.method, f"{r.bits_per_step:.4f}", f"{r.relative_change:+.2%}",
                       f"{r.bits_per_weight:.2f}", f"{r.file_bytes:,}", f"{r.size_ratio:.3f}")
    console.print(result)
    console.print(f"wrote {out}/bits_<b>/ (quantized.safetensors, model.safetensors), results.csv and {figure.name}")


# OS errors that a user's paths or machine cause (the commands check their paths first; this catches the
# rest, e.g. a disk that fills up mid-run); others, such as a missing internal file, stay tracebacks
_USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EEXIST,
                   errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}


def _print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}")


def main() -> None:
    try:
        code = app(standalone_mode=False)  # so that parser errors reach the handlers below
    except UsageError as err:  # a missing option, a value of the wrong type, an unknown command ...
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `tinydot` / `tinydot data`: its message is the help
            typer.echo(err.format_message())
        else:
            hint = f" (see `{err.ctx.command_path} --help`)" if getattr(err, "ctx", None) is not None else ""
            _print_error(err.format_message() + hint)
        sys.exit(2)
    except typer.Abort:
        _print_error("aborted")
        sys.exit(1)
    except TinydotError as err:
        _print_error(str(err))
        sys.exit(2)
    except OSError as err:
        if err.errno not in _USER_OS_ERRORS or err.filename is None:
            raise
        _print_error(f"{err.filename}: {err.strerror}")
        sys.exit(2)
    if code == 130:  # Ctrl-C
        err_console.print("interrupted: the same command run again resumes where it stopped (train, lottery, study, "
                          "rightsize, compress and quantize keep their finished work)")
    if isinstance(code, int) and code:  # --help and interrupts end in an exit code (Ctrl-C: 130)
        sys.exit(code)


if __name__ == "__main__":
    main()
