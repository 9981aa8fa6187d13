"""Newton steps on entropic OT duals: the sparsified Newton system and the line search.

Shared by :class:`~mmopt.ot.SinkhornNewtonSparse`, :class:`~mmopt.ot.UnbalancedSinkhorn`
and :class:`~mmopt.ot.PartialSinkhorn`. The duals have, in the row and column potentials,
the Hessian (of the negative dual) ``(1/reg) [[diag(P 1), P], [P^T, diag(P^T 1)]]`` plus a
diagonal, and for partial OT one more variable (the multiplier of the total mass) that
borders it with the plan's marginals. The plan is replaced by its sparsification
(:func:`~mmopt.ot._kernels.sparsify_plan`); the line search is the shared backtracking
(:func:`mmopt._core.linesearch.backtracking`) with the acceptance test of these duals.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, cg, gmres, spilu, splu

from mmopt._core.linesearch import backtracking

# Sparse LU when the sparsified plan has at most this many nonzeros per variable, CG beyond.
DIRECT_MAX_DEGREE = 40
# Above this many variables the sparse LU's fill-in is capped: it runs as SuperLU's
# incomplete LU with no drop tolerance and a cap of DIRECT_MAX_FILL factor entries, which is
# the exact factorization when the cap is not reached (checked by the residual of the
# solve) and otherwise a preconditioner of GMRES. (Uncapped, a 3-D-like plan's 1.87M nonzeros
# at 2 10^5 variables filled in to 220M: 5 GB; a 9-neighbour 3-D graph of 4 10^4 variables
# fills 4 10^5 nonzeros to 2.3 10^7.) Not below: SuperLU's incomplete factorization was
# slower than its complete one in 3-D (the 3 10^4-point 3-D sharp solve, 6 10^4
# variables: 57.5 s CPU instead of 44.7).
DIRECT_GUARD_SIZE = 100_000
DIRECT_MAX_FILL = 30_000_000
# Relative residual under which the capped factorization counts as exact.
_EXACT_RTOL = 1e-8


@dataclass
class Direction:
    """A Newton direction and how it was found."""

    d: np.ndarray
    cg_iterations: int = 0
    cg_converged: bool = True


def newton_direction(diagonal, S, grad, reg, border=None, *, solver="auto",
                     direct_max_degree=DIRECT_MAX_DEGREE, cg_tol=None, max_cg=200,
                     direct_max_fill=DIRECT_MAX_FILL):
    """Solve ``H d = -grad`` for the bordered, sparsified dual Hessian ``H``.

    ``H = [[diag(diagonal[:n]), S / reg], [S^T / reg, diag(diagonal[n:])]]`` with ``S`` of
    shape ``(n, m)``; with ``border = (w, corner)`` it gains a last row and column
    ``[w^T, corner]`` (``grad`` then has ``n + m + 1`` entries). ``solver="auto"`` takes a
    sparse LU (symmetric mode: ``H`` is symmetric positive definite, a minimum-degree
    ordering of ``A + A^T`` has little fill-in) when ``S`` has at most
    ``direct_max_degree`` nonzeros per variable, else Jacobi-preconditioned CG to the
    relative residual ``cg_tol`` (``min(0.1, sqrt(||grad||_1))`` when None: an inexact
    Newton step, tighter near the optimum); ``"direct"`` and ``"cg"`` force one. Returns a
    :class:`Direction`, or None when the factorization fails.

    Above ``DIRECT_GUARD_SIZE`` variables the direct solve's memory is bounded: the LU is
    SuperLU's incomplete one with no drop tolerance and at most ``direct_max_fill`` factor
    entries (``fill_factor``), exact when that cap is not reached (the solve's relative
    residual below 1e-8); when it is, the incomplete factors precondition GMRES (to
    ``cg_tol``, at most ``max_cg`` iterations).
    """
    n = S.shape[0]
    size = diagonal.size
    St = S.T.tocsr()
    if border is None:
        full_diagonal = diagonal
    else:
        w, corner = border
        full_diagonal = np.concatenate([diagonal, [corner]])
    total = full_diagonal.size
    if solver == "auto":
        solver = "direct" if S.nnz <= direct_max_degree * total else "cg"
    if solver == "direct":
        blocks = [[sp.diags_array(diagonal[:n]), S / reg],
                  [St / reg, sp.diags_array(diagonal[n:])]]
        system = sp.bmat(blocks, format="csc")
        if border is not None:
            column = sp.csc_array(w.reshape(-1, 1))
            system = sp.bmat([[system, column], [column.T, sp.csc_array([[corner]])]],
                             format="csc")
        factor_options = dict(permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                              options={"SymmetricMode": True})
        try:
            if total <= DIRECT_GUARD_SIZE:
                return Direction(splu(system, **factor_options).solve(-grad))
            factors = spilu(system, drop_tol=0.0,
                            fill_factor=max(1.0, direct_max_fill / system.nnz),
                            **factor_options)
        except RuntimeError:
            return None
        direction = factors.solve(-grad)
        residual = np.linalg.norm(system @ direction + grad)
        if np.isfinite(residual) and residual <= _EXACT_RTOL * np.linalg.norm(grad):
            return Direction(direction)
        return _preconditioned_gmres(system, grad, factors.solve, cg_tol, max_cg)

    def matvec(v):
        out = full_diagonal * v
        out[:n] += S @ v[n:size] / reg
        out[n:size] += St @ v[:n] / reg
        if border is not None:
            out[:size] += w * v[size]
            out[size] += float(w @ v[:size])
        return out

    operator = LinearOperator((total, total), matvec=matvec, dtype=float)
    jacobi = LinearOperator((total, total), matvec=lambda v: v / full_diagonal, dtype=float)
    return _krylov(cg, operator, -grad, _inexact_tol(grad, cg_tol), maxiter=max_cg, M=jacobi)


def _preconditioned_gmres(system, grad, preconditioner, rtol, max_iter):
    """GMRES on ``system d = -grad`` preconditioned by incomplete LU factors (not
    symmetric, so not CG's): relative residual ``rtol`` (as ``newton_direction``'s CG when
    None), at most ``max_iter`` iterations, restarted every 50."""
    size = system.shape[0]
    restart = min(max_iter, 50)
    return _krylov(gmres, system, -grad, _inexact_tol(grad, rtol), restart=restart,
                   maxiter=-(-max_iter // restart),
                   M=LinearOperator((size, size), matvec=preconditioner, dtype=float),
                   callback_type="pr_norm")


def _inexact_tol(grad, rtol):
    """``rtol``, or the inexact-Newton relative residual ``min(0.1, sqrt(||grad||_1))``
    when None (loose far from the solution, tight near it)."""
    return min(0.1, math.sqrt(float(np.abs(grad).sum()))) if rtol is None else rtol


def _krylov(method, operator, rhs, rtol, **options) -> Direction:
    """A SciPy Krylov solve (``cg``, ``gmres``) with its iterations counted; SciPy's
    warnings are silenced (a solve that did not converge says so in ``Direction``)."""
    iterations = 0

    def count(_):
        nonlocal iterations
        iterations += 1

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direction, info = method(operator, rhs, rtol=rtol, callback=count, **options)
    return Direction(direction, iterations, info == 0)


def line_search(evaluate, value, error, max_halvings=30):
    """Backtracking from the full step; ``(payload, step)`` of the first accepted one.

    ``evaluate(step)`` returns ``(new_value, decrease_wanted, error, payload)`` (or None
    when the trial point is unusable): the negative dual there, the Armijo decrease asked
    for (``-1e-4 * step * slope`` along the displacement actually taken) and the optimality
    error there. Near the optimum the value changes below its rounding error, so a step is
    kept when it lowers the value by Armijo's rule beyond rounding, or keeps it within
    rounding and lowers the optimality error below ``error`` (its value at the start).
    None when no step is accepted.
    """
    rounding = 1e-13 * max(abs(value), 1.0)

    def accept(step, out):
        if out is None:
            return False
        new_value, wanted, new_error, _ = out
        if not (math.isfinite(new_value) and new_value <= value + rounding):
            return False
        decrease = value - new_value
        return (decrease >= wanted and decrease > rounding) or (
            new_error < (1.0 - 1e-4 * step) * error
        )

    found = backtracking(evaluate, accept, max_trials=max_halvings)
    return (found.trial[3], found.step) if found.success else None


def next_damping(damping, step):
    """Levenberg-Marquardt-style damping after a Newton step of length ``step``: shrinks
    after a full step, grows after a short one, and grows faster (``step=None``) after a
    line search that accepted no step."""
    if step is None:
        return max(16.0 * damping, 1e-2)
    damping = damping / 4.0 if step == 1.0 else max(4.0 * damping, 1e-3)
    return 0.0 if damping < 1e-6 else damping
