"""Structured pruning: scores, exact rebuilds, checkpoints, the compress stage and its CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tinydot.checkpoint import load_model, save_model, save_tensors
from tinydot.config import ModelConfig, TrainConfig, config_hash
from tinydot.data.batching import Encoded
from tinydot.errors import ConfigError
from tinydot.evaluation import evaluate_nll
from tinydot.model import TinyDOT
from tinydot.pruning.structured import (
    KINDS,
    fewest_units_within,
    iterative_removal,
    lowest_removed,
    magnitude_scores,
    remove_units,
    removal_count,
    removal_schedule,
    shrink,
    taylor_scores,
    unit_mask,
)
from tinydot.training import train as train_model

from helpers import perturbed_model, user_error

HEADS4 = ModelConfig(n_layers=3, d_model=32, n_heads=4, d_mlp=48)


def perturbed(cfg=HEADS4, seed=0) -> TinyDOT:
    return perturbed_model(cfg, seed)


def batch(n=6, T=25, seed=0, cfg=HEADS4):
    """Random but well-formed model inputs, labels and targets."""
    g = torch.Generator().manual_seed(seed)
    moves = torch.randint(-3, 4, (n, T, 3), generator=g)
    moves[..., 2] = torch.randint(0, 3, (n, T), generator=g)
    from tinydot.data.batching import make_inputs

    return make_inputs(moves, cfg.max_move), torch.arange(n) % 10, moves


@pytest.fixture(scope="module")
def trained(train, tmp_path_factory):
    """A 4-head model trained briefly on real strokes (its run folder)."""
    folder = tmp_path_factory.mktemp("heads4")
    train_cfg = TrainConfig(steps=100, tokens_per_batch=2048, warmup_steps=10, eval_every=0, checkpoint_every=0)
    train_model(train.subset(np.arange(4000)), folder, ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=48),
          train_cfg, progress=False)
    return folder


@pytest.fixture(scope="module")
def held_out(test_split):
    return Encoded(test_split.subset(np.arange(9000, 9300)))


@pytest.fixture(scope="module")
def evaluated(test_split):
    return Encoded(test_split.subset(np.arange(600)))


# --- the model change ----------------------------------------------------------------------------

def test_d_head_keeps_old_hashes_and_checkpoints(tmp_path):
    # run folders are named by these hashes (computed before d_head existed): they must not change
    assert config_hash(ModelConfig()) == "afcf68585c"
    assert config_hash(ModelConfig(n_heads=4, d_model=32)) == "3188861e16"
    assert config_hash(ModelConfig(n_layers=2)) == "41d9bb34f8"
    with pytest.raises(ConfigError, match="divisible by n_heads"):
        ModelConfig(d_model=32, n_heads=3)
    assert ModelConfig(d_model=32, n_heads=3, d_head=8).head_width == 8
    # a checkpoint written before d_head existed (no such field in its config) still loads
    model = perturbed(ModelConfig(n_layers=1, d_model=16, d_mlp=32))
    old_config = {k: v for k, v in model.cfg.to_dict().items() if k != "d_head"}
    save_tensors(tmp_path / "old.safetensors", model.state_dict(),
                 {"format": "tinydot", "model_config": json.dumps(old_config)})
    loaded = load_model(tmp_path / "old.safetensors")
    assert loaded.cfg == model.cfg
    inputs, labels, _ = batch(cfg=model.cfg)
    torch.testing.assert_close(loaded(inputs, labels)[0], model(inputs, labels)[0], rtol=0, atol=0)


# --- rebuilding equals masking -------------------------------------------------------------------

@pytest.mark.parametrize("kind,count", [("heads", 1), ("heads", 3), ("neurons", 20), ("layers", 1), ("layers", 2)])
def test_rebuilt_model_equals_the_masked_original(kind, count):
    model = perturbed()
    keep = lowest_removed(magnitude_scores(model, kind), kind, count)
    smaller = shrink(model, kind, keep)
    inputs, labels, targets = batch()
    with torch.no_grad(), unit_mask(model, kind, keep.float()):
        hidden, nll = model(inputs, labels)[0], model.nll(inputs, labels, targets)
    with torch.no_grad():
        torch.testing.assert_close(smaller(inputs, labels)[0], hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(smaller.nll(inputs, labels, targets), nll, rtol=1e-5, atol=1e-5)
    # the mask really changes the model, so the equality above is not vacuous
    assert not torch.allclose(model(inputs, labels)[0], hidden, atol=1e-3)


def test_parameter_counts_by_hand():
    model = perturbed()
    d, hs, L = 32, 8, 3
    heads = shrink(model, "heads", lowest_removed(magnitude_scores(model, "heads"), "heads", 1))
    assert heads.cfg.n_heads == 3 and heads.cfg.d_head == 8  # 32 // 3 is not 8: stored explicitly
    # per removed head: q, k, v rows (3 * hs * d weights + 3 * hs biases) and hs columns of proj
    assert model.num_params() - heads.num_params() == L * (3 * hs * (d + 1) + d * hs)
    neurons = shrink(model, "neurons", lowest_removed(magnitude_scores(model, "neurons"), "neurons", 20))
    assert neurons.cfg.d_mlp == 28 and neurons.cfg.d_head == 0
    assert model.num_params() - neurons.num_params() == L * 20 * (2 * d + 1)
    layers = shrink(model, "layers", lowest_removed(magnitude_scores(model, "layers"), "layers", 1))
    block = sum(p.numel() for p in model.blocks[0].parameters())
    assert layers.cfg.n_layers == 2 and model.num_params() - layers.num_params() == block
    two_heads = shrink(model, "heads", lowest_removed(magnitude_scores(model, "heads"), "heads", 2))
    assert two_heads.cfg.n_heads == 2 and two_heads.cfg.d_head == 8


def test_shrink_is_pure_and_draws_no_random_numbers():
    model = perturbed()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    shrink(model, "neurons", lowest_removed(magnitude_scores(model, "neurons"), "neurons", 5))
    assert torch.equal(torch.rand(3), expected)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


def test_rebuilt_checkpoint_loads(tmp_path):
    model = perturbed()
    for kind in KINDS:
        smaller = shrink(model, kind, lowest_removed(magnitude_scores(model, kind), kind, 1))
        save_model(tmp_path / f"{kind}.safetensors", smaller)
        loaded = load_model(tmp_path / f"{kind}.safetensors")
        assert loaded.cfg == smaller.cfg
        for name, value in smaller.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value)


# --- scores and choices --------------------------------------------------------------------------

def test_magnitude_score_of_one_unit_by_hand():
    model = perturbed()
    scores = {kind: magnitude_scores(model, kind) for kind in KINDS}
    assert scores["heads"].shape == (3, 4) and scores["neurons"].shape == (3, 48) and scores["layers"].shape == (3, 1)
    mlp = model.blocks[1].mlp
    expected = torch.cat([mlp[0].weight[7], mlp[0].bias[7:8], mlp[2].weight[:, 7]]).norm()
    torch.testing.assert_close(scores["neurons"][1, 7], expected)
    attn, hs = model.blocks[2].attn, 8
    rows = [attn.qkv.weight[part * 32 + 2 * hs: part * 32 + 3 * hs] for part in range(3)]
    biases = [attn.qkv.bias[part * 32 + 2 * hs: part * 32 + 3 * hs] for part in range(3)]
    expected = torch.cat([r.reshape(-1) for r in rows] + biases + [attn.proj.weight[:, 2 * hs: 3 * hs].reshape(-1)])
    torch.testing.assert_close(scores["heads"][2, 2], expected.norm())


def test_lowest_removed_by_hand():
    scores = torch.tensor([[3.0, 1.0, 2.0, 1.0], [0.5, 4.0, 0.1, 9.0]])
    assert lowest_removed(scores, "neurons", 2).tolist() == [[True, False, True, False], [False, True, False, True]]
    blocks = torch.tensor([[2.0], [0.5], [1.0]])
    assert lowest_removed(blocks, "layers", 2).flatten().tolist() == [True, False, False]
    assert lowest_removed(scores, "heads", 0).all()


@pytest.mark.parametrize("kind", ["heads", "neurons", "layers"])
def test_taylor_scores_are_per_sequence_mask_gradients(kind, test_split):
    """A second implementation, one sequence at a time. Heads and neurons: ordinary parameter
    gradients (no masks), then sum(grad * weight) over the proj / mlp.2 columns that write each
    unit's output. Blocks: central finite differences of the skip interpolation, in float64."""
    model = perturbed()
    data = Encoded(test_split.subset(np.arange(3)))
    units = {"heads": 4, "neurons": 48, "layers": 1}[kind]
    expected = torch.zeros(3, units, dtype=torch.float64)
    double = perturbed().double()
    for b in range(3):
        inputs, labels, targets = data.batch([b], model.cfg.max_move)
        if kind == "layers":
            for layer in range(3):
                up, down = torch.ones(3, 1, dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64)
                up[layer], down[layer] = 1 + 1e-5, 1 - 1e-5
                with torch.no_grad(), unit_mask(double, "layers", up):
                    high = double.nll(inputs, labels, targets).sum()
                with torch.no_grad(), unit_mask(double, "layers", down):
                    low = double.nll(inputs, labels, targets).sum()
                expected[layer, 0] += abs(float(high - low) / 2e-5)
            continue
        model.zero_grad()
        model.nll(inputs, labels, targets).sum().backward()
        for layer, block in enumerate(model.blocks):
            if kind == "heads":
                gw = (block.attn.proj.weight.grad * block.attn.proj.weight).view(32, 4, 8).sum((0, 2))
            else:
                gw = (block.mlp[2].weight.grad * block.mlp[2].weight).sum(0)
            expected[layer] += gw.double().abs()
    scores = taylor_scores(model, kind, data)
    torch.testing.assert_close(scores.double(), expected / 3, rtol=1e-4, atol=1e-5)


def test_taylor_removal_hurts_less_than_removing_the_top(trained, held_out, evaluated):
    model = load_model(trained)
    dense = evaluate_nll(model, evaluated)["bits_per_step"]
    scores = taylor_scores(model, "neurons", held_out)
    low = evaluate_nll(shrink(model, "neurons", lowest_removed(scores, "neurons", 24)), evaluated)["bits_per_step"]
    high = evaluate_nll(shrink(model, "neurons", lowest_removed(-scores, "neurons", 24)), evaluated)["bits_per_step"]
    assert dense < low < high


# --- counts, errors, iteration -------------------------------------------------------------------

def test_removal_counts_and_errors():
    assert removal_count(HEADS4, "heads", 0.5) == 2
    assert removal_count(HEADS4, "neurons", 0.25) == 12
    assert removal_count(HEADS4, "layers", 0.34) == 1
    assert removal_count(ModelConfig(), "heads", 0.0) == 0
    with pytest.raises(ConfigError, match="single attention head"):
        removal_count(ModelConfig(), "heads", 0.5)
    with pytest.raises(ConfigError, match="would remove all of them"):
        removal_count(HEADS4, "heads", 0.9)
    with pytest.raises(ConfigError, match=r"rounds to none; choose at least 0.333 \(one of them\)"):
        removal_count(HEADS4, "layers", 0.1)
    with pytest.raises(ConfigError, match="^the model has a single block: none can be removed$"):
        removal_count(ModelConfig(n_layers=1), "layers", 0.3)  # no fraction in [0, 1) removes the one block
    with pytest.raises(ConfigError, match="in \\[0, 1\\)"):
        removal_count(HEADS4, "layers", 1.0)
    with pytest.raises(ConfigError, match="unknown unit kind"):
        removal_count(HEADS4, "experts", 0.5)
    assert removal_schedule(48, 36, 3) == [12, 12, 12]
    assert sum(removal_schedule(48, 7, 4)) == 7


def test_remove_units_keeps_at_least_one():
    model = perturbed()
    removal = remove_units(model, "neurons", 5, "magnitude")
    assert removal.model.cfg.d_mlp == 43 and int((~removal.keep).sum()) == 3 * 5
    assert remove_units(model, "heads", 0, "magnitude").model is model
    with pytest.raises(ConfigError, match="at least one must stay"):
        remove_units(model, "layers", 3, "magnitude")
    with pytest.raises(ConfigError, match="taylor importance needs held-out sequences"):
        remove_units(model, "layers", 1, "taylor")


def test_iterative_removal_calls_the_finetune_callback():
    model, calls = perturbed(), []

    def finetune(m, round_number):
        calls.append((round_number, m.cfg.d_mlp))
        return m

    removals = iterative_removal(model, "neurons", 0.75, rounds=3, importance="magnitude", finetune=finetune)
    assert calls == [(1, 36), (2, 24), (3, 12)]
    assert [r.model.cfg.d_mlp for r in removals] == [36, 24, 12]
    assert removals[0].keep.shape == (3, 48) and removals[1].keep.shape == (3, 36)


def test_fewest_units_within(trained, held_out, evaluated):
    model = load_model(trained)
    dense = evaluate_nll(model, evaluated)["bits_per_step"]
    tight = fewest_units_within(model, "neurons", evaluated, delta=0.0, importance="magnitude", fractions=(0.25, 0.5))
    loose = fewest_units_within(model, "neurons", evaluated, delta=10.0, importance="magnitude",
                                fractions=(0.25, 0.5, 0.75))
    assert tight["dense_bits_per_step"] == pytest.approx(dense)
    assert tight["bits_per_step"] <= dense
    assert loose["removed"] == 36 and loose["kept"] == 12  # within 1000% anything goes: the largest fraction


def test_torch_pruning_removes_the_same_weights():
    """Torch-Pruning's dependency graph, told which neurons and which heads' q/k/v rows to drop,
    must leave the same tensors as `shrink`."""
    tp = pytest.importorskip("torch_pruning")
    model = perturbed()
    inputs, labels, _ = batch(n=2, T=5)

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x, labels)[0]

    for kind in ("neurons", "heads"):
        reference = perturbed()
        keep = lowest_removed(magnitude_scores(model, kind), kind, 2)
        graph = tp.DependencyGraph().build_dependency(Hidden(reference), example_inputs=inputs)
        for layer, block in enumerate(reference.blocks):
            removed = torch.nonzero(~keep[layer]).flatten().tolist()
            if kind == "neurons":
                group = graph.get_pruning_group(block.mlp[0], tp.prune_linear_out_channels, idxs=removed)
            else:
                rows = [part * 32 + h * 8 + j for part in range(3) for h in removed for j in range(8)]
                group = graph.get_pruning_group(block.attn.qkv, tp.prune_linear_out_channels, idxs=rows)
            group.prune()
        ours = shrink(model, kind, keep).state_dict()
        for name, value in reference.state_dict().items():
            assert torch.equal(value, ours[name]), (kind, name)


# --- the stage and the CLI -----------------------------------------------------------------------

def test_run_compress_writes_a_resumable_run_folder(trained, data_dir, test_split, tmp_path):
    from tinydot.compress import run_compress

    out = tmp_path / "c"
    kwargs = dict(neurons=0.5, layers=0.5, importance="taylor", rounds=2, finetune_steps=6, eval_sequences=300,
                  score_sequences=200, data_dir=data_dir, progress=False)
    table = run_compress(trained, out, **kwargs)
    assert table["round"].tolist() == [0, 1, 2]
    assert table["d_mlp"].tolist() == [48, 36, 24] and table["n_layers"].tolist() == [2, 2, 1]
    assert table["removed_neurons"].tolist() == [0, 12, 24]
    assert table["params"].is_monotonic_decreasing and table["finetuned_bits_per_step"].iloc[1:].notna().all()
    final = load_model(out)
    assert final.cfg.d_mlp == 24 and final.cfg.n_layers == 1
    evaluated = Encoded(test_split.subset(np.arange(300)))
    assert evaluate_nll(final, evaluated)["bits_per_step"] == pytest.approx(table["finetuned_bits_per_step"].iloc[-1])
    assert (out / "round_2" / "finetune" / "model.safetensors").exists()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    again = run_compress(trained, out, **kwargs)  # finished rounds are read back, nothing is retrained
    pd.testing.assert_frame_equal(again, table)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name != "model.safetensors" or
               p.parent != out)
    with pytest.raises(ConfigError, match=r"with other settings \(neurons 0.5 -> 0.25\)"):
        run_compress(trained, out, **{**kwargs, "neurons": 0.25})
    for seed in (-1, 2**32):  # the one seed rule: 0..2**32 - 1
        with pytest.raises(ConfigError, match="seed must be an integer between 0 and 4294967295"):
            run_compress(trained, tmp_path / "seed", **{**kwargs, "seed": seed})
    with pytest.raises(ConfigError, match="rounds 30 would leave rounds that remove nothing: 24 units of one kind"):
        run_compress(trained, tmp_path / "many", **{**kwargs, "rounds": 30})  # 24 of 48 neurons per block, 1 block
    with pytest.raises(ConfigError, match="rounds 2 would leave rounds that remove nothing: 1 unit of one kind goes"):
        run_compress(trained, tmp_path / "one", **{**kwargs, "neurons": 0.02, "rounds": 2})  # 1 of 48
    run_compress(trained, tmp_path / "most", **{**kwargs, "layers": 0.0, "rounds": 24, "finetune_steps": 0,
                                               "importance": "magnitude",
                                               "eval_sequences": 20, "score_sequences": 20})
    removed = pd.read_csv(tmp_path / "most" / "results.csv")["removed_neurons"]
    assert removed.tolist() == list(range(25))  # one neuron per block each round
    assert not (tmp_path / "seed").exists() and not (tmp_path / "many").exists()


def test_compress_cli(trained, data_dir, tmp_path, monkeypatch, capsys):
    from tinydot.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["compress", "--checkpoint", str(trained), "--neurons", "0.5", "--importance",
                                      "magnitude", "--eval-sequences", "200", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "results.csv",
                                               "nll_vs_removed.png", "round_1"}
    assert (out / "nll_vs_removed.png").read_bytes()[:4] == b"\x89PNG"
    assert load_model(out).cfg.d_mlp == 24
    bad = [(["--heads", "1.0"], "must be a fraction in [0, 1)"),
           (["--neurons", "-0.1"], "must be a fraction in [0, 1)"),
           (["--heads", "0.9"], "would remove all of them"),
           (["--layers", "0.75"], "would remove all of them"),
           ([], "nothing to remove"),
           (["--neurons", "0.5", "--importance", "random"], "unknown importance 'random'")]
    for i, (args, message) in enumerate(bad):
        assert message in user_error(monkeypatch, capsys, "compress", "--checkpoint", str(trained), *args,
                                     "--out", str(tmp_path / f"bad{i}"))
    assert "does not exist" in user_error(monkeypatch, capsys, "compress", "--checkpoint", str(tmp_path / "none"),
                                          "--neurons", "0.5", "--out", str(tmp_path / "bad_missing"))
    single = tmp_path / "single"
    save_model(single / "model.safetensors", perturbed(ModelConfig(n_layers=1, d_model=16, d_mlp=32)))
    assert "single attention head" in user_error(monkeypatch, capsys, "compress", "--checkpoint", str(single),
                                                 "--heads", "0.5", "--out", str(tmp_path / "bad_single"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bad")]
