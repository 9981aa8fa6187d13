"""Voxel-grid downsampling: the coarse level of ICP's multi-resolution solve."""

from __future__ import annotations

import numbers

import numpy as np

from mmopt._core.validation import check_array, check_scalar

__all__ = ["voxel_downsample", "voxel_size_for"]


def voxel_downsample(points, voxel_size: float, *, normals=None, origin=None):
    """Mean point (and mean normal) of each occupied cell of a cubic voxel grid.

    Cell ``floor((p - origin) / voxel_size)`` holds ``p``; each occupied cell gives the mean
    of its points, which averages their noise away (the coarse levels of a pyramid see a
    denoised, sparser surface). Cells come out in lexicographic order of their integer
    coordinates, so the result does not depend on the order of the points.

    Parameters
    ----------
    points : array-like of shape (n, 3)
        The cloud.
    voxel_size : float
        Edge of the cubic cells (> 0, data's units).
    normals : array-like of shape (n, 3), optional
        Normals of the points: their sign-aligned mean per cell is returned too (unit
        length; a cell whose normals cancel keeps the first point's normal).
    origin : array-like of shape (3,), optional
        A corner of the grid; the cloud's minimum when None.

    Returns
    -------
    means : ndarray of shape (m, 3)
    counts : ndarray of shape (m,)
        Points per cell.
    cell_normals : ndarray of shape (m, 3) or None
        Only when ``normals`` is given.

    Examples
    --------
    >>> from mmopt.registration.pyramid import voxel_downsample
    >>> points = np.array([[0.1, 0.1, 0.1], [0.3, 0.3, 0.3], [1.5, 0.2, 0.2]])
    >>> means, counts, _ = voxel_downsample(points, 1.0, origin=np.zeros(3))
    >>> means, counts
    (array([[0.2, 0.2, 0.2],
           [1.5, 0.2, 0.2]]), array([2, 1]))

    References
    ----------
    Q.-Y. Zhou, J. Park, V. Koltun, "Open3D: A Modern Library for 3D Data Processing",
    arXiv:1801.09847, 2018 (voxel downsampling as a registration front end).
    """
    points = check_array(points, "points", ndim=2, shape=(None, 3))
    voxel_size = check_scalar(voxel_size, "voxel_size", min_value=0.0, include_min=False)
    if points.shape[0] == 0:
        raise ValueError("points must hold at least one point.")
    if normals is not None:
        normals = check_array(normals, "normals", shape=points.shape)
    origin = points.min(axis=0) if origin is None else check_array(origin, "origin",
                                                                   shape=(3,))
    cells = np.floor((points - origin) / voxel_size).astype(np.int64)
    # One integer key per cell (row-major over the occupied box): a 1-D unique is several
    # times faster than np.unique(axis=0) on rows.
    cells -= cells.min(axis=0)
    extent = cells.max(axis=0) + 1
    if float(np.prod(extent.astype(float))) >= 2.0**62:
        raise ValueError(
            f"voxel_size={voxel_size:g} is too small for the cloud's extent: the grid would "
            "have more than 2^62 cells."
        )
    keys = (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]
    _, labels, counts = np.unique(keys, return_inverse=True, return_counts=True)
    labels = labels.ravel()
    means = np.stack(
        [np.bincount(labels, weights=points[:, j], minlength=counts.size) for j in range(3)],
        axis=1,
    ) / counts[:, None]
    cell_normals = None
    if normals is not None:
        cell_normals = _mean_normals(normals, labels, counts.size)
    return means, counts, cell_normals


def _mean_normals(normals: np.ndarray, labels: np.ndarray, n_cells: int) -> np.ndarray:
    # Normals have arbitrary signs: flip each onto the side of its cell's first normal
    # before averaging, so that opposite copies of one direction do not cancel.
    first = np.full(n_cells, -1, dtype=np.intp)
    first[labels[::-1]] = np.arange(labels.size)[::-1]
    reference = normals[first]
    signs = np.where(np.einsum("ij,ij->i", normals, reference[labels]) < 0.0, -1.0, 1.0)
    aligned = normals * signs[:, None]
    summed = np.stack(
        [np.bincount(labels, weights=aligned[:, j], minlength=n_cells) for j in range(3)],
        axis=1,
    )
    length = np.linalg.norm(summed, axis=1)
    ok = length > 0
    summed[ok] /= length[ok, None]
    summed[~ok] = reference[~ok]
    return summed


def voxel_size_for(points, n_cells: int, *, max_rounds: int = 4) -> float:
    """A voxel size whose grid over ``points`` has about ``n_cells`` occupied cells.

    Scans are surfaces: occupied cells scale like ``voxel_size^-2``, so each round corrects
    the size by ``sqrt(count / n_cells)`` from a start that spreads ``n_cells`` cells over
    the bounding box's largest face; it stops within 15% of the goal or after
    ``max_rounds`` rounds.

    Examples
    --------
    >>> from mmopt.registration.pyramid import voxel_downsample, voxel_size_for
    >>> xy = np.random.default_rng(0).random((20000, 2))
    >>> size = voxel_size_for(np.c_[xy, np.zeros(20000)], 400)
    >>> 300 <= voxel_downsample(np.c_[xy, np.zeros(20000)], size)[0].shape[0] <= 500
    True
    """
    points = check_array(points, "points", ndim=2, shape=(None, 3))
    n_cells = check_scalar(n_cells, "n_cells", kind=numbers.Integral, min_value=1)
    sides = np.sort(np.ptp(points, axis=0))[::-1]
    area = float(sides[0] * max(sides[1], sides[0] * 1e-3))
    if not area > 0:
        return 1.0
    size = float(np.sqrt(area / n_cells))
    for _ in range(max_rounds):
        count = voxel_downsample(points, size)[0].shape[0]
        if abs(count - n_cells) <= 0.15 * n_cells:
            break
        size *= float(np.sqrt(count / n_cells))
    return size
