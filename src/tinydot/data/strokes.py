"""MNIST digits as pen strokes: locate, verify, download, parse, validate and cache.

The archives (de Jong 2016, numpy encoding from the upstream repository's pull request 1) hold
float64 arrays of shape (N, 117, 4) with rows ``(dx, dy, eos, eod)``: the first real row is the
absolute start point ``(x, y)`` (1-based pixel coordinates in the 28x28 frame, y pointing down),
every following row is one pen step. The train archive is zero-padded at the end, the test
archive at the start. Upstream's ``test-padded-trailing`` file is a copy of *train* and is never
used here.

`load_strokes` turns a split into a compact `Strokes` object of small integers and caches it, so
that later loads only read one uncompressed ``.npz`` file.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tarfile
import tokenize
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import platformdirs

from tinydot.errors import DataError
from tinydot.io import atomic_path, check_writable_dir, not_a_folder, sha256_file

SPLITS = ("train", "test")
NUM_CLASSES = 10
FRAME = 28  # the image frame is FRAME x FRAME pixels; coordinates run 1..FRAME

# Pen states of a step, as stored in `Strokes.steps[..., 2]`.
PEN_DRAW = 0  # an ordinary pen-down move
PEN_END_STROKE = 1  # the stroke ends here (a zero move); the next step is a pen-up jump
PEN_END_DIGIT = 2  # the digit ends here (a zero move); always the last step

UPSTREAM_URL = (
    "https://raw.githubusercontent.com/edwin-de-jong/mnist-digits-stroke-sequence-data/"
    "7724f8eff8502027f7c4d1a9e9bbbf69e5f3cd3a/numpy-encoded/"
)
SHA256 = {
    "train-padded-trailing.tar.gz": "d6b8cf425c64ffef35ccf3ea6c0ee1b9dc82b93f4c5d897e2e8cc9c470d03a36",
    "test-padded-leading.tar.gz": "0beaf9be441f4efa5497f0accd0c0423eaad9f6ad353f991a28ec99f5c71b404",
    "train-labels.tar.gz": "7f9d2c4c69dcb98ce0cdbc9b7255e8e660ad005ef3fe286efae8315c593e3b61",
    "test-labels.tar.gz": "2fe59743940ee6dc3c69c847504d380f603666a621bb81235b900f8c4f4dba86",
}
# split -> (sequence archive, its padding, label archive)
ARCHIVES = {
    "train": ("train-padded-trailing.tar.gz", "trailing", "train-labels.tar.gz"),
    "test": ("test-padded-leading.tar.gz", "leading", "test-labels.tar.gz"),
}
_CACHE_VERSION = 1  # bump when the parsed layout changes
_HOW_TO_POINT = "pass --data-dir DIR or set TINYDOT_DATA=DIR to a folder holding the four archives"


def selection(index, n: int, what: str = "sequences") -> np.ndarray:
    """The int64 positions that `index` selects among `n` items: integer positions (an array, list or
    range; negative ones count from the end), a boolean mask of length `n`, or a slice. Anything else,
    and positions outside 0..n-1, get a DataError (`subset` of both data classes takes these)."""
    if isinstance(index, slice):
        return np.arange(n)[index]
    array = np.asarray(index)
    if array.ndim != 1:
        raise DataError(f"select {what} with a 1-d array of positions, a boolean mask or a slice, "
                        f"not {type(index).__name__} of shape {array.shape}")
    if array.dtype == bool:
        if len(array) != n:
            raise DataError(f"a selection mask needs {n} entries, got {len(array)}")
        return np.flatnonzero(array)
    if len(array) == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"select {what} by integer positions, got {array.dtype} values")
    if array.min() < -n or array.max() >= n:
        bad = array[(array < -n) | (array >= n)][0]
        raise DataError(f"position {bad} is out of range for {n} {what}")
    return array.astype(np.int64) % n  # negative positions count from the end


def fingerprint(*arrays: np.ndarray) -> str:
    """A digest of arrays' dtypes, shapes and values: equal data, equal fingerprint (16 hex digits)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes() if array.dtype.kind == "U" or array.size == 0 else memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class Strokes:
    """One split of stroke sequences in compact integer form.

    steps   : int8 array of shape (n_sequences, max_steps, 3)
        Per pen step ``(dx, dy, pen)`` with pen in {PEN_DRAW, PEN_END_STROKE, PEN_END_DIGIT};
        rows at and after ``lengths[i]`` are zero.
    lengths : int16 array of shape (n_sequences,)
        Number of pen steps, start row excluded (the archive's row count minus one: 12..116).
    labels  : int8 array of shape (n_sequences,), the digit class 0..9.
    starts  : int8 array of shape (n_sequences, 2), the absolute start point (x, y), 1-based.
    """

    steps: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    starts: np.ndarray
    split: str = ""

    def __len__(self) -> int:
        return len(self.lengths)

    def subset(self, index) -> Strokes:
        """The sequences selected by `index` (integer positions, a boolean mask or a slice), in its order."""
        index = selection(index, len(self))
        return Strokes(self.steps[index], self.lengths[index], self.labels[index],
                       self.starts[index], self.split)

    @cached_property
    def fingerprint(self) -> str:
        """A digest of the sequences (steps, lengths, labels, starts; not the split's name)."""
        return fingerprint(self.steps, self.lengths, self.labels, self.starts)

    def positions(self) -> np.ndarray:
        """Absolute pen positions, start included: int16 array (n_sequences, max_steps + 1, 2).

        Positions after a sequence's end repeat its last position (its padding steps are zero).
        """
        moves = np.concatenate([self.starts[:, None, :], self.steps[:, :, :2]], axis=1)
        return np.cumsum(moves, axis=1, dtype=np.int16)


# --------------------------------------------------------------------------- locating the data

def cache_dir() -> Path:
    """Where downloads and parsed caches live: $TINYDOT_CACHE, else the user cache folder.

    It must be a folder this process can write to (or create); checked here, before anything is
    downloaded or parsed, so a TINYDOT_CACHE that names a file fails with one line.
    """
    chosen = os.environ.get("TINYDOT_CACHE")
    folder = Path(chosen or platformdirs.user_cache_dir("tinydot"))
    what = "TINYDOT_CACHE" if chosen else "the cache folder (set TINYDOT_CACHE to choose one)"
    return check_writable_dir(folder, what)


# what a truncated, overwritten or bit-flipped .npz raises on reading (zipfile checks every member's CRC;
# a flipped flag bit can mark a member encrypted, and zipfile then raises RuntimeError)
_CACHE_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error,
                      NotImplementedError, RuntimeError)


def read_cached_arrays(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays `names` of an .npz cache file; None if it is missing, truncated or corrupt, so
    that the caller rebuilds it (a cache is never worth an error)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {name: f[name] for name in names}
    except _CACHE_READ_ERRORS:
        return None


def locate_data_dir(data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Find the folder with the four archives.

    Order: the explicit `data_dir`, then $TINYDOT_DATA, then the user cache folder; if the data is
    in none of them, download it there from the pinned upstream commit (sha256-verified).
    """
    for source, candidate in (("--data-dir", data_dir), ("TINYDOT_DATA", os.environ.get("TINYDOT_DATA"))):
        if candidate:
            folder = Path(candidate)
            if problem := not_a_folder(folder):
                raise DataError(f"{source} {folder} {problem}; {_HOW_TO_POINT}")
            missing = [name for name in SHA256 if not (folder / name).is_file()]
            if missing:
                raise DataError(f"{source} {folder} lacks {', '.join(missing)}; {_HOW_TO_POINT}")
            return folder
    folder = cache_dir() / "mnist-strokes"
    missing = [name for name in SHA256 if not (folder / name).is_file()]
    if missing and not download:
        raise DataError(f"no stroke data found; {_HOW_TO_POINT}")
    for name in missing:
        download_archive(name, folder)
    return folder


def download_archive(name: str, folder: Path) -> Path:
    """Download one archive from upstream (or $TINYDOT_DATA_URL), verify its sha256, write atomically."""
    base = os.environ.get("TINYDOT_DATA_URL") or UPSTREAM_URL
    url = base.rstrip("/") + "/" + name
    target = folder / name
    digest = hashlib.sha256()
    try:
        with atomic_path(target) as tmp, urllib.request.urlopen(url, timeout=60) as response:
            with open(tmp, "wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != SHA256[name]:
                raise DataError(f"downloaded {name} from {url} has sha256 {digest.hexdigest()}, "
                                f"expected {SHA256[name]}; {_HOW_TO_POINT}")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DataError(f"could not download {name} from {url} ({reason}); offline? {_HOW_TO_POINT}") from None
    return target


# --------------------------------------------------------------------------- reading archives

def read_npy_archive(path: str | os.PathLike) -> np.ndarray:
    """The single ``.npy`` array inside a ``.tar.gz`` archive (never unpickled)."""
    path = Path(path)
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            if len(members) != 1 or not members[0].name.endswith(".npy"):
                names = [m.name for m in members]
                raise DataError(f"{path}: expected exactly one .npy file inside, found {names}")
            data = tar.extractfile(members[0]).read()
        return _parse_npy(data)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; {_HOW_TO_POINT}") from None
    # numpy's header parser lets tokenize.TokenError and SyntaxError out on some garbled headers
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, SyntaxError, tokenize.TokenError) as err:
        raise DataError(f"{path}: truncated or corrupt archive ({err}); "
                        "replace it with a good copy (its sha256 is in tinydot.data.strokes.SHA256)") from None


def _parse_npy(data: bytes) -> np.ndarray:
    """The array in `.npy` bytes; its header must announce exactly as many bytes as follow it, so a
    corrupt header cannot make numpy allocate gigabytes before it notices the data is short."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format version {version} is not one numpy writes for this data")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(stream)
    held = len(data) - stream.tell()
    if not dtype.hasobject and held != math.prod(shape) * dtype.itemsize:  # object arrays are refused below
        raise ValueError(f"its header announces shape {shape} of {dtype}, but {held} bytes follow")
    return np.load(io.BytesIO(data), allow_pickle=False)


def _first(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def parse_sequences(raw: np.ndarray, padding: str, *, source: str = "array") -> tuple[np.ndarray, ...]:
    """Validate a raw (N, T, 4) float array and convert it to (steps, lengths, starts).

    `padding` is "trailing" (zeros after the end-of-digit row) or "leading" (zeros before the
    start row, end-of-digit row last). Errors name `source` and the sequence index.
    """
    if padding not in ("trailing", "leading"):
        raise ValueError(f"padding must be 'trailing' or 'leading', got {padding!r}")
    if raw.ndim != 3 or raw.shape[2] != 4 or raw.shape[1] < 2:
        raise DataError(f"{source}: expected an array of shape (N, T, 4) with T >= 2, got {raw.shape}")
    if not np.issubdtype(raw.dtype, np.floating) and not np.issubdtype(raw.dtype, np.integer):
        raise DataError(f"{source}: expected a float or integer array, got dtype {raw.dtype}")
    n, width, _ = raw.shape
    if n == 0:
        raise DataError(f"{source}: holds no sequences")
    per_seq = raw.reshape(n, -1)
    bad = ~np.isfinite(per_seq).all(axis=1)
    if bad.any():
        raise DataError(f"{source}: sequence {_first(bad)} has non-finite values")
    bad = (per_seq != np.round(per_seq)).any(axis=1)
    if bad.any():
        raise DataError(f"{source}: sequence {_first(bad)} has non-integer values")
    bad = (np.abs(raw[:, :, :2]) > 127).any(axis=(1, 2))
    if bad.any():
        raise DataError(f"{source}: sequence {_first(bad)} has a coordinate outside -127..127")
    flags = raw[:, :, 2:]
    bad = ((flags != 0) & (flags != 1)).any(axis=(1, 2))
    if bad.any():
        raise DataError(f"{source}: sequence {_first(bad)} has eos/eod flags other than 0 and 1")

    eod = raw[:, :, 3] == 1
    count = eod.sum(axis=1)
    if (count != 1).any():
        i = _first(count != 1)
        raise DataError(f"{source}: sequence {i} has {count[i]} end-of-digit rows, expected exactly 1")
    end = eod.argmax(axis=1)  # index of the end-of-digit row
    rows = np.arange(width)
    nonzero = (raw != 0).any(axis=2)
    if padding == "trailing":
        start = np.zeros(n, dtype=np.int64)
        bad = (nonzero & (rows > end[:, None])).any(axis=1)
        if bad.any():
            raise DataError(f"{source}: sequence {_first(bad)} has data after its end-of-digit row "
                            "(expected zero padding at the end)")
    else:
        bad = end != width - 1
        if bad.any():
            i = _first(bad)
            raise DataError(f"{source}: sequence {i} has its end-of-digit row at {end[i]}, "
                            f"expected the last row ({width - 1}) for leading padding")
        start = nonzero.argmax(axis=1)  # the start point is never (0, 0): coordinates are 1-based
    bad = end - start < 1
    if bad.any():
        raise DataError(f"{source}: sequence {_first(bad)} has no pen steps after its start point")
    idx = np.arange(n)
    bad = raw[idx, end, 2] != 1
    if bad.any():
        raise DataError(f"{source}: sequence {_first(bad)} has an end-of-digit row without end-of-stroke")
    bad = (raw[idx, start, 2:] != 0).any(axis=1)
    if bad.any():
        raise DataError(f"{source}: sequence {_first(bad)} has eos/eod flags on its start-point row")

    lengths = (end - start).astype(np.int16)  # pen steps after the start row
    gather = np.minimum(start[:, None] + 1 + np.arange(width - 1), width - 1)
    body = np.take_along_axis(raw, gather[:, :, None], axis=1)
    body[np.arange(width - 1)[None, :] >= lengths[:, None]] = 0
    steps = np.empty((n, width - 1, 3), dtype=np.int8)
    steps[:, :, :2] = body[:, :, :2]
    steps[:, :, 2] = body[:, :, 2] + body[:, :, 3]  # eos -> 1, eos + eod -> 2
    starts = raw[idx, start, :2].astype(np.int8)
    return steps, lengths, starts


def parse_labels(raw: np.ndarray, n_sequences: int, *, source: str = "labels") -> np.ndarray:
    if raw.ndim != 1 or not np.issubdtype(raw.dtype, np.integer):
        raise DataError(f"{source}: expected a 1-d integer array, got dtype {raw.dtype} shape {raw.shape}")
    if len(raw) != n_sequences:
        raise DataError(f"{source}: {len(raw)} labels for {n_sequences} sequences")
    bad = (raw < 0) | (raw >= NUM_CLASSES)
    if bad.any():
        i = _first(bad)
        raise DataError(f"{source}: label {i} is {raw[i]}, outside 0..{NUM_CLASSES - 1}")
    return raw.astype(np.int8)


def to_raw(strokes: Strokes, padding: str, width: int | None = None) -> np.ndarray:
    """The archive encoding of `strokes`: float64 (N, width, 4), inverse of `parse_sequences`."""
    n, max_steps, _ = strokes.steps.shape
    width = width or max_steps + 1
    if strokes.lengths.max(initial=0) + 1 > width:
        raise ValueError(f"width {width} is too small for sequences of {strokes.lengths.max()} steps")
    raw = np.zeros((n, width, 4))
    for i in range(n):
        length = int(strokes.lengths[i])
        offset = 0 if padding == "trailing" else width - length - 1
        pen = strokes.steps[i, :length, 2]
        raw[i, offset, :2] = strokes.starts[i]
        raw[i, offset + 1: offset + 1 + length, :2] = strokes.steps[i, :length, :2]
        raw[i, offset + 1: offset + 1 + length, 2] = pen >= PEN_END_STROKE
        raw[i, offset + 1: offset + 1 + length, 3] = pen == PEN_END_DIGIT
    return raw


def read_split(data_dir: str | os.PathLike, split: str) -> Strokes:
    """Parse one split straight from its archives (no sha256 check, no cache)."""
    seq_name, padding, label_name = ARCHIVES[split]
    seq_path, label_path = Path(data_dir) / seq_name, Path(data_dir) / label_name
    steps, lengths, starts = parse_sequences(read_npy_archive(seq_path), padding, source=str(seq_path))
    labels = parse_labels(read_npy_archive(label_path), len(lengths), source=str(label_path))
    return Strokes(steps, lengths, labels, starts, split)


# --------------------------------------------------------------------------- the public loader

def check_digit(digit: int | None) -> None:
    """Reject a digit class outside 0..9 (None means 'all classes')."""
    if digit is not None and not 0 <= digit < NUM_CLASSES:
        raise DataError(f"digit must be between 0 and {NUM_CLASSES - 1}, got {digit}")


def digit_subset(strokes: Strokes, digit: int | None) -> Strokes:
    """The sequences of one digit class (all of them for None)."""
    check_digit(digit)
    return strokes if digit is None else strokes.subset(np.flatnonzero(strokes.labels == digit))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


_CACHED = ("steps", "lengths", "labels", "starts")


def _consistent(arrays: dict[str, np.ndarray]) -> bool:
    """Whether arrays read back from a cache have the layout of `Strokes` (else it is rebuilt)."""
    steps, lengths, labels, starts = (arrays[name] for name in _CACHED)
    n = len(lengths)
    return (steps.dtype == np.int8 and steps.ndim == 3 and steps.shape[0] == n and steps.shape[2] == 3
            and lengths.dtype == np.int16 and lengths.shape == (n,) and labels.dtype == np.int8
            and labels.shape == (n,) and starts.dtype == np.int8 and starts.shape == (n, 2)
            and bool(((lengths >= 1) & (lengths <= steps.shape[1])).all())
            and bool(((labels >= 0) & (labels < NUM_CLASSES)).all()))


def load_strokes(split: str = "train", data_dir: str | os.PathLike | None = None, *,
                 verify: bool = True, cache: bool = True) -> Strokes:
    """Load a split ("train": 60,000 sequences, "test": 10,000) as `Strokes`.

    The archives' sha256 values are checked against the pinned ones (`verify`), and the parsed
    arrays are cached under `cache_dir()` keyed by those hashes, so a second load reads one
    uncompressed file.
    """
    _check_split(split)
    folder = locate_data_dir(data_dir)
    seq_name, _, label_name = ARCHIVES[split]
    hashes = []
    for name in (seq_name, label_name):
        digest = sha256_file(folder / name)
        if verify and digest != SHA256[name]:
            raise DataError(f"{folder / name}: sha256 {digest} does not match the pinned {SHA256[name]}; "
                            "replace it with a good copy")
        hashes.append(digest)
    key = hashlib.sha256(f"v{_CACHE_VERSION}:{hashes[0]}:{hashes[1]}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"strokes-{split}-{key}.npz" if cache else None
    if cached is not None and (arrays := read_cached_arrays(cached, _CACHED)) is not None and _consistent(arrays):
        return Strokes(**arrays, split=split)
    strokes = read_split(folder, split)  # no cache, or one that is unreadable or damaged: rebuilt here
    if cached is not None:
        with atomic_path(cached) as tmp:
            np.savez(tmp, steps=strokes.steps, lengths=strokes.lengths,
                     labels=strokes.labels, starts=strokes.starts)
    return strokes


def length_summary(splits: dict[str, Strokes]) -> pd.DataFrame:
    """Per split and digit (then "all"): count and statistics of the number of pen steps."""
    rows = []
    for name, strokes in splits.items():
        for digit in [*range(NUM_CLASSES), "all"]:
            steps = strokes.lengths if digit == "all" else strokes.lengths[strokes.labels == digit]
            steps = steps.astype(float)
            rows.append({"split": name, "digit": digit, "count": len(steps),
                         "mean": steps.mean() if len(steps) else np.nan,
                         "std": steps.std() if len(steps) else np.nan,
                         "min": steps.min(initial=np.inf), "median": np.median(steps) if len(steps) else np.nan,
                         "max": steps.max(initial=-np.inf)})
    return pd.DataFrame(rows)
