"""Frozen configuration dataclasses, validated on construction.

A configuration is data: it round-trips through JSON (`to_dict` / `from_dict`), and its canonical
JSON of *non-default* fields gives a short hash (`config_hash`) that names run folders, so adding
a new option with a default does not rename old runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from tinydot.errors import ConfigError

T = TypeVar("T")
MAX_SEED = 2**32 - 1  # numpy and torch both take every seed in 0..MAX_SEED

DOMAIN_NAMES = ("strokes", "text")  # tinydot.domains registers one Domain under each name
PRESET_NAMES = ("quick", "paper")  # tinydot.study.PRESETS holds one study of each name per domain


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def did_you_mean(name: Any, choices) -> str:
    """' (did you mean X?)' for the choice closest to a mistyped `name` (the same name in another case
    first: 's' -> 'S'), or ''."""
    if not isinstance(name, str):
        return ""
    same = [choice for choice in choices if choice.lower() == name.lower()]
    close = same or difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def check_domain_name(name: Any) -> str:
    """`name` if it names a domain (DOMAIN_NAMES); a one-line ConfigError naming the choices otherwise."""
    _check(isinstance(name, str) and name in DOMAIN_NAMES,
           f"unknown domain {name!r}{did_you_mean(name, DOMAIN_NAMES)}; choose {' or '.join(DOMAIN_NAMES)}")
    return name


def check_preset_name(name: Any) -> str:
    """`name` if it names a study preset (PRESET_NAMES); a one-line ConfigError otherwise."""
    _check(isinstance(name, str) and name in PRESET_NAMES,
           f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return name


def is_integer(value: Any) -> bool:
    """An integer (Python or numpy), and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_seed(seed: Any, what: str = "seed") -> int:
    """The one rule for every seed in tinydot: an integer in 0..MAX_SEED (2**32 - 1)."""
    _check(is_integer(seed) and 0 <= seed <= MAX_SEED,
           f"{what} must be an integer between 0 and {MAX_SEED}, got {seed!r}")
    return int(seed)


def changes(stored: dict, given: dict) -> list[str]:
    """Where two configurations (dicts of sections, each a dict of fields, or of plain values)
    differ, as "section.field stored -> given" or "key stored -> given"; empty when they agree."""
    changed = []
    for key in sorted(set(stored) | set(given)):
        old, new = stored.get(key), given.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += [f"{key}.{field} {old.get(field)!r} -> {new.get(field)!r}"
                        for field in sorted(set(old) | set(new)) if old.get(field) != new.get(field)]
        elif old != new:
            changed.append(f"{key} {old!r} -> {new!r}")
    return changed


def _is_json_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_json_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# annotation of a config field -> (test of a value, what the message says it must be); only
# Python's own types, so that every config goes to JSON and back unchanged
_FIELD_TYPES = {
    "int": (_is_json_int, "an integer"),
    "float": (_is_json_number, "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "tuple[str, ...]": (lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v), "a list of strings"),
    "tuple[int, ...]": (lambda v: isinstance(v, tuple) and all(_is_json_int(x) for x in v), "a list of integers"),
}


class _Config:
    """JSON round trip, hashing and the type and integer checks shared by the config dataclasses."""

    def _check_types(self, section: str) -> None:
        """Every field holds a value of its annotated type (`X | None` also allows null).

        The one place where types are checked: a string, null or bool where a number belongs (or a
        number where a list belongs) fails here, on construction, with the field and value named.
        """
        for f in fields(self):
            annotation = f.type if isinstance(f.type, str) else f.type.__name__ if isinstance(f.type, type) \
                else str(f.type)  # annotations are strings here; types when a module does not postpone them
            kind = annotation.removesuffix(" | None")
            optional = kind != annotation
            if kind not in _FIELD_TYPES:  # a bug: a new kind of field needs its check here
                raise TypeError(f"{type(self).__name__}.{f.name}: no type check for {annotation!r} in _FIELD_TYPES")
            test, expected = _FIELD_TYPES[kind]
            value = getattr(self, f.name)
            if not (test(value) or (optional and value is None)):
                shown = f"{value!r} ({type(value).__name__})" if value is not None else "null"
                raise ConfigError(f"{section} {f.name} must be {expected}{' or null' if optional else ''}, "
                                  f"got {shown}")

    def _check_ints(self, section: str, names: tuple[str, ...], minimum: int) -> None:
        kind = {0: "a non-negative", 1: "a positive"}[minimum]
        for name in names:
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
                   f"{section} {name} must be {kind} integer, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any]) -> T:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        return cls(**values)

    def non_default(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


def config_hash(*configs: _Config, length: int = 10, extra: dict | None = None) -> str:
    """Short stable hash of the non-default fields of `configs` (names the run folder); `extra`
    (e.g. an edition number of what a stage computes) joins the payload when given."""
    payload = {type(c).__name__: c.non_default() for c in configs}
    if extra:
        payload.update(extra)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


ACTIVATIONS = ("gelu", "relu")  # tinydot.model maps each name to its torch function


@dataclass(frozen=True)
class ModelConfig(_Config):
    """tinyDOT's shape. Stored with every checkpoint, so a checkpoint alone rebuilds its model."""

    n_layers: int = field(default=3, metadata={"help": "transformer blocks"})
    d_model: int = field(default=64, metadata={"help": "residual stream width"})
    n_heads: int = field(default=1, metadata={"help": "attention heads (tinyDOT: single head)"})
    d_mlp: int = field(default=256, metadata={"help": "hidden width of each block's MLP"})
    max_len: int = field(default=118, metadata={
        "help": "positions (strokes: the start point + up to 116 steps need 117; one spare)"})
    max_move: int = field(default=28, metadata={"help": "largest |dx|, |dy| the model can emit"})
    n_classes: int = field(default=10, metadata={"help": "digit classes to condition on"})
    d_head: int = field(default=0, metadata={
        "help": "width of each attention head (0: d_model // n_heads); set when heads were removed"})
    activation: str = field(default="gelu", metadata={
        "help": "MLP and dy-head nonlinearity: gelu (exact, the default) or relu (a faster step on CPU)"})
    # the text domain (tinydot.model.TextDOT); the defaults keep stroke configs, hashes and checkpoints as they were
    domain: str = field(default="strokes", metadata={"help": "strokes (pen steps) or text (words)"})
    vocab_size: int = field(default=0, metadata={"help": "text: words in the vocabulary, <eos> included"})
    tie_embeddings: bool = field(default=True, metadata={
        "help": "text: the output softmax reuses the input word embeddings"})

    def __post_init__(self):
        self._check_types("model")
        self._check_ints("model", ("n_layers", "d_model", "n_heads", "d_mlp", "max_len", "max_move", "n_classes"), 1)
        self._check_ints("model", ("d_head",), 0)
        _check(self.d_head > 0 or self.d_model % self.n_heads == 0,
               f"model d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}), "
               f"or d_head must be given")
        _check(self.max_len >= 3, f"model max_len must be >= 3, got {self.max_len}")
        _check(self.activation in ACTIVATIONS,
               f"unknown model activation {self.activation!r}; choose {' or '.join(ACTIVATIONS)}")
        self._check_domain()

    def _check_domain(self) -> None:
        _check(self.domain in DOMAIN_NAMES,
               f"unknown model domain {self.domain!r}; choose {' or '.join(DOMAIN_NAMES)}")
        _check(isinstance(self.tie_embeddings, bool), f"model tie_embeddings must be true or false, "
                                                      f"got {self.tie_embeddings!r}")
        if self.domain == "text":
            _check(isinstance(self.vocab_size, int) and not isinstance(self.vocab_size, bool) and self.vocab_size >= 2,
                   f"model vocab_size must be an integer >= 2 for the text domain, got {self.vocab_size!r}")
            defaults = {f.name: f.default for f in fields(self)}  # options a text model would silently ignore
            _check(self.max_move == defaults["max_move"] and self.n_classes == defaults["n_classes"],
                   "model max_move and n_classes are stroke options; leave them out for the text domain")
        else:  # options a stroke model would silently ignore
            _check(self.max_move >= 28, f"model max_move must be >= 28 to reach every start point, got {self.max_move}")
            _check(self.vocab_size == 0 and self.tie_embeddings,
                   "model vocab_size and tie_embeddings are text options; leave them out for the strokes domain")

    @property
    def head_width(self) -> int:
        """Width of one attention head; the attention's inner width is n_heads * head_width."""
        return self.d_head or self.d_model // self.n_heads


@dataclass(frozen=True)
class TrainConfig(_Config):
    """How to train: AdamW with linear warmup then cosine decay, gradient clipping, length buckets."""

    steps: int = field(default=4000, metadata={"help": "optimizer steps"})
    tokens_per_batch: int = field(default=8192, metadata={"help": "target tokens per batch (bucketed)"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate"})
    min_lr_ratio: float = field(default=0.05, metadata={"help": "final lr as a fraction of the peak"})
    warmup_steps: int = field(default=200, metadata={"help": "linear warmup steps"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW decay on matrices and embeddings"})
    beta2: float = field(default=0.99, metadata={"help": "AdamW beta2"})
    grad_clip: float = field(default=1.0, metadata={"help": "max global grad norm (0: off)"})
    eval_every: int = field(default=500, metadata={"help": "evaluate every N steps (0: only at the end)"})
    checkpoint_every: int = field(default=500, metadata={"help": "checkpoint every N steps (0: only at the end)"})
    eval_sequences: int = field(default=2000, metadata={"help": "held-out sequences for periodic evaluation"})
    seed: int = field(default=0, metadata={"help": "seeds the initial weights and the batch order"})

    def __post_init__(self):
        self._check_types("train")
        self._check_ints("train", ("steps", "tokens_per_batch"), 1)
        self._check_ints("train", ("warmup_steps", "eval_every", "checkpoint_every", "eval_sequences"), 0)
        check_seed(self.seed, "train seed")
        _check(self.tokens_per_batch >= 118, f"train tokens_per_batch must be >= 118 (one full sequence), "
                                             f"got {self.tokens_per_batch}")
        _check(0 < self.lr <= 1, f"train lr must be in (0, 1], got {self.lr}")
        _check(0 <= self.min_lr_ratio <= 1, f"train min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.weight_decay >= 0, f"train weight_decay must be >= 0, got {self.weight_decay}")
        _check(0 < self.beta2 < 1, f"train beta2 must be in (0, 1), got {self.beta2}")
        _check(self.grad_clip >= 0, f"train grad_clip must be >= 0, got {self.grad_clip}")


@dataclass(frozen=True)
class PruneConfig(_Config):
    """Iterative magnitude pruning with rewinding, its controls, and the 'used parameter' threshold."""

    levels: int = field(default=5, metadata={"help": "pruning rounds after the dense run"})
    fraction: float = field(default=0.2, metadata={"help": "fraction of surviving weights pruned per round"})
    scope: str = field(default="global", metadata={"help": "global or layerwise magnitude ranking"})
    rewind_step: int = field(default=0, metadata={"help": "rewind survivors to their weights at this step (0: init)"})
    epsilon: float = field(default=1e-3, metadata={"help": "a weight is used when |w| > epsilon"})
    relative_epsilon: float = field(default=0.05, metadata={"help": "or when |w| > this x its tensor's std"})
    controls: bool = field(default=True, metadata={"help": "also train the reinit and random-mask controls"})
    delta: float = field(default=0.01, metadata={
        "help": "needed density: the sparsest ticket whose NLL stays within (1 + delta) x the dense NLL"})
    prunable: tuple[str, ...] | None = field(default=None, metadata={
        "help": "fnmatch patterns of prunable parameters (default: Linear and Embedding weights)"})

    def __post_init__(self):
        if isinstance(self.prunable, list):
            object.__setattr__(self, "prunable", tuple(self.prunable))
        self._check_types("prune")
        _check(self.prunable is None or len(self.prunable) >= 1,
               "prune prunable must list at least one pattern, or be null for the default")
        _check(self.levels >= 1, f"prune levels must be >= 1, got {self.levels!r}")
        _check(0 < self.fraction < 1, f"prune fraction must be in (0, 1), got {self.fraction}")
        _check(self.scope in ("global", "layerwise"), f"prune scope must be global or layerwise, got {self.scope!r}")
        self._check_ints("prune", ("rewind_step",), 0)
        _check(self.epsilon >= 0, f"prune epsilon must be >= 0, got {self.epsilon}")
        _check(self.relative_epsilon >= 0, f"prune relative_epsilon must be >= 0, got {self.relative_epsilon}")
        _check(0 < self.delta < 1,
               f"prune delta must be in (0, 1) (a relative NLL tolerance, e.g. 0.01), got {self.delta}")


@dataclass(frozen=True)
class StudyConfig(_Config):
    """The complexity -> needed-parameters experiment: which measures, bins, seeds and held-out classes."""

    measures: tuple[str, ...] = field(default=("L", "S"), metadata={"help": "complexity measures to bin by"})
    predictors: tuple[str, ...] = field(default=("L", "S", "compressed_bytes", "spectral_entropy"), metadata={
        "help": "complexity measures that compete as predictors (each job records its mean of each)"})
    held_out_classes: tuple[int, ...] = field(default=(1, 5, 8), metadata={
        "help": "digit classes kept out of the bins: trained and pruned on their own, predicted, compared"})
    bins: int = field(default=4, metadata={"help": "equal-count quantile bins per measure"})
    seeds: int = field(default=1, metadata={"help": "seeds per bin (seed s: initial weights and batch order)"})
    balanced: bool = field(default=False, metadata={"help": "equal class counts in every bin"})
    held_out_fraction: float = field(default=0.1, metadata={"help": "share of each bin kept for its test NLL"})
    max_train_per_bin: int = field(default=0, metadata={"help": "cap on training sequences per bin (0: none)"})
    sample_digits: bool = field(default=True, metadata={"help": "draw digits from each bin's model for the report"})
    compression_targets: bool = field(default=False, metadata={
        "help": "also find, per job, the fewest MLP neurons and the fewest bits (GPFQ) within delta of dense"})
    # the text domain (tinydot.study: held-out valid groups instead of digit classes); the defaults
    # keep stroke study configs and their hashes as they were
    domain: str = field(default="strokes", metadata={"help": "strokes (pen steps) or text (words)"})
    held_out_measure: str = field(default="", metadata={
        "help": "text: the measure whose valid-split tertiles form the three held-out groups "
                "(not a binning measure); empty for strokes, which hold out digit classes"})

    def __post_init__(self):
        for name in ("measures", "predictors", "held_out_classes"):
            value = getattr(self, name)
            if isinstance(value, (list, str, int)) and not isinstance(value, bool):
                object.__setattr__(self, name, tuple([value] if isinstance(value, (str, int)) else value))
        _check(len(self.predictors) >= 1 and all(isinstance(m, str) for m in self.predictors),
               "study predictors must name at least one measure")
        _check(all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 9 for c in self.held_out_classes)
               and len(set(self.held_out_classes)) == len(self.held_out_classes) and len(self.held_out_classes) <= 7,
               f"study held_out_classes must be distinct digits 0..9 (at most 7, so that bins remain), "
               f"got {self.held_out_classes!r}")
        self._check_types("study")
        _check(len(self.measures) >= 1, "study measures must name at least one measure")
        _check(len(set(self.measures)) == len(self.measures), "study measures must not repeat")
        _check(self.bins >= 3,
               f"study bins must be an integer >= 3 (a line through fewer points has no error estimate), "
               f"got {self.bins!r}")
        self._check_ints("study", ("seeds",), 1)
        _check(0 < self.held_out_fraction < 0.5,
               f"study held_out_fraction must be in (0, 0.5), got {self.held_out_fraction}")
        self._check_ints("study", ("max_train_per_bin",), 0)
        _check(self.domain in DOMAIN_NAMES, f"unknown study domain {self.domain!r}; choose {' or '.join(DOMAIN_NAMES)}")
        if self.domain == "strokes":  # text options a stroke study would silently ignore
            _check(self.held_out_measure == "", "study held_out_measure is a text option (strokes hold out "
                                                "held_out_classes); leave it out for the strokes domain")
        else:  # stroke options a text study would silently ignore
            _check(not self.held_out_classes and not self.balanced and not self.sample_digits,
                   "study held_out_classes, balanced and sample_digits are stroke options; the text study holds "
                   "out valid groups (held_out_measure): leave them out, or set them to [], false, false")
            _check(self.held_out_measure not in ("", *self.measures),
                   f"study held_out_measure must be a text measure that is not a binning measure "
                   f"({', '.join(self.measures)}), got {self.held_out_measure!r}")
