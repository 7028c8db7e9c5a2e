"""The domain abstraction: the text model (likelihood by hand, tied softmax, FLOPs), old stroke
checkpoints, the registry, and text through the same training, evaluation and lottery code."""

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tinydot.checkpoint import load_model, save_model, save_tensors
from tinydot.complexity import measure_all
from tinydot.config import ModelConfig, PruneConfig, TrainConfig, config_hash
from tinydot.data.batching import IGNORE, Encoded, EncodedText, encode, length_buckets, make_inputs
from tinydot.data.text import EOS, Sentences
from tinydot.data.text_measures import measure_sentences
from tinydot.domains import DOMAINS, domain_of, get_domain
from tinydot.errors import ConfigError
from tinydot.evaluation import evaluate_nll
from tinydot.flops import forward_flops, kept_weights, linear_shapes, train_step_flops
from tinydot.lottery import run_lottery
from tinydot.model import TextDOT, TinyDOT, build_model
from tinydot.pruning.mask import load_mask, prunable_names
from tinydot.training import BatchStream, init_model, train

VOCAB = np.array(["<eos>", *"abcdefghijklmnopqrstuvwxyz"])  # 27 ids
TINY_TEXT = ModelConfig(domain="text", vocab_size=len(VOCAB), n_layers=1, d_model=8, d_mlp=16, max_len=16)


def toy_sentences(n: int = 40, seed: int = 0, longest: int = 9) -> Sentences:
    """Random sentences over VOCAB with a pattern to learn: each word is often its predecessor + 1."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, longest + 1, size=n).astype(np.int32)
    tokens = []
    for length in lengths:
        word = int(rng.integers(1, 27))
        for _ in range(length):
            tokens.append(word)
            word = word % 26 + 1 if rng.random() < 0.8 else int(rng.integers(1, 27))
    return Sentences(np.array(tokens, dtype=np.int32), lengths, VOCAB, "toy")


# --------------------------------------------------------------------------- the text model

def test_text_nll_equals_log_softmax_by_hand():
    """model.nll against -log_softmax(h E^T)[target] computed here, padding zero, eos counted."""
    model = init_model(TINY_TEXT, seed=0)
    data = toy_sentences(6)
    inputs, targets = EncodedText(data).batch(np.arange(6))
    with torch.no_grad():
        h, _ = model(inputs)
        log_p = torch.log_softmax(h @ model.emb_token.weight.T, dim=-1)  # (B, T, V)
        expected = torch.zeros(targets.shape)
        for b in range(targets.shape[0]):
            for t in range(targets.shape[1]):
                if targets[b, t] != IGNORE:
                    expected[b, t] = -log_p[b, t, targets[b, t]]
        nll = model.nll(inputs, targets)
    assert torch.allclose(nll, expected, atol=1e-6)
    assert int((nll > 0).sum()) == int(data.lengths.sum() + len(data))  # every word and every <eos>
    assert (targets == EOS).sum() == len(data)


@pytest.mark.parametrize("chunk", [1, 27 * 5, 27 * 7 + 3, 2 ** 19])
def test_chunked_text_nll_and_its_gradients_equal_one_softmax(chunk, monkeypatch):
    """TextDOT.nll scores LOGIT_CHUNK logits at a time (1 row, 5 rows, 7 rows with a ragged last
    chunk, everything at once): the NLL and every parameter's gradient equal those of one
    log-softmax over the whole (positions, vocab) matrix, written out here."""
    import tinydot.model as model_module
    model = init_model(TINY_TEXT, seed=3)
    data = toy_sentences(8, seed=2)
    inputs, targets = EncodedText(data).batch(np.arange(8))
    h, _ = model(inputs)
    log_p = torch.log_softmax(h @ model.emb_token.weight.T, dim=-1)
    valid = targets != IGNORE
    expected = torch.where(valid, -log_p.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1), 0.0)
    expected.sum().backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    monkeypatch.setattr(model_module, "LOGIT_CHUNK", chunk)
    nll = model.nll(inputs, targets)
    nll.sum().backward()
    assert torch.allclose(nll, expected, atol=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, reference[name], atol=1e-6), name


def test_untrained_text_model_is_near_uniform():
    """Small initial logits: perplexity close to the vocabulary size (the logits' std is
    0.02 * sqrt(d_model) ~ 0.06, so exp of half its square above V at most)."""
    data = toy_sentences(30)
    result = evaluate_nll(init_model(TINY_TEXT, seed=1), data)
    assert result["steps"] == int(data.lengths.sum()) + len(data)
    assert abs(result["perplexity"] / len(VOCAB) - 1) < 0.01
    assert result["bits_per_step"] == result["bits_per_word"] == pytest.approx(math.log2(result["perplexity"]))


def test_evaluate_nll_sums_every_sentence_alone():
    """The bucketed evaluation equals a plain loop that scores each sentence by itself."""
    model = init_model(TINY_TEXT, seed=2)
    data = toy_sentences(25, seed=3)
    total = 0.0
    with torch.no_grad():
        for i in range(len(data)):
            words = data.sentence(i).astype(np.int64)
            inputs = torch.tensor([[EOS, *words]])
            targets = torch.tensor([[*words, EOS]])
            total -= float(torch.log_softmax(model.logits(model(inputs)[0]), -1)[0, torch.arange(len(words) + 1),
                                                                                   targets[0]].sum())
    result = evaluate_nll(model, data, tokens_per_batch=40)
    n = int(data.lengths.sum()) + len(data)
    assert result["bits_per_word"] == pytest.approx(total / n / math.log(2), rel=1e-6)
    assert result["sequences"] == len(data)


def test_text_model_is_causal():
    model = init_model(TINY_TEXT, seed=1)
    inputs = torch.randint(0, len(VOCAB), (3, 12))
    changed = inputs.clone()
    changed[:, 6:] = torch.randint(0, len(VOCAB), (3, 6))
    with torch.no_grad():
        a, b = model(inputs)[0], model(changed)[0]
    assert torch.equal(a[:, :6], b[:, :6]) and not torch.allclose(a[:, 6:], b[:, 6:])


def test_tied_weights_are_one_tensor_and_untied_have_their_own():
    tied = init_model(TINY_TEXT, seed=0)
    untied = init_model(ModelConfig(**{**TINY_TEXT.to_dict(), "tie_embeddings": False}), seed=0)
    V, d = TINY_TEXT.vocab_size, TINY_TEXT.d_model
    assert not hasattr(tied, "head") and "head.weight" not in dict(tied.named_parameters())
    assert untied.num_params() - tied.num_params() == V * d + V
    # the softmax reads the embedding itself: editing one row of it moves that word's logit
    h = torch.randn(2, d)
    before = tied.logits(h)
    with torch.no_grad():
        tied.emb_token.weight[5] += 1.0
    after = tied.logits(h)
    assert torch.allclose(after[:, 5] - before[:, 5], h.sum(dim=1), atol=1e-5)
    assert torch.equal(after[:, :5], before[:, :5])
    # a word that is only ever a target (never an input) still gets a gradient in the one matrix
    inputs, targets = torch.tensor([[EOS, 1, 2]]), torch.tensor([[1, 2, 26]])
    tied.nll(inputs, targets).sum().backward()
    assert tied.emb_token.weight.grad[26].abs().sum() > 0
    untied.nll(inputs, targets).sum().backward()
    assert untied.emb_token.weight.grad[26].abs().sum() == 0 and untied.head.weight.grad[26].abs().sum() > 0


def test_text_checkpoint_round_trip(tmp_path):
    for tie in (True, False):
        cfg = ModelConfig(**{**TINY_TEXT.to_dict(), "tie_embeddings": tie})
        model = init_model(cfg, seed=4)
        save_model(tmp_path / f"{tie}.safetensors", model)
        loaded = load_model(tmp_path / f"{tie}.safetensors")
        assert isinstance(loaded, TextDOT) and loaded.cfg == cfg
        assert list(loaded.state_dict()) == list(model.state_dict())
        inputs, targets = EncodedText(toy_sentences(5)).batch(np.arange(5))
        assert torch.equal(loaded.nll(inputs, targets), model.nll(inputs, targets))


# --------------------------------------------------------------------------- strokes unchanged

# What main wrote at e45be6f (before ModelConfig had domain fields) for init_model(E45BE6F_CONFIG, seed=7):
# the same safetensors layout, a model_config of only these keys, and this batch's NLL (nats, B x T)
E45BE6F_CONFIG = {"n_layers": 1, "d_model": 8, "n_heads": 1, "d_mlp": 16, "max_len": 118, "max_move": 28,
                  "n_classes": 10}
E45BE6F_MOVES = [[[2, 0, 0], [1, 3, 0], [0, -2, 1], [-2, 2, 1], [-1, 1, 1], [-3, -3, 0]],
                 [[-3, -1, 0], [-3, 3, 0], [-2, 0, 0], [2, -3, 2], [1, 2, 1], [3, 2, 1]],
                 [[0, 2, 0], [1, -2, 1], [3, -3, 2], [2, 3, 1], [1, -3, -1], [0, 0, -1]]]
E45BE6F_NLL = [[8.167852401733398, 9.110321044921875, 1.115009069442749, 1.036902666091919, 1.1232718229293823,
                9.128116607666016],
               [7.97440242767334, 9.140826225280762, 9.09614372253418, 1.038429856300354, 1.16112220287323,
                1.106237769126892],
               [8.142404556274414, 1.1174705028533936, 1.101177453994751, 1.1147493124008179, 0.0, 0.0]]


def test_a_stroke_checkpoint_from_before_the_domains_still_loads(tmp_path):
    """A checkpoint in e45be6f's format (its model_config without the later fields) loads as a stroke
    model and scores e45be6f's batch as e45be6f did."""
    cfg = ModelConfig.from_dict(E45BE6F_CONFIG)
    path = tmp_path / "old.safetensors"
    save_tensors(path, init_model(cfg, seed=7).state_dict(),
                 {"format": "tinydot", "model_config": json.dumps(E45BE6F_CONFIG), "extra": '{"commit": "e45be6f"}'})
    model = load_model(path)
    assert isinstance(model, TinyDOT) and model.cfg.domain == "strokes" and model.cfg == cfg
    moves = torch.tensor(E45BE6F_MOVES)
    with torch.no_grad():
        nll = model.nll(make_inputs(moves, cfg.max_move), torch.tensor([1, 5, 9]), moves)
    torch.testing.assert_close(nll, torch.tensor(E45BE6F_NLL), rtol=0, atol=1e-5)


def test_hashes_of_stroke_configs_are_unchanged():
    # values computed with main at e45be6f, before the domain fields existed
    assert config_hash(ModelConfig(n_layers=2, d_model=32, d_mlp=128), TrainConfig(steps=800)) == "f9daeab75a"
    assert config_hash(ModelConfig()) == "afcf68585c"
    assert ModelConfig().non_default() == {}


@pytest.mark.parametrize("values,message", [
    ({"domain": "txt"}, "unknown model domain 'txt'; choose strokes or text"),
    ({"domain": "text"}, "vocab_size must be an integer >= 2 for the text domain"),
    ({"vocab_size": 100}, "text options; leave them out for the strokes domain"),
    ({"tie_embeddings": False}, "text options"),
    ({"domain": "text", "vocab_size": 10, "tie_embeddings": "yes"}, "tie_embeddings must be true or false"),
])
def test_bad_domain_fields(values, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(values)


# --------------------------------------------------------------------------- FLOPs of the text model

def counted(fn) -> int:
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), FlopCounterMode(display=False) as mode:
        fn()
    return mode.get_total_flops()


@pytest.mark.parametrize("tie", [True, False])
def test_text_flops_match_flop_counter_mode(tie):
    cfg = ModelConfig(**{**TINY_TEXT.to_dict(), "tie_embeddings": tie, "n_layers": 2})
    model = init_model(cfg, seed=0)
    inputs, targets = EncodedText(toy_sentences(7)).batch(np.arange(7))
    B, T = inputs.shape
    d, V = cfg.d_model, cfg.vocab_size
    by_hand = 2 * (2 * B * T * d * (3 * d + d + 2 * cfg.d_mlp) + 2 * 2 * B * T * T * d) + 2 * B * T * d * V
    assert forward_flops(cfg, B, T) == by_hand
    with torch.no_grad():
        assert counted(lambda: model.nll(inputs, targets)) == by_hand
    assert counted(lambda: model.nll(inputs, targets).sum().backward()) == train_step_flops(cfg, B, T)
    # the sparse count skips pruned entries of the softmax matrix, tied or not
    mask = {name: torch.ones(shape, dtype=torch.bool) for name, shape in linear_shapes(cfg).items()}
    softmax = "emb_token.weight" if tie else "head.weight"
    mask[softmax][:, :3] = False
    assert forward_flops(cfg, B, T, kept=kept_weights(cfg, mask)) == by_hand - 2 * B * T * 3 * V


# --------------------------------------------------------------------------- the registry

def test_registry_lookup_and_measures():
    assert set(DOMAINS) == {"strokes", "text"} and get_domain("text").unit == "bits/word"
    with pytest.raises(ConfigError, match=r"^unknown domain 'txt' \(did you mean text\?\); choose strokes or text$"):
        get_domain("txt")
    with pytest.raises(ConfigError, match=r"^unknown domain 'images'; choose strokes or text$"):
        get_domain("images")
    with pytest.raises(ConfigError, match="measure 'S' is not defined for the text domain; choose from L, "
                                          "compressed_bytes, surprisal, type_token_ratio"):
        get_domain("text").check_measure("S")
    with pytest.raises(ConfigError, match=r"'surprisal' is not defined for the strokes domain"):
        get_domain("strokes").check_measure("surprisal")
    with pytest.raises(ConfigError, match=r"^unknown measure 'type_token' \(did you mean type_token_ratio\?\); choose"):
        get_domain("text").check_measure("type_token")
    with pytest.raises(ConfigError, match=r"^unknown measure 's' \(did you mean S\?\); choose"):  # another case
        get_domain("strokes").check_measure("s")
    with pytest.raises(ConfigError, match=r"^unknown domain 'Text' \(did you mean text\?\)"):
        get_domain("Text")
    data, train_split = toy_sentences(10, seed=1), toy_sentences(50, seed=2)
    text = get_domain("text")
    assert text.measure(data, train=train_split).equals(measure_sentences(data, train_split))
    assert text.measure(data, ("L",))["L"].tolist() == data.lengths.tolist()
    assert domain_of(data) is text
    with pytest.raises(ConfigError, match="needs Sentences"):
        get_domain("text").measure(np.zeros(3))
    assert text.describe_nll({"bits_per_word": 7.0, "perplexity": 128.0}) == "7.0000 bits/word (perplexity 128.0)"


def test_stroke_domain_is_the_existing_code(train):
    strokes = get_domain("strokes")
    sample = train.subset(np.arange(200))
    assert strokes.measure(sample).equals(measure_all(sample))
    assert domain_of(sample) is strokes and isinstance(build_model(strokes.model_config), TinyDOT)
    assert strokes.model_config == ModelConfig() and strokes.train_config == TrainConfig()
    encoded = strokes.encode(sample, ModelConfig())
    assert isinstance(encoded, Encoded) and np.array_equal(encoded.lengths, sample.lengths + 1)


def test_encode_checks_that_the_data_fit_the_model():
    data = toy_sentences(5, longest=20)
    encoded = encode(data, ModelConfig(**{**TINY_TEXT.to_dict(), "max_len": 21}))
    assert np.array_equal(encoded.lengths, data.lengths + 1)
    inputs, targets = encoded.batch(np.arange(5))
    expected = data.padded(np.arange(5))
    assert np.array_equal(inputs.numpy(), expected[0]) and np.array_equal(targets.numpy(), expected[1])
    with pytest.raises(ConfigError, match="the data are text but the model config is for the strokes domain"):
        encode(data, ModelConfig())
    with pytest.raises(ConfigError, match="set vocab_size to 27"):
        encode(data, ModelConfig(domain="text", vocab_size=30))
    longest = int(data.lengths.max()) + 1
    with pytest.raises(ConfigError, match=f"needs {longest} positions .* set model max_len >= {longest}"):
        encode(data, ModelConfig(**{**TINY_TEXT.to_dict(), "max_len": longest - 1}))


# --------------------------------------------------------------------------- text through train and the lottery

FAST = TrainConfig(steps=40, tokens_per_batch=160, lr=3e-2, warmup_steps=5, eval_every=20, checkpoint_every=20,
                   eval_sequences=30)


def test_training_a_text_model_lowers_its_nll_and_is_reproducible(tmp_path):
    data, held_out = toy_sentences(200, seed=5), toy_sentences(30, seed=6)
    before = evaluate_nll(init_model(TINY_TEXT, FAST.seed), held_out)["bits_per_word"]
    first = train(data, tmp_path / "a", TINY_TEXT, FAST, eval_data=held_out, progress=False)
    after = evaluate_nll(first.model, held_out)["bits_per_word"]
    assert before > math.log2(len(VOCAB)) - 0.05  # about uniform at the start
    assert after < before - 1.0  # the +1 pattern is worth > 1.5 bits; 40 steps learn much of it
    assert first.history["eval_bits_per_step"].iloc[-1] == pytest.approx(after)
    second = train(data, tmp_path / "b", TINY_TEXT, FAST, eval_data=held_out, progress=False)
    assert first.history.drop(columns="seconds").equals(second.history.drop(columns="seconds"))
    assert isinstance(load_model(tmp_path / "a"), TextDOT)
    # the recorded FLOPs are those of the batches the stream produced, by the text model's formula
    encoded = EncodedText(data)
    stream = BatchStream(encoded, FAST)
    shapes = [(len(i), int(encoded.lengths[i].max())) for i in (stream.next() for _ in range(FAST.steps))]
    cost = json.loads((tmp_path / "a" / "cost.json").read_text())
    assert cost["train_flops_dense"] == sum(train_step_flops(TINY_TEXT, B, T) for B, T in shapes)
    one_eval = sum(forward_flops(TINY_TEXT, len(i), int(EncodedText(held_out).lengths[i].max()))
                   for i in length_buckets(EncodedText(held_out).lengths, 16384, np.random.default_rng(0)))
    assert cost["eval_flops_dense"] == 2 * one_eval  # steps 20 and 40


def test_training_refuses_data_of_the_other_domain_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="the data are text but the model config is for the strokes domain"):
        train(toy_sentences(10), tmp_path / "run", ModelConfig(), FAST, progress=False)
    assert not (tmp_path / "run").exists()


def test_the_lottery_runs_on_text(tmp_path):
    data, held_out = toy_sentences(150, seed=7), toy_sentences(30, seed=8)
    prune = PruneConfig(levels=2, fraction=0.2, controls=True)
    result = run_lottery(data, tmp_path, held_out, TINY_TEXT, FAST, prune, progress=False)
    table = result.table
    assert table["level"].tolist() == [0, 1, 2]
    skeleton = init_model(TINY_TEXT, 0)
    names = prunable_names(skeleton)
    assert "emb_token.weight" in names and not any(n.startswith("head") for n in names)  # tied: one matrix
    total = sum(p.numel() for n, p in skeleton.named_parameters() if n in names)
    assert table["prunable"].tolist() == [total] * 3
    assert table["kept"].tolist() == [total, total - round(0.2 * total),
                                      table["kept"][1] - round(0.2 * table["kept"][1])]
    for column in ("bits_per_step", "zeroed_bits_per_step"):
        assert table[column].between(0.5, math.log2(len(VOCAB)) + 0.1).all()
    assert table.loc[1:, ["reinit_bits_per_step", "random_bits_per_step"]].notna().all().all()
    masks = [load_mask(tmp_path / f"level_{k}" / "mask.safetensors") for k in (1, 2)]
    for name in names:
        assert not (masks[1][name] & ~masks[0][name]).any()  # masks only shrink
    ticket = load_model(tmp_path / "level_2")
    pruned = ~masks[1]["emb_token.weight"]
    assert (ticket.emb_token.weight[pruned] == 0).all()  # the tied softmax is pruned with the embedding
    assert table["bits_per_step"][0] == pytest.approx(evaluate_nll(load_model(tmp_path / "level_0"),
                                                                   held_out)["bits_per_word"])
