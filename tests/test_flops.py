"""The analytic FLOP count against a hand count and against torch's FlopCounterMode on real passes.

FlopCounterMode counts matrix multiplications only (2 FLOPs per multiply-add), as we do. With the
math attention kernel it sees attention as two batched matmuls and must agree with us exactly;
with the default CPU kernel (`_scaled_dot_product_flash_attention_for_cpu`, for which it has no
formula) it counts no attention at all, so it must equal our count minus the attention terms.
"""

import contextlib
import json

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from tinydot.config import ModelConfig, TrainConfig
from tinydot.data.batching import Encoded, length_buckets
from tinydot.data.strokes import PEN_DRAW, PEN_END_DIGIT, PEN_END_STROKE, Strokes
from tinydot.evaluation import evaluate_nll
from tinydot.flops import FlopTally, forward_flops, kept_weights, linear_shapes, train_step_flops
from tinydot.pruning.mask import full_mask
from tinydot.sampling import sample
from tinydot.training import BatchStream, init_model, train

SMALL = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64)
# what `tinydot compress --heads` leaves: 3 of 4 heads of width 8, an attention narrower than d_model
HEADS_REMOVED = ModelConfig(n_layers=2, d_model=32, n_heads=3, d_head=8, d_mlp=64)


def synthetic_strokes(n=24, max_steps=116, seed=0) -> Strokes:
    """Valid random sequences of 12..max_steps pen steps (unit moves, a few pen lifts)."""
    rng = np.random.default_rng(seed)
    steps = np.zeros((n, max_steps, 3), dtype=np.int8)
    lengths = rng.integers(12, max_steps + 1, size=n).astype(np.int16)
    for i, length in enumerate(lengths):
        pen = np.where(rng.random(length - 1) < 0.1, PEN_END_STROKE, PEN_DRAW)
        pen[-1] = PEN_DRAW
        moves = rng.integers(-1, 2, size=(length - 1, 2))
        moves[pen == PEN_END_STROKE] = 0
        steps[i, : length - 1, :2] = moves
        steps[i, : length - 1, 2] = pen
        steps[i, length - 1] = (0, 0, PEN_END_DIGIT)
    return Strokes(steps, lengths, rng.integers(0, 10, size=n).astype(np.int8),
                   rng.integers(5, 24, size=(n, 2)).astype(np.int8))


def attention_flops(cfg, batch_size, positions):
    return cfg.n_layers * 4 * batch_size * positions * positions * cfg.n_heads * cfg.head_width


def counted(fn, math_kernel: bool) -> int:
    """FLOPs FlopCounterMode counts while fn() runs, with the math or the default attention kernel."""
    kernel = sdpa_kernel(SDPBackend.MATH) if math_kernel else contextlib.nullcontext()
    with kernel, FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def batch():
    encoded = Encoded(synthetic_strokes())
    index = np.arange(6)  # lengths differ: the batch is padded to its longest member
    inputs, labels, targets = encoded.batch(index, SMALL.max_move)
    assert inputs.shape[1] == encoded.lengths[index].max() > encoded.lengths[index].min()
    return inputs, labels, targets


def test_linear_shapes_are_the_models():
    for cfg in (SMALL, HEADS_REMOVED, ModelConfig(), ModelConfig(n_layers=1, d_model=8, d_mlp=24, max_move=30)):
        model = init_model(cfg, seed=0)
        actual = {f"{name}.weight": tuple(m.weight.shape) for name, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear)}
        assert linear_shapes(cfg) == actual


def test_hand_count_for_a_tiny_config():
    cfg = ModelConfig(n_layers=1, d_model=4, n_heads=1, d_mlp=8)  # max_move 28: 57 moves
    B, T = 2, 3  # 6 tokens
    by_hand = (2 * 6 * 4 * 12      # qkv
               + 2 * 2 * 3 * 3 * 4  # Q K^T over the full 3 x 3 square
               + 2 * 2 * 3 * 3 * 4  # A V
               + 2 * 6 * 4 * 4      # proj
               + 2 * 6 * 4 * 8 * 2  # MLP up and down
               + 2 * 6 * 4 * 3      # pen head
               + 2 * 6 * 4 * 57     # dx head
               + 2 * 6 * 4 * 4      # dy_in
               + 2 * 6 * 4 * 57)    # dy head
    assert by_hand == 7632
    assert forward_flops(cfg, B, T) == 7632
    assert train_step_flops(cfg, B, T) == 3 * 7632
    # one new position after 5 cached ones: 612 weights per token, attention over 6 keys
    assert forward_flops(cfg, 1, 1, cached=5) == 2 * 612 + 2 * 2 * 1 * 6 * 4
    # a sparse kernel skips 100 pruned weights of the dx head: 2 FLOPs x 6 tokens each
    mask = full_mask(init_model(cfg, seed=0))
    mask["head_dx.weight"].view(-1)[:100] = False
    assert forward_flops(cfg, B, T, kept=kept_weights(cfg, mask)) == 7632 - 2 * 6 * 100


@pytest.mark.parametrize("cfg", [SMALL, HEADS_REMOVED], ids=["all-heads", "heads-removed"])
@pytest.mark.parametrize("math_kernel", [True, False], ids=["math-attention", "default-attention"])
def test_forward_and_backward_match_flop_counter_mode(batch, math_kernel, cfg):
    model = init_model(cfg, seed=0)
    inputs, labels, targets = batch
    B, T = inputs.shape[:2]
    missed = 0 if math_kernel else attention_flops(cfg, B, T)  # FlopCounterMode's blind spot
    with torch.no_grad():
        forward = counted(lambda: model.nll(inputs, labels, targets), math_kernel)
    both = counted(lambda: model.nll(inputs, labels, targets).sum().backward(), math_kernel)
    assert forward == forward_flops(cfg, B, T) - missed
    assert both == train_step_flops(cfg, B, T) - 3 * missed


def test_default_shape_on_a_real_batch(train):
    """The default tinyDOT on real strokes: exact with the math kernel; the default kernel's gap is
    attention's share, which stays under 20% at these lengths."""
    cfg = ModelConfig()
    model = init_model(cfg, seed=0)
    inputs, labels, targets = Encoded(train.subset(np.arange(64))).batch(np.arange(32), cfg.max_move)
    B, T = inputs.shape[:2]
    def step():
        model.nll(inputs, labels, targets).sum().backward()

    assert counted(step, math_kernel=True) == train_step_flops(cfg, B, T)
    default = counted(step, math_kernel=False)
    assert default == train_step_flops(cfg, B, T) - 3 * attention_flops(cfg, B, T)
    assert 0 < 1 - default / train_step_flops(cfg, B, T) < 0.2


def test_sparse_counts():
    model = init_model(SMALL, seed=0)
    mask = full_mask(model)
    assert kept_weights(SMALL, mask) == {name: out * inp for name, (out, inp) in linear_shapes(SMALL).items()}
    assert forward_flops(SMALL, 4, 50, kept=kept_weights(SMALL, mask)) == forward_flops(SMALL, 4, 50)
    # pruned embedding rows save nothing: a lookup costs 0
    mask["emb_dx.weight"][:] = False
    assert forward_flops(SMALL, 4, 50, kept=kept_weights(SMALL, mask)) == forward_flops(SMALL, 4, 50)
    # keeping a random quarter of every Linear weight: the weight part shrinks to exactly the kept
    # count, attention does not change
    generator = torch.Generator().manual_seed(0)
    pruned = 0
    for name in linear_shapes(SMALL):
        mask[name] = torch.rand(mask[name].shape, generator=generator) < 0.25
        pruned += int((~mask[name]).sum())
    tally = FlopTally(SMALL, mask)
    tally.add_train_step(4, 50)
    tally.add_eval(4, 50)
    assert tally.eval_dense - tally.eval_sparse == 2 * 4 * 50 * pruned
    assert tally.train_dense - tally.train_sparse == 3 * 2 * 4 * 50 * pruned
    with pytest.raises(ValueError, match="shape"):
        kept_weights(SMALL, {"head_dx.weight": torch.ones(3, 3, dtype=torch.bool)})


def test_counting_sees_every_pass_training_evaluation_and_sampling(batch):
    """The hook on the model counts what really ran: FlopCounterMode (math kernel) over the same
    calls gives the same totals."""
    model = init_model(SMALL, seed=0)
    inputs, labels, targets = batch
    data = synthetic_strokes(n=40, seed=1)
    tally = FlopTally(SMALL)
    with tally.counting(model):
        assert counted(lambda: model.nll(inputs, labels, targets).sum().backward(), True) == tally.train_dense
        assert counted(lambda: evaluate_nll(model, data), True) == tally.eval_dense
        before = tally.eval_dense
        digits = [3, 1, 4]
        sampled = counted(lambda: sample(model, digits, seed=0), True)
    # sampling skips the pen head at the start point (t = 0): 2 FLOPs x 3 x d per sequence
    assert sampled == tally.eval_dense - before - 2 * len(digits) * 3 * SMALL.d_model
    assert tally.train_sparse == tally.train_dense and tally.eval_sparse == tally.eval_dense
    # outside the block nothing is counted
    totals = tally.totals()
    model.nll(inputs, labels, targets)
    assert tally.totals() == totals


def test_training_records_the_flops_of_its_batches(tmp_path):
    """train() writes the FLOPs of the batches it processed: equal to FlopCounterMode around the
    whole run (math kernel), and to the sum over the batch shapes its batch stream produced."""
    data, held_out = synthetic_strokes(n=30, seed=2), synthetic_strokes(n=10, seed=3)
    cfg = TrainConfig(steps=5, tokens_per_batch=600, warmup_steps=1, eval_every=2, eval_sequences=10)
    total = counted(lambda: train(data, tmp_path, SMALL, cfg, eval_data=held_out, progress=False), True)
    cost = json.loads((tmp_path / "cost.json").read_text())
    assert cost["train_flops_dense"] + cost["eval_flops_dense"] == total
    stream, encoded = BatchStream(Encoded(data), cfg), Encoded(data)
    shapes = [(len(i), int(encoded.lengths[i].max())) for i in (stream.next() for _ in range(cfg.steps))]
    assert cost["train_flops_dense"] == sum(train_step_flops(SMALL, B, T) for B, T in shapes)
    evaluations = 3  # steps 2, 4 and the last
    one_eval = sum(forward_flops(SMALL, len(i), int(Encoded(held_out).lengths[i].max()))
                   for i in length_buckets(Encoded(held_out).lengths, 16384, np.random.default_rng(0)))
    assert cost["eval_flops_dense"] == evaluations * one_eval
    assert cost["train_flops_sparse"] == cost["train_flops_dense"]
