r"""
Imbalance-aware pseudo-labels and clustering with P²OT and SP²OT
=================================================================

Long-tailed subsets of the digits data (imbalance ratios 10 and 50: the largest class has
10 or 50 times the samples of the smallest), on fixed features (20 principal components):

1. pseudo-labels from a prototype head's logits by balanced Sinkhorn (every cluster forced
   to the same size), by P²OT (:func:`mmopt.ot.progressive_partial_ot`: only a fraction
   ``rho`` of the mass, cluster sizes only KL-pulled to uniform) and by SP²OT
   (:func:`mmopt.ot.sp2ot_pseudo_labels`: P²OT plus a semantic graph of the features, by
   majorization-minimization), scored on the samples each method trusts, against ``rho``;
2. the clustering accuracy (Hungarian-matched) and NMI of
   :class:`mmopt.ot.ImbalancedOTClustering` against k-means and a Gaussian mixture.
"""

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score
from sklearn.mixture import GaussianMixture

from mmopt.ot import (
    ImbalancedOTClustering,
    progressive_partial_ot,
    sinkhorn,
    sp2ot_pseudo_labels,
)

warnings.simplefilter("ignore")  # convergence notes of the inner solves


def long_tailed_digits(ratio, seed=0, largest=150):
    """Class c keeps largest * ratio**(-c / 9) samples (a geometric long tail)."""
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    counts = np.maximum((largest * ratio ** (-np.arange(10) / 9.0)).astype(int), 2)
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:counts[c]] for c in range(10)]
    )
    Z = PCA(20, random_state=seed).fit_transform(X[keep] / 16.0)
    return Z, y[keep]


def matched(truth, labels):
    """Hungarian matching of clusters to classes: accuracy and the matched labels."""
    k = max(truth.max(), labels.max()) + 1
    table = np.zeros((k, k))
    np.add.at(table, (truth, labels), 1)
    rows, cols = linear_sum_assignment(-table)
    mapping = np.empty(k, dtype=int)
    mapping[cols] = rows
    return table[rows, cols].sum() / truth.size, mapping[labels]


# %%
# Pseudo-labels against rho
# -------------------------
# The logits come from a prototype head at the k-means centroids (a stand-in for a
# network's output early in training).
rhos = [0.2, 0.4, 0.6, 0.8, 1.0]
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
for ax, ratio in zip(axes, (10, 50)):
    Z, y = long_tailed_digits(ratio)
    n, k = Z.shape[0], 10
    centers = KMeans(k, n_init=4, random_state=0).fit(Z).cluster_centers_
    D = ((Z[:, None] - centers[None]) ** 2).sum(-1)
    logits = -D / D.min(axis=1).mean()
    C = -(logits - np.log(np.exp(logits).sum(1, keepdims=True)))
    balanced = sinkhorn([], [], C, reg=0.1).plan.argmax(axis=1)
    acc_balanced = matched(y, balanced)[0]
    curves = {"P²OT": [], "SP²OT": []}
    for rho in rhos:
        p2 = progressive_partial_ot(C, rho, gamma=1.0, reg=0.1)
        trusted = p2.transported >= 0.5
        acc, labels = matched(y, p2.plan.argmax(axis=1))
        curves["P²OT"].append((labels == y)[trusted].mean())
        sp = sp2ot_pseudo_labels(logits, Z, rho, lam=0.5 * n * (1 - rho) / 20.0,
                                 n_neighbors=10, max_iter=20)
        acc, labels = matched(y, sp.labels)
        curves["SP²OT"].append((labels == y)[sp.mask].mean())
    ax.axhline(acc_balanced, color="gray", ls="--", label="balanced Sinkhorn (all samples)")
    for name, values in curves.items():
        ax.plot(rhos, values, "o-", label=f"{name} (trusted samples)")
    ax.set(title=f"imbalance ratio {ratio} (n = {n})", xlabel="rho")
    print(f"ratio {ratio}: balanced Sinkhorn accuracy {acc_balanced:.3f}; "
          + "; ".join(f"{name} {np.round(v, 3).tolist()}" for name, v in curves.items()))
axes[0].set_ylabel("pseudo-label accuracy")
axes[0].legend(fontsize=8)
fig.tight_layout()

# %%
# Clustering: ImbalancedOTClustering, k-means, Gaussian mixture
# --------------------------------------------------------------
rows = []
for ratio in (10, 50):
    for seed in range(3):
        Z, y = long_tailed_digits(ratio, seed=seed)
        models = {
            "ImbalancedOTClustering": ImbalancedOTClustering(10, random_state=seed),
            "KMeans": KMeans(10, n_init=10, random_state=seed),
            "GaussianMixture": GaussianMixture(10, covariance_type="diag",
                                               random_state=seed),
        }
        for name, model in models.items():
            labels = model.fit_predict(Z)
            acc, mapped = matched(y, labels)
            tail = np.mean([(mapped == y)[y == c].mean() for c in (7, 8, 9)])
            rows.append((ratio, name, acc, normalized_mutual_info_score(y, labels), tail))

print(f"{'ratio':>5}  {'method':<24}{'accuracy':>16}{'NMI':>16}{'tail recall':>16}")
for ratio in (10, 50):
    for name in ("ImbalancedOTClustering", "KMeans", "GaussianMixture"):
        sel = np.array([r[2:] for r in rows if r[0] == ratio and r[1] == name])
        mean, std = sel.mean(0), sel.std(0)
        print(f"{ratio:>5}  {name:<24}"
              + "".join(f"{m:>10.3f} ± {s:.3f}" for m, s in zip(mean, std)))

fig, ax = plt.subplots(figsize=(6, 4))
names = ("ImbalancedOTClustering", "KMeans", "GaussianMixture")
for i, ratio in enumerate((10, 50)):
    means = [np.mean([r[2] for r in rows if r[0] == ratio and r[1] == nm]) for nm in names]
    ax.bar(np.arange(3) + 0.4 * i, means, width=0.4, label=f"ratio {ratio}")
ax.set_xticks(np.arange(3) + 0.2, names, fontsize=8)
ax.set(ylabel="accuracy (Hungarian-matched)", title="clustering long-tailed digits")
ax.legend()
fig.tight_layout()
plt.show()
