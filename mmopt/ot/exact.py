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
    is a permutation, found by ``scipy.optimize.linear_sum_assignment``.

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
    if n == m and np.all(a == a[0]) and np.all(b == b[0]):
        rows, cols = linear_sum_assignment(C)
        plan = np.zeros((n, m))
        plan[rows, cols] = a[rows]
        f = g = None
        status, nit, method = Status.CONVERGED, 1, "assignment"
    else:
        # Row-sum constraints (kron(I_n, 1_m^T)) over column-sum ones (kron(1_n^T, I_m)).
        equalities = sp.vstack(
            [sp.kron(sp.eye(n), np.ones((1, m))), sp.kron(np.ones((1, n)), sp.eye(m))]
        ).tocsr()
        lp = linprog(
            C.ravel(),
            A_eq=equalities,
            b_eq=np.concatenate([a, b]),
            bounds=(0, None),
            method="highs",
        )
        if lp.status != 0:
            raise RuntimeError(f"exact_ot: the linear program failed: {lp.message}")
        plan = lp.x.reshape(n, m)
        duals = lp.eqlin.marginals
        f, g = duals[:n], duals[n:]
        status, nit, method = Status.CONVERGED, int(lp.nit), "highs"
    cost = float(np.vdot(C, plan))
    marginal_error = float(np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum())
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
