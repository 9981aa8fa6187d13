"""Batched histograms (``sinkhorn(a, b, C, reg)`` with ``b`` of shape (m, k)): their own
section, so that ``python benchmarks/run.py --only ot_batched`` re-measures them alone
(a few minutes) without the rest of the ``ot`` section."""

from __future__ import annotations

import time
import warnings
from functools import partial

import numpy as np
from _common import markdown_table
from bench_ot import _batched_problem, batched_report

from mmopt.ot import sinkhorn


def _cpu_seconds(func, repeat):
    """Least process CPU time of ``repeat`` calls (one thread: the CPU time is the time the
    call ran, whatever else the machine runs) and the last output."""
    best, out = np.inf, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeat):
            start = time.process_time()
            out = func()
            best = min(best, time.process_time() - start)
    return best, out


def _separate(a, b, C, reg):
    return [sinkhorn(a, b[:, j], C, reg, tol=2e-8, n_threads=1) for j in range(b.shape[1])]


def size_rule_table(quick: bool = False) -> list[dict]:
    """Batched over k separate solves across sizes and k (one thread, CPU time, to L1
    error 2e-8): the measurements behind the rule that sends small kernels' tails, and
    k <= 4 problems on small kernels, to single solves."""
    from threadpoolctl import threadpool_limits

    sizes = (100, 300) if quick else (100, 300, 1000)
    rows = []
    with threadpool_limits(1):
        for n in sizes:
            for k in (4, 32, 128):
                a, b, C = _batched_problem(n, k)
                for reg in (1e-2, 1e-3):
                    repeat = 1 if n * k >= 1000 * 128 else 2
                    t_batched, ours = _cpu_seconds(
                        partial(sinkhorn, a, b, C, reg, tol=2e-8, n_threads=1), repeat)
                    t_separate, separate = _cpu_seconds(
                        partial(_separate, a, b, C, reg), repeat)
                    rows.append({
                        "n": n, "k": k, "reg": reg,
                        "batched / k separate (CPU time)": t_batched / t_separate,
                        "iterations: batched sum / separate sum": (
                            float(ours.column_nit.sum()) / sum(r.nit for r in separate)),
                        "separate CPU time (s)": t_separate,
                    })
    return rows


def run(quick: bool = False) -> str:
    return "\n".join([
        batched_report(quick), "",
        "### Size rule: batched over separate solves across n and k", "",
        "Mixtures as above, one thread, least process CPU time of 2 runs (1 for n k >= "
        "128 000), to L1 error 2e-8. Kernels of at most 30 000 entries hand a group's "
        "last 4 problems to warm-started single solves at once, and solve k <= 4 problems "
        "one by one (`_ALONE_MAX_ENTRIES` in `mmopt/ot/_batched.py`); kernels of at most "
        "300 000 entries do so once the group's largest error falls less than tenfold in "
        "15 iterations, after the first 30 (`_SMALL_MAX_ENTRIES`, `_PROBE_ITERATIONS`).",
        "",
        markdown_table(size_rule_table(quick)),
    ])


if __name__ == "__main__":
    import sys

    print(run("--quick" in sys.argv))
