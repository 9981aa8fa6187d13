"""As-rigid-as-possible (ARAP) pieces of non-rigid registration: graphs, energy, rotations."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

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

    Returns ``(heads, tails)``, two int arrays of length ``n * k`` (``k`` is clipped to
    ``n - 1``).
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
    return heads, tails.ravel()


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
