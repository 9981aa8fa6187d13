"""Multiscale point clouds and truncated kernels for sharp entropic OT.

Two pieces of Schmitzer's sparse stabilized scaling (2019) and of geomloss's coarse-to-fine
scheme, for the squared Euclidean cost:

- :func:`grid_hierarchy`: nested grid clusterings of both clouds (cells halving in size),
  coarsest first, each cluster a weighted centroid carrying its points' mass;
- :func:`kept_pairs`: the pairs whose reduced cost ``C_ij - phi_i - psi_j`` is at most a
  threshold, found without visiting the others. With ``M = max psi`` and the lifted points
  ``X_i = (x_i, 0)``, ``Y_j = (y_j, sqrt(M - psi_j))``, ``|X_i - Y_j|^2 = C_ij - psi_j + M``,
  so the kept columns of row ``i`` are a ball of ``X_i`` in the lifted cloud: k-nearest
  queries of a :class:`scipy.spatial.cKDTree`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["CloudLevel", "grid_hierarchy", "kept_pairs"]

# Neighbours per block of KD-tree queries (about 100 MB of temporaries).
_QUERY_ENTRIES = 1 << 22


@dataclass
class CloudLevel:
    """One level of the hierarchy: clustered clouds and their weights.

    ``x_label[i]`` is the cluster (row of ``x``) of the original point ``i`` (likewise
    ``y_label``); ``cell`` is the grid's cell size, 0 for the original clouds.
    """

    x: np.ndarray
    a: np.ndarray
    y: np.ndarray
    b: np.ndarray
    x_label: np.ndarray
    y_label: np.ndarray
    cell: float

    def __post_init__(self):
        self.log_a, self.log_b = np.log(self.a), np.log(self.b)


def _cells(points, origin, cell):
    """Integer labels of the grid cells of ``points`` (0 .. count - 1) and the count."""
    keys = np.floor((points - origin) / cell).astype(np.int64)
    if keys.shape[1] <= 3 and keys.max(initial=0) < (1 << 20):
        # One 60-bit integer per point: a 1-D sort instead of a lexicographic one.
        code = np.zeros(len(keys), dtype=np.int64)
        for column in keys.T:
            code = (code << 20) | column
        _, labels = np.unique(code, return_inverse=True)
    else:
        _, labels = np.unique(keys, axis=0, return_inverse=True)
    labels = labels.ravel()
    return labels, int(labels.max()) + 1


def _centroids(points, weights, labels, count):
    mass = np.bincount(labels, weights=weights, minlength=count)
    centers = np.stack(
        [np.bincount(labels, weights=weights * column, minlength=count) for column in points.T],
        axis=1,
    )
    return np.ascontiguousarray(centers / mass[:, None]), mass


def grid_hierarchy(x, a, y, b, *, max_coarse=1000, growth=8.0) -> list[CloudLevel]:
    """Levels from a coarse clustering of at most ``max_coarse`` clusters per cloud to the
    original clouds, each level about ``growth`` times larger than the previous.

    The grids share one origin and halve their cells from the clouds' bounding box down,
    so the levels are nested: every cluster lies in one cluster of each coarser level.
    Weights must be positive.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.random((5000, 2)), rng.random((4000, 2))
    >>> levels = grid_hierarchy(x, np.full(5000, 2e-4), y, np.full(4000, 2.5e-4))
    >>> [len(level.x) <= 1000 for level in levels[:1]], levels[-1].cell
    ([True], 0.0)
    """
    n, m = len(x), len(y)
    identity = CloudLevel(x, a, y, b, np.arange(n), np.arange(m), 0.0)
    if max(n, m) <= max_coarse:
        return [identity]
    origin = np.minimum(x.min(axis=0), y.min(axis=0))
    width = float(np.max(np.maximum(x.max(axis=0), y.max(axis=0)) - origin))
    if width == 0.0:
        return [identity]
    width *= 1.0 + 1e-9  # the largest coordinate stays in the last cell
    levels: list[CloudLevel] = []
    previous = 0
    for k in range(1, 40):
        cell = width / 2.0**k
        x_label, x_count = _cells(x, origin, cell)
        y_label, y_count = _cells(y, origin, cell)
        count = max(x_count, y_count)
        if count > 0.25 * max(n, m):
            break  # as large as the clouds themselves: they come next
        if count > max_coarse and not levels:
            break  # no grid is coarse enough (high dimension): no hierarchy
        if count <= max_coarse and levels:
            levels.pop()  # a finer level that is still coarse enough replaces it
        elif levels and count < growth * previous:
            continue
        xc, ac = _centroids(x, a, x_label, x_count)
        yc, bc = _centroids(y, b, y_label, y_count)
        levels.append(CloudLevel(xc, ac, yc, bc, x_label, y_label, cell))
        previous = count
    return levels + [identity]


def kept_pairs(x, y, phi, psi, threshold, *, n_threads=1, k_start=16):
    """The CSR pattern ``(indptr, indices)`` of the pairs kept for the sqeuclidean cost.

    Row ``i`` keeps every ``j`` with ``C_ij - phi_i - psi_j <= threshold`` and every ``j``
    with ``C_ij - psi_j <= min_l (C_il - psi_l) + threshold`` (so no row is empty, whatever
    ``phi``); a column left empty keeps, symmetrically, its rows within ``threshold`` of its
    own best. Every pair not kept has ``C_ij - phi_i - psi_j > threshold``. Columns are not
    sorted within a row.

    Examples
    --------
    >>> import numpy as np
    >>> x = y = np.array([[0.0], [1.0], [3.0]])
    >>> indptr, indices = kept_pairs(x, y, np.zeros(3), np.zeros(3), 1.5)
    >>> indptr.tolist(), sorted(indices[:2].tolist())
    ([0, 2, 4, 5], [0, 1])
    """
    n, m = len(x), len(y)
    indptr, indices = _ball_rows(x, y, phi, psi, threshold, n_threads, k_start)
    counts = np.bincount(indices, minlength=m)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        extra_ptr, extra_rows = _ball_rows(
            y[empty], x, psi[empty], phi, threshold, n_threads, k_start
        )
        rows = np.concatenate([np.repeat(np.arange(n), np.diff(indptr)), extra_rows])
        cols = np.concatenate([indices, np.repeat(empty, np.diff(extra_ptr))])
        order = np.argsort(rows, kind="stable")
        indices = cols[order].astype(np.int32)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    return indptr.astype(np.int64), indices


def _ball_rows(x, y, phi, psi, threshold, n_threads, k_start):
    """Row-wise kept pairs (the first rule of :func:`kept_pairs`) by k-nearest queries in
    the lifted cloud, with k grown (x4) for the rows whose k-th neighbour is still kept."""
    n, m = len(x), len(y)
    top = float(psi.max())
    lifted_y = np.hstack([y, np.sqrt(np.maximum(top - psi, 0.0))[:, None]])
    lifted_x = np.hstack([x, np.zeros((n, 1))])
    tree = cKDTree(lifted_y)
    counts = np.zeros(n, dtype=np.int64)
    chunks = []
    pending = np.arange(n)
    k = max(1, min(k_start, m))
    while pending.size:
        # Rows in blocks of at most _QUERY_ENTRIES neighbours: bounded temporary memory
        # however wide the balls (prolonged potentials can make them wide).
        block = max(1, _QUERY_ENTRIES // k)
        again_rows = []
        for start in range(0, pending.size, block):
            part = pending[start:start + block]
            distance, index = tree.query(lifted_x[part], k=k, workers=n_threads)
            distance, index = distance.reshape(len(part), k), index.reshape(len(part), k)
            squared = distance * distance
            # C_ij - psi_j = squared - top; keep it <= threshold + max(phi_i, row minimum).
            radius = top + threshold + np.maximum(phi[part], squared[:, 0] - top)
            keep = squared <= radius[:, None]
            again = keep[:, -1] & (k < m)
            done = ~again
            counts[part[done]] = keep[done].sum(axis=1)
            chunks.append((part[done], index[done][keep[done]]))
            again_rows.append(part[again])
        pending = np.concatenate(again_rows)
        k = min(4 * k, m)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    for rows, kept in chunks:
        # Each chunk's kept entries, row by row, go to their rows' slots in order.
        row_counts = counts[rows]
        starts = np.repeat(indptr[rows] - np.concatenate([[0], np.cumsum(row_counts)[:-1]]),
                           row_counts)
        indices[starts + np.arange(starts.size)] = kept
    return indptr, indices
