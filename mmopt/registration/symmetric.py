"""The symmetric point-to-plane metric of rigid ICP (Rusinkiewicz, "A Symmetric Objective
Function for ICP", 2019).

For a source point ``p`` with normal ``n_p``, moved by ``T = (R, t)`` to ``x = R p + t``, and
its closest target point ``q`` with normal ``n_q``, the residual is the offset of ``x - q``
along the sum of the two normals,

.. math::

    r = (x - q)^T (R n_p + n_q),

with ``n_q`` flipped, when needed, to agree with ``R n_p`` (estimated normals have no sign).
It is zero when ``p`` and ``q`` lie on a common circle tangent to both normals, not only on
a common plane, so it fits curved surfaces to second order where point-to-plane fits them to
first order. Under the left perturbation ``exp(delta) T`` with ``delta = (omega, v)``,
``x -> x + omega x x + v`` and ``m = R n_p -> m + omega x m``, so at ``delta = 0``

.. math::

    \\partial r / \\partial \\omega = x \\times (m + n_q) + m \\times (x - q), \\qquad
    \\partial r / \\partial v = m + n_q.

:class:`~mmopt.registration.ICP` with ``metric="symmetric"`` takes one Gauss-Newton step on
these weighted residuals per iteration, backtracking until the robust energy at the frozen
matches decreases (as for point-to-plane).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmopt._core.linesearch import backtracking
from mmopt.registration.normals import estimate_normals
from mmopt.registration.se3 import _se3_exp

__all__ = ["symmetric_jacobian", "symmetric_residuals"]


def source_normals(problem, k: int, neighbors: str) -> np.ndarray:
    """The problem's source normals, or PCA normals over ``k`` neighbours (cached)."""
    if problem.source_normals is not None:
        return np.asarray(problem.source_normals)
    if k >= problem.source.shape[0]:
        raise ValueError(
            f"normals_k={k} must be smaller than the number of source points "
            f"({problem.source.shape[0]}) to estimate the source normals of "
            "metric='symmetric'; lower normals_k or pass source_normals."
        )
    return problem.cached(("source_normals", k, neighbors),
                          lambda: estimate_normals(problem.source, k=k, neighbors=neighbors))


def _directions(moved_normals: np.ndarray, target_normals: np.ndarray) -> np.ndarray:
    """``R n_p + n_q`` with ``n_q`` turned to agree with ``R n_p``."""
    dots = np.einsum("ij,ij->i", moved_normals, target_normals)
    return moved_normals + np.where(dots < 0.0, -1.0, 1.0)[:, None] * target_normals


def symmetric_residuals(X, Q, moved_normals, target_normals) -> np.ndarray:
    """Residuals ``(x_i - q_i)^T (R n_p + n_q)`` of matched pairs (rows of equal length).

    Examples
    --------
    >>> from mmopt.registration.symmetric import symmetric_residuals
    >>> n = np.array([[0.0, 0.0, 1.0]])
    >>> symmetric_residuals(np.array([[0.0, 0.0, 0.5]]), np.zeros((1, 3)), n, -n)
    array([1.])
    """
    return np.einsum("ij,ij->i", X - Q, _directions(moved_normals, target_normals))


def symmetric_jacobian(X, Q, moved_normals, target_normals) -> np.ndarray:
    """Jacobian (rows ``(d r / d omega, d r / d v)``) of :func:`symmetric_residuals` under
    the left perturbation ``exp(delta) T`` at ``delta = 0`` (see the module notes)."""
    directions = _directions(moved_normals, target_normals)
    return np.hstack([np.cross(X, directions) + np.cross(moved_normals, X - Q), directions])


def symmetric_correspond(setup, X, T, dist, idx) -> tuple:
    """ICP's correspondence tuple ``(X, residuals, dist, idx)`` of the symmetric metric
    (infinite residuals where no target point was found within the search bound)."""
    residuals = np.full(idx.shape, np.inf)
    ok = idx >= 0
    moved = setup.source_normals[ok] @ T[:3, :3].T
    residuals[ok] = symmetric_residuals(X[ok], setup.Q[idx[ok]], moved,
                                        setup.normals[idx[ok]])
    return X, residuals, dist, idx


def symmetric_step(setup, T, corr, weights: Callable, energy: Callable) -> np.ndarray:
    """One Gauss-Newton step of ICP's symmetric metric from ``T``, backtracked until
    ``energy(residuals)`` at the frozen matches decreases (``T`` itself when it cannot).

    ``weights(r)`` gives the robust loss's IRLS weights of the residuals ``r``.
    """
    X, residuals, _, idx = corr
    ok = idx >= 0
    if not ok.any():
        return T
    X, r = X[ok], residuals[ok]
    Q, nq = setup.Q[idx[ok]], setup.normals[idx[ok]]
    moved = setup.source_normals[ok] @ T[:3, :3].T
    w = weights(r)
    if not np.sum(w) > 0:
        return T
    J = symmetric_jacobian(X, Q, moved, nq)
    Jw = J * w[:, None]
    A = Jw.T @ J
    # A tiny ridge keeps degenerate geometry (a plane or a sphere) solvable.
    ridge = 1e-12 * max(float(np.trace(A)), np.finfo(float).tiny)
    delta = -np.linalg.solve(A + ridge * np.eye(6), Jw.T @ r)
    if not np.all(np.isfinite(delta)):
        return T
    e0 = energy(r)

    def trial(step: float) -> tuple:
        D = _se3_exp(step * delta)
        Xs = X @ D[:3, :3].T + D[:3, 3]
        return D, energy(symmetric_residuals(Xs, Q, moved @ D[:3, :3].T, nq))

    search = backtracking(trial, lambda _, t: t[1] < e0, max_trials=30)
    return search.trial[0] @ T if search.success else T
