"""Lower-level solvers: a lower level minimized to a certified gradient norm.

Each returns an :class:`~mmopt._core.result.InnerSolveResult` (the type every inner solve
returns, CG included: :func:`mmopt._core.krylov.conjugate_gradient`);
:class:`mmopt.bilevel.MAID` adds up their costs.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from mmopt._core.krylov import conjugate_gradient, inverse_diagonal
from mmopt._core.linesearch import armijo, backtracking
from mmopt._core.result import InnerSolveResult

__all__ = ["fista", "newton_cg"]


def fista(lower, x0, theta, gtol, *, max_iter=10_000) -> InnerSolveResult:
    """Accelerated gradient descent (FISTA) with adaptive restart, until ``||grad|| <= gtol``.

    The step is ``1 / L`` with ``L = lower.lipschitz(theta)`` when known, otherwise found by
    backtracking on the descent lemma (doubling ``L``). The momentum restarts when it points
    uphill (O'Donoghue and Candes' gradient test), which recovers linear convergence on
    strongly convex problems without knowing ``mu``. The returned point is the one whose
    gradient passed the test, so the test certifies it.

    Examples
    --------
    >>> from mmopt.bilevel import LowerLevel
    >>> from mmopt.bilevel.inner import fista
    >>> d = np.array([1.0, 10.0, 100.0])
    >>> lower = LowerLevel(lambda x, t: 0.5 * d @ x**2 - x.sum(), lambda x, t: d * x - 1,
    ...                    lambda x, t, v: d * v, lambda x, t, q: np.zeros(1), lambda t: 1.0,
    ...                    np.zeros(3), lipschitz=lambda t: 100.0)
    >>> out = fista(lower, np.zeros(3), np.zeros(1), 1e-10)
    >>> out.converged, np.allclose(out.x, 1 / d)
    (True, True)
    """
    x = np.array(x0, dtype=float)
    lipschitz = lower.lipschitz(theta)
    backtrack = lipschitz is None
    L = 1.0 if backtrack else lipschitz
    y, t = x.copy(), 1.0
    for k in range(max_iter + 1):
        grad_y = lower.grad_x(y, theta)
        norm = float(np.linalg.norm(grad_y))
        if norm <= gtol or not math.isfinite(norm):
            return InnerSolveResult(y, k, 0, norm, norm <= gtol)
        if k == max_iter:
            break
        if backtrack:
            f_y = lower.value(y, theta)
            # Near the minimizer the two sides differ by less than the rounding of the values:
            # allow that much, or L would double forever.
            rounding = 16 * np.finfo(float).eps * abs(f_y)

            def trial(step, y=y, grad_y=grad_y, L=L):
                # step = 1 / 2^j: the trial constant L 2^j, exact in floating point.
                L_trial = L / step
                x_trial = y - grad_y / L_trial
                return L_trial, x_trial, lower.value(x_trial, theta)

            def descent_lemma(step, t, y=y, grad_y=grad_y, f_y=f_y, rounding=rounding):
                L_trial, x_trial, value = t
                diff = x_trial - y
                model = f_y + grad_y @ diff + 0.5 * L_trial * (diff @ diff)
                return bool(value <= model + rounding)

            # Up to 2^99 L: a lower level that needs more is not finite-valued there.
            L, x_new, _ = backtracking(trial, descent_lemma, max_trials=100).trial
        else:
            x_new = y - grad_y / L
        if grad_y @ (x_new - x) > 0:  # momentum points uphill: restart
            t = 1.0
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        y = x_new + ((t - 1.0) / t_new) * (x_new - x)
        x, t = x_new, t_new
    return InnerSolveResult(y, max_iter, 0, norm, False)


def newton_cg(lower, x0, theta, gtol, *, max_iter=100) -> InnerSolveResult:
    """Damped Newton until ``||grad|| <= gtol``, for small smooth problems (GLMs).

    The Newton system is solved exactly from the dense Hessian when the lower level offers
    ``hessian(x, theta)`` (Cholesky; small problems), otherwise by CG on Hessian-vector
    products to a relative residual ``min(0.5, sqrt(||g||))`` (truncated Newton, superlinear).
    An Armijo backtracking line search on ``Phi`` globalizes the steps.

    Examples
    --------
    >>> from mmopt.bilevel import LowerLevel
    >>> from mmopt.bilevel.inner import newton_cg
    >>> f = lambda x, t: np.sum(np.logaddexp(0, x)) + 0.5 * x @ x - x.sum() * 0.3
    >>> g = lambda x, t: 1 / (1 + np.exp(-x)) + x - 0.3
    >>> h = lambda x, t, v: (np.exp(-x) / (1 + np.exp(-x)) ** 2 + 1) * v
    >>> lower = LowerLevel(f, g, h, lambda x, t, q: np.zeros(1), lambda t: 1.0, np.zeros(2))
    >>> out = newton_cg(lower, np.zeros(2), np.zeros(1), 1e-12)
    >>> out.converged, out.nit <= 6
    (True, True)
    """
    x = np.array(x0, dtype=float)
    dense = callable(getattr(lower, "hessian", None))
    n_hvp = 0
    grad = lower.grad_x(x, theta)
    norm = float(np.linalg.norm(grad))
    fun = None
    for k in range(max_iter + 1):
        if norm <= gtol or not math.isfinite(norm):
            return InnerSolveResult(x, k, n_hvp, norm, norm <= gtol)
        if k == max_iter:
            break
        if dense:
            H = lower.hessian(x, theta)
            try:
                direction = -scipy.linalg.cho_solve(
                    scipy.linalg.cho_factor(H, check_finite=False), grad, check_finite=False
                )
            except (np.linalg.LinAlgError, ValueError):
                direction = -scipy.linalg.lstsq(H, grad, check_finite=False)[0]
        else:
            # Superlinear forcing, but never more accurate than the target needs: a model
            # residual of gtol / 10 brings the gradient below gtol in the final step.
            forcing = max(min(0.5, math.sqrt(norm)) * norm, 0.1 * gtol)
            inner = conjugate_gradient(
                lambda v, x=x: lower.hvp_xx(x, theta, v), -grad, np.zeros_like(x), forcing,
                inv_diag=_inverse_diagonal(lower, x, theta), true_residual=False,
            )
            direction, n_hvp = inner.x, n_hvp + inner.n_matvec
        slope = float(grad @ direction)
        if slope >= 0:  # numerically flat: fall back to the gradient direction
            direction, slope = -grad, -norm * norm
        if fun is None:
            fun = lower.value(x, theta)
        sufficient = armijo(fun, slope, c1=1e-4, value=lambda t: t[1])

        def trial(step, x=x, direction=direction):
            x_trial = x + step * direction
            # [point, value, gradient (computed only when a test needs it)]
            return [x_trial, lower.value(x_trial, theta), None]

        def accept(step, t, norm=norm, sufficient=sufficient):
            if sufficient(step, t):
                return True
            if step == 1.0:
                # Near the minimizer the decrease is below the rounding of the values: a
                # full step that halves the gradient is then taken on the gradient's word.
                t[2] = lower.grad_x(t[0], theta)
                return bool(float(np.linalg.norm(t[2])) < 0.5 * norm)
            return False

        x_new, fun_new, grad_new = backtracking(trial, accept, max_trials=30).trial
        if grad_new is None:
            grad_new = lower.grad_x(x_new, theta)
        norm_new = float(np.linalg.norm(grad_new))
        if not (fun_new < fun or norm_new < 0.5 * norm):
            # Neither the value nor the gradient improves: rounding error dominates, and the
            # gradient is as small as it can be made in floating point.
            return InnerSolveResult(x, k, n_hvp, norm, norm <= gtol)
        x, fun, grad, norm = x_new, fun_new, grad_new, norm_new
    return InnerSolveResult(x, max_iter, n_hvp, norm, False)


def _inverse_diagonal(lower, x, theta):
    """Jacobi preconditioner from the lower level's ``hessian_diagonal``, when it has one."""
    diagonal = getattr(lower, "hessian_diagonal", None)
    if not callable(diagonal):
        return None
    return inverse_diagonal(diagonal(x, theta))
