"""Lottery tickets: exact pruning, masked training, rewinding, controls, resumability."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tinydot.checkpoint import load_model, load_tensors
from tinydot.config import ModelConfig, PruneConfig, TrainConfig
from tinydot.errors import ConfigError, TinydotError
from tinydot.pruning import density, full_mask, load_mask, prunable_names, prune, random_mask
from tinydot.lottery import run_lottery
from tinydot.pruning.usage import needed_density, usage_counts, usage_fractions
from tinydot.report.pages import write_lottery_figures, write_report
from tinydot.training import init_model, load_touched, train

TINY = ModelConfig(n_layers=1, d_model=16, d_mlp=32)
QUICK = TrainConfig(steps=12, tokens_per_batch=800, warmup_steps=2, eval_every=0, checkpoint_every=0)


@pytest.fixture(scope="module")
def trained_model():
    model = init_model(TINY, seed=0)
    with torch.no_grad():  # distinct magnitudes, as after training
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    return model


def test_default_prunable_are_matrices_and_embeddings(trained_model):
    names = prunable_names(trained_model)
    assert "blocks.0.attn.qkv.weight" in names and "emb_dx.weight" in names
    assert not any("ln" in n or n.endswith(".bias") for n in names)
    assert prunable_names(trained_model, ("head_*.weight",)) == ["head_pen.weight", "head_dx.weight",
                                                                "head_dy.weight"]
    with pytest.raises(ConfigError, match="no parameter matches"):
        prunable_names(trained_model, ("nothing*",))


def test_global_pruning_removes_exactly_the_smallest(trained_model):
    mask = full_mask(trained_model)
    total = sum(m.numel() for m in mask.values())
    new = prune(trained_model, mask, 0.2, "global")
    kept = sum(int(m.sum()) for m in new.values())
    assert kept == total - round(0.2 * total)
    params = dict(trained_model.named_parameters())
    kept_min = min(params[n].abs()[m].min() for n, m in new.items() if m.any())
    pruned_max = max(params[n].abs()[~m].max() for n, m in new.items() if (~m).any())
    assert pruned_max <= kept_min


def test_layerwise_pruning_is_exact_per_tensor(trained_model):
    new = prune(trained_model, full_mask(trained_model), 0.3, "layerwise")
    for name, m in new.items():
        assert int(m.sum()) == m.numel() - round(0.3 * m.numel()), name


def test_pruning_is_pure_and_masks_only_shrink(trained_model):
    before = {k: v.clone() for k, v in trained_model.state_dict().items()}
    first = prune(trained_model, full_mask(trained_model), 0.2)
    frozen = {k: v.clone() for k, v in first.items()}
    second = prune(trained_model, first, 0.2)
    for name in first:
        assert torch.equal(first[name], frozen[name])  # input mask untouched
        assert not (second[name] & ~first[name]).any()  # nothing comes back
    assert density(second) == pytest.approx(0.8 * 0.8, abs=1e-4)
    for k, v in trained_model.state_dict().items():
        assert torch.equal(v, before[k])


def test_random_mask_keeps_per_tensor_counts(trained_model):
    mask = prune(trained_model, full_mask(trained_model), 0.5)
    shuffled = random_mask(mask, seed=1)
    for name in mask:
        assert int(shuffled[name].sum()) == int(mask[name].sum())
    assert any(not torch.equal(shuffled[n], mask[n]) for n in mask)


def test_masked_training_keeps_pruned_weights_exactly_zero(train, tmp_path):
    data = train.subset(np.arange(100))
    model = init_model(TINY, seed=0)
    mask = random_mask(prune(model, full_mask(model), 0.5), seed=3)
    result = train_masked = train_run(data, tmp_path, mask, steps=40)
    params = dict(train_masked.model.named_parameters())
    for name, keep in mask.items():
        assert (params[name][~keep] == 0).all(), name
        assert (params[name][keep] != 0).all(), name  # survivors did train
    tensors, _ = load_tensors(tmp_path / "checkpoint.safetensors")
    order = [n for n, p in result.model.named_parameters() if p.dim() >= 2] + [
        n for n, p in result.model.named_parameters() if p.dim() < 2]  # the optimizer's param order
    for i, name in enumerate(order):
        if name in mask:
            for moment in ("exp_avg", "exp_avg_sq"):
                assert (tensors[f"optim.{i}.{moment}"][~mask[name]] == 0).all(), (name, moment)


def train_run(data, folder, mask, steps):
    cfg = TrainConfig(steps=steps, tokens_per_batch=800, warmup_steps=2, eval_every=0, checkpoint_every=0)
    return train(data, folder, TINY, cfg, mask=mask, progress=False)


def test_usage_counts_by_hand():
    model = init_model(TINY, seed=0)
    with torch.no_grad():
        w = model.head_pen.weight  # (3, 16)
        w.zero_()
        w[0, :4] = torch.tensor([0.5, -0.002, 0.0005, -0.0001])
    touched = {"head_pen.weight": torch.ones(3, 16, dtype=torch.bool)}
    touched["head_pen.weight"][0, 1] = False  # -0.002: above epsilon, but never reached by a gradient
    mask = {"head_pen.weight": torch.ones(3, 16, dtype=torch.bool)}
    mask["head_pen.weight"][2] = False  # one row pruned
    counts = usage_counts(model, ["head_pen.weight"], touched, mask, epsilon=1e-3, relative_epsilon=0.5)
    row = counts.iloc[0]
    assert (row.total, row.pruned, row.untouched, row.used) == (48, 16, 1, 1)  # only 0.5 is touched and large
    assert row.trained_to_small == 48 - 16 - 1 - 1
    std = float(w.detach().std())  # 0.5 dominates: std ~0.072, so only |0.5| passes 0.5 * std
    assert row.used_relative == int((w.abs() > 0.5 * std).sum()) == 1
    fractions = usage_fractions(counts)
    assert fractions["unused_fraction"] == pytest.approx(47 / 48)
    assert sum(fractions[f"{p}_fraction"]
               for p in ("pruned", "untouched", "trained_to_small", "used")) == pytest.approx(1)


def short_strokes(n=40, length=8, digit=3, seed=0):
    """Synthetic sequences of one class, all `length` steps: short back-and-forth moves, then end."""
    from tinydot.data.strokes import PEN_DRAW, PEN_END_DIGIT, Strokes

    rng = np.random.default_rng(seed)
    steps = np.zeros((n, 116, 3), dtype=np.int8)
    steps[:, :length - 1, :2] = rng.integers(-2, 3, size=(n, length - 1, 2))
    steps[:, :length - 1, 2] = PEN_DRAW
    steps[:, length - 1, 2] = PEN_END_DIGIT
    return Strokes(steps, np.full(n, length, dtype=np.int16), np.full(n, digit, dtype=np.int8),
                   rng.integers(5, 20, size=(n, 2)).astype(np.int8))


def test_weights_the_data_never_reaches_are_untouched_not_used(tmp_path):
    # one digit class, 8 steps: the other classes' embedding rows and the positions past 8 never
    # get a gradient; they keep (decayed) initial values far above epsilon, and must not count as used
    data = short_strokes()
    result = train_run(data, tmp_path, None, steps=6)
    touched = load_touched(tmp_path)
    assert touched["emb_class.weight"][3].all() and not touched["emb_class.weight"][[0, 1, 2, 4, 5]].any()
    assert touched["emb_pos.weight"][:9].all() and not touched["emb_pos.weight"][9:].any()  # start + 8 steps
    assert touched["blocks.0.mlp.0.weight"].all()
    model = result.model
    assert (model.emb_class.weight[0].abs() > 1e-3).sum() > 10  # big, yet never used by the data
    counts = usage_counts(model, ["emb_class.weight", "emb_pos.weight"], touched, None, 1e-3, 0.05).set_index("tensor")
    assert counts.loc["emb_class.weight", "untouched"] == 9 * 16
    assert counts.loc["emb_pos.weight", "untouched"] == (TINY.max_len - 9) * 16
    assert counts.loc["emb_class.weight", "used"] <= 16


def test_needed_density_by_hand():
    densities = [1.0, 0.5, 0.25, 0.125]
    # dense 2.0 bits; threshold at delta 1%: 2.02; level 2 (2.01) is within, level 3 (2.05) is above
    result = needed_density(densities, [2.0, 1.99, 2.01, 2.05], 0.01)
    t = (2.02 - 2.01) / (2.05 - 2.01)  # a quarter of the way from level 2 to level 3, in log density
    assert result["needed"] == pytest.approx(np.exp(np.log(0.25) + t * (np.log(0.125) - np.log(0.25))))
    assert result["reached"] and (result["within_level"], result["above_level"]) == (2, 3)
    # the first crossing counts, even if a later ticket comes back under the threshold
    assert needed_density(densities, [2.0, 2.03, 2.0, 2.0], 0.01)["above_level"] == 1
    not_reached = needed_density(densities, [2.0, 2.0, 2.01, 2.015], 0.01)
    assert not not_reached["reached"] and np.isnan(not_reached["needed"])
    assert not_reached["within_density"] == 0.125  # only known to be below the last level's density
    with pytest.raises(ValueError):
        needed_density(densities, [2.0, 2.0, 2.0, 2.0], 0.0)


def test_lottery_stops_once_the_needed_density_is_bracketed(train, test_split, tmp_path):
    cfg = PruneConfig(levels=6, fraction=0.5, controls=False, delta=1e-6)  # any loss counts as a loss
    result = run_lottery(train.subset(np.arange(300)), tmp_path, test_split.subset(np.arange(100)), TINY, QUICK,
                         cfg, stop_above_delta=True, progress=False)
    table = result.table
    above = np.flatnonzero(table["bits_per_step"].to_numpy() > table["bits_per_step"].iloc[0] * (1 + 1e-6))
    assert len(above) >= 1 and len(table) == above[0] + 1  # trained up to the first level above, no further
    assert not (tmp_path / f"level_{len(table)}").exists()
    # here delta decides which levels exist, so another delta is another run
    with pytest.raises(ConfigError, match="different configuration"):
        run_lottery(train.subset(np.arange(300)), tmp_path, test_split.subset(np.arange(100)), TINY, QUICK,
                    dataclasses.replace(cfg, delta=0.5), stop_above_delta=True, progress=False)


@pytest.fixture(scope="module")
def lottery(train, test_split, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lottery")
    data, held_out = train.subset(np.arange(120)), test_split.subset(np.arange(60))
    prune_cfg = PruneConfig(levels=3, fraction=0.5, rewind_step=3)
    result = run_lottery(data, folder, held_out, TINY, QUICK, prune_cfg, progress=False)
    return data, held_out, prune_cfg, result


def test_lottery_table(lottery):
    _, _, _, result = lottery
    table = result.table
    assert table["level"].tolist() == [0, 1, 2, 3]
    assert np.allclose(table["density"], [1, 0.5, 0.25, 0.125], atol=1e-4)
    assert table.loc[1:, ["reinit_bits_per_step", "random_bits_per_step"]].notna().all().all()
    assert (table["unused_fraction"] >= table["sparsity"] - 1e-9).all()  # pruned weights are unused
    np.testing.assert_allclose(table["pruned_fraction"], table["sparsity"], atol=1e-12)
    parts = table[["pruned_fraction", "untouched_fraction", "trained_to_small_fraction", "used_fraction"]].sum(axis=1)
    np.testing.assert_allclose(parts, 1.0)
    assert (result.run_dir / "results.csv").exists() and not (result.run_dir / "nll_vs_sparsity.png").exists()
    assert write_lottery_figures(result.run_dir) == [result.run_dir / "nll_vs_sparsity.png"]  # the report draws it
    assert (result.run_dir / "nll_vs_sparsity.png").read_bytes()[:4] == b"\x89PNG"


def test_rewinding_restores_survivors_bit_exactly(lottery):
    _, _, cfg, result = lottery
    from tinydot.pruning import load_mask

    rewind = load_tensors(result.run_dir / "level_0" / f"weights-step{cfg.rewind_step}.safetensors")[0]
    for level in (1, 2):
        start = load_tensors(result.run_dir / f"level_{level}" / f"weights-step{cfg.rewind_step}.safetensors")[0]
        mask = load_mask(result.run_dir / f"level_{level}" / "mask.safetensors")
        for name, keep in mask.items():
            assert torch.equal(start[name][keep], rewind[name][keep]), name
            assert (start[name][~keep] == 0).all()
        others = [n for n in rewind if n not in mask]
        assert all(torch.equal(start[n], rewind[n]) for n in others)  # norms and biases rewound too


def test_killed_lottery_resumes_to_the_same_table(lottery, tmp_path, monkeypatch):
    data, held_out, cfg, result = lottery
    import tinydot.lottery as lottery_module

    real_train = lottery_module.train

    def die_at_level_3(data_, folder, *args, **kwargs):
        if "level_3" in str(folder):
            raise KeyboardInterrupt
        return real_train(data_, folder, *args, **kwargs)

    monkeypatch.setattr(lottery_module, "train", die_at_level_3)
    with pytest.raises(KeyboardInterrupt):
        run_lottery(data, tmp_path, held_out, TINY, QUICK, cfg, progress=False)
    assert (tmp_path / "level_2" / "results.json").exists() and not (tmp_path / "level_3" / "results.json").exists()
    monkeypatch.setattr(lottery_module, "train", real_train)
    with pytest.raises(TinydotError, match="holds an unfinished lottery run: run the command that made it again"):
        write_report(tmp_path)
    # as a folder written before the held-out count was recorded: it resumes, and no count is made up for it
    config = json.loads((tmp_path / "config.json").read_text())
    assert config.pop("eval_sequences") == len(held_out)
    (tmp_path / "config.json").write_text(json.dumps(config))
    resumed = run_lottery(data, tmp_path, held_out, TINY, QUICK, cfg, progress=False)
    assert resumed.table.equals(result.table)
    assert "eval_sequences" not in json.loads((tmp_path / "config.json").read_text())


def test_a_damaged_lottery_config_is_refused_in_one_line(train, test_split, tmp_path):
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(ConfigError, match=r"different configuration \(config.json \(damaged\)\)"):
        run_lottery(train.subset(np.arange(20)), tmp_path, test_split.subset(np.arange(5)), TINY, QUICK,
                    PruneConfig(levels=1), progress=False)
    (tmp_path / "config.json").write_text("garbage{")  # not JSON at all: a traceback before
    with pytest.raises(TinydotError, match=r"config.json is damaged \(not JSON: Expecting value\); choose another"):
        run_lottery(train.subset(np.arange(20)), tmp_path, test_split.subset(np.arange(5)), TINY, QUICK,
                    PruneConfig(levels=1), progress=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("")  # a training run's
    with pytest.raises(TinydotError, match=r"config.json is damaged \(not JSON: Expecting value\); choose another"):
        train_run(train.subset(np.arange(20)), tmp_path / "run", None, 1)


def test_damaged_files_of_a_finished_lottery_are_named(lottery, tmp_path):
    data, held_out, prune_cfg, result = lottery
    folder = tmp_path / "copy"
    shutil.copytree(result.run_dir, folder)
    (folder / "level_1" / "results.json").write_text("{")
    with pytest.raises(TinydotError, match=r"level_1/results.json is damaged .*; delete it to score level 1 again"):
        run_lottery(data, folder, held_out, TINY, QUICK, prune_cfg, progress=False)
    for text, reason in (("", "empty"), ("level,sparsity\n0,0\n", "no column 'bits_per_step'"),
                         (result.table.iloc[:0].to_csv(index=False), "no rows")):
        (folder / "results.csv").write_text(text)
        with pytest.raises(TinydotError, match=rf"results.csv is damaged \({reason}\); re-run the command"):
            write_report(folder)


RESUMABLE = TrainConfig(steps=12, tokens_per_batch=800, warmup_steps=2, eval_every=0, checkpoint_every=4)
RESUMABLE_PRUNE = PruneConfig(levels=2, fraction=0.5, rewind_step=3)


@pytest.fixture(scope="module")
def uninterrupted(lottery, tmp_path_factory):
    """A lottery run with checkpoints every 4 steps and both controls, never killed."""
    data, held_out, _, _ = lottery
    folder = tmp_path_factory.mktemp("uninterrupted")
    return run_lottery(data, folder, held_out, TINY, RESUMABLE, RESUMABLE_PRUNE, progress=False).table


@pytest.mark.parametrize("sub_run", ["level_0", "level_1", "level_1/reinit", "level_1/random", "level_2",
                                     "level_2/reinit", "level_2/random"])
def test_every_lottery_sub_run_resumes_exactly_after_a_kill(sub_run, lottery, uninterrupted, tmp_path,
                                                            monkeypatch):
    """Killed mid-training (after its step-4 checkpoint), any sub-run, controls included, resumes to
    the very table of a run that was never killed."""
    import tinydot.training as training_module

    data, held_out, _, _ = lottery
    real_save = training_module.save_tensors
    target = tmp_path / sub_run / "checkpoint.safetensors"

    def die_after_first_checkpoint(path, tensors, metadata=None):
        real_save(path, tensors, metadata)
        if Path(path) == target and metadata and int(metadata["step"]) < RESUMABLE.steps:
            raise KeyboardInterrupt  # as kill -9 right after the checkpoint was written

    monkeypatch.setattr(training_module, "save_tensors", die_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_lottery(data, tmp_path, held_out, TINY, RESUMABLE, RESUMABLE_PRUNE, progress=False)
    assert target.exists() and not (tmp_path / sub_run / "model.safetensors").exists()
    monkeypatch.setattr(training_module, "save_tensors", real_save)
    resumed = run_lottery(data, tmp_path, held_out, TINY, RESUMABLE, RESUMABLE_PRUNE, progress=False)
    pd.testing.assert_frame_equal(resumed.table, uninterrupted, check_exact=True)


def test_lottery_killed_before_its_level_row_resumes_exactly(lottery, uninterrupted, tmp_path, monkeypatch):
    """Every run of level 1 finished, killed while writing its results.json: the re-run reads the
    finished runs back (masks from mask.safetensors) and gives the same row."""
    import tinydot.lottery as lottery_module

    data, held_out, _, _ = lottery
    real_write = lottery_module.atomic_write_text

    def die_on_level_1_row(path, text):
        if Path(path) == tmp_path / "level_1" / "results.json":
            raise KeyboardInterrupt
        real_write(path, text)

    monkeypatch.setattr(lottery_module, "atomic_write_text", die_on_level_1_row)
    with pytest.raises(KeyboardInterrupt):
        run_lottery(data, tmp_path, held_out, TINY, RESUMABLE, RESUMABLE_PRUNE, progress=False)
    assert (tmp_path / "level_1" / "random" / "model.safetensors").exists()
    monkeypatch.setattr(lottery_module, "atomic_write_text", real_write)
    resumed = run_lottery(data, tmp_path, held_out, TINY, RESUMABLE, RESUMABLE_PRUNE, progress=False)
    pd.testing.assert_frame_equal(resumed.table, uninterrupted, check_exact=True)


def test_random_mask_does_not_depend_on_the_order_of_the_mask(trained_model):
    # a mask in memory is in model order; one read back from mask.safetensors is in alphabetical order
    mask = prune(trained_model, full_mask(trained_model), 0.5)
    reordered = {name: mask[name] for name in sorted(mask, reverse=True)}
    first, second = random_mask(mask, seed=7), random_mask(reordered, seed=7)
    assert list(first) == list(mask) and list(second) == list(reordered)  # the keys keep the given order
    assert all(torch.equal(first[name], second[name]) for name in mask)


@pytest.mark.parametrize("values,message", [
    ({"fraction": 1.0}, "fraction must be in"),
    ({"scope": "local"}, "scope must be global or layerwise"),
    ({"levels": 0}, "levels must be >= 1"),
    ({"epsilon": -1.0}, "epsilon must be >= 0"),
])
def test_bad_prune_config(values, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig.from_dict(values)


def test_bad_prune_arguments(trained_model):
    with pytest.raises(ConfigError, match="fraction must be in"):
        prune(trained_model, full_mask(trained_model), 1.5)
    with pytest.raises(ConfigError, match="scope must be one of"):
        prune(trained_model, full_mask(trained_model), 0.1, "local")


def test_a_finished_lottery_grows_by_its_new_levels_only(lottery, tmp_path):
    data, held_out, prune_cfg, result = lottery
    folder = tmp_path / "grown"
    shutil.copytree(result.run_dir, folder)
    written = {p: p.stat().st_mtime_ns for p in folder.glob("level_*/**/*") if p.is_file()}
    grown = run_lottery(data, folder, held_out, TINY, QUICK, dataclasses.replace(prune_cfg, levels=4),
                        progress=False).table
    assert {p: p.stat().st_mtime_ns for p in written} == written  # nothing of levels 0-3 was redone
    pd.testing.assert_frame_equal(grown.iloc[:4], result.table)
    assert grown["level"].tolist() == [0, 1, 2, 3, 4]
    # level 4 prunes level 3's trained model under level 3's mask, as in a run of 4 levels from the start
    expected = prune(load_model(folder / "level_3"), load_mask(folder / "level_3" / "mask.safetensors"),
                     prune_cfg.fraction, prune_cfg.scope)
    got = load_mask(folder / "level_4" / "mask.safetensors")
    assert all(torch.equal(got[name], expected[name]) for name in expected)
    assert grown["kept"].iloc[4] == sum(int(m.sum()) for m in expected.values())
    assert json.loads((folder / "config.json").read_text())["prune"]["levels"] == 4
    # fewer levels report fewer; the folder keeps level 4 for a later re-run
    fewer = run_lottery(data, folder, held_out, TINY, QUICK, dataclasses.replace(prune_cfg, levels=2),
                        progress=False).table
    pd.testing.assert_frame_equal(fewer, result.table.iloc[:3])
    assert (folder / "level_4" / "results.json").exists()
