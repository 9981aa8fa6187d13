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
import warnings

import numpy as np
from _common import gaussian_clouds, markdown_table, timed

from mmopt.ot import partial_ot, unbalanced_sinkhorn

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
    )


if __name__ == "__main__":
    print(run(quick=True))
