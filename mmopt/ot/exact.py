"""Unregularized optimal transport by linear programming: the reference for tests."""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment, linprog

from mmopt._core.result import STATUS_MESSAGES, Result, Status
from mmopt.ot.problem import check_histograms

__all__ = ["exact_ot"]


def exact_ot(a, b, C) -> Result:
    """Solve unregularized optimal transport exactly.

    ``min <C, P>`` over plans with row sums ``a`` and column sums ``b``, by scipy's HiGHS
    linear-programming solver; when ``a`` and ``b`` are uniform of the same size the optimum
    is a permutation, found by ``scipy.optimize.linear_sum_assignment``. The problem is
    solved at unit total mass and a largest ``|C|`` of 1 (HiGHS works to absolute
    tolerances) and the plan, potentials and cost are scaled back, so masses and costs of
    any magnitude are handled; a total cost beyond float64 is a ``ValueError``.

    Parameters
    ----------
    a : array-like of shape (n,)
        Non-negative source histogram; empty means uniform.
    b : array-like of shape (m,)
        Non-negative target histogram of the same total mass; empty means uniform.
    C : array-like of shape (n, m)
        Finite cost matrix.

    Returns
    -------
    Result
        ``x`` and ``plan``: the optimal plan (n, m); ``fun`` and ``transport_cost``:
        ``<C, P>``; ``f``, ``g``: optimal dual potentials (``f_i + g_j <= C_ij`` with equality
        on the plan's support; ``None`` on the assignment path); ``marginal_error``;
        ``method``: ``"assignment"`` or ``"highs"``.

    Examples
    --------
    >>> import numpy as np
    >>> from mmopt.ot import exact_ot
    >>> res = exact_ot([], [], np.array([[0.0, 1.0], [1.0, 0.0]]))
    >>> res.fun, res.plan
    (0.0, array([[0.5, 0. ],
           [0. , 0.5]]))
    """
    start = time.perf_counter()
    a, b, C = check_histograms(a, b, C)
    n, m = C.shape
    # HiGHS works to absolute tolerances (about 1e-7): masses of 1e-300 look like zero to it
    # (an empty plan passed as optimal) and costs of 1e300 overflow it. It solves the
    # problem scaled to unit mass and a largest |cost| of 1; the plan, potentials and cost
    # are scaled back.
    mass = float(a.sum())
    cost_scale = float(np.abs(C).max())
    if cost_scale == 0.0:
        cost_scale = 1.0
    a_unit, b_unit, C_unit = a / mass, b / mass, C / cost_scale
    if n == m and np.all(a == a[0]) and np.all(b == b[0]):
        rows, cols = linear_sum_assignment(C_unit)
        plan_unit = np.zeros((n, m))
        plan_unit[rows, cols] = a_unit[rows]
        f = g = None
        status, nit, method = Status.CONVERGED, 1, "assignment"
    else:
        # Row-sum constraints (kron(I_n, 1_m^T)) over column-sum ones (kron(1_n^T, I_m)).
        equalities = sp.vstack(
            [sp.kron(sp.eye(n), np.ones((1, m))), sp.kron(np.ones((1, n)), sp.eye(m))]
        ).tocsr()
        lp = linprog(
            C_unit.ravel(),
            A_eq=equalities,
            b_eq=np.concatenate([a_unit, b_unit]),
            bounds=(0, None),
            method="highs",
        )
        if lp.status != 0:
            raise RuntimeError(f"exact_ot: the linear program failed: {lp.message}")
        plan_unit = lp.x.reshape(n, m)
        duals = lp.eqlin.marginals
        f, g = cost_scale * duals[:n], cost_scale * duals[n:]
        status, nit, method = Status.CONVERGED, int(lp.nit), "highs"
    plan = plan_unit * mass
    with np.errstate(over="ignore"):
        cost = float(np.vdot(C_unit, plan_unit)) * cost_scale * mass
    if not np.isfinite(cost):
        raise ValueError(
            "exact_ot: the transport cost overflows float64 (C and the masses of a and b "
            f"are too large together: max |C| = {cost_scale:.3g}, total mass {mass:.3g}); "
            "rescale C or the histograms."
        )
    marginal_error = mass * float(
        np.abs(plan_unit.sum(1) - a_unit).sum() + np.abs(plan_unit.sum(0) - b_unit).sum()
    )
    elapsed = time.perf_counter() - start
    return Result(
        x=plan,
        fun=cost,
        success=True,
        status=int(status),
        message=STATUS_MESSAGES[status],
        nit=nit,
        time=elapsed,
        residual=marginal_error,
        history={
            "fun": np.array([cost]),
            "residual": np.array([marginal_error]),
            "time": np.array([elapsed]),
        },
        solver="exact",
        plan=plan,
        transport_cost=cost,
        f=f,
        g=g,
        marginal_error=marginal_error,
        method=method,
    )
