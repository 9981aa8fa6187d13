"""Weighted Kabsch / Umeyama: the closed-form rigid (or similarity) least-squares fit."""

from __future__ import annotations

import numpy as np

from mmopt._core.validation import check_array

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
    source, target : array-like of shape (n, 3)
        Corresponding points ``p_i`` and ``q_i`` (finite; the same number of each).
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
    >>> from mmopt.registration.kabsch import weighted_kabsch
    >>> from mmopt.registration.se3 import se3_exp
    >>> T = se3_exp([0.1, 0.2, -0.3, 1.0, 0.0, 2.0])
    >>> p = np.random.default_rng(0).normal(size=(10, 3))
    >>> q = p @ T[:3, :3].T + T[:3, 3]
    >>> bool(np.allclose(weighted_kabsch(p, q), T))
    True
    """
    P = check_array(source, "source", ndim=2)
    if P.shape[1] != 3:
        raise ValueError(f"source must have shape (n, 3), got {P.shape}.")
    Q = check_array(target, "target", ndim=2)
    if Q.shape != P.shape:
        raise ValueError(
            f"target must have the shape of source {P.shape} (one point per source point), "
            f"got {Q.shape}."
        )
    if weights is None:
        w = np.full(P.shape[0], 1.0 / P.shape[0])
    else:
        w = check_array(weights, "weights", shape=(P.shape[0],), nonnegative=True)
        total = float(w.sum())
        if not total > 0:
            raise ValueError("weights must have a positive sum.")
        w = w / total
    for flag, value in (("similarity", similarity),):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{flag} must be True or False, got {value!r}.")
    try:
        low, high = (float(b) for b in scale_bounds)
    except (TypeError, ValueError):
        raise TypeError(f"scale_bounds must be a pair of numbers, got {scale_bounds!r}.") from None
    if not 0.0 <= low <= high or np.isnan(high):
        raise ValueError(f"scale_bounds must satisfy 0 <= low <= high, got {scale_bounds!r}.")
    p_bar = _weighted_mean(w, P)
    q_bar = _weighted_mean(w, Q)
    Pc = P - p_bar
    Qc = Q - q_bar
    # The fit is invariant to a common scaling of the centred clouds: dividing by a power of
    # two near their size (exact) keeps H and the spread finite at 1e300 and 1e-300.
    with np.errstate(over="ignore", invalid="ignore"):
        size = max(float(np.abs(Pc).max()), float(np.abs(Qc).max()))
    if not np.isfinite(size):
        raise ValueError(
            "source and target: the points spread over more than float64 can hold; "
            "rescale them."
        )
    unit = float(2.0 ** round(np.log2(size))) if size > 0 else 1.0
    Pc, Qc = Pc / unit, Qc / unit
    # H = sum_i w_i (p_i - p_bar)(q_i - q_bar)^T.
    H = (Pc * w[:, None]).T @ Qc
    spread = float(w @ np.einsum("ij,ij->i", Pc, Pc)) if similarity else 1.0
    return kabsch_from_moments(
        p_bar, q_bar, H, spread, similarity=similarity, scale_bounds=(low, high)
    )


def _weighted_mean(w: np.ndarray, X: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        mean = w @ X
    if np.isfinite(mean).all():
        return mean
    largest = float(np.abs(X).max())
    return (w @ (X / largest)) * largest


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
