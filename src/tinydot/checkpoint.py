"""Checkpoints: safetensors weights with the model config in their metadata, written atomically.

A checkpoint file alone rebuilds its model (`load_model`). Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from tinydot.config import ModelConfig, check_domain_name
from tinydot.errors import ConfigError, TinydotError
from tinydot.io import atomic_path, run_kind
from tinydot.model import Decoder, build_model

MODEL_FILE = "model.safetensors"
PACKED_FORMAT = "tinydot-quantized"  # quantize's bits_N/quantized.safetensors (integer codes and scales)


class CheckpointError(TinydotError):
    """A checkpoint that is missing, corrupt or not tinydot's."""


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` and `metadata` as a safetensors file, atomically, with bytes that depend on
    them alone: safetensors writes the metadata in hash-map order, which changes from process to
    process, so the same run would give files with different sha256 (`_sorted_metadata`)."""
    data = save({k: v.detach().contiguous() for k, v in tensors.items()}, metadata=metadata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(_sorted_metadata(data))


def _sorted_metadata(data: bytes) -> bytes:
    """A safetensors file's bytes with its header's metadata keys in sorted order. The header (8
    bytes of length, then JSON padded with spaces) keeps its length, so the tensors do not move."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    if "__metadata__" not in header:
        return data
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # never seen: the same JSON written compactly; keep safetensors' own bytes then
        return data
    return data[:8] + text.ljust(size, b" ") + data[8 + size:]


def where_models_are(folder: str | os.PathLike) -> str:
    """For a run folder that holds no model of its own, what it holds and where its models are, as
    "X holds a lottery run: give one of its models, e.g. X/level_0"; "" for any other folder."""
    folder = Path(folder)
    kind = run_kind(folder)
    if kind in (None, "training", "compress"):
        return ""
    inside = {"lottery": "level_*", "quantize": "bits_*", "study": "jobs/*/level_*"}.get(kind)
    found = sorted(folder.glob(f"{inside}/{MODEL_FILE}")) if inside else []
    if found:
        return f"{folder} holds a {kind} run: give one of its models, e.g. {found[0].parent}"
    return f"{folder} holds a {kind} run, not a model"


@contextmanager
def _opened(path: Path):
    """The safetensors file at `path`, open; a CheckpointError if it is missing or unreadable."""
    if not path.is_file():
        hint = where_models_are(path.parent) if path.name == MODEL_FILE and path.parent.is_dir() else ""
        raise CheckpointError(f"checkpoint {path} does not exist" + (f"; {hint}" if hint else ""))
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from None


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with _opened(Path(path)) as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {}


def save_model(path: str | os.PathLike, model: Decoder, extra: dict | None = None) -> None:
    metadata = {"format": "tinydot", "model_config": json.dumps(model.cfg.to_dict())}
    if extra:
        metadata["extra"] = json.dumps(extra)
    save_tensors(path, model.state_dict(), metadata)


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint path: the file itself, or a run folder holding model.safetensors."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def is_tinydot_checkpoint(path: str | os.PathLike) -> bool:
    """True if `path` (a file or a run folder) holds a safetensors file written by save_model."""
    path = resolve(path)
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format") == "tinydot"
    except (SafetensorError, OSError):
        return False


def _model_config(path: Path, metadata: dict[str, str]) -> ModelConfig:
    if {"step", "history"} <= set(metadata) and "model_config" not in metadata:  # train's checkpoint.safetensors
        raise CheckpointError(f"{path} is a training run's resume point (weights and optimizer state), not a "
                              f"model; give the run folder or its {MODEL_FILE}")
    if metadata.get("format") == PACKED_FORMAT:
        raise CheckpointError(f"{path} is a packed quantized model (integer codes and scales); give the folder that "
                              f"holds it or its {MODEL_FILE} (the same weights, dequantized)")
    if metadata.get("format") != "tinydot" or "model_config" not in metadata:
        raise CheckpointError(f"{path} is not a tinydot checkpoint (no model config in its metadata)")
    try:
        return ModelConfig.from_dict(json.loads(metadata["model_config"]))
    except (ConfigError, json.JSONDecodeError, TypeError) as err:
        raise CheckpointError(f"{path} has an invalid model config ({err})") from None


def load_config(path: str | os.PathLike) -> ModelConfig:
    """The model config of a checkpoint file or run folder, read from its metadata alone (no weights)."""
    path = resolve(path)
    with _opened(path) as handle:
        metadata = handle.metadata() or {}
    return _model_config(path, metadata)


def load_model(path: str | os.PathLike, *, domain: str | None = None) -> Decoder:
    """Rebuild the model (TinyDOT or TextDOT, as its config says) from a checkpoint file or a run
    folder, in eval mode. A config written before a field existed gets that field's default.

    domain : if given, a CheckpointError unless the model is of this domain (for the analyses
             that exist for one domain only).
    """
    if domain is not None:
        check_domain_name(domain)
    path = resolve(path)
    tensors, metadata = load_tensors(path)
    cfg = _model_config(path, metadata)
    if domain is not None and cfg.domain != domain:
        raise CheckpointError(f"{path} holds a {cfg.domain} model; this needs a {domain} model")
    model = build_model(cfg)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0:2]
        raise CheckpointError(f"{path} does not match its own model config ({' '.join(first)})") from None
    return model.eval()
