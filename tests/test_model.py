"""tinyDOT: causality, likelihood facts, overfitting, checkpoints, sampling."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from tinydot.checkpoint import CheckpointError, load_config, load_model, save_model
from tinydot.config import ModelConfig, TrainConfig
from tinydot.data.batching import Encoded, length_buckets, make_inputs
from tinydot.errors import ConfigError
from tinydot.evaluation import evaluate_nll
from tinydot.data.batching import IN_PEN
from tinydot.sampling import sample
from tinydot.training import init_model, lr_at, train

TINY = ModelConfig(n_layers=2, d_model=32, d_mlp=64)


@pytest.fixture(scope="module")
def few(train):
    return train.subset(np.arange(64))


def test_causality(few):
    model = init_model(TINY, seed=1)
    inputs, labels, _ = Encoded(few).batch(np.arange(8), TINY.max_move)
    changed = inputs.clone()
    t = 10
    changed[:, t + 1:, :2] = torch.randint(0, 2 * TINY.max_move + 1, changed[:, t + 1:, :2].shape)
    changed[:, t + 1:, IN_PEN] = torch.randint(0, 3, changed[:, t + 1:, IN_PEN].shape)
    with torch.no_grad():
        a, _ = model(inputs, labels)
        b, _ = model(changed, labels)
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


def test_untrained_nll_is_near_uniform(test_split):
    data = test_split.subset(np.arange(500))
    # uniform: log2(3) for the pen state, plus log2(57) each for dx and dy on pen-down steps
    pen = np.concatenate([data.steps[i, : data.lengths[i], 2] for i in range(len(data))])
    moves = 2 * TINY.max_move + 1
    uniform = math.log2(3) + (pen == 0).mean() * 2 * math.log2(moves)
    nll = evaluate_nll(init_model(TINY, seed=0), data)
    assert nll["steps"] == len(pen)
    assert abs(nll["bits_per_step"] - uniform) < 0.01 * uniform
    assert abs(nll["start_bits"] - 2 * math.log2(moves)) < 0.01 * 2 * math.log2(moves)


def test_tiny_model_overfits_a_tiny_batch(few, tmp_path):
    data = few.subset(np.arange(4))
    cfg = TrainConfig(steps=300, lr=1e-2, warmup_steps=10, weight_decay=0.0, eval_every=0, checkpoint_every=0)
    result = train(data, tmp_path, TINY, cfg, progress=False)
    assert evaluate_nll(result.model, data)["bits_per_step"] < 0.5  # from ~12.5 bits untrained


def test_same_seed_same_curve_and_resume_is_exact(few, tmp_path, monkeypatch):
    cfg = TrainConfig(steps=40, tokens_per_batch=600, warmup_steps=5, eval_every=10, checkpoint_every=20)
    first = train(few, tmp_path / "a", TINY, cfg, eval_data=few, progress=False)
    second = train(few, tmp_path / "b", TINY, cfg, eval_data=few, progress=False)
    curve = ["step", "train_bits_per_position", "eval_bits_per_step", "tokens"]
    assert first.history[curve].equals(second.history[curve])
    assert len(first.history) == 4

    # a run killed right after its step-20 checkpoint, then started again, ends identically
    import tinydot.training as training

    real_save = training.save_tensors

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_tensors", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(few, tmp_path / "c", TINY, cfg, eval_data=few, progress=False)
    monkeypatch.setattr(training, "save_tensors", real_save)
    resumed = train(few, tmp_path / "c", TINY, cfg, eval_data=few, progress=False)
    assert resumed.history[curve].equals(first.history[curve])
    for (name, a), (_, b) in zip(first.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_run_folder_refuses_a_different_config(few, tmp_path):
    train(few, tmp_path, TINY, TrainConfig(steps=2, eval_every=0), progress=False)
    with pytest.raises(ConfigError, match=r"different configuration \(train.steps 2 -> 3\)"):
        train(few, tmp_path, TINY, TrainConfig(steps=3, eval_every=0), progress=False)


def test_a_finished_run_is_not_returned_for_other_inputs(few, tmp_path):
    # a finished folder used to come back as it was, whatever the data: now the inputs are recorded
    cfg = TrainConfig(steps=2, eval_every=1)
    first = train(few, tmp_path, TINY, cfg, eval_data=few.subset(np.arange(10)), progress=False)
    assert train(few.subset(np.arange(len(few))), tmp_path, TINY, cfg, eval_data=few.subset(slice(10)),
                 progress=False).history.equals(first.history)  # equal data in new objects: the same run
    others = [((few.subset(np.arange(1, len(few))),), {"eval_data": few.subset(np.arange(10))}, "the training data"),
              ((few,), {"eval_data": few.subset(np.arange(1, 11))}, "the held-out data"),
              ((few,), {"eval_data": few.subset(np.arange(10)), "start_step": 1}, "the start step"),
              ((few,), {"eval_data": few.subset(np.arange(10)), "init_state": init_model(TINY, 5).state_dict()},
               "the initial weights")]
    from tinydot.pruning.magnitude import random_mask
    from tinydot.pruning.mask import full_mask, prunable_names

    model = init_model(TINY, 0)
    mask = full_mask(model, prunable_names(model))
    masked = tmp_path.parent / f"{tmp_path.name}-masked"
    train(few, masked, TINY, cfg, eval_data=few.subset(np.arange(10)), mask=mask, progress=False)
    with pytest.raises(ConfigError, match=r"on other inputs \(the mask\)"):
        train(few, masked, TINY, cfg, eval_data=few.subset(np.arange(10)), mask=random_mask(
            {name: keep & (torch.rand(keep.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
             for name, keep in mask.items()}, 0), progress=False)
    for args, kwargs, named in others:
        with pytest.raises(ConfigError, match=f"on other inputs \\({named}\\); choose another output folder"):
            train(*args, tmp_path, TINY, cfg, progress=False, **kwargs)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["inputs"]["data"] == few.fingerprint and stored["inputs"]["start_step"] == 0
    del stored["inputs"]  # a folder written before inputs were recorded is taken to match them
    (tmp_path / "config.json").write_text(json.dumps(stored))
    assert train(few.subset(np.arange(1, len(few))), tmp_path, TINY, cfg, progress=False).history.equals(first.history)


def test_a_folder_written_before_a_config_field_existed_still_resumes(few, tmp_path):
    """config.json without `activation` (written before the field existed) is the default config."""
    cfg = TrainConfig(steps=2, eval_every=0)
    train(few, tmp_path, TINY, cfg, progress=False)
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["model"]["activation"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    assert train(few, tmp_path, TINY, cfg, progress=False).history["step"].iloc[-1] == 2


@pytest.mark.parametrize("activation,function", [("gelu", torch.nn.functional.gelu), ("relu", torch.relu)])
def test_activation_is_the_mlp_and_dy_head_nonlinearity(activation, function):
    model = init_model(dataclasses.replace(TINY, activation=activation), 0)
    h, dx = torch.randn(4, 7, TINY.d_model), torch.randint(0, 57, (4, 7))
    expected = model.head_dy(function(model.dy_in(h) + model.dy_given_dx(dx)))
    torch.testing.assert_close(model.dy_logits(h, dx), expected, rtol=0, atol=0)
    block = model.blocks[0]
    torch.testing.assert_close(block.mlp(h), block.mlp[2](function(block.mlp[0](h))), rtol=0, atol=0)


def test_checkpoint_round_trip_is_bit_exact(tmp_path, few):
    model = init_model(TINY, seed=3)
    save_model(tmp_path / "m.safetensors", model)
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.cfg == model.cfg
    assert load_config(tmp_path / "m.safetensors") == model.cfg  # from the metadata alone
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    inputs, labels, targets = Encoded(few).batch(np.arange(8), TINY.max_move)
    assert torch.equal(model.nll(inputs, labels, targets), loaded.nll(inputs, labels, targets))


def test_the_same_checkpoint_is_the_same_bytes_in_every_process(tmp_path):
    # safetensors writes its metadata in hash-map order, which Rust seeds afresh in every process:
    # the same run gave files with different sha256 (and compress refused an identical checkpoint)
    import hashlib
    import subprocess
    import sys

    script = ("import sys; from tinydot.checkpoint import save_model; from tinydot.training import init_model; "
              "from tinydot.config import ModelConfig; "
              "save_model(sys.argv[1], init_model(ModelConfig(n_layers=1, d_model=8, d_mlp=16), 0), {'note': 'x'})")
    digests = set()
    for i in range(4):
        path = tmp_path / f"m{i}.safetensors"
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
        data = path.read_bytes()
        size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + size])["__metadata__"]
        assert list(metadata) == sorted(metadata) == ["extra", "format", "model_config"]
        assert load_model(path).cfg.d_model == 8  # still a valid safetensors file
        digests.add(hashlib.sha256(data).hexdigest())
    assert len(digests) == 1


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a tinydot checkpoint"):
        load_model(tmp_path / "other.safetensors")
    for name, message in [("missing", "does not exist"), ("junk", "not a readable safetensors file"),
                          ("other", "not a tinydot checkpoint")]:
        with pytest.raises(CheckpointError, match=message):
            load_config(tmp_path / f"{name}.safetensors")
    model = init_model(TINY, seed=0)
    save_model(tmp_path / "m.safetensors", model)
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("values,message", [
    ({"d_model": 0}, "d_model must be a positive integer"),
    ({"d_model": 30, "n_heads": 4}, "divisible by n_heads"),
    ({"max_move": 10}, "max_move must be >= 28"),
    ({"layers": 2}, "unknown ModelConfig field"),
    ({"activation": "tanh"}, "unknown model activation 'tanh'; choose gelu or relu"),
])
def test_bad_model_config(values, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(values)


@pytest.mark.parametrize("values,message", [
    ({"steps": 0}, "steps must be a positive integer"),
    ({"lr": -1.0}, "lr must be in"),
    ({"tokens_per_batch": 50}, "tokens_per_batch must be >= 118"),
    ({"beta2": 1.0}, "beta2 must be in"),
])
def test_bad_train_config(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)


def test_lr_schedule():
    cfg = TrainConfig(steps=1000, lr=1e-3, warmup_steps=100, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-5)
    assert lr_at(99, cfg) == pytest.approx(1e-3)
    assert lr_at(550, cfg) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # halfway through the cosine
    assert lr_at(1000, cfg) == pytest.approx(1e-4)


def test_length_buckets_cover_every_sequence_once(train):
    lengths = Encoded(train).lengths
    batches = length_buckets(lengths, 4096, np.random.default_rng(0))
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(len(train)))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert all(len(b) * lengths[b].max() <= 4096 for b in batches)
    assert padded < 1.02 * lengths.sum()  # under 2% of the positions are padding


def test_incremental_decoding_matches_the_full_forward(few):
    model = init_model(TINY, seed=2)
    inputs, labels, targets = Encoded(few).batch(np.arange(4), TINY.max_move)
    with torch.no_grad():
        full, _ = model(inputs, labels)
        past, steps = None, []
        for t in range(inputs.shape[1]):
            h, past = model(inputs[:, t: t + 1], labels, past=past, offset=t)
            steps.append(h)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_sampling_is_seeded_and_well_formed():
    model = init_model(TINY, seed=0)
    digits = [0, 1, 7, 7, 9]
    a = sample(model, digits, seed=5)
    b = sample(model, digits, seed=5)
    c = sample(model, digits, seed=6)
    assert np.array_equal(a.steps, b.steps) and np.array_equal(a.starts, b.starts)
    assert not np.array_equal(a.steps, c.steps)
    assert a.labels.tolist() == digits
    assert ((a.starts >= 1) & (a.starts <= 28)).all()
    n = len(digits)
    assert np.array_equal(a.steps[np.arange(n), a.lengths - 1, 2], np.full(n, 2))  # ends with end-of-digit
    assert ((a.steps[:, :, 2] == 2).sum(axis=1) == 1).all()
    with pytest.raises(ConfigError, match="temperature"):
        sample(model, digits, temperature=0)


def test_make_inputs_tracks_the_pen_position():
    moves = torch.tensor([[[3, 4, 0], [1, 0, 0], [0, 0, 1], [-2, 5, 0], [0, 0, 2]]])
    inputs = make_inputs(moves, 28)
    assert inputs[0, :, 3].tolist() == [0, 3, 4, 4, 2]  # x after each previous move
    assert inputs[0, :, 4].tolist() == [0, 4, 4, 4, 9]
    assert inputs[0, :, 2].tolist() == [3, 0, 0, 1, 0]  # BOS, then the previous pen state


def test_nll_matches_a_position_by_position_computation(few):
    """TinyDOT.nll against the factorization written out one position at a time (module docstring)."""
    model = init_model(TINY, 3)
    inputs, labels, targets = Encoded(few).batch(np.arange(4))
    nll = model.nll(inputs, labels, targets).detach()
    h = model(inputs, labels)[0].detach()
    for b in range(4):
        for t in range(inputs.shape[1]):
            dx, dy, pen = (int(v) for v in targets[b, t])
            if pen == -1:  # padding
                assert nll[b, t] == 0
                continue
            expected = 0.0 if t == 0 else -torch.log_softmax(model.head_pen(h[b, t]), 0)[pen]
            if pen == 0:
                dxi, dyi = torch.tensor(dx + TINY.max_move), dy + TINY.max_move
                expected = expected - torch.log_softmax(model.head_dx(h[b, t]), 0)[dxi]
                expected = expected - torch.log_softmax(model.dy_logits(h[b, t], dxi), 0)[dyi]
            torch.testing.assert_close(nll[b, t], torch.as_tensor(expected).detach(), rtol=1e-5, atol=1e-5)
