"""SP2OT MM steps and time with and without Anderson acceleration, on pseudo-label problems
from a k-means head's logits on long-tailed digits and make_blobs (the figures quoted in
docs/user_guide/unbalanced_ot.rst). Usage: ``python benchmarks/sp2ot_anderson.py``; prints
one markdown row per problem: data, seed, rho, MM steps plain / AA, seconds plain / AA,
F(AA) - F(plain), statuses."""

import time
import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, make_blobs
from sklearn.decomposition import PCA

from mmopt.ot import SP2OT, SP2OTProblem, semantic_graph
from mmopt.ot.sp2ot import _log_softmax_cost


def lt_digits(ratio, seed):
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        keep.extend(rng.choice(idx, int(150 * ratio ** (-c / 9)), replace=False))
    keep = np.array(keep)
    return PCA(20, random_state=seed).fit_transform(X[keep]), y[keep], 10


def blobs(seed):
    sizes = [400, 120, 40, 20, 10]
    X, y = make_blobs(sizes, n_features=5, cluster_std=2.0, random_state=seed)
    return X, y, 5



def main():
    warnings.simplefilter("ignore")
    print("| data | seed | rho | steps | steps AA | s | s AA | F(AA) - F | status |")
    print("|---|---|---|---|---|---|---|---|---|")
    cases = [("digits LT10", lambda s: lt_digits(10, s)),
             ("digits LT50", lambda s: lt_digits(50, s)), ("blobs k5 LT40", blobs)]
    for name, make in cases:
        for seed in (0, 1, 2):
            X, y, k = make(seed)
            km = KMeans(k, n_init=1, random_state=seed).fit(X)
            d2 = ((X[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)
            logits = -d2 / np.median(d2)
            C = _log_softmax_cost(logits)
            S = semantic_graph(X, 20)
            for rho in (0.3, 0.7):
                out = {}
                for aa in (False, True):
                    problem = SP2OTProblem(C, S, rho=rho)
                    t = time.perf_counter()
                    res = SP2OT(anderson=aa).solve(problem)
                    out[aa] = (res.nit, time.perf_counter() - t, res.fun, res.status)
                plain, accelerated = out[False], out[True]
                print(f"| {name} | {seed} | {rho} | {plain[0]} | {accelerated[0]} | "
                      f"{plain[1]:.3g} | {accelerated[1]:.3g} | "
                      f"{accelerated[2] - plain[2]:.2e} | {plain[3]}/{accelerated[3]} |",
                      flush=True)


if __name__ == "__main__":
    main()
