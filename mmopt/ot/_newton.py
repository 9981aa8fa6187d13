"""Newton steps on entropic OT duals: the sparsified Newton system and the line search.

Shared by :class:`~mmopt.ot.UnbalancedSinkhorn` and :class:`~mmopt.ot.PartialSinkhorn`.
Both duals have, in the row and column potentials, the Hessian (of the negative dual)
``(1/reg) [[diag(P 1), P], [P^T, diag(P^T 1)]]`` plus a diagonal, and for partial OT one
more variable (the multiplier of the total mass) that borders it with the plan's
marginals. The plan is replaced by its sparsification (:func:`sparsify_plan`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, cg, splu

# Sparse LU when the sparsified plan has at most this many nonzeros per variable, CG beyond.
DIRECT_MAX_DEGREE = 40


def newton_direction(diagonal, S, grad, reg, border=None):
    """Solve ``H d = -grad`` for the bordered, sparsified dual Hessian ``H``.

    ``H = [[diag(diagonal[:n]), S / reg], [S^T / reg, diag(diagonal[n:])]]`` with ``S`` of
    shape ``(n, m)``; with ``border = (w, corner)`` it gains a last row and column
    ``[w^T, corner]`` (``grad`` then has ``n + m + 1`` entries). Sparse LU (symmetric
    mode) when ``S`` is sparse enough, else Jacobi-preconditioned CG. Returns None when the
    factorization fails.
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
    grad_norm = float(np.abs(grad).sum())
    if S.nnz <= DIRECT_MAX_DEGREE * total:
        blocks = [[sp.diags_array(diagonal[:n]), S / reg],
                  [St / reg, sp.diags_array(diagonal[n:])]]
        system = sp.bmat(blocks, format="csc")
        if border is not None:
            column = sp.csc_array(w.reshape(-1, 1))
            system = sp.bmat([[system, column], [column.T, sp.csc_array([[corner]])]],
                             format="csc")
        try:
            return splu(
                system, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                options={"SymmetricMode": True},
            ).solve(-grad)
        except RuntimeError:
            return None

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
    direction, _ = cg(operator, -grad, rtol=min(0.1, math.sqrt(grad_norm)), maxiter=200,
                      M=jacobi)
    return direction


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
    step = 1.0
    for _ in range(max_halvings):
        out = evaluate(step)
        if out is not None:
            new_value, wanted, new_error, payload = out
            if math.isfinite(new_value) and new_value <= value + rounding:
                decrease = value - new_value
                if (decrease >= wanted and decrease > rounding) or (
                    new_error < (1.0 - 1e-4 * step) * error
                ):
                    return payload, step
        step *= 0.5
    return None


def next_damping(damping, step):
    """Levenberg-Marquardt-style damping: grows after short steps, shrinks after full."""
    damping = damping / 4.0 if step == 1.0 else max(4.0 * damping, 1e-3)
    return 0.0 if damping < 1e-6 else damping
