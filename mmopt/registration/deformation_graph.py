"""Coarse stage of SPARE: a deformation graph of affine nodes.

The source is covered by graph nodes ``g_j`` (farthest-point sampling at a radius of
``node_spacing`` mean point spacings); node ``j`` carries an affine map ``x -> A_j (x - g_j)
+ g_j + t_j`` and a point moves by the blend of its nodes' maps,

.. math::

    v_i = \\sum_j w_{ij} \\left(A_j (p_i - g_j) + g_j + t_j\\right),
    \\qquad w_{ij} \\propto \\left(1 - (r_{ij} / R)^2\\right)^3 \\text{ for } r_{ij} < R,

normalized over ``j`` (``R`` twice the sampling radius, so every point has a node within
half of it). The unknowns ``X`` (twelve per node) enter ``v`` linearly. The stage minimizes,
on a subsample of the source,

.. math::

    F(X) = \\frac{1}{s} \\sum_i \\left(\\rho_\\nu(d_i)
    + \\mu\\, \\rho_\\nu(\\lVert v_i - q_i \\rVert)\\right)
    + \\frac{\\alpha_s}{|E|} \\sum_{(j,k) \\in E}
    \\lVert A_j (g_k - g_j) + g_j + t_j - g_k - t_k \\rVert^2
    + \\frac{\\alpha_r}{m} \\sum_j \\operatorname{dist}(A_j, SO(3))^2,

with the Welsch loss ``rho`` of the symmetrized point-to-plane residual ``d_i = (n'_i +
n_q)^T (v_i - q)`` (``n'_i`` the source normal turned by the blend of the nodes' rotations),
``E`` the pairs of nodes that share a point; pairs farther apart than ``reject_distance``
times ``nu`` (SPARE's option of that name), or facing away, are rejected: weight 0, and
``rho`` at its ceiling ``2 nu^2``. The second data part, off by default (weight ``mu``,
``DeformationGraph.point_weight``), is the Welsch loss of the distance to the closest point
``q_i`` on reciprocal pairs (``q_i``'s closest sample is ``v_i``; a valid pair that is not
reciprocal is left out of it, a rejected one counts at its ceiling): the plane residuals do
not see a slide along a flat or cylindrical part, which the normals' noise otherwise drives
at every iteration. It is left out of the first iteration, whose matches are those of the
unregistered start. Each outer iteration fixes the closest points, the normals and the
Welsch weights, majorizes ``dist(A_j, SO(3))^2`` by ``||A_j - R_j||^2`` at the projection
``R_j`` of the current ``A_j`` and solves one sparse linear system for ``X``: ``F`` at the
iteration's matches does not increase.

Implemented from the equations of the SPARE paper (Yao, Deng et al.) and the embedded
deformation of Sumner et al.; the authors state that SPARE is under patent (see
:class:`~mmopt.registration.SPARE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu
from scipy.spatial import cKDTree

from mmopt._core.params import Interval
from mmopt.registration.arap import best_rotations
from mmopt.registration.options import _Checked

__all__ = ["DeformationGraph", "blend_weights", "farthest_point_nodes"]

_POSITIVE = Interval(float, 0, None, closed="neither")
# Proximal term eps ||X - X_k||^2, eps relative to the mean diagonal of the data term's
# Hessian: directions the plane residuals do not see (sliding along a flat or cylindrical
# part, a node without weighted samples) move only as far as the smoothness carries them,
# instead of by the noise of the normals divided by a vanishing curvature. It only tightens
# the surrogate, so F still decreases.
_PROXIMAL = 1e-3


@dataclass(frozen=True)
class DeformationGraph(_Checked):
    """Options of SPARE's coarse stage on a deformation graph (see the module notes).

    Parameters
    ----------
    node_spacing : float, default=10.0
        Sampling radius of the graph nodes in mean point spacings (> 0).
    smooth_weight : float, default=0.01
        ``alpha_s``, the weight of the smoothness between neighbouring nodes (> 0).
    rotation_weight : float, default=1e-4
        ``alpha_r``, the weight of the distance of each ``A_j`` to the rotations (>= 0).
    n_samples : int, default=3000
        Source points of the data term (a fixed random subset; all when fewer).
    tol : float, default=1e-3
        Tolerance on the RMS change of the samples per iteration, relative to the scale.
    max_iter : int, default=30
        Outer iterations.
    point_weight : float, default=0.0
        ``mu``, the weight of the point-to-point part of the data term relative to the
        plane part (>= 0; see the module notes); 0: the paper's plane term alone. The plane
        residuals do not see a slide along a flat or cylindrical part, which noise in the
        normals drives at every iteration (the proximal term only anchors each step to the
        last iterate); this part anchors it to the data. 3e-3 holds bent sheets with noisy
        normals (1e-3 holds less; 1e-2 pins a noise-free grid onto its target so closely
        that the fine stage's ``nu``, the median distance after this stage, collapses), but
        it also holds part of the true tangential motion: on the full scan it costs up to
        twice the error when combined with SPARE's ``point_weight=100`` (see the user guide,
        "The coarse stage's anchor"). Hence the default 0.

    Examples
    --------
    >>> from mmopt.registration import DeformationGraph
    >>> DeformationGraph(node_spacing=8.0)
    DeformationGraph(node_spacing=8.0, smooth_weight=0.01, rotation_weight=0.0001, \
n_samples=3000, tol=0.001, max_iter=30, point_weight=0.0)
    """

    node_spacing: float = 10.0
    smooth_weight: float = 0.01
    rotation_weight: float = 1e-4
    n_samples: int = 3000
    tol: float = 1e-3
    max_iter: int = 30
    point_weight: float = 0.0

    _parameter_constraints: ClassVar[dict] = {
        "node_spacing": [_POSITIVE],
        "smooth_weight": [_POSITIVE],
        "rotation_weight": [Interval(float, 0, None)],
        "n_samples": [Interval(int, 1, None)],
        "tol": [Interval(float, 0, None)],
        "max_iter": [Interval(int, 1, None)],
        "point_weight": [Interval(float, 0, None)],
    }


def farthest_point_nodes(points: np.ndarray, radius: float) -> np.ndarray:
    """Indices of nodes picked by farthest-point sampling until every point is within
    ``radius`` of one (the first node is point 0)."""
    nodes = [0]
    dist = np.linalg.norm(points - points[0], axis=1)
    while True:
        far = int(np.argmax(dist))
        if dist[far] <= radius:
            return np.asarray(nodes, dtype=np.intp)
        nodes.append(far)
        np.minimum(dist, np.linalg.norm(points - points[far], axis=1), out=dist)


def blend_weights(points: np.ndarray, nodes: np.ndarray, radius: float) -> sp.csr_matrix:
    """Normalized weights ``(1 - (r / radius)^2)^3`` of the nodes within ``radius`` of each
    point, an (n, m) sparse matrix whose rows sum to 1.

    Raises ``ValueError`` if a point has no node within ``radius``.
    """
    near = cKDTree(nodes).query_ball_point(points, radius, return_sorted=False)
    counts = np.fromiter((len(row) for row in near), dtype=np.intp, count=len(near))
    if np.any(counts == 0):
        raise ValueError("a point has no deformation-graph node within the blend radius.")
    rows = np.repeat(np.arange(points.shape[0]), counts)
    cols = np.concatenate([np.asarray(row, dtype=np.intp) for row in near])
    r2 = np.sum((points[rows] - nodes[cols]) ** 2, axis=1) / radius**2
    vals = np.clip(1.0 - r2, 0.0, None) ** 3
    # A node exactly at the radius gets weight 0; the nearest node is always well inside.
    sums = np.bincount(rows, weights=vals, minlength=points.shape[0])
    return sp.csr_matrix((vals / sums[rows], (rows, cols)), shape=(points.shape[0], len(nodes)))


def _node_edges(W: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Directed pairs ``(j, k)``, ``j != k``, of nodes that share a point."""
    shared = (W.T @ W).tocoo()
    off = shared.row != shared.col
    return shared.row[off].astype(np.intp), shared.col[off].astype(np.intp)


def _basis(points: np.ndarray, W: sp.csr_matrix, nodes: np.ndarray) -> sp.csr_matrix:
    """``B`` (n, 4m) with ``v = B X + W g``: row i holds ``w_ij [(p_i - g_j)^T, 1]`` at the
    columns ``4j .. 4j+3`` (``X`` stacks the blocks ``[A_j^T; t_j^T]``)."""
    coo = W.tocoo()
    rows, cols, w = coo.row, coo.col, coo.data
    local = np.c_[points[rows] - nodes[cols], np.ones(len(rows))] * w[:, None]
    return sp.csr_matrix(
        (local.ravel(), (np.repeat(rows, 4), (4 * cols[:, None] + np.arange(4)).ravel())),
        shape=(points.shape[0], 4 * nodes.shape[0]),
    )


def _smoothness(nodes: np.ndarray, heads, tails) -> tuple[sp.csr_matrix, np.ndarray]:
    """``S`` (|E|, 4m) and ``h`` (|E|, 3): the smoothness residuals are ``S X + h``."""
    n_edges = len(heads)
    e = np.arange(n_edges)
    local = np.c_[nodes[tails] - nodes[heads], np.ones(n_edges)]
    rows = np.concatenate([np.repeat(e, 4), e])
    cols = np.concatenate([(4 * heads[:, None] + np.arange(4)).ravel(), 4 * tails + 3])
    vals = np.concatenate([local.ravel(), -np.ones(n_edges)])
    S = sp.csr_matrix((vals, (rows, cols)), shape=(n_edges, 4 * nodes.shape[0]))
    return S, nodes[heads] - nodes[tails]


def _affines(X: np.ndarray) -> np.ndarray:
    """The ``A_j`` (m, 3, 3) held in ``X`` (4m, 3)."""
    return np.transpose(X.reshape(-1, 4, 3)[:, :3, :], (0, 2, 1))


@dataclass
class CoarseResult:
    """What the coarse stage hands to the fine stage (normalized units)."""

    v: np.ndarray          # deformed source (n, 3)
    R: np.ndarray          # per-point rotations (n, 3, 3)
    nodes: np.ndarray      # node positions (m, 3)
    affines: np.ndarray    # A_j (m, 3, 3)
    shifts: np.ndarray     # t_j (m, 3)
    history: dict


class _Graph:
    """The fixed pieces of one coarse run on the sampled source points."""

    def __init__(self, p, normals, options: DeformationGraph, index, nu, spacing):
        radius = options.node_spacing * spacing
        self.nodes = p[farthest_point_nodes(p, radius)]
        self.W_all = blend_weights(p, self.nodes, 2.0 * radius)
        self.B_all = _basis(p, self.W_all, self.nodes)
        n = p.shape[0]
        if n > options.n_samples:
            samples = np.sort(np.random.default_rng(0).choice(n, options.n_samples,
                                                            replace=False))
        else:
            samples = np.arange(n)
        self.samples = samples
        self.W = self.W_all[samples]
        self.B = self.B_all[samples]
        self.offset = self.W @ self.nodes
        self.normals = normals[samples]
        heads, tails = _node_edges(self.W_all)
        self.S, self.h = _smoothness(self.nodes, heads, tails)
        self.index = index
        self.nu = nu
        self.m = self.nodes.shape[0]
        self.ws = options.smooth_weight / max(len(heads), 1)
        self.wr = options.rotation_weight / self.m
        self.mu = options.point_weight
        # The quadratic regularizers in vec(X) order (index 3c + a for X[c, a]).
        StS = (self.S.T @ self.S).tocsr()
        self.reg_matrix = sp.kron(StS, sp.identity(3), format="csr") * self.ws
        is_affine = np.tile([1.0, 1.0, 1.0, 0.0], self.m)
        self.reg_matrix += sp.diags(np.repeat(is_affine, 3) * self.wr)
        self.reg_rhs = -(self.S.T @ self.h) * self.ws

    def positions(self, X, all_points=False) -> np.ndarray:
        if all_points:
            return self.B_all @ X + self.W_all @ self.nodes
        return self.B @ X + self.offset

    def point_normals(self, X) -> np.ndarray:
        """Sample normals turned by the blend of the nodes' rotations (unit length)."""
        coo = self.W.tocoo()
        rotations = best_rotations(_affines(X))
        turned = coo.data[:, None] * np.einsum("eab,eb->ea", rotations[coo.col],
                                               self.normals[coo.row])
        out = np.zeros((self.W.shape[0], 3))
        np.add.at(out, coo.row, turned)
        # Blends of nearly opposite rotations could cancel: never divide by zero.
        return out / np.maximum(np.linalg.norm(out, axis=1), 1e-12)[:, None]


def orient_pairs(source_normals, target_normals, *, oriented: bool, reject_opposite: bool):
    """``(target_normals, valid)`` of matched pairs: with oriented normals, pairs facing
    opposite ways are invalid (if ``reject_opposite``); otherwise each target normal is
    flipped to agree with its source normal and every pair is valid."""
    dots = np.einsum("na,na->n", source_normals, target_normals)
    if oriented:
        valid = dots >= 0.0 if reject_opposite else np.ones(len(dots), dtype=bool)
        return target_normals, valid
    flipped = target_normals * np.where(dots < 0.0, -1.0, 1.0)[:, None]
    return flipped, np.ones(len(dots), dtype=bool)


def _pairs(graph: _Graph, v, X, oriented: bool, reject_opposite: bool, target, target_normals,
           reject_distance: float | None = None, point: bool = True):
    """``(q, m, valid, reciprocal)``: matched target points, the directions ``m`` of the
    plane residuals, the pairs not rejected, and those of them in the point-to-point part
    (none unless ``point`` and the part's weight is positive)."""
    dist, idx = graph.index.query(v)
    rn = graph.point_normals(X)
    nq, valid = orient_pairs(rn, target_normals[idx], oriented=oriented,
                             reject_opposite=reject_opposite)
    if reject_distance is not None:
        # As in the fine stage: a sample without a counterpart (missing overlap) is matched
        # to the target's border or to an outlier, far away; left in, it folds the graph's
        # unobserved part onto the target, and the fine stage starts from that fold.
        valid &= dist <= reject_distance * graph.nu
    q = target[idx]
    reciprocal = np.zeros(len(v), dtype=bool)
    if point and graph.mu > 0:
        # Only reciprocal pairs (q's closest sample is the sample itself), as in the fine
        # stage: a sample without a counterpart is matched to the border, whose target
        # points have their own samples, and is left out rather than dragged along to it.
        _, back = cKDTree(v).query(q)
        reciprocal = valid & (back == np.arange(len(v)))
    return q, rn + nq, valid, reciprocal


def _energy(graph: _Graph, X, q, m, valid, reciprocal) -> float:
    """``F(X)`` at fixed matches ``q``, directions ``m`` and point-to-point pairs
    ``reciprocal``; a rejected pair counts at the loss's ceiling ``2 nu^2`` (its limit far
    away) in both parts; a valid pair that is not reciprocal is outside the second."""
    v = graph.positions(X)
    d = np.einsum("na,na->n", m, v - q)
    nu2 = graph.nu**2
    # Counted as 0, a pair would lower F by leaving the target, and the stop and the
    # history would not see the graph sliding off it. The ceiling is a constant at fixed
    # matches: the surrogate and its step are unchanged.
    data = np.sum(np.where(valid, -2.0 * nu2 * np.expm1(-0.5 * d * d / nu2), 2.0 * nu2))
    e2 = np.sum((v - q) ** 2, axis=1)
    # As in the fine stage: a valid pair that is not reciprocal is outside this part (its
    # match is not trusted, it is not a pair leaving the data); a rejected one counts at
    # the ceiling here too.
    point = np.where(valid, 0.0, 2.0 * nu2)
    data += graph.mu * np.sum(np.where(reciprocal,
                                       -2.0 * nu2 * np.expm1(-0.5 * e2 / nu2), point))
    smooth = np.sum((graph.S @ X + graph.h) ** 2)
    A = _affines(X)
    rotation = np.sum((A - best_rotations(A)) ** 2)
    return float(data / len(q) + graph.ws * smooth + graph.wr * rotation)


def _system(graph: _Graph, X, q, m, valid, reciprocal) -> tuple[sp.csc_matrix, np.ndarray]:
    """``H, rhs``: the surrogate of ``F`` at ``X`` is ``x^T H x - 2 rhs^T x + const`` in
    ``x = vec(X)`` (so ``2 (H x - rhs)`` is the gradient of ``F`` at ``X``)."""
    v = graph.positions(X)
    d = np.einsum("na,na->n", m, v - q)
    w = np.where(valid, np.exp(-0.5 * (d / graph.nu) ** 2), 0.0) / len(q)
    # Point-to-point part, majorized like the plane part (Welsch weight fixed at X):
    # wp ||B_i X + offset_i - q_i||^2, the same rows B for each coordinate.
    e2 = np.sum((v - q) ** 2, axis=1)
    wp = graph.mu * np.where(reciprocal, np.exp(-0.5 * e2 / graph.nu**2), 0.0) / len(q)
    # Data rows: d_i = sum_(c,a) B_ic m_ia X_ca + m_i^T (offset_i - q_i).
    coo = graph.B.tocoo()
    J = sp.csr_matrix(
        ((coo.data[:, None] * m[coo.row]).ravel(),
         (np.repeat(coo.row, 3), (3 * coo.col[:, None] + np.arange(3)).ravel())),
        shape=(len(q), 12 * graph.m),
    )
    b = np.einsum("na,na->n", m, graph.offset - q)
    data = (J.T @ sp.diags(w) @ J).tocsr()
    eps = _PROXIMAL * max(float(data.diagonal().mean()), 1e-12)
    point = sp.kron(graph.B.T @ sp.diags(wp) @ graph.B, sp.identity(3))
    H = (data + point + graph.reg_matrix + eps * sp.identity(12 * graph.m)).tocsc()
    rotations = np.zeros((graph.m, 4, 3))
    rotations[:, :3, :] = np.transpose(best_rotations(_affines(X)), (0, 2, 1))
    rhs = (-(J.T @ (w * b)) + graph.reg_rhs.ravel()
           + graph.wr * rotations.ravel() + eps * X.ravel()
           + (graph.B.T @ (wp[:, None] * (q - graph.offset))).ravel())
    return H, rhs


def _step(graph: _Graph, X, *pairs) -> np.ndarray:
    """One MM step: the minimizer of the surrogate of ``F`` at ``X``."""
    H, rhs = _system(graph, X, *pairs)
    # H is SPD (the proximal term): the diagonal as pivot in a symmetric order. Partial
    # pivoting exchanged rows and doubled the fill (full scan: 0.10 -> 0.04 s a step).
    return splu(H, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                options={"SymmetricMode": True}).solve(rhs).reshape(-1, 3)


def run_coarse_stage(p, normals, target, target_normals, *, oriented: bool,
                     reject_opposite: bool, index, options: DeformationGraph,
                     reject_distance: float | None = None) -> CoarseResult:
    """Deform ``p`` (normalized units) by the deformation graph; see the module notes.

    ``index`` is the closest-point index of ``target``; pairs farther apart than
    ``reject_distance * nu`` get weight 0 (None keeps them all). The stage ends when the RMS
    change falls to ``options.tol``, or when ``F`` at the new matches exceeds ``F`` at the
    previous ones: that last step is then undone. The first iteration's ``F`` has no
    point-to-point part (see the module notes), so the second compares a larger objective
    with it: the safeguard can only fire earlier for it, never miss a rise. Returns the
    deformed points, the per-point rotations (projections of the blended ``A_j``) that start
    the fine stage, the nodes and their maps, and a history with ``fun``, ``energy_start``
    and ``residual`` (one entry per step taken, an undone one included).
    """
    spacing = float(np.mean(cKDTree(p).query(p, k=2)[0][:, 1]))
    graph = _Graph(p, normals, options, index, nu=1.0, spacing=max(spacing, 1e-12))
    X = np.tile(np.r_[np.eye(3), np.zeros((1, 3))], (graph.m, 1))
    v = graph.positions(X)
    graph.nu = max(float(np.median(index.query(v)[0])), 1e-6)
    history = {"fun": [], "energy_start": [], "residual": []}
    X_prev = X
    for _ in range(options.max_iter):
        # The first step is taken without the point-to-point part: its matches are those of
        # the unregistered start, off by up to the start's error, which the plane part
        # tolerates (it measures along the normals only) but the point part pulls the
        # samples along the surface towards (a translated ellipsoid: 22 of its 24 wrong
        # start matches are reciprocal; the stage ended 6 times farther from the truth).
        pairs = _pairs(graph, v, X, oriented, reject_opposite, target, target_normals,
                       reject_distance, point=bool(history["energy_start"]))
        energy = _energy(graph, X, *pairs)
        if history["energy_start"] and energy > history["energy_start"][-1]:
            # F at the new matches rose above F at the previous ones: the last step left
            # the data (pairs rejected count at the ceiling) or undid the fit. On bent
            # sheets with noisy normals the graph otherwise slid on, off the target
            # (measured: 36 times the start's error, 4.4 with this). The step is undone
            # (its history entries stay) and the stage ends.
            X = X_prev
            break
        history["energy_start"].append(energy)
        X_prev = X
        X = _step(graph, X, *pairs)
        v_new = graph.positions(X)
        history["fun"].append(_energy(graph, X, *pairs))
        change = float(np.sqrt(np.mean(np.sum((v_new - v) ** 2, axis=1))))
        history["residual"].append(change)
        v = v_new
        if change <= options.tol:
            break
    A = _affines(X)
    blended = np.zeros((p.shape[0], 3, 3))
    coo = graph.W_all.tocoo()
    np.add.at(blended, coo.row, coo.data[:, None, None] * A[coo.col])
    return CoarseResult(
        v=graph.positions(X, all_points=True), R=best_rotations(blended), nodes=graph.nodes,
        affines=A, shifts=X.reshape(-1, 4, 3)[:, 3, :].copy(),
        history={key: np.asarray(val) for key, val in history.items()},
    )
