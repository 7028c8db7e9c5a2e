"""Neuron clustering and layer CKA on real MiniLM activations (10k WNUT-16 words, 7 x 384 neurons).

Baselines (same run, same activations):
- clustering: NeuroX 1.0.9's `create_correlation_clusters` (installed by the Makefile with
  --no-deps; without it, the same recipe written out with numpy/scipy). Goal (issue 8): no slower
  than NeuroX at one threshold. The sweep over c = 0.1..0.9 is timed too: NeuroX rebuilds the tree
  for every threshold, we cut one tree nine times.
- CKA: `linear_cka` (float64) called for every pair of layers. Goal: all pairs <= 2 s.
Timings are medians of interleaved repeats (the first call of a run pays page faults for its big
arrays; interleaving spreads that fairly).

    python benchmarks/redundancy.py
"""

import contextlib
import io
import statistics
import time

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from tinydot.analysis.activations import load_hf_model, word_states
from tinydot.analysis.neurons import THRESHOLDS, CorrelationClustering
from tinydot.analysis.similarity import cka_matrix, linear_cka
from tinydot.analysis.tasks import ner_task

REPEATS = 5

try:
    from neurox.interpretation.clustering import create_correlation_clusters as _neurox

    def baseline(X, threshold):
        with contextlib.redirect_stdout(io.StringIO()):  # NeuroX prints two lines per call
            return _neurox(X, clustering_threshold=threshold)

    BASELINE = "NeuroX 1.0.9 create_correlation_clusters"
except ImportError:
    def baseline(X, threshold):
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.nan_to_num(np.corrcoef(X.T))
        corr = (corr + corr.T) / 2
        np.fill_diagonal(corr, 1)
        return fcluster(linkage(squareform(1 - np.abs(corr)), method="average"), threshold, criterion="distance")

    BASELINE = "the NeuroX recipe written out (NeuroX not installed)"


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main():
    task = ner_task(tokens=10_000, seed=0)
    tokenizer, model = load_hf_model("minilm")
    states = word_states(tokenizer, model, task.sentences)[:, :10_000]
    layers = list(states)
    X = np.ascontiguousarray(states.transpose(1, 0, 2).reshape(states.shape[1], -1))
    print(f"activations: {X.shape[0]:,} tokens x {X.shape[1]:,} neurons (MiniLM, 7 layers x 384)")

    ours_t, theirs_t, sweep_ours, sweep_theirs = [], [], [], []
    for _ in range(REPEATS):
        t, theirs = timed(lambda: baseline(X, 0.3))
        theirs_t.append(t)
        t, ours = timed(lambda: CorrelationClustering(0.3).fit(X))
        ours_t.append(t)
        pairs = set(zip(ours.labels_, theirs))
        assert len(pairs) == len(set(theirs)) == ours.n_clusters_, "partitions differ"
    for _ in range(2):
        t, _ = timed(lambda: [baseline(X, c) for c in THRESHOLDS])
        sweep_theirs.append(t)
        t, _ = timed(lambda: CorrelationClustering().fit(X).sweep(THRESHOLDS))
        sweep_ours.append(t)
    a, b = statistics.median(ours_t), statistics.median(theirs_t)
    print(f"clustering at c = 0.3 ({ours.n_clusters_:,} clusters, identical partition): ours {a:.2f} s, "
          f"{BASELINE} {b:.2f} s -> ratio {b / a:.2f}x (goal >= 1.0x)")
    a, b = statistics.median(sweep_ours), statistics.median(sweep_theirs)
    print(f"sweep c = 0.1..0.9: ours {a:.2f} s, baseline {b:.2f} s -> ratio {b / a:.2f}x")

    fast, slow = [], []
    for _ in range(REPEATS):
        t, matrix = timed(lambda: cka_matrix(layers))
        fast.append(t)
    for _ in range(2):
        t, reference = timed(lambda: np.array([[linear_cka(x, y) for y in layers] for x in layers]))
        slow.append(t)
    assert np.allclose(matrix, reference, atol=1e-5), "CKA matrices differ"
    a, b = statistics.median(fast), statistics.median(slow)
    print(f"CKA, all {len(layers)}x{len(layers)} layer pairs on {X.shape[0]:,} tokens: {a:.2f} s (goal <= 2 s); "
          f"pairwise float64 linear_cka {b:.2f} s -> ratio {b / a:.2f}x")


if __name__ == "__main__":
    main()
