"""Inner solvers: the lower level to a certified gradient norm, and the adjoint system by CG.

Each returns an :class:`InnerResult`; :class:`mmopt.bilevel.MAID` adds up their costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

__all__ = ["InnerResult", "conjugate_gradient", "fista", "newton_cg"]


@dataclass
class InnerResult:
    """What an inner solve returns.

    Attributes
    ----------
    x : ndarray
        The point reached.
    nit : int
        Iterations (gradient steps, Newton steps or CG steps).
    n_hvp : int
        Hessian-vector products spent.
    residual : float
        ``||grad_x Phi(x)||`` (inner solvers) or ``||A q - b||`` (CG) at ``x``.
    converged : bool
        Whether the residual reached the requested tolerance.
    """

    x: np.ndarray
    nit: int
    n_hvp: int
    residual: float
    converged: bool


def fista(lower, x0, theta, gtol, *, max_iter=10_000) -> InnerResult:
    """Accelerated gradient descent (FISTA) with adaptive restart, until ``||grad|| <= gtol``.

    The step is ``1 / L`` with ``L = lower.lipschitz(theta)`` when known, otherwise found by
    backtracking on the descent lemma (doubling ``L``). The momentum restarts when it points
    uphill (O'Donoghue and Candes' gradient test), which recovers linear convergence on
    strongly convex problems without knowing ``mu``. The returned point is the one whose
    gradient passed the test, so the test certifies it.

    Examples
    --------
    >>> import numpy as np
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
            return InnerResult(y, k, 0, norm, norm <= gtol)
        if k == max_iter:
            break
        if backtrack:
            f_y = lower.value(y, theta)
            # Near the minimizer the two sides differ by less than the rounding of the values:
            # allow that much, or L would double forever.
            rounding = 16 * np.finfo(float).eps * abs(f_y)
            while True:
                x_new = y - grad_y / L
                diff = x_new - y
                model = f_y + grad_y @ diff + 0.5 * L * (diff @ diff)
                if lower.value(x_new, theta) <= model + rounding:
                    break
                L *= 2.0
        else:
            x_new = y - grad_y / L
        if grad_y @ (x_new - x) > 0:  # momentum points uphill: restart
            t = 1.0
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        y = x_new + ((t - 1.0) / t_new) * (x_new - x)
        x, t = x_new, t_new
    return InnerResult(y, max_iter, 0, norm, False)


def conjugate_gradient(matvec, b, x0, tol, *, max_iter=None, inv_diag=None,
                       true_residual=True) -> InnerResult:
    """Conjugate gradients for ``A x = b`` (``A`` symmetric positive semi-definite) from ``x0``,
    until the residual norm ``||A x - b|| <= tol``.

    ``inv_diag`` (the inverse of ``A``'s diagonal) turns on Jacobi preconditioning; the
    stopping test stays on the unpreconditioned residual.

    The residual is recomputed from scratch at the end so that the reported value is the
    true one (not the recursively updated one), as the error bound of MAID relies on it;
    ``true_residual=False`` skips that product where the recursive residual is enough (the
    truncated Newton steps of :func:`newton_cg`, whose gradient is recomputed anyway).

    Examples
    --------
    >>> import numpy as np
    >>> from mmopt.bilevel.inner import conjugate_gradient
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> out = conjugate_gradient(lambda v: A @ v, np.ones(2), np.zeros(2), 1e-12)
    >>> bool(np.allclose(A @ out.x, 1.0)), out.nit <= 3
    (True, True)
    """
    x = np.array(x0, dtype=float)
    n = x.size
    max_iter = 10 * n + 10 if max_iter is None else max_iter
    if x.any():
        r = b - matvec(x)
        n_hvp = 1
    else:  # a cold start: the residual is b, no product needed
        r = np.array(b, dtype=float)
        n_hvp = 0
    # math.sqrt of a dot product and in-place updates: the per-iteration overhead counts
    # next to a cheap matvec (a GLM Hessian-vector product is two small matrix products).
    norm = math.sqrt(float(r @ r))
    s = r.copy() if inv_diag is None else inv_diag * r
    p = s.copy()
    rs = float(r @ s)
    k = 0
    while norm > tol and k < max_iter:
        Ap = matvec(p)
        n_hvp += 1
        pAp = float(p @ Ap)
        if pAp <= 0 or rs <= 0:  # a null direction of a semi-definite A: no more progress
            break
        a = rs / pAp
        x += a * p
        r -= a * Ap  # (not in place on Ap: a matvec may return its argument or a view)
        if inv_diag is None:
            s = r
        else:
            np.multiply(inv_diag, r, out=s)
        rs_new = float(r @ s)
        p *= rs_new / rs
        p += s
        rs = rs_new
        norm = math.sqrt(float(r @ r))
        k += 1
        if (norm <= tol or k % 50 == 0) and true_residual:
            # Recursive residuals drift from the true ones: check before trusting them.
            r = b - matvec(x)
            n_hvp += 1
            true = float(np.linalg.norm(r))
            if true > tol and norm <= tol:
                s = r.copy() if inv_diag is None else inv_diag * r
                p, rs = s.copy(), float(r @ s)
            norm = true
    return InnerResult(x, k, n_hvp, norm, norm <= tol)


def newton_cg(lower, x0, theta, gtol, *, max_iter=100) -> InnerResult:
    """Damped Newton until ``||grad|| <= gtol``, for small smooth problems (GLMs).

    The Newton system is solved exactly from the dense Hessian when the lower level offers
    ``hessian(x, theta)`` (Cholesky; small problems), otherwise by CG on Hessian-vector
    products to a relative residual ``min(0.5, sqrt(||g||))`` (truncated Newton, superlinear).
    An Armijo backtracking line search on ``Phi`` globalizes the steps.

    Examples
    --------
    >>> import numpy as np
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
            return InnerResult(x, k, n_hvp, norm, norm <= gtol)
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
            direction, n_hvp = inner.x, n_hvp + inner.n_hvp
        slope = float(grad @ direction)
        if slope >= 0:  # numerically flat: fall back to the gradient direction
            direction, slope = -grad, -norm * norm
        if fun is None:
            fun = lower.value(x, theta)
        step = 1.0
        grad_new = None
        for _ in range(30):
            x_new = x + step * direction
            fun_new = lower.value(x_new, theta)
            if fun_new <= fun + 1e-4 * step * slope:
                break
            if step == 1.0:
                # Near the minimizer the decrease is below the rounding of the values: a
                # full step that halves the gradient is then taken on the gradient's word.
                grad_new = lower.grad_x(x_new, theta)
                if float(np.linalg.norm(grad_new)) < 0.5 * norm:
                    break
                grad_new = None
            step *= 0.5
        if grad_new is None:
            grad_new = lower.grad_x(x_new, theta)
        norm_new = float(np.linalg.norm(grad_new))
        if not (fun_new < fun or norm_new < 0.5 * norm):
            # Neither the value nor the gradient improves: rounding error dominates, and the
            # gradient is as small as it can be made in floating point.
            return InnerResult(x, k, n_hvp, norm, norm <= gtol)
        x, fun, grad, norm = x_new, fun_new, grad_new, norm_new
    return InnerResult(x, max_iter, n_hvp, norm, False)


def _inverse_diagonal(lower, x, theta):
    """Jacobi preconditioner from the lower level's ``hessian_diagonal``, when it has one."""
    diagonal = getattr(lower, "hessian_diagonal", None)
    if not callable(diagonal):
        return None
    d = np.asarray(diagonal(x, theta), dtype=float)
    # Null directions (a multinomial intercept gauge) keep a unit scale.
    return np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 1.0)
