"""Archive parsing, validation, caching and download, on small archives built here."""

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tinydot.data import strokes as S
from tinydot.data.strokes import Strokes
from tinydot.errors import DataError


def make_strokes(rng, n=20, max_steps=30) -> Strokes:
    """Random valid sequences: pen-down unit moves, occasional stroke ends followed by jumps."""
    steps = np.zeros((n, max_steps, 3), dtype=np.int8)
    lengths = rng.integers(3, max_steps + 1, size=n).astype(np.int16)
    for i, length in enumerate(lengths):
        moves = rng.integers(-1, 2, size=(length - 1, 2))
        pen = np.where(rng.random(length - 1) < 0.1, S.PEN_END_STROKE, S.PEN_DRAW)
        pen[-1] = S.PEN_DRAW  # the step before the end-of-digit marker is a move
        moves[pen == S.PEN_END_STROKE] = 0
        after_end = np.flatnonzero(pen[:-1] == S.PEN_END_STROKE) + 1
        moves[after_end] = rng.integers(-5, 6, size=(len(after_end), 2))
        steps[i, : length - 1, :2] = moves
        steps[i, : length - 1, 2] = pen
        steps[i, length - 1] = (0, 0, S.PEN_END_DIGIT)
    starts = rng.integers(1, 29, size=(n, 2)).astype(np.int8)
    labels = rng.integers(0, 10, size=n).astype(np.int8)
    return Strokes(steps, lengths, labels, starts)


def write_archive(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    data = buffer.getvalue()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(path.name.replace(".tar.gz", ".npy"))
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_split(folder: Path, split: str, strokes: Strokes, width: int = 31) -> None:
    seq_name, padding, label_name = S.ARCHIVES[split]
    write_archive(folder / seq_name, S.to_raw(strokes, padding, width))
    write_archive(folder / label_name, strokes.labels.astype(np.int32))


def assert_same(a: Strokes, b: Strokes) -> None:
    for field in ("lengths", "labels", "starts"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    width = max(a.steps.shape[1], b.steps.shape[1])
    pad = lambda s: np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)))  # noqa: E731
    assert np.array_equal(pad(a.steps), pad(b.steps))


@pytest.mark.parametrize("split", ["train", "test"])
def test_small_archives_round_trip(tmp_path, split):
    original = make_strokes(np.random.default_rng(1))
    write_split(tmp_path, split, original)
    assert_same(S.read_split(tmp_path, split), original)


def test_leading_and_trailing_padding_give_the_same_sequences():
    original = make_strokes(np.random.default_rng(2))
    trailing = S.parse_sequences(S.to_raw(original, "trailing", 40), "trailing")
    leading = S.parse_sequences(S.to_raw(original, "leading", 40), "leading")
    for a, b in zip(trailing, leading):
        assert np.array_equal(a, b)


def test_hand_written_sequence_parses_to_known_steps():
    # start (3, 4), two moves right, end of stroke, jump (+2, +1), one move down, end of digit
    rows = [[3, 4, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [2, 1, 0, 0], [0, 1, 0, 0],
            [0, 0, 1, 1]]
    raw = np.zeros((1, 9, 4))
    raw[0, 2:] = rows  # two rows of leading padding
    steps, lengths, starts = S.parse_sequences(raw, "leading")
    assert lengths.tolist() == [6] and starts.tolist() == [[3, 4]]
    assert steps[0, :6].tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 1], [2, 1, 0], [0, 1, 0], [0, 0, 2]]
    assert not steps[0, 6:].any()


def good_raw(padding="trailing"):
    return S.to_raw(make_strokes(np.random.default_rng(3), n=5), padding, 31)


def corrupt(raw, fn):
    raw = raw.copy()
    fn(raw)
    return raw


@pytest.mark.parametrize("padding,mutate,message", [
    ("trailing", lambda r: r.__setitem__((2, 3, 0), np.nan), "sequence 2 has non-finite values"),
    ("trailing", lambda r: r.__setitem__((1, 3, 0), 0.5), "sequence 1 has non-integer values"),
    ("trailing", lambda r: r.__setitem__((3, slice(None), 3), 0), "sequence 3 has 0 end-of-digit rows"),
    ("trailing", lambda r: r.__setitem__((0, 1, 3), 1), "sequence 0 has 2 end-of-digit rows"),
    ("trailing", lambda r: r.__setitem__((4, 30, 0), 1), "sequence 4 has data after its end-of-digit row"),
    ("leading", lambda r: r.__setitem__((1, slice(None)), np.roll(r[1], -1, axis=0)),
     "sequence 1 has its end-of-digit row at 29"),
    ("trailing", lambda r: r.__setitem__((2, 2, 2), 2), "sequence 2 has eos/eod flags other than 0 and 1"),
])
def test_bad_sequences_are_rejected_with_their_index(padding, mutate, message):
    with pytest.raises(DataError, match=message):
        S.parse_sequences(corrupt(good_raw(padding), mutate), padding, source="x.npy")


def test_wrong_shape_and_dtype():
    with pytest.raises(DataError, match=r"shape \(N, T, 4\)"):
        S.parse_sequences(np.zeros((3, 10, 3)), "trailing")
    with pytest.raises(DataError, match="dtype"):
        S.parse_sequences(np.zeros((3, 10, 4), dtype=bool), "trailing")
    with pytest.raises(DataError, match="1-d integer array"):
        S.parse_labels(np.zeros(5), 5)


def test_label_count_and_range():
    with pytest.raises(DataError, match="4 labels for 5 sequences"):
        S.parse_labels(np.zeros(4, dtype=np.int32), 5)
    with pytest.raises(DataError, match="label 2 is 10, outside 0..9"):
        S.parse_labels(np.array([0, 9, 10, 1], dtype=np.int32), 4)


def test_truncated_archive_names_the_file(tmp_path):
    write_split(tmp_path, "train", make_strokes(np.random.default_rng(4)))
    path = tmp_path / "train-padded-trailing.tar.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="train-padded-trailing.tar.gz: truncated or corrupt archive"):
        S.read_split(tmp_path, "train")


def test_archive_with_a_pickle_is_refused(tmp_path):
    path = tmp_path / "train-labels.tar.gz"
    write_archive(path, np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="truncated or corrupt archive"):
        S.read_npy_archive(path)


def copy_real(data_dir, tmp_path) -> Path:
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in S.SHA256:
        shutil.copy(Path(data_dir) / name, folder / name)
    return folder


def test_wrong_sha256_is_rejected(data_dir, tmp_path):
    folder = copy_real(data_dir, tmp_path)
    labels = folder / "test-labels.tar.gz"
    write_archive(labels, np.zeros(10_000, dtype=np.int32))
    with pytest.raises(DataError, match="test-labels.tar.gz: sha256 .* does not match"):
        S.load_strokes("test", folder)


def test_cache_gives_identical_arrays(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYDOT_CACHE", str(tmp_path))
    first = S.load_strokes("test", data_dir)
    assert len(list(tmp_path.glob("strokes-test-*.npz"))) == 1
    assert_same(S.load_strokes("test", data_dir), first)
    assert_same(S.load_strokes("test", data_dir, cache=False), first)


def test_locate_prefers_argument_then_env(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("TINYDOT_DATA", str(data_dir))
    assert S.locate_data_dir() == Path(data_dir)
    with pytest.raises(DataError, match=f"--data-dir {tmp_path} lacks"):
        S.locate_data_dir(tmp_path)
    with pytest.raises(DataError, match=f"--data-dir {tmp_path / 'nowhere'} does not exist; "):
        S.locate_data_dir(tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TINYDOT_DATA", str(tmp_path / "file"))
    with pytest.raises(DataError, match=f"TINYDOT_DATA {tmp_path / 'file'} is not a folder; "):
        S.locate_data_dir()


def test_download_verifies_and_caches(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("TINYDOT_DATA", raising=False)
    monkeypatch.setenv("TINYDOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TINYDOT_DATA_URL", Path(data_dir).resolve().as_uri())
    folder = S.locate_data_dir()
    assert folder == tmp_path / "cache" / "mnist-strokes"
    assert sorted(p.name for p in folder.iterdir()) == sorted(S.SHA256)
    assert len(S.load_strokes("test")) == 10_000


def test_download_with_wrong_content_leaves_nothing(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in S.SHA256:
        (mirror / name).write_bytes(b"not the archive")
    monkeypatch.delenv("TINYDOT_DATA", raising=False)
    monkeypatch.setenv("TINYDOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TINYDOT_DATA_URL", mirror.as_uri())
    with pytest.raises(DataError, match="has sha256 .* expected"):
        S.locate_data_dir()
    assert not any((tmp_path / "cache" / "mnist-strokes").iterdir())


def test_offline_download_fails_with_how_to(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYDOT_DATA", raising=False)
    monkeypatch.setenv("TINYDOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TINYDOT_DATA_URL", "http://127.0.0.1:9/nothing")
    with pytest.raises(DataError, match="could not download .*TINYDOT_DATA=DIR"):
        S.locate_data_dir()


def write_data_folder(folder: Path, seed: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_split(folder, "train", make_strokes(np.random.default_rng(seed)))
    write_split(folder, "test", make_strokes(np.random.default_rng(seed + 1), n=7))
    return folder


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def wrong_arrays(path: Path) -> None:  # a readable .npz that does not describe the split
    with open(path, "wb") as f:
        np.savez(f, steps=np.zeros((3, 4, 3), np.int8), lengths=np.full(2, 9, np.int16),
                 labels=np.zeros(3, np.int8), starts=np.zeros((3, 2), np.int8))


def flag_encrypted(path: Path) -> None:  # one flipped bit in the central directory: zipfile raises RuntimeError
    content = bytearray(path.read_bytes())
    at = content.index(b"PK\x01\x02") + 8  # the first member's general-purpose flags
    content[at] |= 1  # bit 0: "encrypted"
    path.write_bytes(bytes(content))


@pytest.mark.parametrize("damage", [
    lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),  # truncated: zipfile.BadZipFile
    lambda p: p.write_bytes(b""),  # empty: EOFError
    lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 100),  # a zip header and nothing behind it
    lambda p: p.write_bytes(b"\x93NUMPY garbage"),  # not a zip
    flip_middle_byte,  # inside an array: the member's CRC fails
    wrong_arrays,
    flag_encrypted,
], ids=["truncated", "empty", "zip-header", "garbage", "flipped-byte", "wrong-arrays", "encrypted-flag"])
def test_a_damaged_parsed_cache_is_rebuilt(damage, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYDOT_CACHE", str(tmp_path / "cache"))
    data = write_data_folder(tmp_path / "data")
    first = S.load_strokes("train", data, verify=False)
    [cached] = (tmp_path / "cache").glob("strokes-train-*.npz")
    damage(cached)
    again = S.load_strokes("train", data, verify=False)
    assert_same(again, first)
    rebuilt = S.read_cached_arrays(cached, ("steps", "lengths", "labels", "starts"))  # and written anew
    assert rebuilt is not None and np.array_equal(rebuilt["lengths"], first.lengths)


def test_an_archive_without_sequences_is_refused(tmp_path):
    write_archive(tmp_path / "x.tar.gz", np.zeros((0, 31, 4)))
    with pytest.raises(DataError, match="holds no sequences"):
        S.parse_sequences(S.read_npy_archive(tmp_path / "x.tar.gz"), "trailing", source="x")
