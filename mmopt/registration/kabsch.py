"""Weighted Kabsch / Umeyama: the closed-form rigid (or similarity) least-squares fit."""

from __future__ import annotations

import numpy as np

__all__ = ["kabsch_from_moments", "weighted_kabsch"]


def weighted_kabsch(
    source,
    target,
    weights=None,
    *,
    similarity: bool = False,
    scale_bounds: tuple[float, float] = (0.0, np.inf),
) -> np.ndarray:
    """The transform minimizing ``sum_i w_i ||s R p_i + t - q_i||^2`` over rotations ``R``.

    Weighted means, the 3x3 weighted cross-covariance ``H``, its SVD ``H = U S V^T`` and
    ``R = V diag(1, 1, d) U^T`` with ``d = sign(det(V U^T))`` so that ``R`` is a rotation
    (never a reflection); ``t = q_bar - s R p_bar``. With ``similarity=True`` the scale is
    Umeyama's ``s = trace(diag(1, 1, d) S) / sum_i w_i ||p_i - p_bar||^2``, clipped to
    ``scale_bounds`` (the objective is a convex quadratic in ``s``, so the clipped value is
    the constrained optimum); otherwise ``s = 1``.

    Parameters
    ----------
    source, target : ndarray of shape (n, 3)
        Corresponding points ``p_i`` and ``q_i``.
    weights : ndarray of shape (n,), optional
        Non-negative weights with a positive sum; all ones when None.
    similarity : bool, default=False
        Also fit a uniform scale.
    scale_bounds : (float, float), default=(0, inf)
        Bounds on the scale when ``similarity`` is True.

    Returns
    -------
    ndarray of shape (4, 4)
        ``[[s R, t], [0, 1]]``.

    Examples
    --------
    >>> import numpy as np
    >>> from mmopt.registration.kabsch import weighted_kabsch
    >>> from mmopt.registration.se3 import se3_exp
    >>> T = se3_exp([0.1, 0.2, -0.3, 1.0, 0.0, 2.0])
    >>> p = np.random.default_rng(0).normal(size=(10, 3))
    >>> q = p @ T[:3, :3].T + T[:3, 3]
    >>> bool(np.allclose(weighted_kabsch(p, q), T))
    True
    """
    P = np.asarray(source, dtype=float)
    Q = np.asarray(target, dtype=float)
    if weights is None:
        w = np.full(P.shape[0], 1.0 / P.shape[0])
    else:
        w = np.asarray(weights, dtype=float)
        total = float(w.sum())
        if not total > 0:
            raise ValueError("weights must have a positive sum.")
        w = w / total
    p_bar = w @ P
    q_bar = w @ Q
    Pc = P - p_bar
    # H = sum_i w_i (p_i - p_bar)(q_i - q_bar)^T; centring one side is enough.
    H = (Pc * w[:, None]).T @ Q
    spread = float(w @ np.einsum("ij,ij->i", Pc, Pc)) if similarity else 1.0
    return kabsch_from_moments(
        p_bar, q_bar, H, spread, similarity=similarity, scale_bounds=scale_bounds
    )


def kabsch_from_moments(
    p_bar, q_bar, H, spread: float, *, similarity: bool = False,
    scale_bounds: tuple[float, float] = (0.0, np.inf),
) -> np.ndarray:
    """The fit of :func:`weighted_kabsch` from its sufficient statistics.

    ``p_bar``, ``q_bar``: weighted means; ``H``: the weighted cross-covariance
    ``sum_i w_i (p_i - p_bar)(q_i - q_bar)^T`` (any positive multiple); ``spread``:
    ``sum_i w_i |p_i - p_bar|^2`` on the same scale as ``H`` (used for the scale only).

    Examples
    --------
    >>> import numpy as np
    >>> from mmopt.registration.kabsch import kabsch_from_moments
    >>> kabsch_from_moments(np.zeros(3), np.ones(3), np.eye(3), 1.0)[:3, 3]
    array([1., 1., 1.])
    """
    U, S, Vt = np.linalg.svd(H)
    d = 1.0 if np.linalg.det(Vt.T @ U.T) >= 0 else -1.0
    D = np.array([1.0, 1.0, d])
    R = (Vt.T * D) @ U.T
    scale = 1.0
    if similarity:
        scale = float(S @ D) / spread if spread > 0 else 1.0
        scale = float(np.clip(scale, scale_bounds[0], scale_bounds[1]))
    T = np.eye(4)
    T[:3, :3] = scale * R
    T[:3, 3] = q_bar - scale * (R @ p_bar)
    return T
