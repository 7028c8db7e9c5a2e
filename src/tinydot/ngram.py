"""Count-based reference language models for the text domain: unigram and bigram perplexity.

Cheap sanity baselines (numpy counts, no Kneser-Ney) that a trained text model must beat by far.
Everything works on token *streams*: a split as one running sequence of ids with <eos> after
every sentence (`Sentences.stream()`), the standard PTB evaluation. Every <eos> is predicted and
counted, so PTB test has 78,669 + 3,761 = 82,430 predictions. The context of a stream's first
token is <eos> (`start`); because <eos> is also the beginning of every later sentence, a bigram
model sees the same contexts whether sentences are scored apart or as one stream.

Models, over a vocabulary of V ids (counts c from the train stream, N train tokens):

unigram      p(w) = (c(w) + add) / (N + add V)
bigram       p(w | v) = weight * (c(v, w) + add) / (c(v) + add V) + (1 - weight) * p_unigram(w)
             with c(v) the times v is a context. add=1, weight=1 is the add-one (Laplace) bigram;
             add=0, 0 < weight < 1 is the Jelinek-Mercer interpolated bigram, its weight tuned
             on the valid stream (`tune_bigram_weight`). A context never seen in train
             (c(v) = 0, add = 0) falls back to the unigram.

perplexity = exp(-mean ln p) over the predictions; infinite when a prediction has p = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tinydot.data.text import EOS, Sentences


@dataclass(frozen=True)
class NgramCounts:
    """Unigram and bigram counts of a train stream.

    unigram     : int64 (V,), times each id occurs
    context     : int64 (V,), times each id is the context of a bigram (the start counted once)
    pair_codes  : int64 (n_pairs,), sorted distinct bigrams (v, w) coded as v * V + w
    pair_counts : int64 (n_pairs,), their counts
    """

    unigram: np.ndarray
    context: np.ndarray
    pair_codes: np.ndarray
    pair_counts: np.ndarray

    @property
    def vocab_size(self) -> int:
        return len(self.unigram)


def contexts_of(stream: np.ndarray, start: int = EOS) -> np.ndarray:
    """int64 (n,): the previous token of every position, `start` for the first."""
    return np.concatenate([[start], stream[:-1]]).astype(np.int64)


def count_ngrams(stream: np.ndarray, vocab_size: int, start: int = EOS) -> NgramCounts:
    """Unigram and bigram counts of a token stream (n,) over ids 0..vocab_size-1."""
    stream = np.asarray(stream, dtype=np.int64)
    contexts = contexts_of(stream, start)
    codes, counts = np.unique(contexts * vocab_size + stream, return_counts=True)
    return NgramCounts(np.bincount(stream, minlength=vocab_size), np.bincount(contexts, minlength=vocab_size),
                       codes, counts)


def unigram_probabilities(counts: NgramCounts, add: float = 0.0) -> np.ndarray:
    """float64 (V,): p(w) = (c(w) + add) / (N + add V)."""
    return (counts.unigram + add) / (counts.unigram.sum() + add * counts.vocab_size)


def bigram_probabilities(counts: NgramCounts, contexts: np.ndarray, words: np.ndarray, weight: float,
                         add: float = 0.0) -> np.ndarray:
    """float64 (n,): p(words[i] | contexts[i]) of the smoothed bigram model (see the module docstring)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must lie in [0, 1], got {weight}")
    contexts, words = np.asarray(contexts, dtype=np.int64), np.asarray(words, dtype=np.int64)
    codes = contexts * counts.vocab_size + words
    at = np.minimum(np.searchsorted(counts.pair_codes, codes), len(counts.pair_codes) - 1)
    pair = np.where(counts.pair_codes[at] == codes, counts.pair_counts[at], 0)
    denominator = counts.context[contexts] + add * counts.vocab_size
    seen = denominator > 0
    conditional = np.divide(pair + add, denominator, out=np.zeros(len(codes)), where=seen)
    weights = np.where(seen, weight, 0.0)  # an unseen context falls back to the unigram
    return weights * conditional + (1 - weights) * unigram_probabilities(counts)[words]


def perplexity(probabilities: np.ndarray) -> float:
    """exp(-mean ln p) of the predictions' probabilities (n,); inf if any is 0."""
    with np.errstate(divide="ignore"):
        return float(np.exp(-np.mean(np.log(probabilities))))


def unigram_perplexity(train_stream: np.ndarray, test_stream: np.ndarray, vocab_size: int,
                       add: float = 0.0) -> float:
    """Perplexity of `test_stream` under the (add-`add`) unigram model of `train_stream`."""
    p = unigram_probabilities(count_ngrams(train_stream, vocab_size), add)
    return perplexity(p[np.asarray(test_stream)])


def bigram_perplexity(train_stream: np.ndarray, test_stream: np.ndarray, vocab_size: int, weight: float,
                      add: float = 0.0, start: int = EOS) -> float:
    """Perplexity of `test_stream` under the smoothed bigram model of `train_stream`."""
    counts = count_ngrams(train_stream, vocab_size, start)
    test_stream = np.asarray(test_stream)
    return perplexity(bigram_probabilities(counts, contexts_of(test_stream, start), test_stream, weight, add))


def tune_bigram_weight(train_stream: np.ndarray, valid_stream: np.ndarray, vocab_size: int,
                       start: int = EOS) -> float:
    """The interpolation weight in [0, 1] that minimises the valid perplexity (add = 0).

    The valid log-likelihood is a sum of logs of functions affine in the weight, hence concave:
    a bounded scalar search finds its single maximum.
    """
    counts = count_ngrams(train_stream, vocab_size, start)
    valid_stream = np.asarray(valid_stream)
    contexts = contexts_of(valid_stream, start)
    bigram = bigram_probabilities(counts, contexts, valid_stream, 1.0)
    unigram = bigram_probabilities(counts, contexts, valid_stream, 0.0)
    seen = counts.context[contexts] > 0

    def negative_log_likelihood(weight: float) -> float:
        mixed = np.where(seen, weight * bigram + (1 - weight) * unigram, unigram)
        with np.errstate(divide="ignore"):
            return -float(np.log(mixed).sum())

    from scipy.optimize import minimize_scalar  # here: 0.4 s of import for every study command otherwise

    return float(minimize_scalar(negative_log_likelihood, bounds=(0.0, 1.0), method="bounded",
                                 options={"xatol": 1e-6}).x)


def text_baselines(train: Sentences, valid: Sentences, test: Sentences) -> pd.DataFrame:
    """Valid and test perplexity of the unigram, add-one bigram and interpolated bigram of `train`.

    Columns: model, weight (the bigram's interpolation weight), add, valid_perplexity,
    test_perplexity.
    """
    V = len(train.vocabulary)
    streams = {"train": train.stream(), "valid": valid.stream(), "test": test.stream()}
    weight = tune_bigram_weight(streams["train"], streams["valid"], V)
    rows = [("unigram", np.nan, 0.0), ("add-one bigram", 1.0, 1.0), ("interpolated bigram", weight, 0.0)]
    table = []
    for model, w, add in rows:
        row = {"model": model, "weight": w, "add": add}
        for split in ("valid", "test"):
            row[f"{split}_perplexity"] = (unigram_perplexity(streams["train"], streams[split], V, add)
                                         if model == "unigram" else
                                         bigram_perplexity(streams["train"], streams[split], V, w, add))
        table.append(row)
    return pd.DataFrame(table)
