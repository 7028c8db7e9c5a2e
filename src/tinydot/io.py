"""Small file helpers shared by every layer: atomic writes (text, figures), output checks, hashing."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tinydot.errors import ConfigError, TinydotError

try:
    import fcntl  # flock for `hold_folder`
except ImportError:  # not a POSIX system: nothing is held
    fcntl = None

_UMASK = os.umask(0)
os.umask(_UMASK)
_STARTED = time.time()  # temporary files older than this were left by writers that were killed


# --------------------------------------------------------------------------- output paths, checked before work

def _nearest_existing(path: Path) -> Path:
    while not path.exists():  # "x/y" under a file "x" does not exist either (ENOTDIR)
        path = path.parent
    return path


def _check_folder(folder: Path, what: str, given: Path) -> None:
    """`folder` exists already or can be created, and this process can create files in it."""
    try:
        if folder.exists() and not folder.is_dir():
            which = f"{what} {given}" if folder == given else f"{what} {given}: {folder}"
            raise ConfigError(f"{which} is an existing file, not a folder; choose another path")
        existing = _nearest_existing(folder)
        if not existing.is_dir():
            raise ConfigError(f"{what} {given} cannot be created: {existing} is a file, not a folder")
        with tempfile.TemporaryFile(dir=existing):  # the honest test: permissions, read-only mounts, root
            pass
    except OSError as err:
        raise ConfigError(f"{what} {given} is not writable ({err.strerror}); choose another folder") from None


def check_writable_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Refuse, before any work starts, an output folder that cannot be created or written to.

    `path` may exist (as a folder) or not; nothing is created. `what` names the path for the
    user (an option or an environment variable). Raises ConfigError with one line.
    """
    path = Path(path)
    _check_folder(path, what, path)
    return path


def check_writable_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """Refuse, before any work starts, an output file that is a folder or whose folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        example = path / ("result" + (path.suffix or ".json"))
        raise ConfigError(f"{what} {path} is a folder; give a file path (e.g. {example})")
    _check_folder(path.parent, what, path)
    if path.name in RUN_FILES and _in_a_run(path.parent):
        raise ConfigError(f"{what} {path}: {path.name} is a name run folders keep for their own files (a stage would "
                          f"read it back); give another name (e.g. {path.with_name('eval' + path.suffix)})")
    return path


# the names of the files stages read back (configuration, costs, finished steps): in a run folder or one of its
# step folders (level_k, bits_b, round_r, jobs/<job>) no command's --out may take them
RUN_FILES = ("config.json", "cost.json", "results.json", "summary.json", "job.json", "svcca.json")
_STEP_FOLDER = re.compile(r"(level|bits|round)_\d+")


def _in_a_run(folder: Path) -> bool:
    return run_kind(folder) is not None or bool(_STEP_FOLDER.fullmatch(folder.name)) or folder.parent.name == "jobs"


# --------------------------------------------------------------------------- atomic writes

def _remove_stale_temporaries(path: Path) -> None:
    """Delete `path`'s temporary siblings (see `atomic_path`) that writers killed before this
    process started left behind; a live writer's file is newer and stays."""
    name = re.compile(rf"\.{re.escape(path.stem)}\.[a-z0-9_]{{8}}\.tmp{re.escape(path.suffix)}")  # mkstemp's names
    for candidate in path.parent.glob(f".{glob.escape(path.stem)}.*.tmp{glob.escape(path.suffix)}"):
        with contextlib.suppress(FileNotFoundError):
            if name.fullmatch(candidate.name) and candidate.stat().st_mtime < _STARTED:
                candidate.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it onto `path` only if the block succeeds.

    Readers never see a half-written file, and a failed write leaves no file behind; the
    temporary file of a writer that was killed (kill -9) is deleted by the next write of `path`.
    The temporary name keeps the final suffix so that writers which infer the format from it
    (numpy, matplotlib) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_csv(frame, path: str | os.PathLike, index: bool = False) -> None:
    """Write a pandas DataFrame as CSV through `atomic_path` (without its index unless asked)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)


def read_json(path: str | os.PathLike, fix: str = "re-run the command that wrote it"):
    """The JSON value in a run folder's file; a damaged file (not JSON, not text) is refused in one
    line that ends with `fix` (a missing file raises FileNotFoundError as usual)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8 text"
        raise TinydotError(f"{path} is damaged (not JSON: {reason}); {fix}") from None


def not_a_folder(path: Path) -> str | None:
    """Why `path` cannot be read as a folder ("does not exist", "is not a folder"), or None if it can."""
    return None if path.is_dir() else "is not a folder" if path.exists() else "does not exist"


def check_exists(path: str | os.PathLike, what: str) -> None:
    """Refuse a path that does not exist: "<what> <path> does not exist"."""
    if not Path(path).exists():
        raise TinydotError(f"{what} {path} does not exist")


def check_run_folder(path: str | os.PathLike) -> None:
    """Refuse a path that is not a folder, as every reader of a finished run folder says it."""
    if problem := not_a_folder(Path(path)):
        raise TinydotError(f"{path} {problem}: give a finished run folder")


# analyses that write no config.json, recognised by the files they always write
_ANALYSIS_FILES = (("redundancy", ("summary.json", "selections.csv")), ("hessian", ("eigenvalues.csv",)),
                   ("svcca", ("svcca.json",)), ("complexity", ("measures.csv", "bins.csv")),
                   ("compare", ("predictions.csv", "compare.html")))


def run_kind(folder: str | os.PathLike) -> str | None:
    """Which stage wrote the run folder, from the files each one writes: "study", "lottery",
    "redundancy", "hessian", "svcca", "complexity", "compare", "compress", "quantize" or "training";
    None for a folder no stage wrote (or a broken config)."""
    folder = Path(folder)
    if (folder / "assignments.csv").is_file():
        return "study"
    if (folder / "level_0").is_dir():
        return "lottery"
    for kind, names in _ANALYSIS_FILES:
        if all((folder / name).is_file() for name in names):
            return kind
    if (config := _run_config(folder)) is None:
        return None
    return next((kind for kind in ("study", "compress", "quantize") if kind in config),
                "lottery" if "prune" in config else "training" if {"model", "train"} <= set(config) else None)


def enclosing_study(folder: str | os.PathLike) -> Path | None:
    """The study run folder that holds `folder` (one of its parents, resolved), or None. A parent counts
    only with a study's config.json, not for a stray file of the name a study writes (assignments.csv)."""
    return next((parent for parent in Path(folder).resolve().parents
                 if isinstance((_run_config(parent) or {}).get("study"), dict)), None)


def _run_config(folder: Path) -> dict | None:
    """A run folder's config.json as a dict; None when it is missing, unreadable or not an object."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


_HELD: dict[tuple[int, int], int] = {}  # (device, inode) of the folders this process holds: nested holds


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an existing run folder for this process while it writes: another process that asks for the
    same folder is refused in one line. An advisory lock (flock) on the folder itself, so no file is
    left behind and the kernel releases it when the process ends, kill -9 included; nested holds of
    one folder in one process pass. Where the platform or the file system has no flock, nothing is
    held (with a warning); on a network file system a lock rarely reaches other machines."""
    if fcntl is None:  # not a POSIX system
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        stat = os.fstat(handle)
        key = (stat.st_dev, stat.st_ino)
        if key not in _HELD:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"another process is writing {folder}; wait for it to finish, or choose another "
                                  "output folder") from None
            except OSError as error:  # a file system without flock: run unheld rather than not at all
                logging.getLogger(__name__).warning("cannot lock %s (%s); a second process would not be "
                                                    "refused", folder, error.strerror or error)
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield
        finally:
            if _HELD.get(key, 0) > 1:
                _HELD[key] -= 1
            else:
                _HELD.pop(key, None)
    finally:
        os.close(handle)  # an outer hold keeps its own descriptor, and so its lock


def check_run_kind(folder: str | os.PathLike, kind: str) -> None:
    """Refuse an output folder that holds another stage's run (`run_kind`): writing into it would mix
    two runs' files (and add this run's time to the other's cost.json)."""
    found = run_kind(folder)
    if found not in (None, kind):
        raise ConfigError(f"{folder} holds a {found} run, not a {kind} run; choose another output folder")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write a matplotlib Figure (anything with `savefig`) as a PNG at `path`, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
