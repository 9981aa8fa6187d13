"""Python wrapper of the registration family's compiled kernel (``mmopt_ext._icp``)."""

from __future__ import annotations

import numpy as np

from mmopt_ext._icp import cached_nearest as _cached_nearest
from mmopt_ext._icp import nearest_candidates as _nearest_candidates
from mmopt_ext._icp import surface_planes as _surface_planes
from mmopt_ext._icp import weighted_pair_moments as _weighted_pair_moments

__all__ = ["cached_nearest", "nearest_candidates", "surface_planes", "weighted_pair_moments"]


def weighted_pair_moments(P, Q, idx, w):
    """``(sum w, sum w p, sum w q, sum w p q^T, sum w |p|^2)`` over pairs ``(P[i], Q[idx[i]])``.

    Rows with ``idx[i] < 0`` (no match) or ``w[i] == 0`` are skipped; the matched rows are
    read in place rather than gathered into copies.

    Examples
    --------
    >>> from mmopt.registration._kernels import weighted_pair_moments
    >>> P = np.eye(3); Q = 2 * np.eye(3)
    >>> total, p_sum, q_sum, cross, p_sq = weighted_pair_moments(
    ...     P, Q, np.array([0, 1, -1]), np.array([1.0, 0.5, 9.0]))
    >>> total, p_sum, q_sum, p_sq
    (1.5, array([1. , 0.5, 0. ]), array([2., 1., 0.]), 1.5)
    """
    P = np.ascontiguousarray(P, dtype=np.float64)
    Q = np.ascontiguousarray(Q, dtype=np.float64)
    idx = np.ascontiguousarray(idx, dtype=np.intp)
    w = np.ascontiguousarray(w, dtype=np.float64)
    # The kernel reads without bounds checks: a mismatch would read outside the arrays.
    if P.ndim != 2 or P.shape[1] != 3 or Q.ndim != 2 or Q.shape[1] != 3:
        raise ValueError(f"P and Q must have shape (*, 3), got {P.shape} and {Q.shape}.")
    if idx.shape != (P.shape[0],) or w.shape != (P.shape[0],):
        raise ValueError(
            f"idx and w must have shape ({P.shape[0]},), got {idx.shape} and {w.shape}."
        )
    if idx.size and idx.max() >= Q.shape[0]:
        raise ValueError(f"idx holds {idx.max()}, beyond the {Q.shape[0]} rows of Q.")
    return _weighted_pair_moments(P, Q, idx, w)


def surface_planes(X, Q, idx, bandwidth: float, *, taper: bool = False, n_threads: int = 1):
    """Kernel-weighted local plane of the neighbourhood ``Q[idx[i]]`` of each row ``x_i``.

    With ``d_ij = |x_i - q_j|`` over the neighbourhood and ``d_i`` its smallest, the weights
    ``a_ij = exp((d_i^2 - d_ij^2) / (2 h^2))`` (``h`` the bandwidth) give the weighted mean
    ``c_i`` and covariance of the neighbourhood; the plane's normal ``n_i`` is the
    covariance's eigenvector of the smallest eigenvalue (sign arbitrary) and the residual
    ``n_i . (x_i - c_i)``. With ``taper``, each weight is lowered by the farthest member's,
    so that a point entering or leaving a neighbourhood does so at weight 0 and the planes
    move continuously with ``X`` (plain weights where all members are equidistant).

    Returns ``(residuals, closest, nearest, centres, normals)``: shapes (n,), (n,), (n,),
    (n, 3), (n, 3); ``closest`` and ``nearest`` are the distance to and the index in ``Q``
    of each row's nearest neighbour.

    Examples
    --------
    >>> from mmopt.registration._kernels import surface_planes
    >>> Q = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    >>> r, closest, nearest, centres, normals = surface_planes(
    ...     np.array([[0.2, 0.1, 0.5]]), Q, np.array([[0, 1, 2, 3]]), 10.0)
    >>> round(abs(float(r[0])), 12), int(nearest[0]), np.abs(normals[0])
    (0.5, 0, array([0., 0., 1.]))
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    Q = np.ascontiguousarray(Q, dtype=np.float64)
    idx = np.ascontiguousarray(idx, dtype=np.intp)
    # The kernel reads without bounds checks.
    if X.ndim != 2 or X.shape[1] != 3 or Q.ndim != 2 or Q.shape[1] != 3:
        raise ValueError(f"X and Q must have shape (*, 3), got {X.shape} and {Q.shape}.")
    if idx.ndim != 2 or idx.shape[0] != X.shape[0] or idx.shape[1] < 1:
        raise ValueError(f"idx must have shape ({X.shape[0]}, k) with k >= 1, got {idx.shape}.")
    if idx.size and (idx.min() < 0 or idx.max() >= Q.shape[0]):
        raise ValueError(f"idx must hold indices of the {Q.shape[0]} rows of Q.")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth!r}.")
    return _surface_planes(X, Q, idx, float(bandwidth), bool(taper), int(n_threads))


def nearest_candidates(X, Q, candidates, k: int, *, n_threads: int = 1) -> np.ndarray:
    """Indices of the ``k`` nearest points to each row ``x_i`` among ``Q[candidates[i]]``.

    Returns an int array of shape (n, k), nearest first (equidistant candidates in their
    order in ``candidates``). When the candidates of a row hold its ``k`` nearest points of
    ``Q`` (see ICP's surface refinement), these are its exact ``k`` nearest neighbours.

    Examples
    --------
    >>> from mmopt.registration._kernels import nearest_candidates
    >>> Q = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]])
    >>> nearest_candidates(np.array([[2.2, 0, 0]]), Q, np.array([[0, 1, 2, 3]]), 2)
    array([[2, 3]])
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    Q = np.ascontiguousarray(Q, dtype=np.float64)
    candidates = np.ascontiguousarray(candidates, dtype=np.intp)
    # The kernel reads without bounds checks.
    if X.ndim != 2 or X.shape[1] != 3 or Q.ndim != 2 or Q.shape[1] != 3:
        raise ValueError(f"X and Q must have shape (*, 3), got {X.shape} and {Q.shape}.")
    if candidates.ndim != 2 or candidates.shape[0] != X.shape[0]:
        raise ValueError(
            f"candidates must have shape ({X.shape[0]}, K), got {candidates.shape}."
        )
    if candidates.size and (candidates.min() < 0 or candidates.max() >= Q.shape[0]):
        raise ValueError(f"candidates must hold indices of the {Q.shape[0]} rows of Q.")
    if not 1 <= k <= candidates.shape[1]:
        raise ValueError(f"k must be in [1, {candidates.shape[1]}], got {k!r}.")
    return _nearest_candidates(X, Q, candidates, int(k), int(n_threads))


def cached_nearest(X, origin, Q, candidates, near, reach, bound: float):
    """Nearest point of ``Q`` within ``bound`` of each row of ``X``, from cached candidates.

    Row ``i`` was searched at ``origin[i]``: ``candidates[i]`` holds every point of ``Q``
    closer to it than ``reach[i]`` (nearest first; -1 pads), its nearest at ``near[i]``.
    Rows that moved too far for the candidates to settle their answer, or whose distance
    is within rounding of ``bound``, are stale.

    Returns ``(dist, idx, stale)``: per row the distance (inf beyond ``bound``) and index
    (-1) of its nearest point, bit-identical to a KD-tree's bounded search, and the indices
    of the stale rows (to search again; their ``dist`` and ``idx`` are not set).

    Examples
    --------
    >>> from mmopt.registration._kernels import cached_nearest
    >>> Q = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]])
    >>> origin = np.array([[0.9, 0, 0], [0.9, 0, 0]])
    >>> candidates = np.array([[1, 0], [1, 0]])  # within 1.1 of the origin: reach 1.1
    >>> dist, idx, stale = cached_nearest(
    ...     np.array([[0.8, 0, 0], [2.0, 0, 0]]), origin, Q, candidates,
    ...     near=np.array([0.1, 0.1]), reach=np.array([1.1, 1.1]), bound=np.inf)
    >>> idx[:1], stale
    (array([1]), array([1]))
    """
    X, origin, Q, near, reach = (np.ascontiguousarray(a, dtype=np.float64)
                                 for a in (X, origin, Q, near, reach))
    candidates = np.ascontiguousarray(candidates, dtype=np.intp)
    # The kernel reads without bounds checks.
    if X.ndim != 2 or X.shape[1] != 3 or Q.ndim != 2 or Q.shape[1] != 3:
        raise ValueError(f"X and Q must have shape (*, 3), got {X.shape} and {Q.shape}.")
    n = X.shape[0]
    if origin.shape != X.shape or candidates.ndim != 2 or candidates.shape[0] != n:
        raise ValueError(
            f"origin and candidates must have {n} rows like X, got {origin.shape} and "
            f"{candidates.shape}."
        )
    if near.shape != (n,) or reach.shape != (n,):
        raise ValueError(f"near and reach must have shape ({n},), got {near.shape} and "
                         f"{reach.shape}.")
    if candidates.size and candidates.max() >= Q.shape[0]:
        raise ValueError(f"candidates must hold indices of the {Q.shape[0]} rows of Q.")
    return _cached_nearest(X, origin, Q, candidates, near, reach, float(bound))
