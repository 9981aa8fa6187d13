"""Krylov solves of symmetric positive (semi-)definite systems, for every family.

:func:`conjugate_gradient` solves ``A x = b`` from products with ``A`` only (Hessian-vector
products in the bilevel adjoints and truncated Newton steps, and coordinate-descent Newton
steps), and returns an :class:`~mmopt._core.result.InnerSolveResult` that counts them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from mmopt._core.result import InnerSolveResult

__all__ = ["InnerSolveResult", "conjugate_gradient", "inverse_diagonal"]


def conjugate_gradient(
    matvec: Callable[[np.ndarray], np.ndarray],
    b: np.ndarray,
    x0: np.ndarray,
    tol: float,
    *,
    max_iter: int | None = None,
    inv_diag: np.ndarray | None = None,
    true_residual: bool = True,
    stop: Callable[[np.ndarray], bool] | None = None,
    on_step: Callable[[float, np.ndarray], None] | None = None,
) -> InnerSolveResult:
    """Conjugate gradients for ``A x = b`` (``A`` symmetric positive semi-definite) from ``x0``,
    until the residual norm ``||A x - b|| <= tol``.

    Parameters
    ----------
    matvec : callable
        ``matvec(v) -> A v``; it may return its argument or a view of it.
    b : ndarray
        The right-hand side.
    x0 : ndarray
        The start (not modified). An all-zero start costs no product: the residual is ``b``.
    tol : float
        Target of the residual norm, unpreconditioned.
    max_iter : int, optional
        Most iterations (``10 n + 10`` when None).
    inv_diag : ndarray, optional
        The inverse of ``A``'s diagonal: Jacobi preconditioning (the stopping test stays on
        the unpreconditioned residual). See :func:`inverse_diagonal`.
    true_residual : bool, default=True
        Recompute the residual from scratch before trusting the recursively updated one (at
        the end and every 50 iterations), so that the reported value is the true one, as
        error bounds built on it need. ``False`` skips those products where the recursive
        residual is enough (truncated Newton steps, whose gradient is recomputed anyway).
    stop : callable, optional
        ``stop(r) -> bool``, a stopping rule of the caller's on the (recursively updated)
        residual vector ``r = b - A x``, tested after every iteration besides
        ``||r|| <= tol`` (an inexact Newton step's forcing term in another norm, say). It must
        not modify ``r``.
    on_step : callable, optional
        ``on_step(alpha, p)``, called after every update ``x += alpha p`` with the step and
        the direction whose product ``matvec`` has just computed: a caller can accumulate a
        linear image of ``x`` (``X x`` for ``A = X^T D X``) from the products it already
        formed, without a pass of its own. ``p`` is overwritten afterwards: copy what must
        be kept.

    Returns
    -------
    InnerSolveResult
        ``x``, the iterations ``nit``, the products ``n_matvec`` (including the residual
        checks), the final ``residual`` and whether it reached ``tol``. A null direction of a
        semi-definite ``A`` ends the iteration early (``converged`` then tells). When
        ``stop`` ends it, ``residual`` is the recursive one (no check product) and
        ``converged`` still tells whether ``||r|| <= tol``.

    Examples
    --------
    >>> from mmopt._core.krylov import conjugate_gradient
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> out = conjugate_gradient(lambda v: A @ v, np.ones(2), np.zeros(2), 1e-12)
    >>> bool(np.allclose(A @ out.x, 1.0)), out.nit <= 3
    (True, True)
    """
    # float32 systems stay float32 (a float32 operator is not upcast at every product);
    # anything else is solved in float64.
    x = np.array(x0, dtype=np.result_type(x0, b, np.float32))
    n = x.size
    max_iter = 10 * n + 10 if max_iter is None else max_iter
    if x.any():
        r = b - matvec(x)
        n_matvec = 1
    else:  # a cold start: the residual is b, no product needed
        r = np.array(b, dtype=x.dtype)
        n_matvec = 0
    # math.sqrt of a dot product and in-place updates: the per-iteration overhead counts
    # next to a cheap matvec (a GLM Hessian-vector product is two small matrix products).
    norm = math.sqrt(float(r @ r))
    s = r.copy() if inv_diag is None else inv_diag * r
    p = s.copy()
    rs = float(r @ s)
    k = 0
    # The largest Rayleigh quotient met so far: a lower estimate of ||A||, against which a
    # direction's curvature is judged numerically zero.
    top_curvature = 0.0
    while norm > tol and k < max_iter:
        Ap = matvec(p)
        n_matvec += 1
        pAp = float(p @ Ap)
        pp = float(p @ p)
        top_curvature = max(top_curvature, pAp / pp if pp > 0 else 0.0)
        if pAp <= 1e-15 * top_curvature * pp or rs <= 0 or not math.isfinite(pAp):
            # A (numerically) null direction of a semi-definite A, where a right-hand side
            # with a part in the null space would send the step to infinity: no more
            # progress is possible.
            break
        a = rs / pAp
        x += a * p
        if on_step is not None:
            on_step(a, p)
        r -= a * Ap  # (not in place on Ap: a matvec may return its argument or a view)
        if stop is not None and stop(r):
            k += 1
            norm = math.sqrt(float(r @ r))
            break
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
            n_matvec += 1
            true = float(np.linalg.norm(r))
            if true > tol and norm <= tol:
                s = r.copy() if inv_diag is None else inv_diag * r
                p, rs = s.copy(), float(r @ s)
            norm = true
    return InnerSolveResult(x, k, n_matvec, norm, norm <= tol)


def inverse_diagonal(diagonal: np.ndarray) -> np.ndarray:
    """The Jacobi preconditioner ``1 / diag(A)`` for :func:`conjugate_gradient`.

    Entries where the diagonal is not positive (null directions, such as a multinomial
    intercept's gauge) keep a unit scale.

    Examples
    --------
    >>> from mmopt._core.krylov import inverse_diagonal
    >>> inverse_diagonal(np.array([4.0, 0.0]))
    array([0.25, 1.  ])
    """
    d = np.asarray(diagonal, dtype=float)
    return np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 1.0)
