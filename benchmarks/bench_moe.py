"""Distributed vs global mixture-of-experts fits: wall time, parameter error and ARI.

Simulated data (``make_moe_regression``, K = 3); the global fit is :class:`MixtureOfExperts`
on all the data in this process, the distributed one :class:`DistributedMixtureOfExperts`
with one shard per worker of a 2-worker ``dask.distributed.LocalCluster`` (through
``joblib.parallel_config(backend="dask")``). Both use the same number of starts and the same
tolerance. Parameter error: the Euclidean distance between the true and the fitted
``(intercept, coef, sigma)`` of all experts after Hungarian matching; ARI: of the most
probable expert of each sample (posterior) against the simulated labels.

Usage: ``python benchmarks/bench_moe.py [n_samples ...] [--seeds 0 1 2]``, or
``python benchmarks/run.py --only moe`` (n = 10^5, seeds 0-2; ``--quick``: 2 x 10^4, seed 0).
"""

from __future__ import annotations

import argparse
import time
import warnings

import joblib
import numpy as np
from _common import markdown_table
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from mmopt.datasets import make_moe_regression
from mmopt.mm import DistributedMixtureOfExperts, MixtureOfExperts


def parameter_error(model, truth) -> float:
    fitted = np.column_stack([model.intercept_, model.coef_, np.sqrt(model.variances_)])
    true = np.column_stack([truth.intercept, truth.coef, truth.sigma])
    cost = ((fitted[:, None] - true[None]) ** 2).sum(axis=2)
    return float(np.sqrt(cost[linear_sum_assignment(cost)].sum()))


def run_case(n_samples: int, seed: int, *, n_features: int = 2, n_init: int = 3) -> dict:
    X, y, truth = make_moe_regression(n_samples, n_features, 3, noise=0.3, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        global_fit = MixtureOfExperts(3, n_init=n_init, random_state=seed).fit(X, y)
        t_global = time.perf_counter() - start
        start = time.perf_counter()
        with joblib.parallel_config(backend="dask"):
            dist_fit = DistributedMixtureOfExperts(
                3, n_shards=2, n_init=n_init, n_support=1000, random_state=seed).fit(X, y)
        t_dist = time.perf_counter() - start
    labels = truth.labels
    return {
        "n": n_samples,
        "seed": seed,
        "global s": t_global,
        "distributed s": t_dist,
        "time ratio": t_dist / t_global,
        "param err global": parameter_error(global_fit, truth),
        "param err dist": parameter_error(dist_fit, truth),
        "ARI global": adjusted_rand_score(labels, global_fit.predict_expert(X, y)),
        "ARI dist": adjusted_rand_score(labels, dist_fit.predict_expert(X, y)),
        "loglik global": global_fit.score(X, y),
        "loglik dist": dist_fit.score(X, y),
        "reduction iters": dist_fit.n_iter_,
    }


def _table(sizes, seeds) -> str:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster):
        rows = [run_case(n, seed) for n in sizes for seed in seeds]
    return markdown_table(rows)


def run(quick: bool = False) -> str:
    """The BENCHMARKS.md section (``benchmarks/run.py``)."""
    sizes, seeds = ([20_000], [0]) if quick else ([100_000], [0, 1, 2])
    return (
        "## Distributed mixtures of experts vs one global EM fit\n\n"
        "Global: one `MixtureOfExperts(3, n_init=3)` on all rows in the driver; distributed: "
        "`DistributedMixtureOfExperts(3, n_shards=2, n_init=3, n_support=1000)` on a 2-worker "
        "`LocalCluster` (processes) through `joblib.parallel_config(backend=\"dask\")`, data "
        "passed as NumPy arrays (so the driver holds every row: its memory is not measured "
        "here). Parameter error after Hungarian matching of the experts; ARI of the most "
        "probable expert. n = 10^6: `python benchmarks/bench_moe.py 1000000`.\n\n"
        + _table(sizes, seeds)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sizes", nargs="*", type=int, default=[100_000])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    args = parser.parse_args()
    print(_table(args.sizes, args.seeds))


if __name__ == "__main__":
    main()
