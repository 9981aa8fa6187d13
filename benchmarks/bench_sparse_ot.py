"""Sparsity-constrained OT against POT's ``ot.smooth`` (when installed)."""

from __future__ import annotations

import contextlib
import io
import time
import warnings

import numpy as np
from _common import gaussian_clouds, markdown_table

from mmopt.ot import OTProblem, sparsity_constrained_ot
from mmopt.ot.sparsity_constrained import _Conjugates

try:
    import ot as pot
    import ot.smooth
except ImportError:  # POT is an optional benchmark extra
    pot = None


def _clouds(n, seed=0):
    # Two 2-D Gaussians, the second shifted.
    return gaussian_clouds(n, seed, shift=1.0)


def _timed(func, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        out = func(*args, **kwargs)
        return out, time.perf_counter() - start


def _pot_solve(formulation, a, b, C, k, reg):
    """POT's solver; its stray prints are swallowed, and it gets a copy of C (it writes to
    the cost through its conjugate)."""
    reg_type = "l2" if k >= C.shape[0] else "sparsity_constrained"
    options = dict(reg_type=reg_type, log=True)
    if reg_type != "l2":
        options["max_nz"] = int(k)
    if formulation == "semi_dual":
        solver = ot.smooth.smooth_ot_semi_dual
    else:
        solver = ot.smooth.smooth_ot_dual
    with contextlib.redirect_stdout(io.StringIO()):
        plan, log = solver(a, b, C.copy(), reg, **options)
    return plan, log


def _objective(formulation, a, b, C, k, reg, potentials):
    """Our (semi-)dual objective at given potentials: the same definition for both."""
    conj = _Conjugates(OTProblem(a, b, C, reg), min(k, a.size), reg, formulation, 1)
    return conj.value_and_grad(np.asarray(potentials, dtype=float))[0]


def run(quick: bool = False) -> str:
    n = 200 if quick else 1000
    a, b, C = _clouds(n)
    rows = []
    for formulation in ("semi_dual", "dual"):
        for k in (2, 5, 20, n):
            for reg in (0.1, 0.01):
                ours, t_ours = _timed(
                    sparsity_constrained_ot, a, b, C, k, reg, formulation=formulation
                )
                row = {
                    "form": formulation,
                    "k": "n (L2)" if k == n else k,
                    "reg": reg,
                    "ours: status, nit": f"{ours.status}, {ours.nit}",
                    "ours: row / col violation": (
                        f"{ours.row_violation:.2g} / {ours.column_violation:.2g}"
                    ),
                    "POT: row / col violation": None,
                    "objective ours - POT": None,
                    "time ours / POT": None,
                    "POT time (s)": None,
                }
                if pot is not None:
                    (plan, log), t_pot = _timed(_pot_solve, formulation, a, b, C, k, reg)
                    if formulation == "semi_dual":
                        potentials = log["alpha"]
                    else:
                        potentials = np.concatenate([log["alpha"], log["beta"]])
                    pot_value = _objective(formulation, a, b, C, k, reg, potentials)
                    row["POT: row / col violation"] = (
                        f"{np.abs(plan.sum(1) - a).sum():.2g} / "
                        f"{np.abs(plan.sum(0) - b).sum():.2g}"
                    )
                    row["objective ours - POT"] = float(ours.fun - pot_value)
                    row["time ours / POT"] = t_ours / t_pot
                    row["POT time (s)"] = t_pot
                rows.append(row)
    lines = [
        "## Sparsity-constrained OT",
        "",
        f"{n} points from two 2-D Gaussians (the second shifted by 1), squared Euclidean "
        "cost divided by its max, uniform weights; at most k nonzeros per column of the "
        "plan, squared-L2 regularization reg/2 ||t||^2 per column (k = n: no constraint). "
        "Ours: defaults (tol 1e-8 on the L1 marginal error; status 5 = stalled at a kink, "
        "the inherent violation of the k-sparse relaxation). POT: `ot.smooth."
        "smooth_ot_semi_dual` / `smooth_ot_dual` with its defaults (L-BFGS-B, 500 "
        "iterations, stopThr 1e-9). Both objectives are evaluated by the same function at "
        "each side's potentials (higher is better: it is maximized); violations are L1.",
        "",
        markdown_table(rows),
    ]
    if pot is None:
        lines += ["", "POT is not installed (`pip install pot`): peer columns are empty."]
    return "\n".join(lines)
