"""Neuron-level redundancy (Dalvi, Sajjad, Durrani and Belinkov 2020, "Analyzing Redundancy in
Pretrained Transformer Models").

- `CorrelationClustering`: Pearson correlation between neurons over tokens, average-linkage
  agglomerative clustering on 1 - |rho|, cut at a distance threshold. The partition is the one
  NeuroX's `create_correlation_clusters` gives; the tree is built once, so sweeping the threshold
  costs one cut per value.
- `ElasticNetProbe`: multinomial logistic regression with an elastic-net penalty, a scikit-learn
  classifier. The default solver is full-batch proximal gradient (FISTA) in torch, which minimises
  the same objective as scikit-learn's `LogisticRegression(solver="saga", l1_ratio=...)` (the tests
  check that they agree) but is 10-20x faster on thousands of neurons; `solver="saga"` uses
  scikit-learn's own.
- `lca_ranking`: neurons ordered by the probe's weights (linguistic correlation analysis).
- `TaskRedundancy`: their task-specific pipeline: oracle, layer selector, correlation clustering,
  ranking, and retraining on the top k% of neurons (k% of all neurons, rounded down, at least one).

All follow the estimator contract: parameters in __init__, fit returns self, results end in _.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from tinydot.errors import ConfigError

THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 10))
# shares of all neurons tried, smallest first (fine steps up to 10%, where the paper's headline sits)
K_GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.12, 0.15, 0.2, 0.3,
          0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DELTAS = ((3.0, 1.0), (2.0, 1.0), (1.0, 1.0))
ALPHAS = (1e-3, 1e-4, 1e-5)  # elastic-net strengths the oracle probe chooses from (by dev score)
MIN_TRAIN_TOKENS = 100
MIN_EVAL_TOKENS = 10


# --- correlation clustering ------------------------------------------------------------------

def neuron_correlations(X) -> np.ndarray:
    """Pearson correlation between the columns (neurons) of X (tokens x neurons), in float64.

    Constant neurons correlate 0 with every other neuron (NeuroX: nan -> 0); the diagonal is 1.
    """
    X = np.asarray(X)
    if X.ndim != 2 or len(X) < 2:
        raise ConfigError(f"activations must be tokens x neurons with at least 2 tokens, got shape {X.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.corrcoef(X, rowvar=False)
    np.nan_to_num(corr, copy=False, nan=0.0)
    np.fill_diagonal(corr, 1.0)
    return corr


class CorrelationClustering(BaseEstimator):
    """Average-linkage clustering of neurons on 1 - |Pearson rho|, cut at `threshold`.

    Attributes after fit(X): linkage_ (scipy linkage matrix), labels_ (cluster of every neuron,
    1-based as scipy's fcluster), n_clusters_, representatives_ (the lowest-index neuron of every
    cluster, sorted), redundant_fraction_ ((neurons - clusters) / neurons).
    """

    def __init__(self, threshold: float = 0.3):
        self.threshold = threshold

    def fit(self, X, y=None) -> CorrelationClustering:
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"the clustering threshold must be in [0, 1], got {self.threshold}")
        distance = neuron_correlations(X)
        np.abs(distance, out=distance)
        np.subtract(1.0, distance, out=distance)  # 1 - |rho|, in place
        np.fill_diagonal(distance, 0.0)
        self.linkage_ = linkage(squareform(distance, checks=False), method="average")
        return self._cut()

    def _cut(self) -> CorrelationClustering:
        self.labels_ = fcluster(self.linkage_, self.threshold, criterion="distance")
        self.n_clusters_ = int(self.labels_.max())
        _, first = np.unique(self.labels_, return_index=True)
        self.representatives_ = np.sort(first)
        n = len(self.labels_)
        self.redundant_fraction_ = (n - self.n_clusters_) / n
        return self

    def sweep(self, thresholds=THRESHOLDS) -> pd.DataFrame:
        """Clusters and redundant fraction at each threshold, from the tree already built."""
        rows = []
        for c in thresholds:
            labels = fcluster(self.linkage_, c, criterion="distance")
            n, k = len(labels), int(labels.max())
            rows.append({"threshold": c, "neurons": n, "clusters": k, "redundant_fraction": (n - k) / n})
        return pd.DataFrame(rows)


# --- probes ----------------------------------------------------------------------------------

def task_score(y_true, y_pred, scored=None) -> float:
    """Accuracy, or macro-F1 over the labels `scored` (e.g. the entity tags of NER)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if scored is None:
        return float((y_true == y_pred).mean())
    return float(f1_score(y_true, y_pred, labels=list(scored), average="macro", zero_division=0))


class ElasticNetProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression with an elastic-net penalty on standardized neurons.

    Minimises  mean_i CE(x_i) + alpha * (l1_ratio * |W|_1 + (1 - l1_ratio) / 2 * |W|_2^2)
    (the intercept is not penalised), which is scikit-learn's LogisticRegression objective with
    C = 1 / (alpha * n_train). Neurons are standardized with the training mean and deviation.

    max_iter bounds the full-batch iterations: on MiniLM-sized problems (36k tokens x 2,688 neurons)
    the weaker alphas stop there before reaching `tol`, which acts as early stopping; the dev-score
    choice of alpha in TaskRedundancy sees the probes as they are.

    Attributes after fit: classes_, coef_ (n_classes, n_neurons, on the standardized scale, so
    magnitudes are comparable across neurons), intercept_, mean_, scale_, n_iter_.
    """

    def __init__(self, alpha: float = 1e-3, l1_ratio: float = 0.5, max_iter: int = 300, tol: float = 1e-4,
                 solver: str = "fista"):
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver

    def _standardize(self, X) -> np.ndarray:
        return ((np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_).astype(np.float32)

    def fit(self, X, y) -> ElasticNetProbe:
        if self.solver not in ("fista", "saga"):
            raise ConfigError(f"unknown probe solver {self.solver!r}; choose fista or saga")
        if not self.alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        if not 0 <= self.l1_ratio <= 1:
            raise ConfigError(f"l1_ratio must be in [0, 1], got {self.l1_ratio}")
        X = np.asarray(X, dtype=np.float32)
        self.classes_, codes = np.unique(np.asarray(y), return_inverse=True)
        if len(self.classes_) < 2:
            raise ConfigError("a probe needs at least two classes among its training tokens")
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0).astype(np.float32)
        Z = self._standardize(X)
        if self.solver == "saga":
            self._fit_saga(Z, codes)
        else:
            self._fit_fista(torch.from_numpy(Z), torch.from_numpy(codes))
        return self

    def _fit_saga(self, Z, codes):
        # scikit-learn >= 1.8 reads the elastic net from l1_ratio alone (`penalty` is deprecated;
        # before 1.8 the default penalty="l2" silently ignored l1_ratio: hence the version pin).
        alpha, l1_ratio = self.alpha, self.l1_ratio
        if len(self.classes_) == 2:
            # scikit-learn fits one row w for two classes (a sigmoid); our objective has two rows, and
            # its minimiser is W = [-w/2, w/2] (only w1 - w0 enters the loss, and that split has the
            # least penalty), whose penalty is alpha (l1 |w|_1 + (1 - l1) / 2 * |w|_2^2 / 2). The same
            # objective in scikit-learn's one-row form: alpha' l1' = alpha l1, alpha' (1 - l1') = alpha (1 - l1) / 2.
            alpha = self.alpha * (1 + self.l1_ratio) / 2
            l1_ratio = self.l1_ratio / (alpha / self.alpha)
        model = LogisticRegression(solver="saga", l1_ratio=l1_ratio, C=1.0 / (alpha * len(Z)),
                                   max_iter=self.max_iter, tol=self.tol, random_state=0).fit(Z, codes)
        coef, intercept = model.coef_, model.intercept_
        if len(self.classes_) == 2:  # spell out both rows of the two-row form
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        self.coef_, self.intercept_, self.n_iter_ = coef, intercept, int(np.max(model.n_iter_))

    @torch.no_grad()
    def _fit_fista(self, Z: torch.Tensor, codes: torch.Tensor):
        n, d = Z.shape
        k = len(self.classes_)
        Y = torch.nn.functional.one_hot(codes, k).to(Z.dtype)
        l1, l2 = self.alpha * self.l1_ratio, self.alpha * (1 - self.l1_ratio)
        # step 1/L, L = Lipschitz constant of the smooth part: 0.5 * lambda_max(Z^T Z / n) + l2
        # (softmax cross-entropy's Hessian is at most 1/2 in operator norm); bias column included
        v = torch.randn(d + 1, generator=torch.Generator().manual_seed(0), dtype=Z.dtype)
        for _ in range(30):
            v = torch.cat([Z.T @ (Z @ v[:-1] + v[-1]), (Z @ v[:-1] + v[-1]).sum()[None]]) / n
            lam = v.norm()
            v = v / lam
        step = 1.0 / (0.5 * 1.05 * float(lam) + l2)
        W, b = torch.zeros(d, k, dtype=Z.dtype), torch.zeros(k, dtype=Z.dtype)
        W_look, b_look, t = W.clone(), b.clone(), 1.0
        for iteration in range(1, self.max_iter + 1):  # noqa: B007 - n_iter_ reads it after the loop
            G = (torch.softmax(Z @ W_look + b_look, dim=1) - Y) / n
            W_new = W_look - step * (Z.T @ G + l2 * W_look)
            W_new = torch.sign(W_new) * torch.clamp(W_new.abs() - step * l1, min=0.0)
            b_new = b_look - step * G.sum(0)
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            change = float(torch.linalg.vector_norm(W_new - W)) / max(float(torch.linalg.vector_norm(W_new)), 1e-12)
            W_look = W_new + (t - 1) / t_new * (W_new - W)
            b_look = b_new + (t - 1) / t_new * (b_new - b)
            W, b, t = W_new, b_new, t_new
            if change < self.tol:
                break
        self.coef_, self.intercept_, self.n_iter_ = W.T.numpy().copy(), b.numpy().copy(), iteration

    def decision_function(self, X) -> np.ndarray:
        return self._standardize(X) @ self.coef_.T + self.intercept_

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]

    def objective(self, X, y) -> float:
        """The penalised mean cross-entropy this probe minimises, on (X, y)."""
        scores = self.decision_function(X).astype(np.float64)
        codes = np.searchsorted(self.classes_, np.asarray(y))
        log_norm = np.logaddexp.reduce(scores, axis=1)
        ce = float(np.mean(log_norm - scores[np.arange(len(scores)), codes]))
        W = self.coef_.astype(np.float64)
        return ce + self.alpha * (self.l1_ratio * np.abs(W).sum() + (1 - self.l1_ratio) / 2 * (W ** 2).sum())


def lca_ranking(coef: np.ndarray) -> np.ndarray:
    """Neurons from most to least important by the probe weights (Dalvi et al. 2019).

    For every class, neurons are sorted by |w| and a neuron enters the selection once the heavier
    neurons of that class hold less than a share p of the class's total |w|; its rank is the
    smallest share at which it enters for any class. This is NeuroX's `get_neuron_ordering` in the
    limit of a fine search stride (there, neurons entering within one stride are unordered).
    """
    weights = np.abs(np.asarray(coef, dtype=np.float64))  # (classes, neurons)
    order = np.argsort(-weights, axis=1, kind="stable")
    sorted_w = np.take_along_axis(weights, order, axis=1)
    totals = sorted_w.sum(axis=1, keepdims=True)
    before = (np.cumsum(sorted_w, axis=1) - sorted_w) / np.where(totals > 0, totals, 1.0)
    entry = np.full(weights.shape, np.inf)
    np.put_along_axis(entry, order, before, axis=1)
    entry[weights == 0] = np.inf  # a zero weight carries no evidence for that class
    first_entry = entry.min(axis=0)
    strength = weights.max(axis=0)
    return np.lexsort((np.arange(weights.shape[1]), -strength, first_entry))


# --- the task-specific pipeline --------------------------------------------------------------

def check_split(labels: np.ndarray, split: np.ndarray) -> None:
    counts = {name: int((split == name).sum()) for name in ("train", "dev", "test")}
    if counts["train"] < MIN_TRAIN_TOKENS or min(counts["dev"], counts["test"]) < MIN_EVAL_TOKENS:
        raise ConfigError(f"too few tokens for a probe (train/dev/test = {counts['train']}/{counts['dev']}/"
                          f"{counts['test']}); need at least {MIN_TRAIN_TOKENS} training and "
                          f"{MIN_EVAL_TOKENS} dev and test tokens: ask for more tokens")
    if len(np.unique(labels[split == "train"])) < 2:
        raise ConfigError("the training tokens hold a single label; ask for more tokens")


class TaskRedundancy(BaseEstimator):
    """How few neurons a task needs: Dalvi et al.'s layer selector + clustering + ranking pipeline.

    fit(layers, labels, split, scored=None): `layers` is a list (or array) of per-layer activations
    (tokens x width each, embeddings first); `split` marks every token train/dev/test; `scored`
    names the labels scored by macro-F1 (None: accuracy). Dev scores drive every choice; test
    scores are reported.

    alpha: the probes' elastic-net strength; None picks it from `alphas` by the oracle's dev score
    (the paper tunes its regularisation the same way) and uses it for every probe.

    Attributes after fit:
      alpha_       the strength used; alphas_ DataFrame: oracle dev/test score per alpha tried
      oracle_      dict: dev and test score of a probe on all neurons
      layers_      DataFrame: per layer l, probes on layer l alone and on layers 0..l combined
      selections_  DataFrame: per (delta_L, delta_N) in percent, the selected layer, the clusters,
                   the base score, the neurons kept and their share of all neurons, and the test
                   score with its share of the oracle's
      curves_      DataFrame: dev/test score against the number of top-ranked neurons kept; it goes
                   on past the chosen k, up to all clustered neurons, for the score-vs-neurons figure
    """

    def __init__(self, deltas=DELTAS, threshold: float = 0.3, k_grid=K_GRID, alpha: float | None = None,
                 alphas=ALPHAS, l1_ratio: float = 0.5, max_iter: int = 300, progress=None):
        self.deltas = deltas
        self.threshold = threshold
        self.k_grid = k_grid
        self.alpha = alpha
        self.alphas = alphas
        self.l1_ratio = l1_ratio
        self.max_iter = max_iter
        self.progress = progress

    def _probe(self, neurons: np.ndarray, alpha: float | None = None):
        alpha = self.alpha_ if alpha is None else alpha
        key = (alpha, neurons.tobytes())
        if key not in self._cache:
            X, y = self._parts["train"]
            probe = ElasticNetProbe(alpha, self.l1_ratio, self.max_iter).fit(X[:, neurons], y)
            scores = {part: task_score(self._parts[part][1], probe.predict(self._parts[part][0][:, neurons]),
                                       self._scored) for part in ("dev", "test")}
            self._cache[key] = (probe, scores)
            if self.progress is not None:
                self.progress()
        return self._cache[key]

    def fit(self, layers, labels, split, scored=None) -> TaskRedundancy:
        widths = [np.asarray(layer).shape[1] for layer in layers]
        labels, split = np.asarray(labels), np.asarray(split)
        check_split(labels, split)
        if any(len(layer) != len(labels) for layer in layers):
            raise ConfigError(f"{len(layers[0])} tokens of activations but {len(labels)} labels")
        self._parts = {part: (np.concatenate([np.asarray(layer[split == part], dtype=np.float32) for layer in layers],
                                             axis=1), labels[split == part]) for part in ("train", "dev", "test")}
        self._scored, self._cache = scored, {}
        bounds = np.concatenate([[0], np.cumsum(widths)])
        total = int(bounds[-1])

        candidates = self.alphas if self.alpha is None else (self.alpha,)
        tried = [(a, self._probe(np.arange(total), a)[1]) for a in candidates]
        self.alphas_ = pd.DataFrame([{"alpha": a, "dev": sc["dev"], "test": sc["test"]} for a, sc in tried])
        self.alpha_, oracle = max(tried, key=lambda pair: pair[1]["dev"])  # ties: the first (strongest)
        self.oracle_ = dict(oracle, neurons=total)
        rows = []
        for layer in range(len(widths)):
            _, alone = self._probe(np.arange(bounds[layer], bounds[layer + 1]))
            _, upto = self._probe(np.arange(bounds[layer + 1]))
            rows.append({"layer": layer, "width": widths[layer], "dev": alone["dev"], "test": alone["test"],
                         "cumulative_dev": upto["dev"], "cumulative_test": upto["test"]})
        self.layers_ = pd.DataFrame(rows)

        selections, curves, representatives = [], [], {}  # clusters per selected layer, made once
        for delta_l, delta_n in self.deltas:
            goal = self.oracle_["dev"] * (1 - delta_l / 100)
            passing = self.layers_.index[self.layers_["cumulative_dev"] >= goal]
            layer = int(passing[0]) if len(passing) else len(widths) - 1
            candidates = np.arange(bounds[layer + 1])
            if layer not in representatives:
                clustering = CorrelationClustering(self.threshold).fit(self._parts["train"][0][:, candidates])
                representatives[layer] = candidates[clustering.representatives_]
            kept = representatives[layer]
            base_probe, base = self._probe(kept)
            ranking = kept[lca_ranking(base_probe.coef_)]
            chosen = None
            for k in self.k_grid:
                count = min(len(ranking), max(1, math.floor(k * total + 1e-9)))  # at most k of all neurons
                _, scores = self._probe(np.sort(ranking[:count]))
                curves.append({"delta_L": delta_l, "delta_N": delta_n, "k": k, "neurons": count,
                               "dev": scores["dev"], "test": scores["test"]})
                if chosen is None and scores["dev"] >= base["dev"] * (1 - delta_n / 100):
                    chosen = (count, scores)
                if count == len(ranking):
                    break
            count, scores = chosen if chosen is not None else (len(ranking), base)
            selections.append({
                "delta_L": delta_l, "delta_N": delta_n, "layer": layer, "layer_neurons": len(candidates),
                "clusters": len(kept), "base_dev": base["dev"], "neurons": count,
                "neuron_share": count / total, "dev": scores["dev"], "test": scores["test"],
                "oracle_share": scores["test"] / self.oracle_["test"] if self.oracle_["test"] > 0 else float("nan"),
            })
        self.selections_ = pd.DataFrame(selections)
        self.curves_ = pd.DataFrame(curves).drop_duplicates()
        del self._parts, self._cache
        return self
