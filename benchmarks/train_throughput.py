"""Training throughput: tinydot's training step against the step it replaced and a naive padded loop.

Measured in one run, on the real train split, for two models and two thread counts:
  quick    the study's quick-preset tinyDOT (2 layers, d_model 32, MLP 128), batches of ~4096 positions
  default  the default tinyDOT (3 layers, d_model 64, MLP 256), batches of ~8192 positions
Rows (all on the same length-bucketed batches except `naive`):
  naive         fixed batches of random sequences padded to 117 positions, baseline step
  baseline      the training step before issue 15, kept here verbatim: the old `TinyDOT.nll`,
                for-loop AdamW, gradient clipping one tensor at a time, the touched tracking `train` does
  step          `tinydot.training.training_step`, what `train` runs now (heads and cross-entropy
                on (positions, classes) rows, fused AdamW, foreach clipping)
  step relu     the same with `activation: relu` (a different model: see README, "Training speed")
  masked rows   baseline and step training under a 50% magnitude mask (pruned lottery levels)
  step, torch.compile   with --compile: the step with `torch.compile(model.nll, dynamic=True)` (one
                graph for every batch shape); its compile time (the warm-up steps' time above
                the timed mean) is printed apart and left out of its throughput
Text models (`--models text-quick text`: the text study's quick-preset TextDOT, 2 layers, d_model 32,
and the default TextDOT, 4 layers, d_model 128; batches of ~1024 positions of Penn Treebank train):
  baseline      `training_step` with TextDOT.nll as it was before: one (positions, 10,000) logit
                matrix per batch (~40 MB, mapped and zeroed afresh by glibc at every step)
  step          `training_step` with TextDOT.nll now: the softmax over chunks of LOGIT_CHUNK logits
The last column also gives minor page faults per step (the whole process, both rows interleaved).
Throughput counts scored positions per second (padding is work but not progress). Baseline and new
steps alternate batch by batch, so a busy machine slows both alike; the ratio is new / baseline.
MFU: analytic training FLOPs (tinydot.flops, dense) per second over a 1024^3 matmul measured now
at the same thread count.

    python benchmarks/train_throughput.py [--steps 40] [--models quick default text-quick text] [--threads 1 2]
                                          [--compile]
"""

import argparse
import dataclasses
import resource
import time
import types

import numpy as np
import torch
import torch.nn.functional as F

from tinydot.config import ModelConfig, TrainConfig
from tinydot.data import load_sentences, load_strokes
from tinydot.data.batching import IGNORE, OUT_DX, OUT_DY, OUT_PEN, Encoded, EncodedText, epoch_batches
from tinydot.domains import DOMAINS
from tinydot.flops import train_step_flops
from tinydot.pruning.magnitude import prune
from tinydot.pruning.mask import full_mask, masked_pairs, prunable_names
from tinydot.training import init_model, make_optimizer, training_step

MODELS = {"quick": (ModelConfig(n_layers=2, d_model=32, d_mlp=128), 4096), "default": (ModelConfig(), 8192)}
TEXT_MODELS = {"text-quick": (dataclasses.replace(DOMAINS["text"].model_config, n_layers=2, d_model=32,
                                                  d_mlp=128), 1024),
               "text": (DOMAINS["text"].model_config, 1024)}
WARMUP = 3


def matmul_peak(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def baseline_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """The optimizer before issue 15: AdamW's for-loop implementation."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, cfg.beta2), foreach=False)


def baseline_nll(model, inputs, labels, targets):
    """TinyDOT.nll before issue 15: heads on (B, T, d), cross-entropy on (B, classes, T) views."""
    h, _ = model(inputs, labels)
    pen_t = targets[..., OUT_PEN]
    valid = pen_t != IGNORE
    draw = (pen_t == 0).float()
    dx_t = targets[..., OUT_DX].long() + model.cfg.max_move
    dy_t = targets[..., OUT_DY].long() + model.cfg.max_move
    nll_pen = F.cross_entropy(model.head_pen(h).transpose(1, 2), pen_t.clamp(min=0), reduction="none")
    nll_pen = torch.cat([torch.zeros_like(nll_pen[:, :1]), nll_pen[:, 1:]], dim=1)
    nll_dx = F.cross_entropy(model.head_dx(h).transpose(1, 2), dx_t, reduction="none")
    nll_dy = F.cross_entropy(model.dy_logits(h, dx_t).transpose(1, 2), dy_t, reduction="none")
    return (nll_pen + draw * (nll_dx + nll_dy)) * valid


def baseline_step(model, optimizer, batch, n_positions, *, lr, grad_clip, masked=(), touched=()) -> float:
    """The training step as `train` ran it before issue 15 (same arguments as `training_step`)."""
    nll = baseline_nll(model, *batch)
    loss = nll.sum() / n_positions
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for param, keep in masked:
        param.grad.mul_(keep)
    for param, seen in touched:
        if param.grad is not None:
            seen |= param.grad != 0
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    for param, keep in masked:
        param.data.mul_(keep)
    return float(nll.detach().sum())


class Trainer:
    """One model + optimizer + step function, stepping through the given batches."""

    def __init__(self, cfg, step, optimizer, mask=None, compile=False):
        self.cfg, self.step_fn = cfg, step
        self.model = init_model(cfg, 0)
        if compile:
            self.model.nll = torch.compile(self.model.nll, dynamic=True)
        self.masked = masked_pairs(self.model, mask) if mask is not None else []
        for param, keep in self.masked:
            param.data.mul_(keep)
        self.optimizer = optimizer(self.model, TrainConfig())
        self.touched = [(p, torch.zeros_like(p, dtype=torch.bool)) for p in self.model.parameters() if p.dim() >= 2]
        self.seconds, self.positions, self.flops, self.calls, self.warmup_seconds = 0.0, 0, 0, 0, 0.0

    def step(self, encoded, index, pad_to=None):
        start = time.perf_counter()  # building the batch is part of the step
        batch = encoded.batch(index, positions=pad_to)
        n = int(encoded.lengths[index].sum())
        self.step_fn(self.model, self.optimizer, batch, n, lr=1e-3, grad_clip=1.0, masked=self.masked,
                     touched=self.touched)
        elapsed = time.perf_counter() - start
        self.calls += 1
        if self.calls <= WARMUP:
            self.warmup_seconds += elapsed
        else:
            self.seconds += elapsed
            self.positions += n
            self.flops += train_step_flops(self.cfg, len(index), batch[0].shape[1])

    @property
    def throughput(self) -> float:
        return self.positions / self.seconds

    @property
    def ms_per_step(self) -> float:
        """The mean time of a timed step (the naive loop's padded batches score fewer positions a step)."""
        return self.seconds / (self.calls - WARMUP) * 1e3

    @property
    def compile_seconds(self) -> float:
        """The warm-up steps' time above what as many timed steps took on average."""
        return self.warmup_seconds - WARMUP * self.seconds / (self.calls - WARMUP)


def magnitude_mask(cfg: ModelConfig):
    """Half of the prunable weights removed by magnitude from the initial weights (a pruned level's shape)."""
    model = init_model(cfg, 0)
    return prune(model, full_mask(model, prunable_names(model)), 0.5)


def measure(name: str, threads: int, steps: int, encoded: Encoded,
            compile: bool = False) -> list[tuple[str, float, float, float, float]]:
    cfg, tokens = MODELS[name]
    torch.set_num_threads(threads)
    peak = matmul_peak()
    batches = epoch_batches(encoded.lengths, tokens, seed=0, epoch=0)[: steps + WARMUP]
    per_batch = tokens // int(encoded.lengths.max())
    order = np.random.default_rng(0).permutation(len(encoded))
    naive_batches = [order[i * per_batch: (i + 1) * per_batch] for i in range(steps + WARMUP)]
    relu = dataclasses.replace(cfg, activation="relu")
    mask = magnitude_mask(cfg)
    runs = {
        "baseline": Trainer(cfg, baseline_step, baseline_optimizer),
        "step": Trainer(cfg, training_step, make_optimizer),
        "step relu": Trainer(relu, training_step, make_optimizer),
        "baseline, 50% masked": Trainer(cfg, baseline_step, baseline_optimizer, mask),
        "step, 50% masked": Trainer(cfg, training_step, make_optimizer, mask),
    }
    if compile:
        runs["step, torch.compile"] = Trainer(cfg, training_step, make_optimizer, compile=True)
    naive = Trainer(cfg, baseline_step, baseline_optimizer)
    for i in range(steps + WARMUP):  # interleaved: every variant sees the machine in the same state
        for run in runs.values():
            run.step(encoded, batches[i])
        naive.step(encoded, naive_batches[i], pad_to=int(encoded.lengths.max()))
    base, base_masked = runs["baseline"].throughput, runs["baseline, 50% masked"].throughput
    rows = [("naive padded loop", naive.throughput, naive.ms_per_step, naive.flops / naive.seconds / peak,
             naive.throughput / base)]
    for label, run in runs.items():
        reference = base_masked if "masked" in label else base
        rows.append((label, run.throughput, run.ms_per_step, run.flops / run.seconds / peak,
                     run.throughput / reference))
    print(f"\n{name} model ({init_model(cfg, 0).num_params():,} parameters), {threads} thread(s), "
          f"~{tokens} positions per batch, {steps} timed steps; matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"  {'':24s} {'positions/s':>12s} {'ms/step':>8s} {'MFU':>6s} {'vs baseline':>12s}")
    for label, throughput, ms, mfu, ratio in rows:
        print(f"  {label:24s} {throughput:12,.0f} {ms:8.1f} {mfu:6.1%} {ratio:11.2f}x")
    if compile:
        print(f"  torch.compile: {runs['step, torch.compile'].compile_seconds:.1f} s of compiling in the warm-up steps")
    return rows


def baseline_text_nll(model, inputs, targets):
    """TextDOT.nll before the chunked softmax: one (positions, vocab) logit matrix per batch."""
    h, _ = model(inputs)
    logits = model.logits(h)
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
    return nll.view(targets.shape)


def measure_text(name: str, threads: int, steps: int, encoded: EncodedText) -> None:
    """Baseline and new text step, interleaved batch by batch on the same length-bucketed batches."""
    cfg, tokens = TEXT_MODELS[name]
    torch.set_num_threads(threads)
    peak = matmul_peak()
    batches = epoch_batches(encoded.lengths, tokens, seed=0, epoch=0)[: steps + WARMUP]
    runs = {"baseline": Trainer(cfg, training_step, make_optimizer),
            "step": Trainer(cfg, training_step, make_optimizer)}
    runs["baseline"].model.nll = types.MethodType(baseline_text_nll, runs["baseline"].model)
    faults = dict.fromkeys(runs, 0)
    for i in range(steps + WARMUP):
        for label, run in runs.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            run.step(encoded, batches[i])
            if i >= WARMUP:
                faults[label] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    base = runs["baseline"].throughput
    print(f"\n{name} model ({init_model(cfg, 0).num_params():,} parameters), {threads} thread(s), "
          f"~{tokens} positions per batch, {steps} timed steps; matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"  {'':24s} {'positions/s':>12s} {'ms/step':>8s} {'MFU':>6s} {'vs baseline':>12s} {'faults/step':>12s}")
    for label, run in runs.items():
        print(f"  {label:24s} {run.throughput:12,.0f} {run.ms_per_step:8.1f} "
              f"{run.flops / run.seconds / peak:6.1%} {run.throughput / base:11.2f}x {faults[label] / steps:12,.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--models", nargs="+", default=[*MODELS, *TEXT_MODELS], choices=[*MODELS, *TEXT_MODELS])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row to the stroke models")
    args = parser.parse_args()
    if args.compile:
        from torch._inductor import config as inductor_config
        inductor_config.compile_threads = 1  # no pool of compiling processes competing with the timed steps
    strokes = Encoded(load_strokes("train")) if set(args.models) & set(MODELS) else None
    text = EncodedText(load_sentences("train")) if set(args.models) & set(TEXT_MODELS) else None
    for name in args.models:
        for threads in args.threads:
            if name in MODELS:
                measure(name, threads, args.steps, strokes, args.compile)
            else:
                measure_text(name, threads, args.steps, text)
    print("\ngoal (issue 15): step >= 1.5x baseline for the quick model at 1 thread, >= 1.3x for the default at 2")


if __name__ == "__main__":
    main()
