"""Per-sentence complexity measures of text, all sentences at once (no files, no figures).

Inputs are plain arrays in the layout of `tinydot.data.text.Sentences`: `tokens` (n_tokens,) the
word ids of all sentences concatenated, `lengths` (n_sentences,) words per sentence (>= 1), and
the `vocabulary` (vocab_size,) id -> word. The sentence end (<eos>) is never part of a sentence
here: every measure describes the words only.

Measures (`TEXT_MEASURES`; the first two carry the stroke measures' names, so a table of either
domain has them and the study can put the domains side by side):

L                 number of words (the stroke measure L counts pen steps; in both domains a
                  model predicts L + 1 targets per sample).
compressed_bytes  bytes per word of the raw-deflate encoding (zlib level 9, window 2^15, no header
                  or checksum: exactly the stroke measure's compressor) of the sentence's words
                  joined by single spaces, UTF-8, no trailing space or sentence end. "Bytes per
                  step" in both domains, a step being a word here and a pen step there. Text is
                  compressed as characters, not as word ids: deflate only matches repeats of
                  3 bytes or more, so 2-byte ids would hide a repeated single word, while its
                  characters show it. The absolute levels differ between the domains (the stroke
                  steps are 3 raw bytes, a PTB train word 5.65 with its space); within a domain
                  the measure ranks samples by how regular they are.
surprisal         mean over the sentence's words of -log2 p(w), in bits, with p the unigram
                  distribution of the *train* words (`unigram_probabilities`: counts / total,
                  sentence ends not counted, no smoothing: PTB's vocabulary is closed, so every
                  word has been seen in train).
type_token_ratio  distinct words / words, in (0, 1]; 1 when no word repeats.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from tinydot.config import did_you_mean
from tinydot.data.text import EOS, Sentences
from tinydot.errors import ConfigError

TEXT_MEASURES = ("L", "compressed_bytes", "surprisal", "type_token_ratio")


def check_measure(measure: str) -> None:
    """Reject a measure the text domain lacks, with a close match as hint."""
    if measure not in TEXT_MEASURES:
        raise ConfigError(f"unknown text measure {measure!r}{did_you_mean(measure, TEXT_MEASURES)}; "
                          f"choose from {', '.join(TEXT_MEASURES)}")


def _check_lengths(tokens: np.ndarray, lengths: np.ndarray) -> None:
    if len(lengths) and lengths.min() < 1:
        raise ValueError("every sentence needs at least one word")
    if lengths.sum() != len(tokens):
        raise ValueError(f"lengths add up to {lengths.sum()}, but there are {len(tokens)} tokens")


def unigram_probabilities(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """float64 (vocab_size,): relative frequency of each id among `tokens` (the train words).

    <eos> gets 0 when `tokens` holds no sentence ends, as in `Sentences.tokens`.
    """
    counts = np.bincount(tokens, minlength=vocab_size).astype(np.float64)
    return counts / counts.sum()


def surprisal(tokens: np.ndarray, lengths: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """float64 (n_sentences,): mean -log2 probabilities[w] over each sentence's words."""
    _check_lengths(tokens, lengths)
    p = probabilities[tokens]
    if (p <= 0).any():
        word = int(tokens[np.argmax(p <= 0)])
        raise ValueError(f"word id {word} has probability 0 under the unigram distribution")
    sentence = np.repeat(np.arange(len(lengths)), lengths)
    return np.bincount(sentence, weights=-np.log2(p), minlength=len(lengths)) / lengths


def type_token_ratio(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """float64 (n_sentences,): distinct words / words of each sentence."""
    _check_lengths(tokens, lengths)
    sentence = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    base = int(tokens.max(initial=0)) + 1
    pairs = np.unique(sentence * base + tokens)  # one entry per distinct (sentence, word)
    distinct = np.bincount(pairs // base, minlength=len(lengths))
    return distinct / lengths


def compressed_bytes(tokens: np.ndarray, lengths: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """float64 (n_sentences,): raw-deflate bytes of each space-joined sentence, per word."""
    _check_lengths(tokens, lengths)
    words = vocabulary[tokens].tolist()
    out = np.empty(len(lengths))
    start = 0
    for i, length in enumerate(lengths.tolist()):
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # as complexity.compressed_bytes
        data = " ".join(words[start:start + length]).encode("utf-8")
        out[i] = len(compressor.compress(data) + compressor.flush()) / length
        start += length
    return out


def measure_all(tokens: np.ndarray, lengths: np.ndarray, vocabulary: np.ndarray,
                probabilities: np.ndarray, measures=TEXT_MEASURES) -> pd.DataFrame:
    """A table with one row per sentence and one column per requested measure.

    probabilities : float (vocab_size,), the train unigram distribution (`unigram_probabilities`).
    """
    for m in measures:
        check_measure(m)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    if (tokens == EOS).any():
        raise ValueError("tokens hold <eos>; pass the words of the sentences only")
    table = {}
    for m in measures:
        if m == "L":
            table[m] = lengths.astype(int)
        elif m == "compressed_bytes":
            table[m] = compressed_bytes(tokens, lengths, vocabulary)
        elif m == "surprisal":
            table[m] = surprisal(tokens, lengths, probabilities)
        elif m == "type_token_ratio":
            table[m] = type_token_ratio(tokens, lengths)
    return pd.DataFrame(table)


def measure_sentences(sentences: Sentences, train: Sentences, measures=TEXT_MEASURES) -> pd.DataFrame:
    """`measure_all` of `sentences`, with the unigram distribution of `train`."""
    probabilities = unigram_probabilities(train.tokens, len(train.vocabulary))
    return measure_all(sentences.tokens, sentences.lengths, sentences.vocabulary, probabilities, measures)
