"""Evaluating tinyDOT: held-out NLL in bits per pen step or per word (and, below, recognizability
of sampled digits)."""

from __future__ import annotations

import math

import numpy as np
import torch

from tinydot.checkpoint import load_tensors, save_tensors
from tinydot.config import check_seed
from tinydot.data.batching import Encoded, EncodedText, encode, length_buckets
from tinydot.data.render import rasterize_all
from tinydot.data.strokes import NUM_CLASSES, Strokes, cache_dir, load_strokes
from tinydot.data.text import Sentences
from tinydot.errors import ConfigError
from tinydot.executors import passing_bar
from tinydot.model import Decoder, TinyDOT
from tinydot.sampling import check_temperature, sample


@torch.no_grad()
def evaluate_nll(model: Decoder, data: Strokes | Sentences | Encoded | EncodedText,
                 tokens_per_batch: int = 16384) -> dict[str, float]:
    """Exact negative log2-likelihood of `data` under `model` (an encoding must match the model's config).

    Strokes:
      bits_per_step : mean over all pen steps (start point excluded) -- the headline number
      start_bits    : mean bits of the start point (x, y)
    Text (every sentence scored on its own, from <eos>; Mikolov's count: each sentence end is a
    predicted word, so PTB test has 78,669 + 3,761 = 82,430 predictions):
      bits_per_word : mean over all predicted words, sentence ends included -- the headline number
      perplexity    : 2 ** bits_per_word
      bits_per_step : = bits_per_word, the domain-agnostic name that training and the lottery read
    Both: steps (predictions scored), sequences.
    """
    if not (isinstance(tokens_per_batch, int) and tokens_per_batch >= 1):
        raise ConfigError(f"tokens_per_batch must be a positive integer, got {tokens_per_batch!r}")
    encoded = data if isinstance(data, (Encoded, EncodedText)) else encode(data, model.cfg)
    if len(encoded) == 0:
        raise ConfigError("no sequences to evaluate: the data are empty")
    if isinstance(encoded, Encoded) and encoded.max_move != model.cfg.max_move:
        raise ValueError(f"strokes encoded for max_move {encoded.max_move}, the model's is {model.cfg.max_move}")
    was_training = model.training
    model.eval()
    first_nll, rest_nll = 0.0, 0.0  # nats at position 0 (the start point / the first word) and after it
    for index in length_buckets(encoded.lengths, tokens_per_batch, np.random.default_rng(0)):
        nll = model.nll(*encoded.batch(index))
        first_nll += float(nll[:, 0].sum())
        rest_nll += float(nll[:, 1:].sum())
    model.train(was_training)
    if isinstance(encoded, EncodedText):
        n_words = int(encoded.lengths.sum())
        bits = (first_nll + rest_nll) / n_words / math.log(2)
        return {"bits_per_word": bits, "perplexity": 2.0 ** bits, "bits_per_step": bits,
                "steps": n_words, "sequences": len(encoded)}
    n_steps = int(encoded.lengths.sum() - len(encoded))
    return {"bits_per_step": rest_nll / n_steps / math.log(2), "start_bits": first_nll / len(encoded) / math.log(2),
            "steps": n_steps, "sequences": len(encoded)}


# --------------------------------------------------------------------------- the stroke classifier

class StrokeClassifier(torch.nn.Module):
    """A small CNN over the 28x28 rasterized stroke image (`rasterize_all`): it judges how a digit
    looks, which is what recognizability of generated samples should mean."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 7, 7)
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, NUM_CLASSES))

    def forward(self, images):  # images: (B, 28, 28) -> logits (B, 10)
        return self.net(images[:, None])

    @torch.no_grad()
    def predict(self, strokes: Strokes, batch_size: int = 1000) -> np.ndarray:
        self.eval()
        images = torch.from_numpy(rasterize_all(strokes))
        return torch.cat([self(images[i: i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)]).numpy()


CLASSIFIER_EPOCHS = 3
_CLASSIFIER_VERSION = 2  # 2: trained at one thread (version 1 followed the process's thread count)


def train_classifier(train: Strokes, *, epochs: int = CLASSIFIER_EPOCHS, seed: int = 0,
                     progress: bool = False) -> StrokeClassifier:
    """Fit the classifier on `train` (Adam, batch 128, seeded) at one torch thread, so that the weights
    do not depend on the thread count of the process that trains (and caches) it first; `progress`
    shows a bar (about a minute and a half on the full train split)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_classifier(train, epochs, seed, progress)
    finally:
        torch.set_num_threads(threads)


def _fit_classifier(train: Strokes, epochs: int, seed: int, progress: bool) -> StrokeClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = StrokeClassifier()
    images = torch.from_numpy(rasterize_all(train))
    labels = torch.from_numpy(train.labels.astype(np.int64))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    classifier.train()
    batches = max(1, len(train) // 128)
    with passing_bar("training the stroke classifier (once; cached)", progress) as bar:
        task = bar.add_task("classifier", total=epochs * batches)
        for epoch in range(epochs):
            for lr_group in optimizer.param_groups:
                lr_group["lr"] = 1e-3 * (0.3 ** epoch)
            for batch in np.array_split(rng.permutation(len(train)), batches):
                loss = torch.nn.functional.cross_entropy(classifier(images[batch]), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.advance(task)
    return classifier.eval()


def load_or_train_classifier(train: Strokes, progress: bool = False) -> StrokeClassifier:
    """The classifier for `train`, cached (safetensors) under the tinydot cache folder; trained (with a
    progress bar if `progress`) the first time."""
    path = cache_dir() / f"classifier-v{_CLASSIFIER_VERSION}-{train.fingerprint}.safetensors"
    classifier = StrokeClassifier()
    if path.is_file():
        classifier.load_state_dict(load_tensors(path)[0])
        return classifier.eval()
    classifier = train_classifier(train, progress=progress)
    save_tensors(path, classifier.state_dict())
    return classifier


def recognizability(model: TinyDOT, classifier: StrokeClassifier, *, per_class: int = 100,
                    temperature: float = 0.8, seed: int = 0) -> dict:
    """Sample `per_class` digits of each class; the fraction the classifier assigns to the requested class."""
    digits = np.repeat(np.arange(NUM_CLASSES), per_class)
    samples = sample(model, digits, temperature=temperature, seed=seed)
    correct = classifier.predict(samples) == digits
    return {"recognizability": float(correct.mean()),
            "per_class": [float(correct[digits == c].mean()) for c in range(NUM_CLASSES)],
            "samples": len(digits), "temperature": temperature}


MAX_PER_CLASS = 1000  # 10,000 samples: minutes on a CPU


def evaluate(model: TinyDOT, *, data_dir=None, per_class: int = 100, temperature: float = 0.8,
             seed: int = 0, progress: bool = False) -> dict:
    """The headline numbers of a stroke model: test NLL (bits/step), the classifier's test accuracy,
    and the recognizability of `per_class` samples per digit. Arguments are checked before any work.

    The stroke classifier is trained on the train split the first time (about a minute and a half; a
    progress bar if `progress`) and cached (`load_or_train_classifier`). Recognizability is the
    share of samples the classifier calls by the digit they were drawn for. Over all classes (equal
    samples of each) its chance level is 10%: samples that ignore their class score 0.10 on average
    (20-step models: 0.098 and 0.105). Per class it is not: short scribbles look like a "1", so such
    a barely trained model scores ~0.8 on class 1 and under 0.1 on the others; compare a class's
    score with a weak model's, not with 10%.
    For a text model use `evaluate_nll`."""
    if not isinstance(model, TinyDOT):
        raise ConfigError(f"evaluate scores a strokes model (TinyDOT), not a {type(model).__name__}; "
                          "evaluate_nll scores a text model")
    if not 1 <= per_class <= MAX_PER_CLASS:
        raise ConfigError(f"per_class must be between 1 and {MAX_PER_CLASS}, got {per_class}")
    check_temperature(temperature)
    check_seed(seed)
    train, test = load_strokes("train", data_dir), load_strokes("test", data_dir)
    classifier = load_or_train_classifier(train, progress)
    result = {"test_" + k: v for k, v in evaluate_nll(model, test).items()}
    result["classifier_test_accuracy"] = float((classifier.predict(test) == test.labels).mean())
    result.update(recognizability(model, classifier, per_class=per_class, temperature=temperature, seed=seed))
    return result
