"""Distributed vs global mixture-of-experts fits: wall time, parameter error, ARI, driver memory.

Simulated data (the model of ``make_moe_regression``, K = 3, two features), drawn in two
halves of ``n / 2`` rows each. The distributed fit is :class:`DistributedMixtureOfExperts`
on a 2-worker ``dask.distributed.LocalCluster`` (processes, one thread each) given a
``dask.array`` whose two row chunks are the halves, drawn and held by the workers
(``persist``) before the clock starts: the driver never holds a data row. The global fit is
one :class:`MixtureOfExperts` on the same rows, assembled in the driver, timed with one
and, where the environment allows, two BLAS/OpenMP threads (threadpoolctl); each repeat
keeps the faster. Both use the same number of starts and the same tolerance.

Timing protocol: per case (n, seed), ``repeats`` pairs of fits on the same data (3 up to
10^5 rows, 2 above; ``MMOPT_BENCH_MOE_REPEATS``), the global and the distributed fit
interleaved in alternating order; the table shows the median of each, the ratio of the
medians and the ratio of every repeat. Every fit is a new estimator: nothing is cached
between repeats (the distributed fit's tasks are not pure, so Dask recomputes them). All
cases run on one warm cluster, started and warmed up (workers import mmopt) before the
first case, as a user's long-lived cluster would be: the workers' start and import time is
not part of a fit.

Parameter error: the Euclidean distance between the true and the fitted ``(intercept, coef,
sigma)`` of all experts after Hungarian matching; ARI: of the most probable expert of each
sample (posterior) against the simulated labels, of the last repeat's fits (all repeats
give the same fits). Driver peak: the peak of the driver's Python/NumPy allocations during
one more, untimed distributed fit (``tracemalloc``), which holds only the local models and
the support points.

Usage: ``python benchmarks/bench_moe.py [n_samples ...] [--seeds 0 1 2] [--repeats 3]``, or
``python benchmarks/run.py --only moe`` (n = 10^5, seeds 0-2; with the environment variable
``MMOPT_BENCH_MOE_LARGE=1`` also n = 10^6; ``--quick``: 2 x 10^4, seed 0), then the
accuracy of both fits on other simulated data (other K, dimensions, noise, gates, shard
counts; not with ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
import warnings

import numpy as np
from _common import measured_table
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from mmopt.datasets import make_moe_regression
from mmopt.mm import DistributedMixtureOfExperts, MixtureOfExperts

N_FEATURES, N_EXPERTS, N_INIT, N_SUPPORT = 2, 3, 3, 1000


def sample_chunk(truth, n_rows: int, seed: int, chunk: int):
    """``n_rows`` samples of the mixture ``truth`` (its own stream per seed and chunk)."""
    rng = np.random.default_rng([seed, chunk])
    X = rng.standard_normal((n_rows, truth.coef.shape[1]))
    logits = X @ truth.gate_coef.T + truth.gate_intercept
    gates = np.exp(logits - logits.max(axis=1, keepdims=True))
    gates /= gates.sum(axis=1, keepdims=True)
    labels = np.minimum((rng.random((n_rows, 1)) > np.cumsum(gates, axis=1)).sum(axis=1),
                        len(truth.sigma) - 1)
    means = np.einsum("ij,ij->i", X, truth.coef[labels]) + truth.intercept[labels]
    y = means + truth.sigma[labels] * rng.standard_normal(n_rows)
    return X, y, labels


def parameter_error(model, truth) -> float:
    fitted = np.column_stack([model.intercept_, model.coef_, np.sqrt(model.variances_)])
    true = np.column_stack([truth.intercept, truth.coef, truth.sigma])
    cost = ((fitted[:, None] - true[None]) ** 2).sum(axis=2)
    return float(np.sqrt(cost[linear_sum_assignment(cost)].sum()))


def _dask_data(client, truth, n_samples: int, seed: int):
    """The two halves as dask arrays drawn on the workers and kept there."""
    import dask
    import dask.array as da
    from distributed import wait

    half = n_samples // 2
    parts = [dask.delayed(sample_chunk, pure=True)(truth, half, seed, i) for i in range(2)]
    dX = da.concatenate([da.from_delayed(p[0], (half, N_FEATURES), float) for p in parts])
    dy = da.concatenate([da.from_delayed(p[1], (half,), float) for p in parts])
    dX, dy = client.persist([dX, dy])
    wait([dX, dy])
    return dX, dy


def _new_distributed(seed: int):
    return DistributedMixtureOfExperts(N_EXPERTS, n_init=N_INIT, n_support=N_SUPPORT,
                                       random_state=seed)


def fit_distributed(client, dX, dy, seed: int):
    """The distributed fit, its wall time, its CPU critical path (the driver's CPU time plus
    the busiest worker's) and each worker's CPU time, busiest first."""
    workers_before = client.run(time.process_time)
    cpu = time.process_time()
    start = time.perf_counter()
    fit = _new_distributed(seed).fit(dX, dy)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    workers_after = client.run(time.process_time)
    per_worker = sorted((workers_after[w] - workers_before[w] for w in workers_before),
                        reverse=True)
    return fit, elapsed, cpu + per_worker[0], per_worker


def driver_peak(dX, dy, seed: int) -> int:
    """The driver's allocation peak (bytes) during a distributed fit run under
    ``tracemalloc`` (which slows every allocation of the driver, where the scheduler runs,
    so it stays off the clock)."""
    tracemalloc.start()
    _new_distributed(seed).fit(dX, dy)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def fit_global(X, y, seed: int, threads: int):
    """The global fit with ``threads`` BLAS and OpenMP threads (threadpoolctl): the model
    and ``(wall s, CPU s, threads in effect)``."""
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(threads):
        in_effect = max((pool["num_threads"] for pool in threadpool_info()
                         if pool["user_api"] == "blas"), default=1)
        cpu = time.process_time()
        start = time.perf_counter()
        fit = MixtureOfExperts(N_EXPERTS, n_init=N_INIT, random_state=seed).fit(X, y)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    return fit, (elapsed, cpu, in_effect)


def repeats_for(n_samples: int) -> int:
    """Timed repeats per case: ``MMOPT_BENCH_MOE_REPEATS``, else 3 up to 10^5 rows (fits of
    about a second, where one-off noise is ~10%) and 2 above."""
    value = os.environ.get("MMOPT_BENCH_MOE_REPEATS", "")
    if value:
        return max(1, int(value))
    return 3 if n_samples <= 100_000 else 2


def _spread(values) -> str:
    return " / ".join(f"{v:.3g}" for v in values)


def run_case(client, n_samples: int, seed: int, repeats: int | None = None) -> dict:
    """One (n, seed) case: ``repeats`` timed pairs of fits on the same data, the global and
    the distributed fit interleaved (the global first on even repeats, last on odd ones, so
    that neither always runs right after the other), then the medians."""
    repeats = repeats_for(n_samples) if repeats is None else repeats
    truth = make_moe_regression(2, N_FEATURES, N_EXPERTS, noise=0.3, random_state=seed)[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dX, dy = _dask_data(client, truth, n_samples, seed)
        chunks = [sample_chunk(truth, n_samples // 2, seed, i) for i in range(2)]
        X = np.vstack([c[0] for c in chunks])
        y = np.concatenate([c[1] for c in chunks])
        labels = np.concatenate([c[2] for c in chunks])
        del chunks
        dist, glob = [], []
        two_threads = _two_threads_possible()
        for repeat in range(repeats):
            for which in (("global", "dist") if repeat % 2 == 0 else ("dist", "global")):
                if which == "dist":
                    dist.append(fit_distributed(client, dX, dy, seed))
                    continue
                # One thread, then two where the environment lets BLAS have two: the
                # global fit keeps the faster (its kernels are serial; BLAS and k-means's
                # OpenMP are what a second thread can speed up).
                timings = {1: fit_global(X, y, seed, 1)}
                if two_threads:
                    timings[2] = fit_global(X, y, seed, 2)
                glob.append(timings)
        peak = driver_peak(dX, dy, seed)
        del dX, dy
    global_fit = glob[-1][1][0]
    dist_fit = dist[-1][0]
    # Per repeat, the faster global fit's (wall s, CPU s, threads).
    fastest = [min(g.values(), key=lambda fit_timing: fit_timing[1][0])[1] for g in glob]
    t_global, cpu_global = [f[0] for f in fastest], [f[1] for f in fastest]
    t_dist, cpu_dist = [d[1] for d in dist], [d[2] for d in dist]
    two = [g[2][1][0] for g in glob if 2 in g]
    workers = np.median([d[3] for d in dist], axis=0)
    return {
        "n": n_samples,
        "seed": seed,
        "repeats": repeats,
        "global s 1 thread": float(np.median([g[1][1][0] for g in glob])),
        "global s 2 threads": float(np.median(two)) if two else None,
        "distributed s": float(np.median(t_dist)),
        "time ratio": float(np.median(t_dist) / np.median(t_global)),
        "ratio per repeat": _spread(np.divide(t_dist, t_global)),
        "global CPU s": float(np.median(cpu_global)),
        "dist CPU path s": float(np.median(cpu_dist)),
        "CPU ratio": float(np.median(cpu_dist) / np.median(cpu_global)),
        "worker CPU s": _spread(workers),
        "param err global": parameter_error(global_fit, truth),
        "param err dist": parameter_error(dist_fit, truth),
        "ARI global": adjusted_rand_score(labels, global_fit.predict_expert(X, y)),
        "ARI dist": adjusted_rand_score(labels, dist_fit.predict_expert(X, y)),
        "loglik global": global_fit.score(X, y),
        "loglik dist": dist_fit.score(X, y),
        "EM iters global": global_fit.n_iter_,
        "driver peak MiB": peak / 2**20,
        "data MiB": (X.nbytes + y.nbytes) / 2**20,
        "load": os.getloadavg()[0],
    }


def _two_threads_possible() -> bool:
    """Whether BLAS may run two threads here (not pinned to one by the environment)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(2):
        return any(pool["num_threads"] >= 2 for pool in threadpool_info()
                   if pool["user_api"] == "blas")


# glibc's allocator gives the pages of freed large blocks back to the system as soon as the
# free space passes its trim threshold (and maps blocks above its mmap threshold afresh):
# every large temporary of an EM iteration then page-faults its memory in again. With the
# NumPy EM of before mmopt_ext._moe that cost about as much CPU as the arithmetic (674,000
# minor faults and 3.6 s of CPU for a 3-start fit on 5 x 10^4 rows, against 3,200 faults and
# 2.0 s with the thresholds below); the compiled EM allocates one (n, K) array per
# iteration, so the thresholds matter far less now. Dask's nannies start their workers with
# MALLOC_TRIM_THRESHOLD_=65536. Both fits here run with the same, larger thresholds: the
# workers through their environment, the driver (global fit) through mallopt. A worker runs
# its task in a thread, whose allocations go to a separate glibc arena made of 64 MiB heaps
# that are unmapped as soon as they empty: at 5 x 10^5 rows per shard that was again 22x the
# page faults of the main thread (225,000 against 10,000 in 5 EM iterations, NumPy EM).
# MALLOC_ARENA_MAX=1 sends the task's allocations to the main arena, where the driver's
# global fit makes its own.
MALLOC_TRIM_THRESHOLD = 2**30
MALLOC_MMAP_THRESHOLD = 2**25  # glibc's largest
WORKER_ENVIRON = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1,
                  "MALLOC_TRIM_THRESHOLD_": MALLOC_TRIM_THRESHOLD,
                  "MALLOC_MMAP_THRESHOLD_": MALLOC_MMAP_THRESHOLD, "MALLOC_ARENA_MAX": 1}


def _driver_malloc_thresholds() -> bool:
    """The workers' allocator thresholds in this process (glibc only): True if set."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)
                and mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD))


# Dask's background work on the two cores the fits share: each worker's statistical
# profiler samples the task thread's stack every 10 ms, every process's event loop ticks
# every 20 ms, the scheduler steals work every 100 ms (the fits are pinned, there is nothing
# to steal) and samples the system every 500 ms, the nannies check memory every 100 ms.
# Measured (10^5 rows, seed 0, loaded machine, same process): driver CPU 0.17-0.24 s ->
# 0.06 s, each worker 1.07-1.19 s -> 0.95-1.00 s per fit (a shard's fit alone: ~1.0 s).
# MMOPT_BENCH_MOE_DASK_DEFAULTS=1 keeps Dask's defaults.
QUIET_DASK = {"distributed.worker.profile.enabled": False,
              "distributed.admin.tick.interval": "1s",
              "distributed.scheduler.work-stealing": False,
              "distributed.admin.system-monitor.interval": "2s",
              "distributed.worker.memory.monitor-interval": "1s"}


def _dask_settings() -> dict:
    quiet = os.environ.get("MMOPT_BENCH_MOE_DASK_DEFAULTS", "") != "1"
    return {"distributed.nanny.pre-spawn-environ": WORKER_ENVIRON,
            **(QUIET_DASK if quiet else {})}


def _table(sizes, seeds, repeats: int | None = None) -> str:
    import dask
    from distributed import Client, LocalCluster

    if not _driver_malloc_thresholds():
        print("warning: could not set the driver's malloc thresholds (not glibc?)", flush=True)
    with dask.config.set(_dask_settings()), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        # Warm-up: the workers import mmopt and scikit-learn on their first task.
        run_case(client, 4000, 0, repeats=1)
        return measured_table(run_case, [(client, n, seed, repeats) for n in sizes
                                         for seed in seeds])


OTHER_N = 40_000
# Other data (accuracy only): (n_experts, n_features, noise, gate_scale, n_shards).
OTHER_DATA = [(2, 1, 0.3, 4.0, 2), (3, 5, 0.3, 4.0, 2), (4, 2, 0.3, 4.0, 2),
              (3, 2, 0.1, 4.0, 2), (3, 2, 0.6, 4.0, 2), (3, 2, 0.3, 1.5, 2),
              (5, 3, 0.3, 4.0, 2), (3, 2, 0.3, 4.0, 4)]


def other_data_row(n_samples: int, config, seed: int) -> dict:
    """Global and distributed fits (shards in this process) on one other configuration."""
    K, d, noise, gate_scale, n_shards = config
    X, y, truth = make_moe_regression(n_samples, d, K, noise=noise, gate_scale=gate_scale,
                                      random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        global_fit = MixtureOfExperts(K, n_init=N_INIT, random_state=seed).fit(X, y)
        dist_fit = DistributedMixtureOfExperts(K, n_shards=n_shards, n_init=N_INIT,
                                               n_support=N_SUPPORT, n_jobs=1,
                                               random_state=seed).fit(X, y)
    err = [parameter_error(m, truth) for m in (global_fit, dist_fit)]
    ari = [adjusted_rand_score(truth.labels, m.predict_expert(X, y))
           for m in (global_fit, dist_fit)]
    return {"K": K, "features": d, "noise": noise, "gate scale": gate_scale,
            "shards": n_shards, "seed": seed, "param err global": err[0],
            "param err dist": err[1], "err ratio": err[1] / err[0],
            "ARI global": ari[0], "ARI dist": ari[1], "ARI gap": ari[0] - ari[1]}


def other_data_table(n_samples: int, seeds) -> str:
    return measured_table(other_data_row,
                          [(n_samples, config, seed) for config in OTHER_DATA for seed in seeds])


def _section(table: str, other: str | None = None) -> str:
    return (
        "## Distributed mixtures of experts vs one global EM fit\n\n"
        f"Global: one `MixtureOfExperts({N_EXPERTS}, n_init={N_INIT})` on all rows in the "
        "driver, timed with 1 and with 2 BLAS and OpenMP threads (threadpoolctl; a dash where the "
        "environment kept BLAS at one thread), each repeat keeping the faster. Timing: per "
        "row, `repeats` pairs of fits on the same data, global and distributed interleaved "
        "in alternating order, every fit a new estimator (nothing cached); times are the "
        "medians over the repeats, time ratio the distributed median over the global one "
        "(ratio per repeat: each repeat's), CPU ratio likewise with CPU times. All rows run "
        "on one warm cluster (started, workers' imports done, before the first row), as a "
        "user's long-lived cluster. Distributed: "
        "`DistributedMixtureOfExperts("
        f"{N_EXPERTS}, n_init={N_INIT}, n_support={N_SUPPORT})` on a 2-worker "
        "`LocalCluster` (processes, one thread each) given a "
        "`dask.array` whose two row chunks (the shards) were drawn and persisted on the "
        "workers before the clock starts. "
        + ("The cluster runs with Dask's default settings. "
           if os.environ.get("MMOPT_BENCH_MOE_DASK_DEFAULTS", "") == "1" else
           "Dask's background work is turned down (`QUIET_DASK` in `benchmarks/bench_moe.py`: "
           "no worker profiler, no work stealing (the fits are pinned), 1-s event-loop "
           "ticks, 2-s system and 1-s nanny memory monitors; "
           "`MMOPT_BENCH_MOE_DASK_DEFAULTS=1` keeps the defaults). ")
        + "Both fits run with the same glibc allocator "
        "thresholds (`MALLOC_TRIM_THRESHOLD_=2**30`, `MALLOC_MMAP_THRESHOLD_=2**25`: in "
        "the workers' environment, replacing Dask's `MALLOC_TRIM_THRESHOLD_=65536`, and by "
        "`mallopt` in the driver), which keep EM's freed temporaries mapped instead of "
        "page-faulting them in again every iteration; the workers also get "
        "`MALLOC_ARENA_MAX=1`, so that their task thread allocates from the main arena "
        "as the driver's global fit does. The library pins each shard's fit to its own "
        "worker (one fit per worker thread). Dist CPU path: the driver's CPU time plus the "
        "busiest worker's; worker CPU: each worker's CPU time during the fit, busiest "
        "first (medians). Load: the machine's 1-minute load average "
        "after the case (wall times "
        "compare only on a quiet machine). "
        "Parameter error after Hungarian matching of the experts; ARI of the most probable "
        "expert. Driver peak: `tracemalloc` peak of the driver during one more, untimed "
        "distributed fit (the data never reach it), against the data's size. n = 10^6: "
        "`MMOPT_BENCH_MOE_LARGE=1 python benchmarks/run.py --only moe`.\n\n"
        + table
        + ("" if other is None else
           "\n### Accuracy on other data\n\n"
           f"The same comparison of accuracy (not time) on other simulated data: "
           f"`make_moe_regression({OTHER_N}, features, K, noise=..., gate_scale=...)`, "
           f"`n_init={N_INIT}`, `n_support={N_SUPPORT}`, the shards fitted in the driver "
           "one after another (`n_jobs=1`). Err ratio: distributed / global parameter error "
           "(target <= 1.5); ARI gap: global - distributed ARI (target <= 0.05).\n\n"
           + other)
        + "\n"
    )


def run(quick: bool = False) -> str:
    """The BENCHMARKS.md section (``benchmarks/run.py``)."""
    if quick:
        sizes, seeds = [20_000], [0]
    else:
        sizes = [100_000, 1_000_000] if os.environ.get("MMOPT_BENCH_MOE_LARGE") else [100_000]
        seeds = [0, 1, 2]
    table = _table(sizes, seeds)
    other = None if quick else other_data_table(OTHER_N, [0, 1, 2])
    return _section(table, other)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sizes", nargs="*", type=int, default=[100_000])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per case (default: 3 up to 10^5 rows, 2 above)")
    args = parser.parse_args()
    print(_section(_table(args.sizes, args.seeds, args.repeats)))


if __name__ == "__main__":
    main()
