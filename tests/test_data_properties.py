"""Property-based tests of the stroke data loader (hypothesis): whatever the archives hold, a split
either loads (and then is well formed) or fails with one DataError line, never anything else; and a
damaged parsed cache never changes what is loaded."""

import io
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from test_data_archives import assert_same, make_strokes
from tinydot.data import strokes as S
from tinydot.errors import DataError

ODD_VALUES = [np.nan, np.inf, -np.inf, 0.5, -0.5, 2.0, -1.0, 0.0, 1.0, 127.0, 128.0, -128.0, 1e30]
DTYPES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool", "complex64",
          "U3", "object", "datetime64[s]"]
LABEL_DTYPES = ["int64", "int32", "int8", "uint8", "uint64", "float64", "bool", "U2", "object"]
SHAPES = ["as is", "2-d", "4-d", "3 columns", "5 columns", "1 row wide", "no sequences", "scalar"]
ARCHIVE_LAYOUTS = ["one .npy", "two members", "no member", "not .npy", "plain npy, no tar"]


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)  # object arrays become pickles, which the loader must refuse
    return buffer.getvalue()


def tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


FAULTS = ["odd cells", "shape", "dtype", "label values", "label count", "labels 2-d", "label dtype",
          "npy truncated", "npy bytes flipped", "archive truncated", "archive bytes flipped", "archive layout"]


def truncate(data: bytes, draw) -> bytes:
    return data[: draw(st.integers(0, max(0, len(data) - 1)), label="keep bytes")]


def flip(data: bytes, draw) -> bytes:
    flipped = bytearray(data)
    for _ in range(draw(st.integers(1, 3), label="flips") if data else 0):
        position = draw(st.integers(0, len(flipped) - 1))
        flipped[position] ^= draw(st.integers(1, 255))
    return bytes(flipped)


def reshape(array: np.ndarray, how: str) -> np.ndarray:
    return {"as is": lambda a: a, "2-d": lambda a: a.reshape(len(a), -1), "4-d": lambda a: a[None],
            "3 columns": lambda a: a[..., :3], "5 columns": lambda a: np.concatenate([a, a[..., :1]], axis=-1),
            "1 row wide": lambda a: a[:, :1], "no sequences": lambda a: a[:0],
            "scalar": lambda a: a[0, 0, 0]}[how](array)


def cast(array: np.ndarray, dtype: str) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        if dtype == "object" or dtype.startswith(("float", "complex", "U")):
            return array.astype(dtype)
        finite = np.nan_to_num(array, nan=0, posinf=127, neginf=-127)  # no integer value for NaN or infinity
        return finite.astype(np.int64).astype(dtype) if dtype.startswith("datetime") else finite.astype(dtype)


@st.composite
def archives(draw):
    """(split, {archive name: bytes}, the split itself or None): a small valid split with up to three
    faults, at any level from single values to the compressed archive's bytes (one case in six has
    none; then the split itself comes along, to compare)."""
    split = draw(st.sampled_from(S.SPLITS))
    seq_name, padding, label_name = S.ARCHIVES[split]
    faults = draw(st.permutations(FAULTS))[: draw(st.sampled_from([0, 1, 1, 2, 2, 3]), label="faults")]
    n = draw(st.integers(1, 6))
    strokes = make_strokes(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), n=n, max_steps=12)
    raw = S.to_raw(strokes, padding, draw(st.integers(13, 16)))
    labels = strokes.labels.astype(np.int64)
    if "odd cells" in faults:
        for _ in range(draw(st.integers(1, 3))):
            raw[tuple(draw(st.integers(0, size - 1)) for size in raw.shape)] = draw(st.sampled_from(ODD_VALUES))
    if "shape" in faults:
        raw = reshape(raw, draw(st.sampled_from(SHAPES)))
    if "dtype" in faults:
        raw = cast(raw, draw(st.sampled_from(DTYPES)))
    if "label values" in faults:
        for _ in range(draw(st.integers(1, 2))):
            labels[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-1, 10, 255, 3, 9, 0]))
    if "label count" in faults:
        labels = labels[:-1] if draw(st.booleans()) else np.concatenate([labels, labels[:1]])
    if "labels 2-d" in faults:
        labels = labels[:, None]
    if "label dtype" in faults:
        labels = cast(labels, draw(st.sampled_from(LABEL_DTYPES)))

    files = {}
    for name, array in ((seq_name, raw), (label_name, labels)):
        def hit(fault: str, name: str = name) -> bool:
            return fault in faults and draw(st.booleans(), label=f"{fault} in {name}")

        payload = npy_bytes(array)
        payload = truncate(payload, draw) if hit("npy truncated") else payload
        payload = flip(payload, draw) if hit("npy bytes flipped") else payload
        layout = draw(st.sampled_from(ARCHIVE_LAYOUTS)) if hit("archive layout") else "one .npy"
        members = {"one .npy": [("x.npy", payload)], "two members": [("x.npy", payload), ("y.npy", payload)],
                   "no member": [], "not .npy": [("x.txt", payload)]}.get(layout)
        archive = tar_gz(members) if members is not None else payload
        archive = truncate(archive, draw) if hit("archive truncated") else archive
        files[name] = flip(archive, draw) if hit("archive bytes flipped") else archive
    return split, files, None if faults else strokes


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(archives())
def test_any_archive_loads_or_fails_with_one_data_error_line(case):
    split, files, intact = case
    with tempfile.TemporaryDirectory() as folder:
        for name in S.SHA256:  # the other split's archives only need to exist
            Path(folder, name).write_bytes(files.get(name, b""))
        try:
            loaded = S.load_strokes(split, folder, verify=False, cache=False)
        except DataError as err:
            assert "\n" not in str(err) and str(err)
            event("DataError: " + " ".join(str(err).split(": ", 1)[-1].split()[:4]))  # what kind, without the path
            return
    event("loaded")
    n, max_steps, _ = loaded.steps.shape
    assert n >= 1 and loaded.steps.dtype == np.int8 and loaded.lengths.shape == loaded.labels.shape == (n,)
    assert ((loaded.lengths >= 1) & (loaded.lengths <= max_steps)).all()
    assert ((loaded.labels >= 0) & (loaded.labels <= 9)).all()
    assert (loaded.steps[..., 2] <= S.PEN_END_DIGIT).all() and (loaded.steps[..., 2] >= 0).all()
    last = loaded.steps[np.arange(n), loaded.lengths - 1, 2]
    assert (last == S.PEN_END_DIGIT).all()  # every sequence ends with its end-of-digit step
    if intact is not None:
        assert_same(loaded, intact)


@st.composite
def cache_damage(draw):
    kind = draw(st.sampled_from(["truncate", "flip", "empty", "garbage", "append"]))
    position = draw(st.floats(0, 1, exclude_max=True))
    value = draw(st.integers(1, 255))
    return kind, position, value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cache_damage(), st.integers(0, 2**32 - 1))
def test_a_damaged_cache_never_changes_what_is_loaded(damaged, seed):
    kind, position, value = damaged
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = folder / "data"
        data.mkdir()
        strokes = make_strokes(np.random.default_rng(seed), n=4, max_steps=12)
        for split in S.SPLITS:
            seq_name, padding, label_name = S.ARCHIVES[split]
            (data / seq_name).write_bytes(tar_gz([("x.npy", npy_bytes(S.to_raw(strokes, padding, 13)))]))
            (data / label_name).write_bytes(tar_gz([("x.npy", npy_bytes(strokes.labels.astype(np.int32)))]))
        saved = os.environ.get("TINYDOT_CACHE")
        os.environ["TINYDOT_CACHE"] = str(folder / "cache")
        try:
            first = S.load_strokes("test", data, verify=False)
            [cached] = (folder / "cache").glob("*.npz")
            content = bytearray(cached.read_bytes())
            at = int(position * len(content))
            content = {"truncate": lambda c: c[:at], "empty": lambda c: b"", "garbage": lambda c: bytes([value]) * 64,
                       "append": lambda c: c + bytes([value]) * 10,
                       "flip": lambda c: c[:at] + bytes([c[at] ^ value]) + c[at + 1:]}[kind](content)
            cached.write_bytes(bytes(content))
            again = S.load_strokes("test", data, verify=False)
        finally:
            if saved is None:
                del os.environ["TINYDOT_CACHE"]
            else:
                os.environ["TINYDOT_CACHE"] = saved
    for name in ("steps", "lengths", "labels", "starts"):
        assert np.array_equal(getattr(again, name), getattr(first, name)), (kind, name)
