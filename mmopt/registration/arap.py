"""As-rigid-as-possible (ARAP) pieces of non-rigid registration: graphs, energy, rotations."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from mmopt.registration._neighbors import NeighborIndex

__all__ = [
    "arap_energy",
    "arap_gradient",
    "best_rotations",
    "knn_edges",
    "mesh_edges",
]


def knn_edges(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges ``(i, j)`` from every point to its ``k`` nearest other points.

    Returns ``(heads, tails)``, int arrays of at least ``n * k`` edges (``k`` is clipped to
    ``n - 1``): when the k-NN graph is not connected, edges (both ways) between the nearest
    points of its components are added until it is.
    """
    n = points.shape[0]
    k = min(int(k), n - 1)
    _, idx = NeighborIndex(points, backend="scipy").query(points, k=k + 1)
    heads = np.repeat(np.arange(n), k)
    # Column 0 is the point itself, except among duplicated points: drop the self index
    # wherever it falls and keep the first k others.
    others = idx != np.arange(n)[:, None]
    keep = others & (np.cumsum(others, axis=1) <= k)
    tails = idx[keep].reshape(n, k)
    return _connect(points, heads, tails.ravel())


def _connect(points, heads, tails):
    """Add edges (both ways) until the graph is connected.

    A k-NN graph of a scan with separate parts (or uneven density) can fall apart into
    components that the ARAP term does not tie together; each round joins every component to
    its nearest point outside it (Boruvka), so at most ``log2(components)`` rounds run.
    """
    n = points.shape[0]
    while True:
        graph = sp.csr_matrix((np.ones(heads.shape[0]), (heads, tails)), shape=(n, n))
        n_comp, labels = connected_components(graph, directed=False)
        if n_comp == 1:
            return heads, tails
        joins = set()
        for c in range(n_comp):
            inside = np.flatnonzero(labels == c)
            outside = np.flatnonzero(labels != c)
            dist, nearest = cKDTree(points[outside]).query(points[inside])
            best = int(np.argmin(dist))
            i, j = int(inside[best]), int(outside[nearest[best]])
            joins.add((min(i, j), max(i, j)))  # two components may pick the same pair
        pairs = np.array(sorted(joins), dtype=np.intp)
        heads = np.concatenate([heads, pairs[:, 0], pairs[:, 1]])
        tails = np.concatenate([tails, pairs[:, 1], pairs[:, 0]])


def mesh_edges(faces: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges (both directions) of the unique undirected edges of a triangle mesh."""
    pairs = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    heads = np.concatenate([pairs[:, 0], pairs[:, 1]])
    tails = np.concatenate([pairs[:, 1], pairs[:, 0]])
    order = np.lexsort((tails, heads))
    return heads[order].astype(np.intp), tails[order].astype(np.intp)


def edge_weights(heads: np.ndarray, n: int) -> np.ndarray:
    """``1 / degree(head)`` for every directed edge (the head's out-degree)."""
    degree = np.bincount(heads, minlength=n).astype(float)
    return 1.0 / degree[heads]


def arap_energy(v, R, p, heads, tails, weights) -> float:
    """``sum_(i,j) c_ij || (v_i - v_j) - R_i (p_i - p_j) ||^2`` over the directed edges."""
    diff = (v[heads] - v[tails]) - np.einsum("eab,eb->ea", R[heads], p[heads] - p[tails])
    return float(np.sum(weights * np.einsum("ea,ea->e", diff, diff)))


def arap_gradient(v, R, p, heads, tails, weights) -> np.ndarray:
    """Gradient of :func:`arap_energy` with respect to ``v`` (shape ``(n, 3)``)."""
    diff = (v[heads] - v[tails]) - np.einsum("eab,eb->ea", R[heads], p[heads] - p[tails])
    g = 2.0 * weights[:, None] * diff
    out = np.zeros_like(v, dtype=float)
    np.add.at(out, heads, g)
    np.add.at(out, tails, -g)
    return out


def laplacian(heads, tails, weights, n: int) -> sp.csr_matrix:
    """The weighted graph Laplacian ``sum_e c_e (e_i - e_j)(e_i - e_j)^T`` (n x n)."""
    rows = np.concatenate([heads, tails, heads, tails])
    cols = np.concatenate([heads, tails, tails, heads])
    vals = np.concatenate([weights, weights, -weights, -weights])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def best_rotations(M: np.ndarray) -> np.ndarray:
    """Rotations ``R_i`` maximizing ``<R_i, M_i>_F`` for a stack ``M`` of shape (n, 3, 3).

    The orthogonal Procrustes solution ``U diag(1, 1, det(U V^T)) V^T`` from batched SVDs.
    """
    U, _, Vt = np.linalg.svd(M)
    det = np.linalg.det(U @ Vt)
    U = U.copy()
    U[:, :, 2] *= np.where(det < 0, -1.0, 1.0)[:, None]
    return U @ Vt
