"""Normals and local geometry of a point cloud by PCA over nearest neighbours."""

from __future__ import annotations

import numpy as np

from mmopt._core.validation import check_array, check_scalar
from mmopt.registration._neighbors import NeighborIndex

__all__ = ["estimate_normals", "local_geometry", "sampled_geometry"]


def local_geometry(points, *, k: int = 10, neighbors: str = "auto"):
    """Per-point normal, thickness and spacing from the ``k`` nearest neighbours.

    Returns ``(normals, thickness, spacing)``: unit normals (eigenvector of the smallest
    eigenvalue of the neighbourhood covariance, signed as in :func:`estimate_normals`), the
    thickness
    ``sqrt(smallest eigenvalue)`` (spread across the local plane: noise plus curvature), and
    the typical spacing of the cloud, ``sqrt(median_i median_j d_ij^2)`` over the 6 nearest
    neighbours ``j`` of each point ``i`` (the official Fast-Robust-ICP estimate).

    Examples
    --------
    >>> from mmopt.registration.normals import local_geometry
    >>> xy = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
    >>> normals, thickness, spacing = local_geometry(np.c_[xy, np.zeros(100)], k=8)
    >>> bool(np.allclose(np.abs(normals[:, 2]), 1.0)), float(thickness.max()), spacing
    (True, 0.0, 1.0)
    """
    points = check_array(points, "points", ndim=2, shape=(None, 3))
    k = check_scalar(k, "k", kind=int, min_value=3)
    n = points.shape[0]
    if n < 3:
        raise ValueError(f"points must hold at least 3 points, got {n}.")
    if k > n:
        raise ValueError(f"k={k} must be at most the number of points ({n}).")
    # Work at unit size (a power of two: the scaling is exact), so that the squared
    # distances and covariances of clouds at 1e300 or 1e-300 neither overflow nor underflow.
    unit = _power_of_two_size(points)
    points = points / unit
    index = NeighborIndex(points, backend=neighbors)
    normals, thickness, spacing = _neighbourhood_geometry(index, points, k)
    return normals, thickness * unit, spacing * unit


def sampled_geometry(index: NeighborIndex, *, k: int = 10, max_points: int = 50000,
                     n_threads: int = 1, normals: bool = True):
    """:func:`local_geometry` of a regular subsample of an indexed cloud.

    The neighbourhoods of every ``ceil(n / max_points)``-th point of ``index.points``,
    searched in the whole cloud through ``index`` (no second tree): their normals and
    thicknesses, and the spacing estimate (``normals=False``: None for the normals, only
    the neighbourhoods' eigenvalues computed). The spacing and the noise estimate (the median
    thickness) are medians, which a subsample of tens of thousands of points pins down as
    well as the whole cloud, at a fraction of the cost on clouds of 10^5-10^6 points. The
    points should be of moderate size (normalized coordinates): squared distances are formed.

    Examples
    --------
    >>> from mmopt.registration._neighbors import NeighborIndex
    >>> from mmopt.registration.normals import sampled_geometry
    >>> xy = np.stack(np.meshgrid(np.arange(30.0), np.arange(30.0)), -1).reshape(-1, 2)
    >>> index = NeighborIndex(np.c_[xy, np.zeros(900)])
    >>> normals, thickness, spacing = sampled_geometry(index, k=8, max_points=100)
    >>> normals.shape, spacing
    ((100, 3), 1.0)
    """
    k = check_scalar(k, "k", kind=int, min_value=3)
    max_points = check_scalar(max_points, "max_points", kind=int, min_value=1)
    points = index.points
    stride = -(-points.shape[0] // max_points)
    return _neighbourhood_geometry(index, points[::stride], k, n_threads=n_threads,
                                   normals=normals)


def _neighbourhood_geometry(index: NeighborIndex, queries: np.ndarray, k: int,
                            n_threads: int = 1, normals: bool = True):
    """Normals and thickness of the neighbourhoods of ``queries`` among the indexed points
    (each query one of them), and the cloud's spacing (see :func:`local_geometry`); None
    for the normals with ``normals=False`` (eigenvalues only: cheaper)."""
    n = index.points.shape[0]
    k = min(k, n)
    # One neighbour more than needed shows whether the k-th nearest is tied with the next.
    dist, idx = index.query(queries, k=min(max(k, 7) + 1, n), n_threads=n_threads)
    # Spacing from the 6 nearest neighbours other than the point itself.
    near = dist[:, 1 : min(7, n)] ** 2
    spacing = float(np.sqrt(np.median(np.median(near, axis=1))))
    idx, members = _tied_neighbourhoods(index, queries, k, dist, idx, n_threads)
    # Summed in the order of the point indices: the same set gives the same bits whatever
    # order the KD-tree library returned it in.
    order = np.argsort(np.where(members, idx, n), axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    members = np.take_along_axis(members, order, axis=1)
    mask = members[:, :, None].astype(float)
    neighbourhoods = index.points[np.where(members, idx, 0)] * mask
    counts = members.sum(axis=1)[:, None]
    centred = (neighbourhoods - neighbourhoods.sum(axis=1, keepdims=True)
               / counts[:, :, None]) * mask
    covariance = np.einsum("nki,nkj->nij", centred, centred) / counts[:, :, None]
    if normals:
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        normals = _fixed_sign(eigenvectors[:, :, 0])
    else:
        eigenvalues, normals = np.linalg.eigvalsh(covariance), None
    thickness = np.sqrt(np.clip(eigenvalues[:, 0], 0.0, None))
    return normals, thickness, spacing


# Distances equal to this relative precision count as ties (a regular grid's equidistant
# neighbours differ in the last bits, and the KD-tree libraries round them differently).
_TIE = 1e-9


def _tied_neighbourhoods(index: NeighborIndex, queries, k, dist, idx, n_threads):
    """``(idx, members)``: the ``k`` nearest indexed points of each query and every point
    as near as the ``k``-th (``members`` marks the entries of each row that belong).

    Among equidistant points the KD-tree libraries pick different ones for the ``k``-th
    place (pykdtree and scipy disagree on regular grids), so a neighbourhood of exactly
    ``k`` would depend on the library; with all ties in it, it does not. ``dist, idx`` hold
    a query of at least ``k + 1`` neighbours (or all points); rows whose ties run to its
    end are searched again, with twice as many neighbours each time.
    """
    n = index.points.shape[0]
    radius = dist[:, k - 1] * (1.0 + _TIE)
    while True:
        width = idx.shape[1]
        open_rows = np.flatnonzero(dist[:, -1] <= radius) if width < n else []
        if len(open_rows) == 0:
            return idx, (dist <= radius[:, None]) & (idx >= 0)
        wider = min(2 * width, n)
        more_dist, more_idx = index.query(queries[open_rows], k=wider, n_threads=n_threads)
        pad = ((0, 0), (0, wider - width))
        dist = np.pad(dist, pad, constant_values=np.inf)
        idx = np.pad(idx, pad, constant_values=-1)
        dist[open_rows], idx[open_rows] = more_dist, more_idx


def _fixed_sign(normals: np.ndarray) -> np.ndarray:
    """The normals turned so that the component of largest magnitude is positive (the
    first such component on exact ties): a sign that depends on the normal alone, not on
    the eigen-solver or on the order of the neighbours."""
    normals = np.ascontiguousarray(normals)
    largest = np.argmax(np.abs(normals), axis=1)
    sign = np.where(normals[np.arange(len(normals)), largest] < 0.0, -1.0, 1.0)
    return normals * sign[:, None]


def _power_of_two_size(points: np.ndarray) -> float:
    """The power of two nearest to the cloud's largest coordinate spread (1 if none)."""
    spread = float(np.ptp(points, axis=0).max()) if points.size else 0.0
    if not 0.0 < spread < np.inf:
        return 1.0
    return float(2.0 ** round(np.log2(spread)))


def estimate_normals(points, *, k: int = 10, neighbors: str = "auto") -> np.ndarray:
    """Unit normals of a point cloud by PCA over each point's ``k`` nearest neighbours.

    The neighbourhood holds the ``k`` nearest points and every point as near as the
    ``k``-th (on a regular grid several are equidistant, and KD-tree libraries pick
    different ones), so the normals do not depend on the ``neighbors`` library. The sign
    makes the component of largest magnitude positive: a fixed rule, not a consistent
    orientation of the surface (point-to-plane ICP only uses ``(n^T r)^2``, and SPARE
    turns each target normal to agree with its source normal).

    Parameters
    ----------
    points : array-like of shape (n, 3)
        The cloud.
    k : int, default=10
        Neighbourhood size (the point itself included, ties with the ``k``-th too), from 3
        to the number of points.
    neighbors : {"auto", "scipy", "pykdtree"}, default="auto"
        KD-tree library.

    Returns
    -------
    ndarray of shape (n, 3)

    Examples
    --------
    >>> from mmopt.registration import estimate_normals
    >>> rng = np.random.default_rng(0)
    >>> plane = np.c_[rng.random((200, 2)), np.zeros(200)]
    >>> bool(np.allclose(np.abs(estimate_normals(plane)[:, 2]), 1.0))
    True
    """
    return local_geometry(points, k=k, neighbors=neighbors)[0]
