"""Post-training quantization: RTN and GPFQ on real layers, packing, the quantize stage and its CLI."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tinydot.checkpoint import CheckpointError, load_model
from tinydot.config import ModelConfig, TrainConfig
from tinydot.data.batching import Encoded
from tinydot.errors import ConfigError
from tinydot.evaluation import evaluate_nll
from tinydot.quantization import (
    fewest_bits_within,
    gpfq,
    layer_inputs,
    max_code,
    output_error,
    pack_codes,
    pack_model,
    quantize_model,
    rtn,
    unpack_codes,
    unpack_model,
)
from tinydot.training import train as train_model

from helpers import user_error

ALL_BITS = (8, 4, 3, 2)


@pytest.fixture(scope="module")
def trained(train, tmp_path_factory):
    """A small model trained briefly on real strokes (its run folder)."""
    folder = tmp_path_factory.mktemp("quant")
    train_cfg = TrainConfig(steps=100, tokens_per_batch=2048, warmup_steps=10, eval_every=0, checkpoint_every=0)
    train_model(train.subset(np.arange(4000)), folder, ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64),
                train_cfg, progress=False)
    return folder


@pytest.fixture(scope="module")
def calibration(train):
    return Encoded(train.subset(np.arange(10_000, 10_128)))


@pytest.fixture(scope="module")
def evaluated(test_split):
    return Encoded(test_split.subset(np.arange(1000)))


def gpfq_by_the_formula(w, x, x_quant, bits):
    """The papers' recursion for one neuron at a time, in plain Python loops (a second implementation)."""
    K = max_code(bits)
    codes = np.zeros(w.shape, dtype=np.int64)
    for i, row in enumerate(w.double().numpy()):
        step = np.abs(row).max() / K
        u = np.zeros(x.shape[0])
        for t in range(len(row)):
            xt, xqt = x[:, t].double().numpy(), x_quant[:, t].double().numpy()
            value = xqt @ (u + row[t] * xt) / (xqt @ xqt)
            codes[i, t] = int(np.clip(np.round(value / step), -K, K))
            u = u + row[t] * xt - codes[i, t] * step * xqt
    return codes


def test_gpfq_follows_the_papers_recursion():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(5, 12, generator=g), torch.randn(200, 12, generator=g)
    x_quant = x + 0.1 * torch.randn(200, 12, generator=g)
    for bits in (4, 2):
        assert torch.equal(gpfq(w, x, x_quant, bits).codes.long(),
                           torch.from_numpy(gpfq_by_the_formula(w, x, x_quant, bits)))


@pytest.mark.parametrize("bits", ALL_BITS)
def test_rtn_levels_and_rounding_error(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(16, 40, generator=g) * torch.rand(16, 1, generator=g)
    q = rtn(w, bits)
    K = max_code(bits)
    for row_codes, row in zip(q.codes, q.dequantize()):
        assert len(torch.unique(row)) <= 2 ** bits and len(torch.unique(row_codes)) <= 2 ** bits
    assert int(q.codes.abs().max()) == K  # each row's largest weight sits on the outermost level
    # round to nearest: off by at most half a step, per channel
    assert bool(((w - q.dequantize()).abs() <= q.scales[:, None] / 2 + 1e-7).all())
    torch.testing.assert_close(q.scales, w.abs().amax(1) / K)


def test_gpfq_tracks_a_real_layer_better_than_rtn_at_every_bit_width(trained, calibration, test_split):
    model = load_model(trained)
    held = Encoded(test_split.subset(np.arange(200)))
    for name in ("blocks.1.mlp.2", "blocks.0.attn.qkv", "head_dx"):
        w = dict(model.named_modules())[name].weight
        x, x_held = layer_inputs(model, name, calibration), layer_inputs(model, name, held)
        for bits in ALL_BITS:
            q_rtn, q_gpfq = rtn(w, bits).dequantize(), gpfq(w, x, x, bits).dequantize()
            assert output_error(w, q_gpfq, x, x) <= output_error(w, q_rtn, x, x), (name, bits)
            if bits <= 4:  # and on positions it never saw
                assert output_error(w, q_gpfq, x_held, x_held) <= output_error(w, q_rtn, x_held, x_held), (name, bits)


def test_eight_bit_rtn_changes_nll_by_less_than_one_percent(trained, evaluated):
    model = load_model(trained)
    dense = evaluate_nll(model, evaluated)["bits_per_step"]
    quantized = evaluate_nll(quantize_model(model, 8, "rtn").model, evaluated)["bits_per_step"]
    assert abs(quantized / dense - 1) < 0.01


def test_quantization_is_deterministic_and_pure(trained, calibration):
    model = load_model(trained)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("rtn", "gpfq"):
        first, second = (quantize_model(model, 3, method, calibration) for _ in range(2))
        assert first.tensors.keys() == second.tensors.keys()
        for name, q in first.tensors.items():
            assert (torch.equal(q.codes, second.tensors[name].codes)
                    and torch.equal(q.scales, second.tensors[name].scales))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


def test_what_is_quantized(trained, calibration):
    model = load_model(trained)
    q = quantize_model(model, 4, "gpfq", calibration)
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    embeddings = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    assert set(q.tensors) == linears | embeddings
    state, original = q.model.state_dict(), model.state_dict()
    for name in original:
        if name in q.tensors:
            assert len(torch.unique(state[name][0])) <= 2 ** 4
        else:  # biases and norms stay float
            assert torch.equal(state[name], original[name]), name
    # embeddings are rounded to nearest by both methods
    assert torch.equal(q.tensors["emb_dx.weight"].codes, rtn(model.emb_dx.weight, 4).codes)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_packing_round_trip_and_size(bits):
    K = max_code(bits)
    codes = torch.randint(-K, K + 1, (37, 11), generator=torch.Generator().manual_seed(bits), dtype=torch.int8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(codes.numel() * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, (37, 11)), codes)


def test_packed_model_rebuilds_the_dequantized_model(trained, calibration):
    q = quantize_model(load_model(trained), 3, "gpfq", calibration)
    tensors, metadata = pack_model(q)
    rebuilt = unpack_model(tensors, metadata)
    for name, value in q.model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value), name
    with pytest.raises(ConfigError, match="not a packed"):
        unpack_model(tensors, {"format": "tinydot"})


def test_fewest_bits_within(trained, evaluated):
    model = load_model(trained)
    loose = fewest_bits_within(model, evaluated, delta=0.01, method="rtn", bits=(8, 2))
    assert loose["bits"] == 8  # 8 bits stay within 1% (tested above); 2-bit RTN does not
    assert fewest_bits_within(model, evaluated, delta=100.0, method="rtn", bits=(8, 4))["bits"] == 4


# --- the stage and the CLI -----------------------------------------------------------------------

def test_run_quantize_writes_real_sizes(trained, data_dir, tmp_path, monkeypatch):
    from tinydot.compress import load_packed, run_compress, run_quantize

    out = tmp_path / "q"
    table = run_quantize(trained, out, bits=(8, 2), method="gpfq", calibration_sequences=64, eval_sequences=300,
                         data_dir=data_dir)
    assert table["bits"].tolist() == [32, 8, 2] and table["method"].tolist() == ["float32", "gpfq", "gpfq"]
    float_bytes = (trained / "model.safetensors").stat().st_size
    assert table["file_bytes"].tolist()[0] == float_bytes
    for bits in (8, 2):
        folder = out / f"bits_{bits}"
        packed, dequantized = load_packed(folder), load_model(folder)
        for name, value in dequantized.state_dict().items():
            assert torch.equal(packed.state_dict()[name], value)
        assert (folder / "quantized.safetensors").stat().st_size == table.set_index("bits").loc[bits, "file_bytes"]
    with pytest.raises(CheckpointError, match=r"quantized.safetensors is a packed quantized model .* its "
                                              r"model.safetensors \(the same weights, dequantized\)"):
        load_model(out / "bits_2" / "quantized.safetensors")  # not "no model config": it has one
    sizes = table.set_index("bits")["file_bytes"]
    assert sizes[2] < sizes[8] < 0.4 * sizes[32]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    pd.testing.assert_frame_equal(run_quantize(trained, out, bits=(8, 2), method="gpfq", calibration_sequences=64,
                                               eval_sequences=300, data_dir=data_dir), table)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert json.loads((out / "config.json").read_text())["quantize"]["bits"] == [8, 2]
    # the same checkpoint however its path is spelt, the same widths in any order (as older folders stored
    # them): the same run, resumed
    config = json.loads((out / "config.json").read_text())
    config["quantize"]["bits"] = [2, 8]
    (out / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(trained.parent)
    again = run_quantize(Path(trained.name) / "model.safetensors", out, bits=(2, 8), method="gpfq",
                         calibration_sequences=64, eval_sequences=300, data_dir=data_dir)
    pd.testing.assert_frame_equal(again, table)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    with pytest.raises(ConfigError, match=r"other settings \(calibration_sequences 64 -> 32\)"):
        run_quantize(trained, out, bits=(8, 2), calibration_sequences=32, eval_sequences=300, data_dir=data_dir)
    with pytest.raises(ConfigError, match="holds a quantize run, not a compress run"):
        run_compress(trained, out, neurons=0.5, data_dir=data_dir, progress=False)
    for seed in (-1, 2**32):  # the one seed rule: 0..2**32 - 1
        with pytest.raises(ConfigError, match="seed must be an integer between 0 and 4294967295"):
            run_quantize(trained, tmp_path / "seed", bits=(8,), seed=seed, data_dir=data_dir)
    assert not (tmp_path / "seed").exists()


def test_quantize_cli(trained, data_dir, tmp_path, monkeypatch, capsys):
    from tinydot.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["quantize", "--checkpoint", str(trained), "--bits", "4", "--method", "rtn",
                                      "--eval-sequences", "200", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"config.json", "results.csv", "nll_vs_bits.png", "bits_4"}
    assert {p.name for p in (out / "bits_4").iterdir()} == {"quantized.safetensors", "model.safetensors",
                                                            "results.json"}
    assert len(torch.unique(load_model(out / "bits_4").head_dx.weight[3])) <= 16
    bad = [(["--bits", "9"], "bits must be an integer from 2 to 8"),
           (["--bits", "1"], "bits must be an integer from 2 to 8"),
           (["--method", "kmeans"], "unknown quantization method 'kmeans'"),
           (["--eval-sequences", "999999"], "--eval-sequences 999999 exceeds the 10000 test sequences")]  # alone
    for i, (args, message) in enumerate(bad):
        assert message in user_error(monkeypatch, capsys, "quantize", "--checkpoint", str(trained), *args,
                                     "--out", str(tmp_path / f"bad{i}"))
    assert "does not exist" in user_error(monkeypatch, capsys, "quantize", "--checkpoint", str(tmp_path / "none"),
                                          "--out", str(tmp_path / "bad_missing"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bad")]
