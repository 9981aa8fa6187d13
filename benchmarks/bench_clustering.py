"""Imbalanced clustering of fixed features: ``ImbalancedOTClustering`` against KMeans,
GaussianMixture and the same head on balanced Sinkhorn pseudo-labels.

Accuracy (Hungarian-matched), NMI and the recall of the smallest third of the classes, mean
± sd over seeds (each seed: a new long-tailed subsample, PCA and model seed). No timings:
the seeds run in parallel processes.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from _common import markdown_table
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.datasets import (
    load_breast_cancer,
    load_digits,
    load_iris,
    load_wine,
    make_blobs,
    make_classification,
)
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from mmopt.ot import ImbalancedOTClustering


def _long_tail(X, y, ratio, seed, largest):
    """Class c (by frequency rank) keeps ``largest * ratio**(-c / (k - 1))`` samples (or
    all it has); returns the subset and its labels (0 the largest class)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    k = classes.size
    counts = np.maximum((largest * ratio ** (-np.arange(k) / (k - 1))).astype(int), 2)
    order = rng.permutation(k)
    keep = np.concatenate([
        rng.permutation(np.flatnonzero(y == classes[c]))[:counts[i]]
        for i, c in enumerate(order)
    ])
    # Class 0 is the largest, class k - 1 the smallest.
    relabel = np.empty(k, dtype=int)
    relabel[order] = np.arange(k)
    return X[keep], relabel[np.searchsorted(classes, y[keep])]


def _datasets(seed):
    """(name, X, y, k) for one seed: real data sets, then synthetic ones with k = 2, 3, 5."""
    X, y = load_digits(return_X_y=True)
    for ratio in (10, 50):
        Xs, ys = _long_tail(X / 16.0, y, ratio, seed, 150)
        yield f"digits LT{ratio}", PCA(20, random_state=seed).fit_transform(Xs), ys, 10
    X, y = load_breast_cancer(return_X_y=True)
    # Both orientations: all 212 malignant and 35 benign (ratio 6), 350 benign and 35
    # malignant (ratio 10).
    for head, larger, count in (("malignant", 0, 212), ("benign", 1, 350)):
        rng = np.random.default_rng(seed)
        keep = np.concatenate([rng.permutation(np.flatnonzero(y == larger))[:count],
                               rng.permutation(np.flatnonzero(y != larger))[:35]])
        ys = (y[keep] != larger).astype(int)
        yield (f"breast_cancer, {head} head ({count}:35)",
               StandardScaler().fit_transform(X[keep]), ys, 2)
    X, y = load_wine(return_X_y=True)
    Xs, ys = _long_tail(X, y, 5, seed, 71)
    yield "wine LT5", StandardScaler().fit_transform(Xs), ys, 3
    X, y = load_iris(return_X_y=True)
    Xs, ys = _long_tail(X, y, 10, seed, 50)
    yield "iris LT10", StandardScaler().fit_transform(Xs), ys, 3
    X, y = make_classification(
        2000, 10, n_informative=6, n_redundant=0, n_classes=6, n_clusters_per_class=1,
        class_sep=2.0, random_state=seed,
    )
    Xs, ys = _long_tail(X, y, 20, seed, 300)
    yield "make_classification k6 LT20", Xs, ys, 6
    X, y = make_blobs(3000, n_features=8, centers=8, cluster_std=2.5, random_state=seed)
    Xs, ys = _long_tail(X, y, 20, seed, 200)
    yield "make_blobs k8 LT20", Xs, ys, 8
    for k, ratio in ((2, 50), (3, 5), (5, 20)):
        X, y = make_blobs(3000, n_features=6, centers=k, cluster_std=2.5,
                          random_state=100 + seed)
        Xs, ys = _long_tail(X, y, ratio, seed, 300)
        yield f"make_blobs k{k} LT{ratio}", Xs, ys, k
    for k, ratio in ((2, 10), (3, 20), (5, 50)):
        X, y = make_classification(
            3000, 8, n_informative=5, n_redundant=0, n_classes=k, n_clusters_per_class=1,
            class_sep=2.0, random_state=100 + seed,
        )
        Xs, ys = _long_tail(X, y, ratio, seed, 300)
        yield f"make_classification k{k} LT{ratio}", Xs, ys, k


def _matched(truth, labels):
    k = max(truth.max(), labels.max()) + 1
    table = np.zeros((k, k))
    np.add.at(table, (truth, labels), 1)
    rows, cols = linear_sum_assignment(-table)
    mapping = np.arange(k)
    mapping[cols] = rows
    return table[rows, cols].sum() / truth.size, mapping[labels]


def _models(k, seed):
    return {
        "ImbalancedOTClustering (SP2OT, lam=4: default)": ImbalancedOTClustering(
            k, random_state=seed),
        "ImbalancedOTClustering (P2OT, lam=0)": ImbalancedOTClustering(
            k, lam=0.0, random_state=seed),
        # The default head on balanced pseudo-labels: all the mass, sizes held uniform.
        "same head, balanced Sinkhorn": ImbalancedOTClustering(
            k, rho0=1.0, gamma=1e6, random_state=seed),
        "KMeans": KMeans(k, n_init=10, random_state=seed),
        "GaussianMixture": GaussianMixture(k, covariance_type="diag", random_state=seed),
    }


def _clustering_scores(seed):
    """[((data, method), n, (accuracy, NMI, tail recall)), ...] for one seed."""
    out = []
    for name, X, y, k in _datasets(seed):
        tail = np.arange(k)[-max(1, k // 3):]
        for method, model in _models(k, seed).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                labels = model.fit_predict(X)
            acc, mapped = _matched(y, labels)
            recall = np.mean([(mapped == y)[y == c].mean() for c in tail])
            out.append(((name, method), X.shape[0],
                        (acc, normalized_mutual_info_score(y, labels), recall)))
    return out


def run(quick: bool = False, n_jobs: int | None = None) -> str:
    """The clustering table, ``n_jobs`` processes (one seed each; default min(5, CPUs))."""
    seeds = range(3 if quick else 5)
    n_jobs = n_jobs or min(5, os.cpu_count() or 1)
    if n_jobs > 1:
        with ProcessPoolExecutor(n_jobs) as pool:
            per_seed = list(pool.map(_clustering_scores, seeds))
    else:
        per_seed = [_clustering_scores(seed) for seed in seeds]
    scores, sizes = {}, {}
    for key, n, values in (item for items in per_seed for item in items):
        scores.setdefault(key, []).append(values)
        sizes.setdefault(key, []).append(n)
    rows = []
    for (name, method), values in scores.items():
        mean, sd = np.mean(values, axis=0), np.std(values, axis=0)
        low, high = min(sizes[name, method]), max(sizes[name, method])
        rows.append({"data": name, "n": f"{low}" if low == high else f"{low}-{high}",
                     "seeds": len(values), "method": method,
                     **{f"{key}": f"{m:.3f} ± {s:.3f}"
                        for key, m, s in zip(("accuracy", "NMI", "tail recall"), mean, sd)}})
    return (
        "## Imbalanced clustering\n\n"
        f"{len(seeds)} seeds (subsample, PCA and model seeds). Long-tailed (LT r: the "
        "largest class r times the smallest, geometric) subsets: digits (20 principal "
        "components), breast_cancer (standardized, both orientations), wine and iris "
        "(standardized), make_classification and make_blobs with k = 2 to 8 classes. "
        "Mean ± sd over the seeds (n: the range of the subsets' sizes). Tail recall: mean "
        "recall of the smallest third of the classes (the smallest one for k < 6) after Hungarian "
        "matching. 'balanced Sinkhorn': the default head and schedule with all the mass "
        "and the cluster sizes held uniform (rho0 = 1, gamma = 1e6).\n\n"
        + markdown_table(rows)
    )


if __name__ == "__main__":
    print(run(quick=True))
