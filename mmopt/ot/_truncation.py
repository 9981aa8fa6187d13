"""Multiscale point clouds and truncated kernels for sharp entropic OT.

Two pieces of Schmitzer's sparse stabilized scaling (2019) and of geomloss's coarse-to-fine
scheme, for the squared Euclidean cost:

- :func:`grid_hierarchy`: nested grid clusterings of both clouds (cells halving in size),
  coarsest first, each cluster a weighted centroid carrying its points' mass;
- :func:`kept_pairs`: the pairs whose reduced cost ``C_ij - phi_i - psi_j`` is at most a
  threshold, found without visiting the others by branch and bound in a k-d tree of ``y``
  whose nodes carry an affine upper bound of ``psi`` below them (:class:`SpatialTree`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmopt_ext._pointcloud import tree_affine_bounds, tree_ball_pairs

__all__ = ["CloudLevel", "SpatialTree", "grid_hierarchy", "kept_pairs", "spatial_order"]

# Points per leaf of the spatial trees (at least this many, fewer than twice as many).
_LEAF_SIZE = 16
# The finest clustered level of grid_hierarchy has at most this share of the clouds' points.
_FINEST_SHARE = 0.3


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
        self.trees = {}  # the SpatialTree of each cloud, made by kept_pairs when needed


def _interleave(keys, bits):
    """One integer per row of the non-negative integer ``keys`` (below ``2**bits``): their
    bits interleaved, most significant first (the Morton, or Z-order, code)."""
    code = np.zeros(len(keys), dtype=np.int64)
    for bit in range(bits - 1, -1, -1):
        for column in keys.T:
            code = (code << 1) | ((column >> bit) & 1)
    return code


def spatial_order(points) -> np.ndarray:
    """A permutation of the rows of ``points`` along a Z-order (Morton) curve: points near
    each other in space get near positions, so that the sparse kernels' gathers of the
    partners of consecutive rows hit the same cache lines. At 10^6 points in 3-D the
    clouds outgrow the CPU caches and random order made a pass over the kept pairs 7x
    slower (one thread; the tree search 1.8x). Identity above 63 dimensions.

    Examples
    --------
    >>> import numpy as np
    >>> spatial_order(np.array([[0.9, 0.9], [0.1, 0.1], [0.9, 0.1], [0.1, 0.9]])).tolist()
    [1, 3, 2, 0]
    """
    points = np.asarray(points, dtype=np.float64)
    n, d = points.shape
    if n < 2 or d == 0 or d > 63:
        return np.arange(n)
    bits = min(21, 63 // d)
    low = points.min(axis=0)
    span = float(np.max(points.max(axis=0) - low))
    if not span > 0.0:
        return np.arange(n)
    scale = (2**bits - 1) / span
    keys = np.minimum(((points - low) * scale).astype(np.int64), 2**bits - 1)
    return np.argsort(_interleave(keys, bits), kind="stable")


def _cells(points, origin, cell):
    """Integer labels of the grid cells of ``points`` (0 .. count - 1, in the Z order of
    the cells: :func:`spatial_order`'s locality for the clustered levels) and the count."""
    keys = np.floor((points - origin) / cell).astype(np.int64)
    if keys.shape[1] <= 3 and keys.max(initial=0) < (1 << 20):
        # One 60-bit integer per point: a 1-D sort instead of a lexicographic one.
        _, labels = np.unique(_interleave(keys, 20), return_inverse=True)
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


def grid_hierarchy(x, a, y, b, *, max_coarse=1000, growth=4.0) -> list[CloudLevel]:
    """Levels from a coarse clustering of at most ``max_coarse`` clusters per cloud to the
    original clouds, each level about ``growth`` times larger than the previous.

    The grids share one origin and halve their cells from the clouds' bounding box down,
    so the levels are nested: every cluster lies in one cluster of each coarser level.
    Weights must be positive.

    Examples
    --------
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
        if count > _FINEST_SHARE * max(n, m):
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


class SpatialTree:
    """A balanced k-d tree over fixed points, for the searches of :func:`kept_pairs`.

    An implicit complete binary tree (children of node ``k``: ``2k + 1``, ``2k + 2``), all
    leaves at one depth, each holding a contiguous run of ``points = original[order]``
    (``start[k]:start[k + 1]`` for a leaf ``k``), split at the median of the widest side;
    ``lo`` and ``hi`` are the nodes' bounding boxes. Built once per level; the potentials
    change, the tree does not.
    """

    def __init__(self, points):
        m, d = points.shape
        depth = int(np.floor(np.log2(m / _LEAF_SIZE))) if m >= 2 * _LEAF_SIZE else 0
        order = np.arange(m)
        bounds = [(0, m)]
        for _ in range(depth):
            children = []
            for begin, end in bounds:
                segment = order[begin:end]
                chunk = points[segment]
                axis = int(np.argmax(chunk.max(axis=0) - chunk.min(axis=0)))
                half = (end - begin) // 2
                order[begin:end] = segment[np.argpartition(chunk[:, axis], half)]
                children += [(begin, begin + half), (begin + half, end)]
            bounds = children
        self.first_leaf = (1 << depth) - 1
        nodes = 2 * self.first_leaf + 1
        self.order = order.astype(np.int64)
        self.points = np.ascontiguousarray(points[order])
        self.start = np.zeros(nodes + 1, dtype=np.int64)
        self.start[self.first_leaf:nodes] = [begin for begin, _ in bounds]
        self.start[nodes] = m
        self.leaf_starts = self.start[self.first_leaf:nodes]
        lo, hi = np.empty((nodes, d)), np.empty((nodes, d))
        lo[self.first_leaf:] = np.minimum.reduceat(self.points, self.leaf_starts, axis=0)
        hi[self.first_leaf:] = np.maximum.reduceat(self.points, self.leaf_starts, axis=0)
        self.lo, self.hi = lo, hi
        self._up(lo, np.minimum)
        self._up(hi, np.maximum)

    def _up(self, values, combine):
        """Fill the internal nodes of ``values`` from the leaves, level by level."""
        first = self.first_leaf
        while first > 0:
            parents = np.arange((first - 1) // 2, first)
            values[parents] = combine(values[2 * parents + 1], values[2 * parents + 2])
            first = (first - 1) // 2

    def node_sum(self, weights):
        """The sum of ``weights`` (in the original order) below each node."""
        out = np.empty(2 * self.first_leaf + 1)
        out[self.first_leaf:] = np.add.reduceat(weights[self.order], self.leaf_starts)
        self._up(out, np.add)
        return out

    def node_affine(self, psi):
        """An affine upper bound of ``psi`` (in the original order) below each node:
        ``(shift, offset)`` with ``psi_j <= 2 shift[k].y_j + offset[k] - |shift[k]|^2`` for
        every point ``y_j`` below node ``k``.

        The slope is a least-squares fit of ``psi`` over the node's points (a near map's
        potentials are smooth, so the bound is tight where ``max psi`` is loose by the
        slope times the node's size); the offset is then the exact largest residual, so the
        bound holds whatever the fit (:func:`~mmopt_ext._pointcloud.tree_affine_bounds`).
        """
        nodes = 2 * self.first_leaf + 1
        shift, offset = np.empty((nodes, self.points.shape[1])), np.empty(nodes)
        tree_affine_bounds(self.points, np.ascontiguousarray(psi[self.order]), self.start,
                           self.first_leaf, shift, offset)
        return shift, offset


def kept_pairs(x, y, phi, psi, threshold, *, n_threads=1, trees=None, b=None, reg=None,
               with_cost=True):
    """The CSR pattern ``(indptr, indices)`` of the pairs kept for the sqeuclidean cost,
    their costs, and the row potentials ``phi_eff`` that certify the dropped pairs; with
    the weights ``b`` of ``y`` and ``reg``, also ``dropped``: per row ``i`` an upper bound
    of ``sum_j b_j exp(-(C_ij - phi_eff_i - psi_j) / reg)`` over the pairs left out by the
    row rules (so the plan ``a_i b_j exp((phi_i + psi_j - C_ij) / reg)`` at any
    ``phi <= phi_eff`` drops at most ``sum_i a_i dropped_i``), accumulated in the tree
    search: a skipped node's weight times the exponential of its bound, and the scanned
    points' terms themselves (by a vector ``exp``, the sum raised by a relative 1e-12 to
    cover its rounding; a term below ``e^-700`` counts as ``e^-700``).

    Row ``i`` keeps every ``j`` with ``C_ij - phi_i - psi_j <= threshold`` and every ``j``
    with ``C_ij - psi_j <= min_l (C_il - psi_l) + threshold`` (so no row is empty, whatever
    ``phi``; ``phi_i = -inf`` keeps only the latter); a column left empty keeps,
    symmetrically, its rows within ``threshold`` of its own best. With
    ``phi_eff_i = max(phi_i, min_l (C_il - psi_l)) >= phi_i``, every pair not kept has
    ``C_ij - phi_eff_i - psi_j > threshold``. Columns are not sorted within a row.

    The rows are searched in a :class:`SpatialTree` of ``y`` whose nodes carry an affine
    upper bound ``psi_j <= 2 s.y_j + o - |s|^2`` of the potentials below them
    (:meth:`SpatialTree.node_affine`): since ``|x - y|^2 - 2 s.y = |y - (x + s)|^2 - 2 s.x -
    |s|^2``, a node is skipped when the squared distance from ``x_i + s`` to its box minus
    ``2 s.x_i + o`` exceeds the row's bound (branch and bound, exact). A row searches once
    when that search meets a pair at or below ``phi_i``, else again from its best.
    ``trees``: a dict in which the trees of ``x`` and ``y`` are kept between calls on the
    same clouds. ``with_cost=False``: the costs are not kept (None; 4 bytes per pair
    instead of 12, for callers that recompute them). The pairs of a row come in the
    search's order, whatever ``n_threads`` (rows are searched in parallel by units of 64,
    appended in row order).

    Examples
    --------
    >>> x = y = np.array([[0.0], [1.0], [3.0]])
    >>> indptr, indices, cost, phi_eff = kept_pairs(x, y, np.zeros(3), np.zeros(3), 1.5)
    >>> indptr.tolist(), sorted(indices[:2].tolist()), phi_eff.tolist()
    ([0, 2, 4, 5], [0, 1], [0.0, 0.0, 0.0])
    """
    n, m = len(x), len(y)
    trees = {} if trees is None else trees
    if "y" not in trees:
        trees["y"] = SpatialTree(y)
    weights = np.zeros(m) if b is None else np.asarray(b, dtype=np.float64)
    indptr, indices, cost, phi_eff, dropped, met = _ball_rows(
        x, trees["y"], phi, psi, threshold, n_threads, weights, 1.0 if reg is None else reg,
        with_cost)
    empty = np.flatnonzero(met == 0)
    if empty.size:
        if "x" not in trees:
            trees["x"] = SpatialTree(x)
        extra_ptr, extra_rows, extra_cost, _, _, _ = _ball_rows(
            y[empty], trees["x"], psi[empty], phi_eff, threshold, n_threads, np.zeros(n), 1.0,
            with_cost)
        # Each column's pairs go at the end of their rows, by np.insert: no array of a
        # row per pair, no sort of all the pairs (10^6 points in 3-D keep 3.3 10^8 pairs).
        order = np.argsort(extra_rows, kind="stable")
        extra_rows = extra_rows[order]
        at = indptr[extra_rows + 1]
        indices = np.insert(indices, at, np.repeat(empty, np.diff(extra_ptr))[order])
        if with_cost:
            cost = np.insert(cost, at, extra_cost[order])
        indptr = indptr + np.concatenate(
            [[0], np.cumsum(np.bincount(extra_rows, minlength=n))])
    out = indptr.astype(np.int64), indices, cost, phi_eff
    # The pairs added for empty columns only lower the dropped mass: the bound holds.
    return out if b is None else out + (dropped,)


def _ball_rows(x, tree, phi, psi, threshold, n_threads, weights, reg, with_cost=True):
    """The two row rules of :func:`kept_pairs` for the rows ``x`` against ``tree``'s points
    (potentials ``psi``, weights ``weights``): ``(indptr, indices, cost, phi_eff,
    dropped, met)`` (``met``: 1 for the points some row keeps)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    phi = np.ascontiguousarray(phi, dtype=np.float64)
    psi = np.ascontiguousarray(psi, dtype=np.float64)
    shift, offset = tree.node_affine(psi)
    return tree_ball_pairs(x, phi, tree.points, np.ascontiguousarray(psi[tree.order]),
                           tree.order, tree.lo, tree.hi, tree.start, shift, offset,
                           np.ascontiguousarray(weights[tree.order]),
                           tree.node_sum(weights), tree.first_leaf, float(threshold),
                           float(reg), int(n_threads), bool(with_cost))
