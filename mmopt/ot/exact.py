"""Unregularized optimal transport by linear programming: the reference for tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment, linprog

from mmopt._core.params import Param
from mmopt._core.registry import register_solver, solve
from mmopt._core.result import Result, Status
from mmopt._core.solver import Solver, SolverState, StopSolve
from mmopt.ot.problem import OTProblem

__all__ = ["ExactOT", "exact_ot"]

# The LP does not depend on the problem's regularization: exact_ot gives its problem this one.
_UNUSED_REG = 1.0


@dataclass
class _ExactState(SolverState):
    # The result fields of the solved LP (None before the step).
    fields: dict[str, Any] | None = field(default=None)


@register_solver
class ExactOT(Solver):
    """Unregularized optimal transport, solved exactly as a linear program.

    ``min <C, P>`` over plans with row sums ``a`` and column sums ``b`` (the problem's
    ``reg`` is not used). The one step solves the LP with scipy's HiGHS
    (:func:`scipy.optimize.linprog`, ``method="highs"``) on the sparse constraint matrix of
    the ``n + m`` marginal equalities; when ``a`` and ``b`` are uniform of the same size the
    optimum is a permutation, found by :func:`scipy.optimize.linear_sum_assignment`. The
    problem is solved at unit total mass and a largest ``|C|`` of 1 (HiGHS works to absolute
    tolerances) and the plan, potentials and cost are scaled back, so masses and costs of
    any magnitude are handled; a total cost beyond float64 is a ``ValueError``.

    The solve takes one iteration: its answer is final. It converges (status 0) when the
    plan's marginal error, relative to the total mass, is at most ``tol``; otherwise (HiGHS
    met its own tolerances only) it ends as stalled (status 5, with a
    :class:`~mmopt.ConvergenceWarning`).

    Parameters
    ----------
    tol : float, default=1e-7
        Largest accepted L1 marginal error ``(||P 1 - a||_1 + ||P^T 1 - b||_1) / sum(a)``
        (HiGHS's feasibility tolerance is 1e-7).
    max_iter : int, default=1
        Iterations allowed; one is all the solve uses.
    callback, verbose
        As in every solver.

    Notes
    -----
    ``Result.x`` and ``plan`` hold the optimal plan (n, m); ``fun`` and ``transport_cost``
    ``<C, P>``; ``f``, ``g`` optimal dual potentials (``f_i + g_j <= C_ij`` with equality on
    the plan's support; ``None`` on the assignment path); ``marginal_error`` the L1 marginal
    error; ``residual`` the same relative to the total mass; ``method``: ``"assignment"``
    or ``"highs"``; ``lp_nit``: HiGHS's simplex iterations (0 for an assignment).

    References
    ----------
    .. [1] L. V. Kantorovich, "On the translocation of masses", Doklady Akademii Nauk
       SSSR 37 (1942); English translation in Management Science 5(1):1-4, 1958.
    .. [2] Q. Huangfu and J. A. J. Hall, "Parallelizing the dual revised simplex method",
       Mathematical Programming Computation 10:119-142, 2018 (HiGHS).
    .. [3] H. W. Kuhn, "The Hungarian method for the assignment problem", Naval Research
       Logistics Quarterly 2:83-97, 1955.

    Examples
    --------
    >>> import mmopt
    >>> from mmopt.ot import OTProblem
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 0.5]])
    >>> res = mmopt.solve(OTProblem([], [], C, reg=1.0), solver="exact")
    >>> res.status, res.nit, res.method, round(res.fun, 6)
    (0, 1, 'highs', 0.333333)
    """

    name = "exact"
    problem_types = (OTProblem,)
    #: One step gives the final answer (no iterates to stop between).
    single_step: ClassVar[bool] = True

    # Its options are the common ones, with defaults of its own.
    _options = {
        "tol": Param(1e-7),
        "max_iter": Param(1),
    }

    def _init_state(self, problem, x0):
        if x0 is not None:
            raise ValueError("x0 must be None: the exact solver takes no starting point.")
        return _ExactState(x=np.zeros(problem.shape), fun=np.inf)

    def _step(self, problem, state):
        fields = _solve_lp(problem.a, problem.b, problem.C)
        mass = float(problem.a.sum())
        new_state = _ExactState(
            x=fields["plan"],
            fun=fields["transport_cost"],
            residual=fields["marginal_error"] / mass,
            fields=fields,
        )
        if new_state.residual > self.tol:
            raise StopSolve(
                Status.STALLED,
                f"Stalled: the linear program's plan has a relative marginal error of "
                f"{new_state.residual:.3g} > tol, within HiGHS's own tolerances; its "
                "answer is final.",
                state=new_state,
            )
        return new_state

    def _result_fields(self, problem, state):
        if state.fields is None:  # interrupted before the LP was solved
            return {"plan": None, "transport_cost": np.inf, "f": None, "g": None,
                    "marginal_error": np.inf, "method": None, "lp_nit": 0}
        return dict(state.fields)


def _solve_lp(a, b, C) -> dict[str, Any]:
    """The optimal plan, cost, potentials and marginal error of validated ``(a, b, C)``."""
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
        lp_nit, method = 0, "assignment"
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
        lp_nit, method = int(lp.nit), "highs"
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
    return {"plan": plan, "transport_cost": cost, "f": f, "g": g,
            "marginal_error": marginal_error, "method": method, "lp_nit": lp_nit}


def exact_ot(a, b, C, **options) -> Result:
    """Solve unregularized optimal transport exactly (:class:`ExactOT`).

    ``min <C, P>`` over plans with row sums ``a`` and column sums ``b``, by scipy's HiGHS
    linear-programming solver; when ``a`` and ``b`` are uniform of the same size the optimum
    is a permutation, found by ``scipy.optimize.linear_sum_assignment``. Masses and costs of
    any magnitude are handled (the LP is solved at unit scales); a total cost beyond float64
    is a ``ValueError``.

    Parameters
    ----------
    a : array-like of shape (n,)
        Non-negative source histogram; empty means uniform.
    b : array-like of shape (m,)
        Non-negative target histogram of the same total mass; empty means uniform.
    C : array-like of shape (n, m)
        Finite cost matrix.
    **options
        Options of :class:`ExactOT` (``tol``, ``callback``, ``verbose``).

    Returns
    -------
    Result
        ``x`` and ``plan``: the optimal plan (n, m); ``fun`` and ``transport_cost``:
        ``<C, P>``; ``f``, ``g``: optimal dual potentials (``f_i + g_j <= C_ij`` with equality
        on the plan's support; ``None`` on the assignment path); ``marginal_error``;
        ``method``: ``"assignment"`` or ``"highs"``; ``lp_nit``; ``nit`` is 1.

    Examples
    --------
    >>> from mmopt.ot import exact_ot
    >>> res = exact_ot([], [], np.array([[0.0, 1.0], [1.0, 0.0]]))
    >>> res.fun, res.plan
    (0.0, array([[0.5, 0. ],
           [0. , 0.5]]))
    """
    return solve(OTProblem(a, b, C, _UNUSED_REG), "exact", **options)
