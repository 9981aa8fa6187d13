"""Unbalanced and entropic partial OT against POT (when installed), time to equal accuracy.

Accuracy is solver-independent: the L1 norm of the dual gradient (unbalanced: ``||P 1 -
a e^{-f/rho}||_1 + ||P^T 1 - b e^{-g/rho}||_1`` from POT's logged scalings); for partial OT
(whose POT solver returns no potentials) the L1 distance of the plan to a reference plan
(mmopt's at tol 1e-12, untimed). mmopt runs
to ``tol``; POT runs with a growing iteration budget (x1.5 per try, stopThr 0) until it is
at least as accurate; its time is that of the first run that is, or its last try when none
is within the cap.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from _common import gaussian_clouds, markdown_table, timed
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.datasets import (
    load_breast_cancer,
    load_digits,
    load_wine,
    make_blobs,
    make_classification,
)
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from mmopt.ot import ImbalancedOTClustering, partial_ot, unbalanced_sinkhorn

try:
    import ot as pot
except ImportError:  # POT is an optional benchmark extra
    pot = None


def _clouds(n, seed=0):
    return gaussian_clouds(n, seed, shift=1.0, mass_b=1.5)


def _pot_unbalanced_error(a, b, reg, reg_m, P, log):
    # u = exp(f / reg) with POT's kernel a b^T exp(-C / reg): f = reg log u.
    f, g = reg * log["logu"], reg * log["logv"]
    return float(np.abs(P.sum(1) - a * np.exp(-f / reg_m)).sum()
                 + np.abs(P.sum(0) - b * np.exp(-g / reg_m)).sum())


def run_partial(a, C, regs, quick, masses=(0.5, 0.9)):
    """Entropic partial OT rows: mmopt to tol 1e-9, POT's log-domain Dykstra iterations
    until its plan is as close to the reference as mmopt's."""
    b = np.full(C.shape[1], 1.0 / C.shape[1])
    rows = []
    for mass, reg in [(m, r) for m in masses for r in regs]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = partial_ot(a, b, C, mass, reg=reg, tol=1e-12, max_iter=200_000).plan
        res, t_mm = timed(lambda reg=reg, mass=mass: partial_ot(
            a, b, C, mass, reg=reg, tol=1e-9, max_iter=100_000))
        error = float(np.abs(res.plan - reference).sum())
        # Iterations: the final stage's, plus those of the epsilon-scaling stages.
        stages = sum(nit for _, nit in res.eps_stages)
        row = {"problem": f"entropic partial (m={mass})", "n": C.shape[0], "reg": reg,
               "mmopt s": t_mm, "mmopt iters": f"{res.nit} + {stages}" if stages else res.nit,
               "mmopt error": error, "mmopt status": res.status}
        if pot is not None:
            def run_pot(budget, reg=reg, mass=mass):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return pot.partial.entropic_partial_wasserstein_logscale(
                        a, b, C, reg, m=mass, numItermax=budget, stopThr=0.0)

            t_pot, iters, err, ok = _ladder(
                run_pot, lambda P, ref=reference: float(np.abs(P - ref).sum()), error, 5, 20_000,
                30.0 if quick else 150.0,
            )
            row.update({"POT s": t_pot, "POT iters": iters, "POT error": err,
                        "ratio mmopt/POT": t_mm / t_pot if ok else float("nan"),
                        "POT reached": ok})
        rows.append(row)
    return rows


def _ladder(run_pot, error_of, target, start, cap, time_cap):
    """POT with budgets start, 1.5 start, ... until its error <= target; (time, iters,
    error, reached)."""
    budget, spent = start, 0.0
    while True:
        out, elapsed = timed(lambda b=budget: run_pot(b))
        spent += elapsed
        error = error_of(out)
        if error <= target:
            return elapsed, budget, error, True
        if budget >= cap or spent > time_cap or not math.isfinite(error):
            return elapsed, budget, error, False
        budget = min(int(budget * 1.5) + 1, cap)


def run(quick: bool = False, regs=None) -> str:
    n = 200 if quick else 1000
    if regs is None:
        regs = (1e-2, 1e-3) if quick else (1e-2, 1e-3, 1e-4)
    a, b, C = _clouds(n)
    reg_m = 1.0
    rows = []
    for reg in regs:
        res, t_mm = timed(lambda reg=reg: unbalanced_sinkhorn(a, b, C, reg, reg_m, tol=1e-9,
                                                       max_iter=100_000))
        row = {"problem": "unbalanced", "n": n, "reg": reg, "mmopt s": t_mm,
               "mmopt iters": res.nit, "mmopt error": res.optimality_error,
               "mmopt status": res.status}
        if pot is not None:
            def run_pot(budget, reg=reg):
                return pot.unbalanced.sinkhorn_unbalanced(
                    a, b, C, reg, reg_m, stopThr=0.0, numItermax=budget, log=True
                )

            t_pot, iters, err, ok = _ladder(
                run_pot, lambda out, reg=reg: _pot_unbalanced_error(a, b, reg, reg_m, *out),
                res.optimality_error, 100, 200_000, 60.0 if quick else 300.0,
            )
            row.update({"POT s": t_pot, "POT iters": iters, "POT error": err,
                        "ratio mmopt/POT": t_mm / t_pot if ok else float("nan"),
                        "POT reached": ok})
        rows.append(row)
    rows += run_partial(a, C, regs, quick)
    return (
        "## Unbalanced and partial OT\n\n"
        f"2-D Gaussian clouds, n = {n}, squared Euclidean cost / max; unbalanced: "
        "a uniform of mass 1, b of mass 1.5, reg_m = 1 (POT's default reg_type 'kl'); "
        "partial: uniform masses, m = 0.5 and 0.9 ('a + b' iterations: the final "
        "stage's and the epsilon-scaling stages'), POT's log-domain "
        "`entropic_partial_wasserstein_logscale` (its default scaling variant does the "
        "same iterations at O(n^3) each: a diagonal matrix product). Errors as in the "
        "module docstring; "
        "'POT reached' is False when POT did not get there within its cap (then its time "
        "is a lower bound).\n\n" + markdown_table(rows)
        # The clustering table has no timings: its seeds run in parallel.
        + "\n\n" + run_clustering(quick, n_jobs=min(5, os.cpu_count() or 1))
    )



# ----------------------------------------------------------------------------- clustering
def _long_tail(X, y, ratio, seed, largest):
    """Class c (by frequency rank) keeps ``largest * ratio**(-c / (k - 1))`` samples (or
    all it has); returns the subset, its labels (0 the largest class) and the original
    class of each rank."""
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
    return X[keep], relabel[np.searchsorted(classes, y[keep])], classes[order]


def _datasets(seed):
    X, y = load_digits(return_X_y=True)
    for ratio in (10, 50):
        Xs, ys, _ = _long_tail(X / 16.0, y, ratio, seed, 150)
        yield f"digits LT{ratio}", PCA(20, random_state=seed).fit_transform(Xs), ys, 10
    X, y = load_breast_cancer(return_X_y=True)
    # The seed picks the larger class: malignant (all its 212 samples, the smallest 35
    # benign: ratio 6) or benign (350 and 35 malignant: ratio 10), two different problems.
    Xs, ys, ranks = _long_tail(X, y, 10, seed, 350)
    head = "malignant" if ranks[0] == 0 else "benign"
    sizes = ":".join(str(c) for c in np.bincount(ys))
    yield f"breast_cancer, {head} head ({sizes})", StandardScaler().fit_transform(Xs), ys, 2
    X, y = make_classification(
        2000, 10, n_informative=6, n_redundant=0, n_classes=6, n_clusters_per_class=1,
        class_sep=2.0, random_state=seed,
    )
    Xs, ys, _ = _long_tail(X, y, 20, seed, 300)
    yield "make_classification LT20", Xs, ys, 6
    # Not used to choose the defaults (held out): wine, Gaussian blobs.
    X, y = load_wine(return_X_y=True)
    Xs, ys, _ = _long_tail(X, y, 5, seed, 71)
    yield "wine LT5", StandardScaler().fit_transform(Xs), ys, 3
    X, y = make_blobs(3000, n_features=8, centers=8, cluster_std=2.5, random_state=seed)
    Xs, ys, _ = _long_tail(X, y, 20, seed, 200)
    yield "make_blobs LT20", Xs, ys, 8


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
        # The same heads on balanced pseudo-labels: all the mass, sizes held uniform.
        "same head, balanced Sinkhorn, lam=4": ImbalancedOTClustering(
            k, rho0=1.0, gamma=1e6, random_state=seed),
        "same head, balanced Sinkhorn, lam=0": ImbalancedOTClustering(
            k, lam=0.0, rho0=1.0, gamma=1e6, random_state=seed),
        "KMeans": KMeans(k, n_init=10, random_state=seed),
        "GaussianMixture": GaussianMixture(k, covariance_type="diag", random_state=seed),
    }


def _clustering_scores(seed):
    """[((data, n, method), (accuracy, NMI, tail recall)), ...] for one seed."""
    out = []
    for name, X, y, k in _datasets(seed):
        tail = np.arange(k)[-max(1, k // 3):]
        for method, model in _models(k, seed).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                labels = model.fit_predict(X)
            acc, mapped = _matched(y, labels)
            recall = np.mean([(mapped == y)[y == c].mean() for c in tail])
            out.append(((name, X.shape[0], method),
                        (acc, normalized_mutual_info_score(y, labels), recall)))
    return out


def run_clustering(quick: bool = False, n_jobs: int = 1) -> str:
    """Accuracy (Hungarian-matched), NMI and tail-class recall, mean ± sd over seeds
    (``n_jobs`` processes, one seed each)."""
    seeds = range(3 if quick else 5)
    if n_jobs > 1:
        with ProcessPoolExecutor(n_jobs) as pool:
            per_seed = list(pool.map(_clustering_scores, seeds))
    else:
        per_seed = [_clustering_scores(seed) for seed in seeds]
    scores = {}
    for key, values in (item for items in per_seed for item in items):
        scores.setdefault(key, []).append(values)
    rows = []
    for (name, n, method), values in scores.items():
        mean, sd = np.mean(values, axis=0), np.std(values, axis=0)
        rows.append({"data": name, "n": n, "seeds": len(values), "method": method,
                     **{f"{key}": f"{m:.3f} ± {s:.3f}"
                        for key, m, s in zip(("accuracy", "NMI", "tail recall"), mean, sd)}})
    return (
        "### Imbalanced clustering\n\n"
        f"{len(seeds)} seeds (subsample, PCA and model seeds). Long-tailed (LT r: the "
        "largest class r times the smallest, geometric) subsets: digits (20 principal "
        "components), breast_cancer (standardized; which class is the larger depends on "
        "the seed: two rows), make_classification (6 classes, 10 features); held out (not "
        "used to choose the defaults): wine (standardized), make_blobs (8 blobs, 8 "
        "features). Mean ± sd over the seeds of each row. Tail recall: mean recall of "
        "the smallest third of the classes after Hungarian matching. 'balanced "
        "Sinkhorn': the same head and schedule with all the mass and the cluster "
        "sizes held uniform (rho0 = 1, gamma = 1e6).\n\n" + markdown_table(rows)
    )


if __name__ == "__main__":
    print(run(quick=True))
