"""What the text study's prunable set does: one bin-sized lottery run (1,000 random train sentences,
112 others to score) in the quick text preset's model, 100 steps, 4 levels removing 40% each, once
pruning the trunk only (the study's choice, tinydot.study.TEXT_PRUNABLE) and once every matrix and
embedding, the tied 10,000 x 32 word embedding included (tinydot.pruning.mask's default).

    OMP_NUM_THREADS=1 python experiments/text_embedding_choice.py OUT_DIR

Prints each run's per-level table and its needed fraction (README, "The study on text").
"""

import dataclasses
import sys
import time

import numpy as np
import torch

from tinydot.data.text import load_sentences
from tinydot.lottery import run_lottery
from tinydot.pruning.usage import needed_density
from tinydot.study import TEXT_PRUNABLE, Study
from tinydot.training import init_model

torch.set_num_threads(1)
out = sys.argv[1]
study = Study.preset("quick", domain="text", overrides={
    "train": {"steps": 100, "warmup_steps": 10, "checkpoint_every": 0},
    "prune": {"levels": 4, "fraction": 0.4}})
sentences = load_sentences("train")
order = np.random.default_rng(0).permutation(len(sentences))
train, test = sentences.subset(np.sort(order[:1000])), sentences.subset(np.sort(order[1000:1112]))
init = init_model(study.model, 0).state_dict()
for name, prunable in (("trunk", TEXT_PRUNABLE), ("whole", None)):
    prune = dataclasses.replace(study.prune, prunable=prunable)
    started = time.perf_counter()
    table = run_lottery(train, f"{out}/{name}", test, study.model, study.train, prune, init_state=init,
                        progress=False).table
    needed = needed_density(table["density"], table["bits_per_step"], prune.delta)
    print(f"{name}: {int(table['prunable'][0]):,} prunable weights, needed fraction {needed['needed']:.4f} "
          f"(reached: {needed['reached']}), {time.perf_counter() - started:.0f} s")
    print(table[["level", "density", "bits_per_step", "untouched_fraction", "trained_to_small_fraction",
                 "used_fraction"]].to_string(index=False))
