"""Unbalanced and entropic partial OT against POT (when installed), time to equal accuracy.

Accuracy is solver-independent: the L1 norm of the dual gradient (unbalanced: ``||P 1 -
a e^{-f/rho}||_1 + ||P^T 1 - b e^{-g/rho}||_1`` from POT's logged scalings), the L1 violation
of the optimality conditions for partial OT (row/column sums above their masses). mmopt runs
to ``tol``; POT runs with a growing iteration budget (x1.5 per try, stopThr 0) until it is
at least as accurate; its time is that of the first run that is, or its last try when none
is within the cap.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
from _common import markdown_table

from mmopt.ot import partial_ot, unbalanced_sinkhorn

try:
    import ot as pot
except ImportError:  # POT is an optional benchmark extra
    pot = None


def _clouds(n, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 2)), rng.standard_normal((n, 2)) + 1.0
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    return np.full(n, 1.0 / n), np.full(n, 1.5 / n), C / C.max()


def _timed(func):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        out = func()
        return out, time.perf_counter() - start


def _pot_unbalanced_error(a, b, reg, reg_m, P, log):
    # u = exp(f / reg) with POT's kernel a b^T exp(-C / reg): f = reg log u.
    f, g = reg * log["logu"], reg * log["logv"]
    return float(np.abs(P.sum(1) - a * np.exp(-f / reg_m)).sum()
                 + np.abs(P.sum(0) - b * np.exp(-g / reg_m)).sum())


def _partial_error(P, a, b, mass):
    return float(np.maximum(P.sum(1) - a, 0).sum() + np.maximum(P.sum(0) - b, 0).sum()
                 + abs(P.sum() - mass))


def _ladder(run_pot, error_of, target, start, cap, time_cap):
    """POT with budgets start, 1.5 start, ... until its error <= target; (time, iters,
    error, reached)."""
    budget, spent = start, 0.0
    while True:
        out, elapsed = _timed(lambda b=budget: run_pot(b))
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
        res, t_mm = _timed(lambda reg=reg: unbalanced_sinkhorn(a, b, C, reg, reg_m, tol=1e-9,
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
    b_part = np.full(n, 1.0 / n)
    mass = 0.5
    for reg in regs[:2]:
        res, t_mm = _timed(lambda reg=reg: partial_ot(a, b_part, C, mass, reg=reg, tol=1e-9,
                                              max_iter=100_000))
        row = {"problem": "entropic partial (m=0.5)", "n": n, "reg": reg, "mmopt s": t_mm,
               "mmopt iters": res.nit, "mmopt error": res.kkt_error,
               "mmopt status": res.status}
        if pot is not None:
            def run_pot(budget, reg=reg, mass=mass):
                return pot.partial.entropic_partial_wasserstein(
                    a, b_part, C, reg, m=mass, numItermax=budget, stopThr=0.0
                )

            t_pot, iters, err, ok = _ladder(
                run_pot, lambda P, mass=mass: _partial_error(P, a, b_part, mass),
                res.kkt_error, 10, 2_000, 30.0 if quick else 120.0,
            )
            row.update({"POT s": t_pot, "POT iters": iters, "POT error": err,
                        "ratio mmopt/POT": t_mm / t_pot if ok else float("nan"),
                        "POT reached": ok})
        rows.append(row)
    return (
        "## Unbalanced and partial OT\n\n"
        f"2-D Gaussian clouds, n = {n}, squared Euclidean cost / max; unbalanced: "
        "a uniform of mass 1, b of mass 1.5, reg_m = 1 (POT's default reg_type 'kl'); "
        "partial: uniform masses, m = 0.5. Errors as in the module docstring; "
        "'POT reached' is False when POT did not get there within its cap (then its time "
        "is a lower bound).\n\n" + markdown_table(rows)
    )


if __name__ == "__main__":
    print(run(quick=True))
