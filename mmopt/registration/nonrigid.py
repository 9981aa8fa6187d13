"""Robust non-rigid registration with the symmetrized point-to-plane distance (SPARE).

Implemented from the equations of Yao, Deng et al., "SPARE: Symmetrized Point-to-Plane
Distance for Robust Non-Rigid Registration". The authors state that the method is under
patent and that their code is for research use only; this module was written from the
paper's equations alone and shares no code with theirs. Check the patent situation before
any commercial use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree
from sklearn.base import BaseEstimator

from mmopt._core._docstrings import fill_doc
from mmopt._core.anderson import (
    ANDERSON_OPTION,
    AndersonAcceleration,
    anderson_counts,
    make_accelerator,
)
from mmopt._core.params import (
    InstanceOf,
    Interval,
    Options,
    Param,
    ParamsValidationMixin,
    options_of,
)
from mmopt._core.registry import register_solver, solve
from mmopt._core.result import Result
from mmopt._core.solver import Solver, SolverState
from mmopt._core.validation import check_array
from mmopt.registration._neighbors import BACKENDS, NeighborIndex
from mmopt.registration._spd_solve import LINEAR_SOLVERS, SPDSolver
from mmopt.registration.arap import (
    arap_energy,
    best_rotations,
    edge_weights,
    laplacian,
)
from mmopt.registration.deformation_graph import (
    CoarseResult,
    DeformationGraph,
    orient_pairs,
    run_coarse_stage,
)
from mmopt.registration.nonrigid_problem import CLOUD_PARAMS, NonRigidRegistrationProblem
from mmopt.registration.problem import _centroid, check_point_cloud

__all__ = ["SPARE", "NonRigidRegistration", "NonRigidRegistrationProblem", "nonrigid_icp"]

# Weight of the proximal term eps * ||v - v_k||^2 added to the linear system (normalized
# units; a data block w m m^T has eigenvalue up to 4): it keeps the system positive definite
# when no pair has weight (all rejected), and it stops the directions that the plane
# residuals barely see (a flat sheet sliding in its plane) from jumping by the noise of the
# normals over a vanishing curvature (measured: 1e-8 let a bent 12 x 12 sheet slide by half
# its width). It only tightens the surrogate, so the descent argument is unchanged.
_PROXIMAL = 1e-2


@dataclass
class _Setup:
    """What one run computes once (shared by all its states; read-only but for the sparse
    solver's cached order). The ARAP continuation gives later states a copy with the
    ARAP weight scaled (:func:`_soften`), sharing the rest."""

    scale: float
    origin: np.ndarray
    p: np.ndarray            # source, normalized (n, 3)
    normals: np.ndarray      # source normals (n, 3)
    target: np.ndarray       # target, normalized
    target_normals: np.ndarray
    oriented: bool
    index: NeighborIndex
    heads: np.ndarray
    tails: np.ndarray
    weights: np.ndarray      # arap_weight / degree(head), per directed edge
    system: _Pattern         # the v-step matrix's fixed pattern (ARAP values at scale 1)
    nu: float
    coarse: CoarseResult | None  # the deformation-graph stage, when it ran
    linear: SPDSolver        # this run's sparse solver (remembers its order)
    arap_scale: float = 1.0  # weights and the ARAP values are arap_scale times arap_weight's


def _soften(s: _Setup, factor: float) -> _Setup:
    """The setup with the ARAP weight multiplied by ``factor`` (the rest shared)."""
    return replace(s, weights=s.weights * factor, arap_scale=s.arap_scale * factor)


class _Pattern:
    """The v-step matrix's pattern, fixed for a run: ``kron(L, I3)``'s and every 3x3
    diagonal block in full (CSC, sorted), with the places of the ARAP values and of the
    blocks in its data. Adding the blocks as a sparse matrix dropped the zero entries of a
    rejected pair's block, so the pattern changed with the rejections, and the sparse
    solver chose its order again (or reused one made for another pattern)."""

    def __init__(self, arap: sp.spmatrix, n: int):
        arap = sp.csc_matrix(arap)
        arap.sum_duplicates()
        size = 3 * n
        ones = sp.bsr_matrix((np.ones((n, 3, 3)), np.arange(n), np.arange(n + 1)),
                             shape=(size, size))
        pattern = (abs(arap) + ones).tocsc()  # positive entries: none cancels
        pattern.sum_duplicates()
        self.shape = (size, size)
        self.indptr, self.indices = pattern.indptr, pattern.indices
        keys = self._keys(pattern.indptr, pattern.indices, size)
        self.arap_values = arap.data
        self.arap_places = np.searchsorted(keys, self._keys(arap.indptr, arap.indices, size))
        # Block i's entry (a, b) sits at row 3i + a, column 3i + b.
        i, a, b = np.indices((n, 3, 3)).reshape(3, -1)
        self.block_places = np.searchsorted(keys, (3 * i + b) * size + 3 * i + a)

    @staticmethod
    def _keys(indptr, indices, size):
        """Column-major keys of a CSC pattern's entries (increasing when sorted)."""
        return np.repeat(np.arange(size, dtype=np.int64), np.diff(indptr)) * size + indices

    def matrix(self, arap_scale: float, blocks: np.ndarray) -> sp.csc_matrix:
        """``arap_scale kron(L, I3) + blockdiag(blocks)`` on the fixed pattern."""
        data = np.zeros(len(self.indices))
        data[self.arap_places] = arap_scale * self.arap_values
        data[self.block_places] += blocks.ravel()
        return sp.csc_matrix((data, self.indices, self.indptr), shape=self.shape)


@dataclass
class _State(SolverState):
    v: np.ndarray = None
    R: np.ndarray = None
    setup: _Setup = None
    inlier_ratio: float = np.nan
    anderson: AndersonAcceleration | None = None  # this run's accelerator


@dataclass
class _Pairs:
    """The correspondences and weights of one outer iteration (fixed during it)."""

    q: np.ndarray
    nq: np.ndarray       # target normals, sign-matched to the source normal when unoriented
    w: np.ndarray        # Welsch weights (0 for rejected pairs)
    valid: np.ndarray    # pairs not rejected for opposite normals
    mu: float = 0.0      # weight of the point-to-point part of the data term
    wp: np.ndarray | None = None  # its Welsch weights (when mu > 0)


@register_solver
class SPARE(Solver):
    """SPARE: robust non-rigid registration by majorization-minimization.

    Minimizes over the deformed positions ``v`` and per-point rotations ``R``

    .. math::

        E(v, R) = \\sum_i 2\\nu^2 \\left(1 - e^{-d_i^2 / (2\\nu^2)}\\right)
        + \\alpha \\sum_i \\frac{1}{|N(i)|} \\sum_{j \\in N(i)}
        \\lVert (v_i - v_j) - R_i (p_i - p_j) \\rVert^2
        + \\beta \\sum_i w_i \\lVert R_i n_i - n_q \\rVert^2
        + \\mu \\sum_i 2\\nu^2 \\left(1 - e^{-\\lVert v_i - q \\rVert^2 / (2\\nu^2)}\\right),

    with the symmetrized point-to-plane residual ``d_i = (R_i n_i + n_q)^T (v_i - q)`` to the
    closest target point ``q`` (normal ``n_q``). Each outer iteration finds the closest points,
    fixes the Welsch weights ``w_i = exp(-d_i^2 / (2 nu^2))`` (the MM surrogate: the data term
    is concave in ``d^2``, so its tangent majorizes it), solves one sparse symmetric positive
    definite system for all ``v`` (sparse Cholesky or SuperLU), then updates every ``R_i``
    by a batched 3x3 SVD:
    the ARAP edges and the normal alignment (weight ``beta``, with the iteration's Welsch
    weights ``w_i``) give a Procrustes term, and the data term's dependence on ``R_i n_i`` is
    majorized by a linear function (``(e^T r)^2 = |e|^2 - |e x r|^2`` with a concave second
    part, majorized by its tangent), so both updates decrease ``E`` at the iteration's
    correspondences and weights. Pairs whose normals point in opposite directions get weight
    0. The solve stops when the RMS change of ``v`` per point, divided by the problem's
    ``scale``, is at most ``tol``.

    The fine stage above is started, by default, by the paper's coarse stage on a
    deformation graph (see :mod:`mmopt.registration.deformation_graph`); ``nu`` is then the
    median closest-point distance after it.

    Parameters
    ----------
    arap_weight : float, default=200.0
        ``alpha``, the weight of the as-rigid-as-possible term relative to the data term
        (which behaves as a sum of squared distances for inliers).
    normal_weight : float, default=1.0
        ``beta``, the weight of the alignment of the deformed normals ``R_i n_i`` with the
        matched target normals (0 to leave it out).
    arap_floor : float, default=1.0
        Stiff-to-soft continuation of the ARAP weight, in (0, 1]: each time the change of
        ``v`` falls to ``10 tol`` the weight is halved, down to ``arap_floor * arap_weight``,
        and the run ends by ``tol`` only at that weight (1: no continuation, the paper's
        scheme). Each outer iteration keeps its weight fixed, so ``fun <= energy_start``
        still holds per iteration; the iterations above the floor are intermediate stages
        (they never end the run; the objective changes at each halving), and ``history``
        holds each iteration's weight (``arap_weight``).
    point_weight : float, default=0.0
        ``mu``, the weight of a point-to-point part of the data term,
        ``mu sum_i 2 nu^2 (1 - exp(-|v_i - q_i|^2 / (2 nu^2)))`` (same Welsch scale and
        rejections, on the Euclidean distance to the closest point), on reciprocal pairs
        only (``q_i``'s closest deformed source point is ``v_i``). The plane residual does
        not see motion along the surface, so with ``mu = 0`` the tangential part of the
        solution is set by the ARAP term alone, which pulls it towards an isometry: a
        deformation that stretches the surface (most do) is then recovered along the
        normals but slides along the surface. The point-to-point part anchors the
        tangential motion to the data (on clean, fairly complete data; with outliers and
        missing overlap on a densely sampled surface it can do worse: its pairs are right
        only where the error is below about half the point spacing, elsewhere it holds the
        start's tangential error; see the user guide. Hence the default 0: the paper's
        data term).
    welsch_scale : float, optional
        ``nu`` in data units; by default the median of the initial closest-point distances
        (at least ``1e-6 * scale``).
    reject_opposite : bool, default=True
        Reject pairs with ``(R_i n_i)^T n_q < 0`` (when the normals are oriented). A
        rejected pair has weight 0 and counts in the objective at the loss's ceiling
        ``2 nu^2`` (so that leaving the target never lowers it).
    reject_distance : float or None, default=3.0
        Reject pairs farther apart than ``reject_distance * nu`` (Euclidean distance), in
        both stages (the coarse stage with its own ``nu``); None keeps them all. Source
        points without a counterpart in the target otherwise follow outliers or the
        target's border, and the coarse stage folds the unobserved part of the source
        onto the target (see the user guide).
    anderson : bool or AndersonAcceleration, default=False
        Anderson acceleration of the outer iteration on the positions ``v`` (the rotations
        follow by their step at the extrapolated positions), with the shared safeguard: a
        candidate is kept only if its energy, at its own closest points, is no larger than
        the current one. Off by default: it does not pay on the benchmarks (BENCHMARKS.md).
    coarse : bool or DeformationGraph, default=True
        Start with the coarse stage on a deformation graph (:class:`DeformationGraph`, its
        options; True for the defaults), whose result (positions and rotations) starts the
        fine stage above. Skipped when ``x0`` is given.
    neighbors : {"auto", "scipy", "pykdtree"}, default="auto"
        KD-tree library of the closest-point search.
    linear_solver : {"auto", "cholespy", "superlu"}, default="auto"
        Sparse solver of the v-step: a sparse Cholesky factorization through the optional
        ``cholespy`` package (``pip install mmopt[cholesky]``), or scipy's SuperLU in its
        symmetric mode: a fill-reducing symmetric order chosen at the first iteration and
        reused afterwards (the pattern does not change), the diagonal as pivot (the system
        is positive definite). ``"auto"`` is SuperLU, the faster of the two on SPARE's
        systems. Both solve the same system; BENCHMARKS.md compares their times.
    tol : float, default=1e-4
        Tolerance on the RMS change of ``v`` per outer iteration, relative to ``scale``.
    max_iter : int, default=100
        Outer iterations.
    callback, verbose
        As every solver.

    Notes
    -----
    ``Result`` fields besides the common ones: ``points`` (n, 3) the deformed source,
    ``rotations`` (n, 3, 3), ``normals`` (the deformed source normals ``R_i n_i``),
    ``inlier_ratio`` (share of points with a valid pair closer than ``3 nu``), ``nu``;
    ``x`` is ``points.ravel()``. After the coarse stage also ``nodes`` (m, 3),
    ``node_transforms`` (m, 4, 4: node ``j`` maps the points near it by ``y = A_j (x - g_j)
    + g_j + t_j``) and ``coarse_history`` (``fun``, ``energy_start``, ``residual``, one entry
    per coarse iteration; ``nit`` counts the fine iterations). ``history`` holds
    ``energy_start`` (the objective at the iteration's correspondences before its update;
    ``fun`` is after it) and ``inlier_ratio``.

    The authors of SPARE state that the method is under patent and that their code is for
    research use only; this implementation follows the paper's equations and shares no code
    with theirs.

    References
    ----------
    Y. Yao, B. Deng, W. Xu, J. Zhang, "SPARE: Symmetrized Point-to-Plane Distance for Robust
    Non-Rigid Registration".

    Examples
    --------
    >>> from mmopt.registration import NonRigidRegistrationProblem, SPARE
    >>> u, w = np.meshgrid(np.linspace(0, 1, 20), np.linspace(0, 1, 20))
    >>> source = np.c_[u.ravel(), w.ravel(), np.zeros(400)]
    >>> target = source + [0, 0, 0.02] * np.sin(np.pi * source[:, :1])
    >>> res = SPARE().solve(NonRigidRegistrationProblem(source, target))
    >>> bool(res.success), res.points.shape
    (True, (400, 3))
    """

    name = "spare"
    problem_types = (NonRigidRegistrationProblem,)

    _options = {
        "arap_weight": Param(200.0, Interval(float, 0, None, closed="neither")),
        "welsch_scale": Param(None, Interval(float, 0, None, closed="neither"), None),
        "normal_weight": Param(1.0, Interval(float, 0, None)),
        "arap_floor": Param(1.0, Interval(float, 0, 1, closed="right")),
        "point_weight": Param(0.0, Interval(float, 0, None)),
        "reject_opposite": Param(True, bool),
        "reject_distance": Param(3.0, Interval(float, 0, None, closed="neither"), None),
        "coarse": Param(True, bool, InstanceOf(DeformationGraph)),
        "anderson": Param(False, *ANDERSON_OPTION),
        "neighbors": Param("auto", Options(BACKENDS)),
        "linear_solver": Param("auto", Options(LINEAR_SOLVERS)),
        "tol": Param(1e-4),
        "max_iter": Param(100),
    }

    # ------------------------------------------------------------------------ the run
    def _init_state(self, problem: NonRigidRegistrationProblem, x0) -> _State:
        scale = problem.scale
        if not scale > 0:
            raise ValueError("source and target coincide in one point; nothing to register.")
        # Fails early if cholespy is asked but absent; blocks of a point's 3 coordinates.
        linear = SPDSolver(self.linear_solver, block_size=3)
        origin = _centroid(problem.source)
        n = problem.source.shape[0]
        p = (problem.source - origin) / scale
        target = (problem.target - origin) / scale
        if x0 is None:
            v = p.copy()
        else:
            x0 = check_array(x0, "x0")
            if x0.size != 3 * n:
                raise ValueError(f"x0 must hold {n} points (shape ({n}, 3)), got {x0.shape}.")
            v = (x0.reshape(n, 3) - origin) / scale
        src_normals, tgt_normals, oriented = problem.normals()
        index = problem.cached(("index", self.neighbors),
                               lambda: NeighborIndex(target, backend=self.neighbors))
        heads, tails = problem.edges()
        weights = float(self.arap_weight) * edge_weights(heads, n)
        L = laplacian(heads, tails, weights, n)
        coarse = None
        R = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
        if self.coarse is not False and x0 is None:
            options = DeformationGraph() if self.coarse is True else self.coarse
            coarse = run_coarse_stage(p, np.asarray(src_normals), target,
                                      np.asarray(tgt_normals), oriented=oriented,
                                      reject_opposite=self.reject_opposite, index=index,
                                      options=options, reject_distance=self.reject_distance)
            v, R = coarse.v, coarse.R
        if self.welsch_scale is None:
            dist, _ = index.query(v)
            nu = max(float(np.median(dist)), 1e-6)
        else:
            nu = float(self.welsch_scale) / scale
        setup = _Setup(
            scale=scale, origin=origin, p=p, normals=np.asarray(src_normals),
            target=target, target_normals=np.asarray(tgt_normals), oriented=oriented,
            index=index, heads=heads, tails=tails, weights=weights,
            system=_Pattern(sp.kron(L, sp.identity(3)), n), nu=nu, coarse=coarse,
            linear=linear,
        )
        pairs = self._pairs(setup, v, R)
        fun = self._energy(setup, v, R, pairs)
        return _State(x=self._user_x(setup, v), fun=fun, v=v, R=R, setup=setup,
                      inlier_ratio=self._inlier_ratio(setup, v, R, pairs),
                      anderson=make_accelerator(self.anderson))

    def _step(self, problem, state: _State) -> _State:
        s = state.setup
        pairs = self._pairs(s, state.v, state.R)
        start = self._energy(s, state.v, state.R, pairs)
        v = self._solve_positions(s, state.v, state.R, pairs)
        R = self._update_rotations(s, v, state.R, pairs)
        fun = self._energy(s, v, R, pairs)
        accepted = np.nan
        aa = state.anderson
        if aa is not None:
            # Extrapolate the positions; the rotations follow by their MM step there. The
            # candidate is kept only if its energy at its own matches is no larger than the
            # current one (re-matched), so fun <= energy_start still holds.
            def evaluate(v_try):
                pairs_try = self._pairs(s, v_try, state.R)
                R_try = self._update_rotations(s, v_try, state.R, pairs_try)
                return self._energy(s, v_try, R_try, pairs_try), (R_try, pairs_try)

            out = aa.safeguarded_step(state.v.ravel(), v.ravel(), evaluate, start,
                                      to_point=lambda x: x.reshape(-1, 3))
            accepted = out.record
            if out.accepted:
                v, (R, pairs), fun = out.point, out.info, out.value
        change = float(np.sqrt(np.mean(np.sum((v - state.v) ** 2, axis=1))))
        inliers = self._inlier_ratio(s, v, R, pairs)
        # Stiff-to-soft continuation: this iteration ran at a fixed ARAP weight; above the
        # floor it is an intermediate stage, and once settled the next one is softer.
        above = s.arap_scale > self.arap_floor * (1.0 + 1e-12)
        nxt = s
        if above and change <= 10.0 * self.tol:
            nxt = _soften(s, max(0.5, self.arap_floor / s.arap_scale))
            if aa is not None:
                aa.reset()  # its history belongs to the previous weight
        return _State(x=self._user_x(s, v), fun=fun, residual=change, v=v, R=R, setup=nxt,
                      inlier_ratio=inliers, anderson=aa, intermediate=above,
                      record={"energy_start": start, "inlier_ratio": inliers,
                              "accepted": accepted,
                              "arap_weight": float(self.arap_weight) * s.arap_scale})

    def _result_fields(self, problem, state: _State) -> dict:
        s = state.setup
        points = s.origin + s.scale * state.v
        fields = {
            "points": points,
            "rotations": state.R,
            "normals": np.einsum("nab,nb->na", state.R, s.normals),
            "inlier_ratio": float(state.inlier_ratio),
            "nu": s.nu * s.scale,
            **anderson_counts(state.anderson),
        }
        if s.coarse is not None:
            fields.update(self._coarse_fields(s))
        return fields

    @staticmethod
    def _coarse_fields(s: _Setup) -> dict:
        """The graph nodes and their maps in data units (4x4, acting on the points near
        each node: ``y = A (x - g) + g + t``)."""
        c = s.coarse
        nodes = s.origin + s.scale * c.nodes
        transforms = np.broadcast_to(np.eye(4), (len(nodes), 4, 4)).copy()
        transforms[:, :3, :3] = c.affines
        transforms[:, :3, 3] = (nodes + s.scale * c.shifts
                                - np.einsum("nab,nb->na", c.affines, nodes))
        return {"nodes": nodes, "node_transforms": transforms,
                "coarse_history": dict(c.history)}

    # ---------------------------------------------------------------------- the pieces
    @staticmethod
    def _user_x(setup: _Setup, v: np.ndarray) -> np.ndarray:
        return (setup.origin + setup.scale * v).ravel()

    def _pairs(self, s: _Setup, v: np.ndarray, R: np.ndarray) -> _Pairs:
        dist, idx = s.index.query(v)
        q = s.target[idx]
        nq = s.target_normals[idx]
        rn = np.einsum("nab,nb->na", R, s.normals)
        nq, valid = orient_pairs(rn, nq, oriented=s.oriented,
                                 reject_opposite=self.reject_opposite)
        if self.reject_distance is not None:
            # A point of the source with no counterpart (missing overlap) is matched to the
            # border or to an outlier: far away, yet often with a small plane residual.
            valid &= dist <= self.reject_distance * s.nu
        d = np.einsum("na,na->n", rn + nq, v - q)
        w = np.where(valid, np.exp(-0.5 * (d / s.nu) ** 2), 0.0)
        mu = float(self.point_weight)
        wp = None
        if mu > 0:
            # Point-to-point pairs only where the match is reciprocal (the target point's
            # closest deformed source point is i): a source point without a counterpart
            # (missing overlap) is matched to the target's border, whose points have their
            # own source points, and would otherwise be dragged along the surface to it.
            _, back = cKDTree(v).query(q)
            mutual = valid & (back == np.arange(len(v)))
            wp = np.where(mutual, np.exp(-0.5 * (dist / s.nu) ** 2), 0.0)
        return _Pairs(q=q, nq=nq, w=w, valid=valid, mu=mu, wp=wp)

    @staticmethod
    def _residuals(s: _Setup, v, R, pairs: _Pairs) -> np.ndarray:
        rn = np.einsum("nab,nb->na", R, s.normals)
        return np.einsum("na,na->n", rn + pairs.nq, v - pairs.q)

    def _energy(self, s: _Setup, v, R, pairs: _Pairs) -> float:
        """The objective at fixed correspondences (normalized units); a rejected pair counts
        at the loss's ceiling ``2 nu^2``."""
        d = self._residuals(s, v, R, pairs)
        nu2 = s.nu * s.nu
        # As in the coarse stage: counted as 0, a pair leaving the target would lower the
        # energy that Anderson's safeguard compares across matches. Constant at fixed pairs.
        data = np.sum(np.where(pairs.valid, -2.0 * nu2 * np.expm1(-0.5 * d * d / nu2),
                               2.0 * nu2))
        if pairs.mu > 0:
            # Point-to-point part: the same Welsch loss of the distance to the closest point.
            e2 = np.sum((v - pairs.q) ** 2, axis=1)
            # Reciprocal pairs only; rejected ones at the ceiling, as above.
            rho = np.where(pairs.valid, 0.0, 2.0 * nu2)
            data += pairs.mu * np.sum(np.where(pairs.wp > 0,
                                               -2.0 * nu2 * np.expm1(-0.5 * e2 / nu2), rho))
        align = 0.0
        if self.normal_weight > 0:
            rn = np.einsum("nab,nb->na", R, s.normals)
            align = self.normal_weight * float(np.sum(pairs.w * np.sum((rn - pairs.nq) ** 2, 1)))
        return float(data) + align + arap_energy(v, R, s.p, s.heads, s.tails, s.weights)

    @staticmethod
    def _system(s: _Setup, v, R, pairs: _Pairs) -> tuple[sp.csc_matrix, np.ndarray]:
        """The SPD system ``H x = b`` of the v-step (half the surrogate's Hessian)."""
        n = v.shape[0]
        m = np.einsum("nab,nb->na", R, s.normals) + pairs.nq
        blocks = pairs.w[:, None, None] * np.einsum("na,nb->nab", m, m)
        rhs = np.einsum("nab,nb->na", blocks, pairs.q) + _PROXIMAL * v
        diagonal = np.full(n, _PROXIMAL)
        if pairs.mu > 0:
            diagonal += pairs.mu * pairs.wp
            rhs += (pairs.mu * pairs.wp)[:, None] * pairs.q
        blocks += diagonal[:, None, None] * np.eye(3)
        H = s.system.matrix(s.arap_scale, blocks)
        # ARAP right-hand side: each edge pulls v_i - v_j towards R_i (p_i - p_j).
        b_edges = s.weights[:, None] * np.einsum(
            "eab,eb->ea", R[s.heads], s.p[s.heads] - s.p[s.tails]
        )
        np.add.at(rhs, s.heads, b_edges)
        np.add.at(rhs, s.tails, -b_edges)
        return H, rhs.ravel()

    def _solve_positions(self, s: _Setup, v, R, pairs: _Pairs) -> np.ndarray:
        H, rhs = self._system(s, v, R, pairs)
        return s.linear.solve(H, rhs).reshape(-1, 3)

    def _rotation_targets(self, s: _Setup, v, R, pairs: _Pairs) -> np.ndarray:
        """The matrices ``M_i`` whose Procrustes rotations minimize the R-step surrogate."""
        e_edges = v[s.heads] - v[s.tails]
        p_edges = s.p[s.heads] - s.p[s.tails]
        M = np.zeros((v.shape[0], 3, 3))
        np.add.at(M, s.heads, 2.0 * s.weights[:, None, None]
                  * np.einsum("ea,eb->eab", e_edges, p_edges))
        # Data term w (e^T r + c)^2 with r = R n: majorized (tight at r0 = R_k n) by
        # const + w g^T r, g = 2 ((e^T r0 + c) e - |e|^2 r0).
        e = v - pairs.q
        r0 = np.einsum("nab,nb->na", R, s.normals)
        a0 = np.einsum("na,na->n", e, r0)
        c = np.einsum("na,na->n", e, pairs.nq)
        g = 2.0 * ((a0 + c)[:, None] * e - np.einsum("na,na->n", e, e)[:, None] * r0)
        M -= pairs.w[:, None, None] * np.einsum("na,nb->nab", g, s.normals)
        # Normal alignment w ||R n - n_q||^2 = const - 2 w <R, n_q n^T>.
        M += (2.0 * self.normal_weight) * pairs.w[:, None, None] * np.einsum(
            "na,nb->nab", pairs.nq, s.normals)
        return M

    def _update_rotations(self, s: _Setup, v, R, pairs: _Pairs) -> np.ndarray:
        return best_rotations(self._rotation_targets(s, v, R, pairs))

    def _inlier_ratio(self, s: _Setup, v, R, pairs: _Pairs) -> float:
        d = self._residuals(s, v, R, pairs)
        return float(np.mean(pairs.valid & (np.abs(d) < 3.0 * s.nu)))


@fill_doc(CLOUD_PARAMS)
def nonrigid_icp(source, target, **options) -> Result:
    """Deform ``source`` onto ``target`` with :class:`SPARE`.

    Parameters
    ----------
    %(clouds)s
    **options
        ``source_normals``, ``target_normals``, ``faces``, ``k``, ``normals_k`` (see
        :class:`NonRigidRegistrationProblem`), ``x0`` and the options of :class:`SPARE`.

    Returns
    -------
    Result
        With ``points`` (the deformed source), ``rotations``, ``normals``, ``inlier_ratio``
        and ``history["residual"]`` (the RMS change of the points per iteration, relative to
        the problem's scale).

    Examples
    --------
    >>> from mmopt.registration import nonrigid_icp
    >>> u, w = np.meshgrid(np.linspace(0, 1, 20), np.linspace(0, 1, 20))
    >>> source = np.c_[u.ravel(), w.ravel(), np.zeros(400)]
    >>> res = nonrigid_icp(source, source + [0.0, 0.0, 0.01])
    >>> bool(np.allclose(res.points[:, 2], 0.01, atol=1e-3))
    True
    """
    problem_keys = ("source_normals", "target_normals", "faces", "k", "normals_k")
    problem = NonRigidRegistrationProblem(
        source, target, **{key: options.pop(key) for key in problem_keys if key in options}
    )
    x0 = options.pop("x0", None)
    return solve(problem, "spare", x0=x0, **options)


class NonRigidRegistration(ParamsValidationMixin, BaseEstimator):
    """Non-rigid registration as an estimator: ``fit(X=source, y=target)``.

    Parameters
    ----------
    arap_weight, arap_floor, welsch_scale, point_weight, reject_opposite, reject_distance
        See :class:`SPARE` (the same defaults).
    coarse, anderson
        See :class:`SPARE` (the same defaults).
    linear_solver, tol, max_iter
        See :class:`SPARE` (the same defaults).
    k : int, default=8
        Neighbours of the k-NN graph (see :class:`NonRigidRegistrationProblem`).

    Attributes
    ----------
    points_ : ndarray of shape (n, 3)
        The deformed source.
    rotations_ : ndarray of shape (n, 3, 3)
        Per-point rotations.
    result_ : mmopt.Result
        The full result.
    n_iter_ : int
        Outer iterations done.

    Examples
    --------
    >>> from mmopt.registration import NonRigidRegistration
    >>> u, w = np.meshgrid(np.linspace(0, 1, 15), np.linspace(0, 1, 15))
    >>> X = np.c_[u.ravel(), w.ravel(), np.zeros(225)]
    >>> reg = NonRigidRegistration().fit(X, X + [0.0, 0.0, 0.01])
    >>> reg.points_.shape
    (225, 3)
    """

    # SPARE's options, passed on to it, and the k-NN graph's size.
    _options = {
        **options_of(SPARE, "arap_weight", "arap_floor", "welsch_scale", "point_weight",
                     "reject_opposite", "reject_distance", "coarse", "anderson",
                     "linear_solver", "tol", "max_iter"),
        "k": Param(8, Interval(int, 1, None)),
    }

    def fit(self, X, y, *, source_normals=None, target_normals=None, faces=None):
        """Deform the source ``X`` (n, 3) onto the target ``y`` (m, 3)."""
        if y is None:
            raise ValueError("y (the target cloud) is required: fit(X=source, y=target).")
        X = check_point_cloud(X, "X")
        y = check_point_cloud(y, "y")
        problem = NonRigidRegistrationProblem(X, y, source_normals=source_normals,
                                              target_normals=target_normals, faces=faces,
                                              k=self.k)
        params = self.get_params()
        params.pop("k")
        self.result_ = SPARE(**params).solve(problem)
        self.points_ = self.result_.points
        self.rotations_ = self.result_.rotations
        self.n_iter_ = self.result_.nit
        self.n_features_in_ = 3
        return self
