"""Entropic OT between point clouds without a cost matrix: online costs, epsilon scaling, and
multiscale truncation for sharp plans."""

from __future__ import annotations

import numbers
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import LinearOperator, cg, splu
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from mmopt._core._docstrings import SOLVER_PARAMS, fill_doc
from mmopt._core.params import Interval, Options, Param
from mmopt._core.problem import Problem
from mmopt._core.registry import register_solver, solve
from mmopt._core.result import STATUS_MESSAGES, Result, Status
from mmopt._core.solver import Solver, SolverState, StopSolve
from mmopt._core.threads import _threadpool_controller, effective_n_threads
from mmopt._core.validation import check_array, check_choice, check_scalar, readonly
from mmopt.ot._cloud_gemm import online_softmin_gemm
from mmopt.ot._cloud_kernels import online_softmin as _direct_softmin
from mmopt.ot._cloud_kernels import pair_costs, sparse_softmin
from mmopt.ot._gauss_grid import GaussGrid, SmoothRegimeNotApplicable
from mmopt.ot._newton import Direction, line_search, next_damping
from mmopt.ot._smooth import smooth_sinkhorn
from mmopt.ot._support import N_THREADS
from mmopt.ot._truncation import CloudLevel, grid_hierarchy, kept_pairs, spatial_order
from mmopt.ot.problem import OTProblem
from mmopt_ext._pointcloud import (
    bipartite_matvec,
    coarse_operator,
    csr_transpose,
    pair_marginals,
    significant_pairs,
    strongest_couplings,
)

__all__ = ["PointCloudOTProblem", "PointCloudSinkhorn", "pointcloud_sinkhorn"]

# Relative tolerance on the equality of the two total masses.
_MASS_RTOL = 1e-9
# "auto" takes the sharp regime when reg is at most this many squared point spacings
# (PointCloudOTProblem.squared_spacing). Measured at 2000 points (2-D and 3-D): the smooth
# regime did not finish in 200 s CPU at 5 spacings in 3-D and 2 in 2-D, took 12-49 s at
# 5-10 in 2-D where the sharp one took 2 s; the sharp one was faster up to 80 spacings.
_SHARP_MAX_SPACINGS = 20.0
# Points of x sampled to estimate the spacing.
_SPACING_SAMPLE = 2000
# The truncation is redone when the potentials moved enough that the certified reduced cost
# of the dropped pairs (the margin) fell below a floor (see _min_margin), or when reg fell
# so much that the threshold is more than _MAX_SLACK times its value at reg (too many
# pairs kept). The floor, in units of the threshold: at most _MIN_MARGIN; at least
# _FINAL_MARGIN at the problem's reg (where the dropped-mass bound must also stay below
# tol / 100), _COARSE_MARGIN before (an intermediate solve's pattern only steers the next).
_MIN_MARGIN = 0.75
_FINAL_MARGIN = 0.5
_COARSE_MARGIN = 0.25
_MAX_SLACK = 2.0
# Far from the solution (relative marginal error above this) the pattern only steers the
# iterations: at the problem's reg on the original clouds it is then re-selected only
# once the margin falls below _RELAXED_MARGIN thresholds; closer, the final floor applies.
_RELAXED_ABOVE = 1e-3
# Negative: the margin no longer certifies a small dropped mass there, it only bounds how
# far the potentials' soft maxima rose since the selection (2 thresholds). The damped
# Newton steps between errors 0.1 and 1e-3 move clusters of matched pairs by tens of reg
# (measured on the bench clouds at 0.25 squared spacings: 10-80 reg) and so drove the
# margin under the coarse floor after most steps, each time forcing a re-selection that
# cost about a Newton step. At -1 threshold (one thread, CPU time) the fine level of 3-D
# 10^5 re-selected 7 times instead of 13 (17.0-17.9 s instead of 20.8-21.6), 3 10^5 13
# instead of 21 (71.6 s instead of 87.2), with the same Newton steps; Gaussian blobs to a
# shell, 3-D 10^5, 41 instead of 76 (216 s instead of 299); 2-D 10^5 at 1e-5 diameter^2
# was unchanged (7 re-selections, one Newton step more); 3-D 10^6 (one run, 2 threads)
# re-selected 49 times instead of 58 but took 51 Newton steps instead of 40 (408 s CPU
# under load, 442 quiet before: no clear gain there). Never re-selecting there cost
# more Newton steps (3-D 3 10^4: 25 instead of 16) than it saved, and a restricted
# problem that the kept pairs cannot solve then never left the relaxed phase.
_RELAXED_MARGIN = -1.0
# Diagonal shift of the Newton system, relative to the gradient's L1 norm (the Hessian's
# null direction (1, -1)), as in SinkhornNewtonSparse.
_NEWTON_SHIFT = 1e-3
# Plan entries below this share of their row's or column's mass leave the Newton Hessian.
_NEWTON_SPARSIFY = 1e-6
# The epsilon-scaling steps' default switch_tol: with Newton steps at every step (the
# sharp regime), each step is solved to 1e-3 before reg shrinks, so the next starts near
# its solution; Sinkhorn alone moves on at 0.1. Before, Newton ran only at the problem's
# reg on the finest level, from the 0.1 error that the last step left, where damped steps
# along weakly coupled clusters took most of the solve (one thread, CPU time, under load;
# 0.25 squared spacings unless said): 2-D Gaussian blobs to a shell with random weights,
# 3 10^4 points 4912 Newton steps and 234 s against 139 steps and 7.6 s, 10^4 points
# 1694 against ~120 (29.8 s against 3.6); 3-D, same clouds, 3 10^4 9.8 s against 7.6;
# the bench clouds, 3-D 3 10^5 42.9 s against 32.9 (finest level: 28 Newton steps
# against 18), 3-D 10^5 8.5 against 8.8, 2-D 2 10^4 8.4 against 2.9. Solving only the
# finest level's steps this way gave about half of the gain on the blobs (2-D 3 10^4
# 48.7 s) and none on the bench clouds; a step tolerance of 1e-2 was 3x slower on the
# 2-D blobs, 3e-4 slower in 3-D.
_NEWTON_SWITCH_TOL = 1e-3
_SINKHORN_SWITCH_TOL = 0.1
# A step that has made this many Newton attempts without reaching _NEWTON_SWITCH_TOL moves
# on at _SINKHORN_SWITCH_TOL (a safeguard: where the steps keep failing, Sinkhorn's slow
# rate at a sharp reg must not run on towards 1e-3). On the problems above a step took at
# most 26 (3-D 3 10^5, bench clouds).
_STAGE_NEWTON_MAX = 100
# At the problem's reg on the original clouds, this many iterations without a new best
# residual end the solve as stalled (status 5): the iterates are at the rounding floor of
# the marginal error. A tol below it ran to max_iter (1000-point 2-D blobs to a shell at
# reg 1e-5, tol 1e-10: 10000 iterations at 1.01e-10). Converging solves set a new best
# within a few iterations at that stage (the damped Newton phases included).
_STALL_ITERATIONS = 200
# After a failed Newton step, Sinkhorn iterations before the next try: 1, 2, 4, ... up to this.
_MAX_NEWTON_BACKOFF = 32
# Newton systems are solved by multigrid-preconditioned CG (_multilevel_direction), not by
# a sparse LU, whose fill-in grows too fast in 3-D: 23x at 6 10^4 variables, 118x (5 GB) at
# 2 10^5. The LU was kept below 5 10^4 variables until it was measured there too (one
# thread, CPU time, bench clouds at 0.25 squared spacings unless said): 3-D 10^4 6.0 s
# with the LU (4.8 s of it in 14 factorizations) against 0.8 s, 3-D 2 10^4 33.1 against
# 1.6, 2-D 10^4 at 1e-5 diameter^2 2.7 against 0.9, 3-D 10^4 Gaussian blobs to a shell
# with random weights 10.0 against 2.0; from 10^3 points up the CG was never slower, with
# the same Newton steps within 2. The V-cycle's coarsest level, factorized, has at most
# _COARSEST_MAX variables. Its coarse spaces come from the Hessian's strongest couplings,
# not the hierarchy's clusters: on the late, nearly singular systems of 3-D 10^5 (Newton
# step 20) the clusters' V-cycle CG was at relative residual 0.73 after 100 iterations;
# the couplings' reaches 1.0e-3 in 11 (one thread). Their coarse operators fill in more
# than the clusters' did: at 2-D 3 10^4 the LU of a level of 2 10^4 variables took most
# of a solve; at most 5000, CPU per solve fell from 0.40 s to 0.15 s in 2-D and 0.39 to
# 0.37 s in 3-D 10^5.
_COARSEST_MAX = 5_000
_MULTILEVEL_MAX_CG = 100
_JACOBI_WEIGHT = 2.0 / 3.0
# Kernel calls over fewer pairs than this run on one thread (waking others costs more).
_MIN_PARALLEL_PAIRS = 1 << 16
# The finer level of the hierarchy takes over when its truncation keeps about this many
# pairs per row (see _switch_radius2).
_SWITCH_KEPT = 32
# Kept pairs per block when the returned plan's entries are formed.
_PAIRS_PER_BLOCK = 1 << 20
# Smooth regime: clouds of at most this many pairs (positive mass) are solved on their dense
# cost by Sinkhorn-Newton-Sparse (exact, and its Newton steps converge where plain Sinkhorn
# takes thousands of iterations at small reg): the grid's cost does not shrink with the
# clouds (forced on 300 points in 3-D at reg 1e-3 x diameter^2 it took minutes), and the
# online kernel pays the cost's arithmetic at every pass. 8 MB of cost at the limit.
_DENSE_MAX_PAIRS = 1 << 20
# Above it, the grid when its convolutions (nodes x nodes per axis, summed over the axes)
# have at most this many terms per pair, the online kernel otherwise. Measured on the
# smooth_ot benchmark's 3-D clouds at 1e-3 diameter^2 (a 117^3 grid, 5.6e8 terms; one
# thread, CPU s, machine idle): the grid 37.8 at 2000 points, 33.7 at 7000; the online
# kernel 6.1, 20.3 and 58.7 at 2000, 4000 and 7000: equal near 5500 points (18 terms per
# pair). In 2-D the grid has far fewer terms than pairs at any size the dense solve leaves.
_GRID_TERMS_PER_PAIR = 18.0

# Truncations keeping at most this many pairs store their costs (16 bytes a pair, rows and
# columns): the sparse kernels then read them in order instead of gathering both points of
# every pair (one thread, 10^5 points: 2.3x faster in 3-D, 33 pairs a row; 1.5x in 2-D,
# 350). Above, the pairs are indices only (2-D 10^5 sharp: 37M pairs).
_STORED_COST_MAX_PAIRS = 1 << 23


def _parse_cost(cost):
    """``(kind, p)`` of the kernels: 0 ``|x - y|^2``, 1 ``|x - y|``, 2 ``|x - y|^p``."""
    if isinstance(cost, str):
        check_choice(cost, "cost", ("sqeuclidean", "euclidean"))
        return (0, 2.0) if cost == "sqeuclidean" else (1, 1.0)
    if isinstance(cost, bool) or not isinstance(cost, numbers.Real):
        raise TypeError(
            f"cost must be 'sqeuclidean', 'euclidean' or a power p > 0, got {cost!r}."
        )
    p = check_scalar(cost, "cost", min_value=0.0, include_min=False)
    if p == 2.0:
        return 0, 2.0
    return (1, 1.0) if p == 1.0 else (2, p)


def _weights(value, name, size):
    if value is None or np.size(value) == 0:
        return readonly(np.full(size, 1.0 / size))
    weights = check_array(value, name, ndim=1, nonnegative=True)
    if weights.shape[0] != size:
        cloud = "x" if name == "a" else "y"
        raise ValueError(f"{name} must have one entry per point of {cloud} ({size}), "
                         f"got {weights.shape[0]}.")
    total = float(weights.sum())
    if not (total > 0 and np.isfinite(total)):
        raise ValueError(f"{name} must have a positive, finite total mass.")
    return weights


@dataclass(frozen=True)
class PointCloudOTProblem(Problem):
    r"""Entropic OT between two weighted point clouds, the cost computed from the points.

    .. math::

        \min_{P \ge 0,\ P 1 = a,\ P^\top 1 = b} \sum_{ij} C_{ij} P_{ij}
        + \mathrm{reg} \sum_{ij} P_{ij} (\log P_{ij} - 1), \qquad
        C_{ij} = c(x_i, y_j),

    the problem of :class:`~mmopt.ot.OTProblem` with ``C`` never formed: memory
    ``O(n + m)`` (plus the kept pairs of a sharp plan).

    Parameters
    ----------
    x : array-like of shape (n, d)
        Source points.
    y : array-like of shape (m, d)
        Target points, in the same dimension.
    a, b : array-like of shape (n,), (m,), optional
        Non-negative weights of equal total mass; None (or empty) means uniform.
    reg : float
        Entropic regularization (> 0), in the units of the cost.
    cost : {"sqeuclidean", "euclidean"} or float, default="sqeuclidean"
        ``|x - y|^2``, ``|x - y|``, or ``|x - y|^p`` for a number ``p > 0``.

    Examples
    --------
    >>> from mmopt.ot import PointCloudOTProblem
    >>> rng = np.random.default_rng(0)
    >>> problem = PointCloudOTProblem(rng.random((50, 2)), rng.random((40, 2)), reg=1e-2)
    >>> problem.shape
    (50, 40)
    """

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray | None = None
    b: np.ndarray | None = None
    reg: float = None
    cost: str | float = "sqeuclidean"

    default_solver = "pointcloud_sinkhorn"

    def __post_init__(self):
        x = check_array(self.x, "x", ndim=2)
        y = check_array(self.y, "y", ndim=2)
        if x.shape[1] != y.shape[1]:
            raise ValueError(
                f"y must have the dimension of x ({x.shape[1]}), got points of dimension "
                f"{y.shape[1]}."
            )
        a = _weights(self.a, "a", x.shape[0])
        b = _weights(self.b, "b", y.shape[0])
        mass_a, mass_b = float(a.sum()), float(b.sum())
        if abs(mass_a - mass_b) > _MASS_RTOL * max(mass_a, mass_b):
            raise ValueError(f"a and b must have the same total mass; got sum(a)={mass_a!r} "
                             f"and sum(b)={mass_b!r}.")
        if self.reg is None:
            raise TypeError("reg must be given (a positive real number).")
        reg = check_scalar(self.reg, "reg", min_value=0.0, include_min=False)
        _parse_cost(self.cost)
        for name, value in (("x", x), ("y", y), ("a", a), ("b", b), ("reg", reg)):
            object.__setattr__(self, name, value)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, m)``, the shape of the plan."""
        return self.x.shape[0], self.y.shape[0]

    @property
    def cost_scale(self) -> float:
        """The cost of the diagonal of the clouds' common bounding box (the largest cost
        up to a factor): where epsilon scaling starts."""
        low = np.minimum(self.x.min(axis=0), self.y.min(axis=0))
        high = np.maximum(self.x.max(axis=0), self.y.max(axis=0))
        diameter = float(np.linalg.norm(high - low))
        kind, p = _parse_cost(self.cost)
        return diameter**p if diameter > 0 else 1.0

    def squared_spacing(self) -> float:
        """Squared point spacing of the denser cloud: the median squared distance from a
        point to its nearest other point of the same cloud (a sample of 2000 each), the
        smaller of the two clouds'. A row of the plan spreads over about
        ``(reg / spacing**2) ** (d / 2)`` points of the other cloud wherever the clouds
        overlap, so this is the scale below which a plan is sharp (nearly a map); it does
        not depend on how far apart the clouds are (a distance between the clouds would
        call a plan sharp that spreads over thousands of points once transported)."""
        spacings = []
        for cloud in (self.x, self.y):
            sample = cloud[:: max(1, cloud.shape[0] // _SPACING_SAMPLE)]
            if cloud.shape[0] < 2:
                continue
            distance, _ = cKDTree(cloud).query(sample, k=2)
            spacings.append(float(np.median(distance[:, 1] ** 2)))
        return min(spacings) if spacings else 0.0

    def __repr__(self) -> str:
        n, m = self.shape
        return f"PointCloudOTProblem(n={n}, m={m}, d={self.x.shape[1]}, reg={self.reg:g})"


class _Pattern:
    """The kept pairs of one truncation, in compressed rows and columns, with their costs
    when there are at most ``_STORED_COST_MAX_PAIRS`` of them; above, indices only (the
    costs, squared distances, recomputed by the kernels from the level's points: 8 bytes
    a pair instead of 24).

    Every pair left out had reduced cost ``C_ij - phi0_i - psi0_j > threshold``, with
    ``phi = f - reg log a`` and ``psi = g - reg log b`` the potentials at the truncation;
    ``row_dropped[i]`` bounds ``sum_j b_j exp(-(C_ij - phi0_i - psi0_j) / reg)`` over row
    ``i``'s pairs left out (from the tree search, :func:`kept_pairs`).
    """

    def __init__(self, level, phi0, psi0, reg, threshold, threads):
        indptr, indices, _, phi0, row_dropped = kept_pairs(
            level.x, level.y, phi0, psi0, threshold, n_threads=threads, trees=level.trees,
            b=level.b, reg=reg, with_cost=False)
        with np.errstate(divide="ignore"):
            self.log_row_dropped = level.log_a + np.log(row_dropped)
        self.x, self.y = level.x, level.y
        self.indptr, self.indices = indptr, indices
        self.cost = None
        if indices.size <= _STORED_COST_MAX_PAIRS:
            self.cost = pair_costs(level.x, level.y, indptr, indices, 0, 2.0, threads)
        self.t_indptr, self.t_indices, self.t_cost = csr_transpose(
            indptr, indices, len(level.y), self.cost,
            threads if indices.size >= _MIN_PARALLEL_PAIRS else 1)
        self.phi0, self.psi0 = phi0, psi0
        self.threshold, self.reg = threshold, reg
        # Weights normalized to mass 1, in logs, for margin's soft maxima.
        self.log_a = level.log_a - np.log(level.a.sum())
        self.log_b = level.log_b - np.log(level.b.sum())
        self.log_total = float(np.log(level.a.sum()) + np.log(level.b.sum()))

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    def margin(self, phi, psi, reg) -> float:
        """A certified margin of the dropped pairs at ``(phi, psi, reg)``: their plan mass
        is at most ``sum(a) sum(b) exp(-margin / reg)``; the larger of two bounds'
        margins.

        A dropped pair had ``C_ij - phi0_i - psi0_j > threshold``, so its entry
        ``a_i b_j exp((phi_i + psi_j - C_ij) / reg)`` is below ``exp(-threshold / reg)``
        times ``a_i exp(dphi_i / reg) b_j exp(dpsi_j / reg)`` (``dphi = phi - phi0``,
        likewise ``dpsi``); summed over all pairs, the threshold minus the two weighted
        soft maxima ``reg log(sum_i a_i exp(dphi_i / reg) / sum(a))`` (and ``psi``'s). At
        most the largest rises' sum, far below it when only a few points moved far.

        Row by row, the same entries sum to at most ``a_i exp(dphi_i / reg)
        row_dropped_i exp(max(dpsi) / reg)``: the tree search's bound, which counts only
        the pairs near the threshold at their weight (about the pairs kept per row over
        ``m`` of the first bound's mass, at potentials that moved little).
        """
        uniform = (self.threshold - _soft_max(phi - self.phi0, self.log_a, reg)
                   - _soft_max(psi - self.psi0, self.log_b, reg))
        if reg > self.reg:
            return uniform  # row_dropped bounds the sums at the truncation's reg and below
        # Below it, each term exp(-r / reg) = exp(-r / reg0) exp(-r (1 / reg - 1 / reg0))
        # with r > threshold.
        lowered = self.threshold * (1.0 / reg - 1.0 / self.reg)
        with np.errstate(over="ignore", invalid="ignore"):
            shifted = self.log_row_dropped - lowered + (phi - self.phi0) / reg
            top = float(np.max(shifted))
            if top == -np.inf:
                return np.inf  # nothing dropped
            log_bound = (top + float(np.log(np.exp(shifted - top).sum()))
                         + float(np.max(psi - self.psi0)) / reg)
        by_rows = -reg * (log_bound - self.log_total)
        return max(uniform, by_rows) if np.isfinite(by_rows) else uniform

    def sums(self, f, g, reg, threads, transposed=False) -> np.ndarray:
        """The kept plan's row sums at ``(f, g, reg)`` (column sums if ``transposed``)."""
        if transposed:
            f, g = g, f
        _, out = self.softmin(f, g, np.zeros(len(f)), reg, threads, transposed)
        return out

    def marginals(self, f, g, reg, threads):
        """The kept plan's row and column sums at ``(f, g, reg)`` in one pass over the
        pairs (:func:`pair_marginals`; the row sums are :meth:`sums`', to the bit)."""
        row, col = np.empty(len(f)), np.empty(len(g))
        pair_marginals(self.indptr, self.indices, self.cost, self.x, self.y, f, g, reg, row,
                       col, threads)
        return row, col

    def softmin(self, f, g, log_a, reg, threads, transposed=False):
        """The row update over the kept pairs (:func:`sparse_softmin`; the column update,
        ``f`` and ``g`` swapped, if ``transposed``): ``(f_new, row_mass)``."""
        if transposed:
            pairs = self.t_indptr, self.t_indices, self.t_cost
            points = self.y, self.x
        else:
            pairs, points = (self.indptr, self.indices, self.cost), (self.x, self.y)
        return sparse_softmin(*pairs, g, f, log_a, reg, threads, points=points)

    def blocks(self, f, g, reg, threads):
        """The kept plan entries at ``(f, g, reg)``, by blocks of rows of about
        ``_PAIRS_PER_BLOCK`` pairs (bounded temporaries): yields ``(first, last, start,
        stop, values, cost)``, rows ``first:last``, ``start:stop`` their positions in the
        pattern."""
        n = self.indptr.size - 1
        cuts = np.searchsorted(self.indptr, np.arange(0, self.nnz, _PAIRS_PER_BLOCK),
                               side="right") - 1
        cuts = np.unique(np.append(cuts, n))
        for first, last in zip(cuts[:-1], cuts[1:]):
            start, stop = int(self.indptr[first]), int(self.indptr[last])
            if start == stop:
                continue
            local = self.indptr[first:last + 1] - start
            columns = self.indices[start:stop]
            if self.cost is None:
                cost = pair_costs(self.x[first:last], self.y, local, columns, 0, 2.0,
                                  threads)
            else:
                cost = self.cost[start:stop]
            rows = np.repeat(np.arange(first, last, dtype=np.int32), np.diff(local))
            values = cost - f[rows]
            values -= g[columns]
            values *= -1.0 / reg
            np.exp(values, out=values)
            yield first, last, start, stop, values, cost


@dataclass
class _Run:
    """One solve's working data (never stored on the solver)."""

    levels: list  # CloudLevel, coarsest first; the last is the clouds of positive mass
    rows: np.ndarray  # the problem's points of positive mass (sharp regime: in Z order)
    cols: np.ndarray
    regime: str  # "sharp" or "smooth"
    kind: int
    p: float
    threads: int
    cost_scale: float
    pattern: _Pattern | None = None
    # The pattern must be re-selected before an iterate's residual counts (_hold_at_tol).
    stale: bool = False
    truncations: int = 0
    n_newton: int = 0
    newton_pause: int = 0  # Sinkhorn iterations before the next Newton attempt
    newton_backoff: int = 1
    damping: float = 0.0
    # The last Newton step's accepted trial: (a weak reference to its pattern, f, g, reg,
    # its negative_dual), the next step's starting point when nothing changed in between
    # (weak: a re-selection frees the old pairs before it finds the new ones).
    newton_trial: tuple | None = None
    # The (level, reg) at which the last residual was measured: Newton steps need the
    # current stage's.
    measured: tuple | None = None
    stage_attempts: int = 0  # Newton attempts at the current epsilon-scaling step
    # At the problem's reg on the original clouds: iterations, and the best residual and
    # the iteration it came at (_should_stop's stall test).
    final_iterations: int = 0
    best_residual: float = np.inf
    best_at: int = 0
    # Smooth regime: None until the dense solve (small clouds) or the grid Gaussian
    # transform (squared Euclidean cost, d <= 3) is tried, then whether the grid's was used.
    grid: bool | None = None
    grid_error: float = 0.0  # its (grid model's) L1 marginal error
    level_log: list = field(default_factory=list)
    switch_radius2: dict = field(default_factory=dict)  # per level, see _switch_radius2


@dataclass
class _PCState(SolverState):
    f: np.ndarray | None = None  # potentials on the current level's points
    g: np.ndarray | None = None
    level: int = 0
    reg: float = 0.0  # the current epsilon-scaling level's reg
    run: _Run | None = None


@register_solver
@fill_doc(SOLVER_PARAMS)
class PointCloudSinkhorn(Solver):
    r"""Sinkhorn for point clouds: online costs, epsilon scaling and multiscale truncation.

    The cost ``C_ij = c(x_i, y_j)`` is computed inside the kernels and never stored. The
    iterations are those of :class:`~mmopt.ot.Sinkhorn` in the log domain (the same
    potentials ``f``, ``g``: ``P_ij = exp((f_i + g_j - C_ij) / reg)``), run by epsilon
    scaling: ``reg`` starts at the cost of the clouds' bounding-box diagonal and is
    multiplied by ``scaling`` each time the marginal error falls below ``switch_tol``
    (relative to the mass), the potentials carried from one value to the next, down to
    the problem's ``reg``, where the iterations run to ``tol``.

    Two regimes:

    - ``"sharp"`` (squared Euclidean cost): Schmitzer's sparse stabilized scaling on a
      coarse-to-fine hierarchy (as geomloss's multiscale scheme). Both clouds are put in
      Z (Morton) order, so that the kept pairs of nearby rows gather nearby memory, and
      clustered on nested grids (:func:`~mmopt.ot._truncation.grid_hierarchy`); the
      coarsest level is solved first, and the solve moves to the next finer level once the
      finer level's truncation is sparse (the threshold below the median squared distance
      from a point of its ``x`` to its 32nd nearest point of its ``y``), each point's
      potential then extrapolated by a Sinkhorn half-step against the coarser level's
      clusters (as in geomloss). At every level only the pairs of reduced cost
      ``C_ij - phi_i - psi_j <= truncation * reg`` are kept, with ``phi = f - reg log a``,
      ``psi = g - reg log b`` (and, at a new level,
      every pair within the threshold of its row's best); they are found by branch and bound
      in a k-d tree of ``y`` whose nodes carry an affine upper bound of ``psi`` below them
      (a least-squares slope, the exact largest residual), never visiting the others, so a
      half-iteration costs O(kept pairs). The pairs are re-selected when
      ``reg`` changes or the potentials moved enough to erode the margin: below a quarter
      of the threshold before the problem's ``reg``; at it, below minus the threshold
      while the relative marginal error is above 1e-3 (there the pairs only steer the
      damped Newton steps, which move clusters of matched pairs by tens of ``reg``), then
      below the larger of half the threshold and ``reg log(100 / tol)`` (at most 3/4 of
      the threshold; an iterate is only taken as converged, and the returned plan always
      is, at that floor). The margin is the threshold minus the weighted soft maxima
      ``reg log(sum_i a_i exp(dphi_i / reg) / sum(a))`` of the rises ``dphi`` of ``phi``
      since the selection and likewise of ``psi`` (at most their largest rises), or, when
      larger, the margin of a bound summed row by row in the tree search (each skipped
      node's weight at its bound, the scanned points exactly) and carried to the moved
      potentials: the dropped mass is at most ``sum(a) sum(b) exp(-margin / reg)``,
      reported as ``dropped_mass_bound``.
    - ``"smooth"``: clouds of at most 2^20 pairs (of positive mass) are solved on their
      dense cost by :class:`~mmopt.ot.SinkhornNewtonSparse` (no grid or online pass costs
      less there). Larger ones: for the squared Euclidean cost in dimension at most 3, log-domain
      Sinkhorn on a regular grid whose kernel products are exact separable Gaussian
      convolutions, the clouds spread onto the grid and the potentials interpolated back
      (``mmopt.ot._smooth.smooth_sinkhorn``: O(n + m + grid) per iteration; the grid
      model is iterated to ``tol / 2``, the other half left to the grid's discretization);
      up to 10^8 pairs the exact marginal error is then measured and the online kernel
      finishes the solve if the grid's discretization left it above ``tol`` (above that the
      reported ``marginal_error`` is the grid model's). Other costs and dimensions, grids too
      large for ``reg``, and grids whose convolutions cost more than a pass over the pairs
      (a few thousand points in 3-D): every pair by the online kernel
      (O(n m) per iteration, memory O(n + m)).

    ``"auto"`` takes the sharp regime for the squared Euclidean cost in dimension at most 3
    when ``reg`` is at most 20 squared point spacings
    (:meth:`PointCloudOTProblem.squared_spacing`), the smooth one otherwise.

    Parameters
    ----------
    regime : {"auto", "sharp", "smooth"}, default="auto"
        See above. ``"sharp"`` needs the squared Euclidean cost.
    tol : float, default=1e-6
        Stop when the L1 marginal error of the plan (the kept pairs' in the sharp regime)
        is at most ``tol`` times the total mass, at the problem's ``reg`` on the original
        clouds. As in :class:`~mmopt.ot.Sinkhorn`, the error recorded at an iteration is
        that of the iterate before it.
    max_iter : int, default=10000
        Maximum number of iterations (all levels together).
    scaling : float, default=0.25
        Factor of ``reg`` from one epsilon-scaling step to the next, in (0, 1).
    switch_tol : float or None, default=None
        Relative marginal error at which an epsilon-scaling step moves on. None: 1e-3 in
        the sharp regime with ``newton`` (each step's Newton steps bring its error there,
        so the next one starts near its solution), 0.1 otherwise.
    truncation : float, default=40.0
        Threshold of the kept reduced costs, in units of ``reg`` (sharp regime): the
        dropped mass of the returned plan is at most ``sum(a) sum(b) exp(-truncation / 2)``
        (``e^-20``), and at most ``sum(a) sum(b) tol / 100`` where 3/4 of the threshold
        allows it (see the margin floors above).
    max_coarse : int, default=1000
        Largest number of clusters per cloud at the coarsest level (sharp regime).
    newton : bool, default=True
        Sharp regime: at every epsilon-scaling step, once the relative marginal error is
        below ``newton_switch``, take Newton steps on the dual restricted to the kept pairs,
        whose Hessian is the kept plan (the Newton stage of
        :class:`~mmopt.ot.SinkhornNewtonSparse` on that Hessian without the entries below
        1e-6 of both their row's and their column's mass, shifted and
        Levenberg-Marquardt damped, with its exact backtracking line search; no potential
        moves by more than the truncation threshold in one step); a failed step falls back
        to Sinkhorn iterations (1, 2, 4, ... of them before the next try).
        The Newton systems are solved by CG preconditioned with a multigrid V-cycle whose
        coarse spaces join the most strongly coupled variables (algebraic aggregation; a
        sparse LU's fill-in grows too fast with the size in 3-D).
    newton_switch : float, default=0.1
        Relative marginal error below which Newton steps start (Sinkhorn's linear rate is
        slow at a sharp reg, where Newton steps take over).
    n_threads : int, optional
        Threads of the kernels and tree searches; all available CPUs when None.
    %(callback)s
    verbose : int, default=0
        0 silent, 1 a progress bar, 2 a line per iteration (with the level, its ``reg``
        and the number of kept pairs).

    Notes
    -----
    ``Result.x`` is ``concat(f, g)`` on the original clouds and ``fun`` the dual value
    ``<a, f> + <b, g> - reg * sum(P)``. Extra fields: ``f``, ``g``; ``plan``, a
    ``scipy.sparse.csr_matrix`` of the kept pairs (sharp) or a
    :class:`scipy.sparse.linalg.LinearOperator` applying the plan and its transpose by the
    online kernel (smooth); ``transport_cost`` (``<C, P>`` over the kept pairs; NaN in the
    smooth regime above 10^8 pairs) and ``transport_cost_error_bound`` (the dropped pairs'
    largest possible contribution, the cost scale times the dropped-mass bound);
    ``dropped_mass_bound``; ``marginal_error`` (L1, of the returned plan);
    ``regime``; ``levels`` (one dict per level of the hierarchy: its sizes, cell size, the
    ``reg`` values it ran, iterations and the most pairs it kept; in the smooth regime
    ``kernel``, ``"dense"``, ``"grid"`` or ``"online"``); ``reg_reached`` (the
    ``reg`` of the returned potentials: below the problem's only when stopped early). The
    history records per iteration ``level``, ``reg``, ``kept`` (pairs) and
    ``intermediate``. Points of zero mass get the soft c-transform of the other side's
    potentials (as in :class:`~mmopt.ot.Sinkhorn`). Interrupted (Ctrl-C) during the
    epsilon scaling, the solve returns the last iterate, its potentials passed down to the
    original points.

    References
    ----------
    B. Schmitzer, "Stabilized sparse scaling algorithms for entropy regularized transport
    problems", SIAM J. Sci. Comput. 41(3), 2019. J. Feydy, "Geometric data analysis, beyond
    convolutions", PhD thesis, 2020 (multiscale Sinkhorn).

    Examples
    --------
    >>> from mmopt.ot import PointCloudOTProblem, PointCloudSinkhorn
    >>> rng = np.random.default_rng(0)
    >>> problem = PointCloudOTProblem(rng.random((300, 2)), rng.random((300, 2)), reg=1e-4)
    >>> res = PointCloudSinkhorn(regime="sharp").solve(problem)
    >>> bool(res.success), res.plan.shape, bool(res.dropped_mass_bound <= 1e-6 / 100)
    (True, (300, 300), True)
    """

    name = "pointcloud_sinkhorn"
    problem_types = (PointCloudOTProblem,)
    maximize = True

    _options = {
        "regime": Param("auto", Options({"auto", "sharp", "smooth"})),
        "max_iter": Param(10_000),
        "scaling": Param(0.25, Interval(float, 0, 1, closed="neither")),
        "switch_tol": Param(None, Interval(float, 0, None, closed="neither"), None),
        "truncation": Param(40.0, Interval(float, 1, None)),
        "max_coarse": Param(1000, Interval(int, 1, None)),
        "newton": Param(True, bool),
        "newton_switch": Param(0.1, Interval(float, 0, None)),
        "n_threads": Param(None, *N_THREADS),
    }

    # ----------------------------------------------------------------------------- setup
    def _choose_regime(self, problem) -> str:
        kind, _ = _parse_cost(problem.cost)
        if self.regime == "sharp":
            if kind != 0:
                raise ValueError("regime='sharp' needs cost='sqeuclidean' (its truncation "
                                 f"searches balls of the squared distance); got {problem.cost!r}.")
            return "sharp"
        if self.regime == "smooth":
            return "smooth"
        if kind != 0 or problem.x.shape[1] > 3:
            return "smooth"
        sharp = problem.reg <= _SHARP_MAX_SPACINGS * problem.squared_spacing()
        return "sharp" if sharp else "smooth"

    def _init_state(self, problem, x0):
        if x0 is not None:
            raise ValueError("x0 is not supported by pointcloud_sinkhorn (the solve starts "
                             "from its coarsest level); pass x0=None.")
        regime = self._choose_regime(problem)
        kind, p = _parse_cost(problem.cost)
        rows, cols = np.flatnonzero(problem.a > 0), np.flatnonzero(problem.b > 0)
        if regime == "sharp":
            # The solve's points in Z order (its results are mapped back through rows,
            # cols): the kept pairs then gather nearby memory (spatial_order).
            rows = rows[spatial_order(problem.x[rows])]
            cols = cols[spatial_order(problem.y[cols])]
        x, y = np.ascontiguousarray(problem.x[rows]), np.ascontiguousarray(problem.y[cols])
        a, b = problem.a[rows], problem.b[cols]
        if regime == "sharp":
            levels = grid_hierarchy(x, a, y, b, max_coarse=self.max_coarse)
        else:
            levels = [CloudLevel(x, a, y, b, np.arange(len(x)), np.arange(len(y)), 0.0)]
        run = _Run(levels, rows, cols, regime, kind, p, effective_n_threads(self.n_threads),
                   problem.cost_scale)
        reg = max(problem.reg, run.cost_scale)
        level = levels[0]
        f, g = reg * level.log_a, reg * level.log_b
        run.level_log.append(_level_entry(level, reg))
        return _PCState(x=np.concatenate([f, g]), fun=-np.inf, f=f, g=g, level=0, reg=reg,
                        run=run)

    # ------------------------------------------------------------------------------ step
    def _step(self, problem, state):
        run = state.run
        level, reg = run.levels[state.level], state.reg
        final = state.level == len(run.levels) - 1 and reg == problem.reg
        f, g, error, entry = state.f, state.g, 0.0, run.level_log[-1]
        if run.regime == "sharp":
            pattern = run.pattern
            phi, psi = f - reg * level.log_a, g - reg * level.log_b
            floor = self._min_margin(problem, state)
            if (
                pattern is None
                or run.stale
                or pattern.margin(phi, psi, reg) < floor
                or pattern.threshold > _MAX_SLACK * self.truncation * reg
            ):
                # A new level's potentials, passed down from clusters, are rough: its rows
                # keep the pairs within the threshold of their best (the c-transform of
                # psi), not of phi.
                row_reference = phi if pattern is not None else np.full_like(phi, -np.inf)
                # The old pairs go before the new ones are found (not both in memory).
                pattern = run.pattern = None
                run.stale = False
                pattern = run.pattern = _Pattern(level, row_reference, psi, reg,
                                                 self.truncation * reg, run.threads)
                run.truncations += 1
                entry["truncations"] += 1
                entry["kept"] = max(entry["kept"], pattern.nnz)
                # The incoming columns were exact on the previous pattern only.
                _, col_mass = pattern.softmin(g, f, level.log_b, reg,
                                              _threads(run, pattern.nnz), transposed=True)
                error = float(np.abs(col_mass - level.b).sum())
            if (
                self.newton and run.measured == (state.level, reg)
                and not (final and state.intermediate)  # held by _hold_at_tol
                and state.residual <= self.newton_switch and error == 0.0
            ):
                if run.newton_pause > 0:
                    run.newton_pause -= 1
                else:
                    run.stage_attempts += 1
                    new = _newton_step(problem, state, pattern, level,
                                       self.truncation * reg)
                    if new is not None:
                        run.n_newton += 1
                        run.newton_backoff = 1
                        entry["iterations"] += 1
                        if final:
                            self._hold_at_tol(new, pattern, level)
                        else:
                            new.intermediate = True
                            new.record["intermediate"] = 1.0
                            if new.residual <= self._switch_tol(run):
                                self._next_stage(problem, new)
                        return new
                    run.newton_pause = run.newton_backoff
                    run.newton_backoff = min(2 * run.newton_backoff, _MAX_NEWTON_BACKOFF)
            kept = pattern.nnz
            threads = _threads(run, kept)
            f_new, row_mass = pattern.softmin(f, g, level.log_a, reg, threads)
            g_new, _ = pattern.softmin(g, f_new, level.log_b, reg, threads, transposed=True)
        else:
            kept = len(level.x) * len(level.y)
            if run.grid is None:
                new = self._grid_solve(problem, state)
                if new is not None:
                    return new
                entry.setdefault("kernel", "online")
            threads = _threads(run, kept)
            f_new, row_mass = online_softmin(level.x, level.y, g, f, level.log_a, reg,
                                             run.kind, run.p, threads)
            g_new, _ = online_softmin(level.y, level.x, f_new, g, level.log_b, reg,
                                      run.kind, run.p, threads)
        error += float(np.abs(row_mass - level.a).sum())
        mass = float(level.b.sum())
        entry["iterations"] += 1
        run.measured = (state.level, reg)
        new = _PCState(
            x=np.concatenate([f_new, g_new]),
            fun=float(level.a @ f_new + level.b @ g_new) - reg * mass,
            residual=error / mass,
            f=f_new, g=g_new, level=state.level, reg=reg, run=run,
            record={"level": float(state.level), "reg": reg, "kept": float(kept),
                    "newton": 0.0, "intermediate": float(not final)},
            intermediate=not final,
        )
        if not final and error <= self._switch_tol(run) * mass:
            self._next_stage(problem, new)
        elif final and run.regime == "sharp":
            self._hold_at_tol(new, pattern, level)
        return new

    def _grid_solve(self, problem, state):
        """The whole smooth-regime solve by the grid Gaussian transform (squared Euclidean
        cost, d <= 3; :func:`mmopt.ot._smooth.smooth_sinkhorn`), as one step at the problem's
        reg; None where it does not apply (the online kernel's iterations then run)."""
        run = state.run
        level = run.levels[state.level]
        run.grid = False
        if len(level.x) * len(level.y) <= _DENSE_MAX_PAIRS:
            return self._dense_solve(problem, state)
        if run.kind != 0 or level.x.shape[1] > 3:
            return None
        mass = float(level.b.sum())
        if not _grid_pays_off(level.x, level.y, problem.reg, 0.5 * self.tol * mass):
            return None
        try:
            # The grid model is iterated to half of tol: the other half is left to the
            # grid's discretization (measured at 2e-7 - 4e-7 at the default tol).
            out = smooth_sinkhorn(level.x, level.y, level.a, level.b, problem.reg,
                                  tol=0.5 * self.tol * mass, max_iter=self.max_iter,
                                  n_threads=run.threads, progress=self.verbose == 1)
        except SmoothRegimeNotApplicable:
            return None
        reg = float(out.reg_reached)
        run.grid, run.grid_error = True, float(out.marginal_error)
        run.level_log[-1]["kernel"] = "grid"
        run.level_log[-1]["iterations"] += out.n_iter
        run.level_log[-1]["reg_end"] = reg
        error = run.grid_error
        if len(level.x) * len(level.y) <= _MAX_COST_PAIRS:
            # The grid's discretization adds to its model's error: where two passes over the
            # pairs are affordable, stop on the exact error (the online kernel's iterations
            # then finish the solve if the grid left it above tol).
            _, rows = online_softmin(level.x, level.y, out.g, out.f, np.zeros(len(level.x)),
                                     reg, run.kind, run.p, run.threads)
            _, cols = online_softmin(level.y, level.x, out.f, out.g, np.zeros(len(level.y)),
                                     reg, run.kind, run.p, run.threads)
            error = float(np.abs(rows - level.a).sum() + np.abs(cols - level.b).sum())
        new = _PCState(
            x=np.concatenate([out.f, out.g]),
            fun=float(level.a @ out.f + level.b @ out.g) - reg * mass,
            residual=error / mass, f=out.f, g=out.g, level=state.level,
            reg=reg, run=run,
            record={"level": float(state.level), "reg": reg,
                    "kept": float(len(level.x) * len(level.y)), "newton": 0.0,
                    "intermediate": float(reg != problem.reg)},
            intermediate=reg != problem.reg,
        )
        if out.interrupted:
            # Ctrl-C inside the grid solve: the potentials of its last completed level or
            # iteration end the solve (status 3).
            raise StopSolve(Status.INTERRUPTED, STATUS_MESSAGES[Status.INTERRUPTED], new)
        return new

    def _dense_solve(self, problem, state):
        """Small clouds (smooth regime): the dense cost and Sinkhorn-Newton-Sparse at the
        problem's reg, as one step (its iterations counted in the level's log). If it stops
        short of tol (its iteration cap) the online kernel's iterations go on from its
        potentials."""
        from mmopt.ot.sns import SinkhornNewtonSparse

        run = state.run
        level = run.levels[state.level]
        C = cdist(level.x, level.y, "euclidean" if run.kind else "sqeuclidean")
        if run.kind == 2:
            C **= run.p
        out = SinkhornNewtonSparse(tol=self.tol, max_iter=self.max_iter,
                                   n_threads=run.threads).solve(
            OTProblem(level.a, level.b, C, problem.reg))
        entry = run.level_log[-1]
        entry["iterations"] += out.nit
        entry["reg_end"] = problem.reg
        entry["kernel"] = "dense"
        mass = float(level.b.sum())
        new = _PCState(
            x=np.concatenate([out.f, out.g]),
            fun=float(level.a @ out.f + level.b @ out.g) - problem.reg * mass,
            residual=out.marginal_error / mass, f=out.f, g=out.g, level=state.level,
            reg=problem.reg, run=run,
            record={"level": float(state.level), "reg": problem.reg,
                    "kept": float(len(level.x) * len(level.y)), "newton": float(out.n_newton),
                    "intermediate": 0.0},
        )
        if out.status == Status.INTERRUPTED:
            raise StopSolve(Status.INTERRUPTED, STATUS_MESSAGES[Status.INTERRUPTED], new)
        return new

    def _switch_tol(self, run) -> float:
        """The relative marginal error at which an epsilon-scaling step moves on."""
        if self.switch_tol is not None:
            return self.switch_tol
        if self.newton and run.regime == "sharp" and run.stage_attempts <= _STAGE_NEWTON_MAX:
            return _NEWTON_SWITCH_TOL
        return _SINKHORN_SWITCH_TOL

    def _should_stop(self, problem, state):
        """Status 5 (stalled) when the residual at the problem's reg on the original
        clouds has not improved for ``_STALL_ITERATIONS`` iterations."""
        run = state.run
        if run is None or state.intermediate or state.residual <= self.tol:
            return None
        run.final_iterations += 1
        if state.residual < run.best_residual:
            run.best_residual, run.best_at = state.residual, run.final_iterations
        elif run.final_iterations - run.best_at >= _STALL_ITERATIONS:
            return Status.STALLED, (
                f"Stalled: the marginal error has not gone below {run.best_residual:.3g} for "
                f"{_STALL_ITERATIONS} iterations at the problem's reg; tol is below what "
                "floating point reaches on this problem."
            )
        return None

    def _min_margin(self, problem, state) -> float:
        """The smallest margin the kept pairs may keep before they are selected again."""
        run = state.run
        threshold = self.truncation * state.reg
        if state.level < len(run.levels) - 1 or state.reg > problem.reg:
            return _COARSE_MARGIN * threshold
        if state.residual > _RELAXED_ABOVE:
            return _RELAXED_MARGIN * threshold
        return self._final_floor(state.reg)

    def _final_floor(self, reg) -> float:
        """The margin floor near the solution at the problem's ``reg``: the dropped mass at
        most ``exp(-margin / reg)`` times the squared mass, ``tol / 100``, where 3/4 of the
        threshold allows it."""
        threshold = self.truncation * reg
        floor = max(_FINAL_MARGIN * threshold, reg * np.log(100.0 / self.tol))
        return min(_MIN_MARGIN * threshold, floor)

    def _hold_at_tol(self, new, pattern, level) -> None:
        """Keep ``new`` (at the problem's reg on the original clouds) from ending the solve
        when its residual meets ``tol`` but its pattern's margin is below the final floor
        (allowed while the error was above ``_RELAXED_ABOVE``): that residual is the kept
        pairs' only, so the pairs are re-selected and the error measured again first."""
        if new.residual > self.tol:
            return
        reg = new.reg
        margin = pattern.margin(new.f - reg * level.log_a, new.g - reg * level.log_b, reg)
        if margin < self._final_floor(reg):
            new.run.stale = True
            new.intermediate = True
            new.record["intermediate"] = 1.0

    def _next_stage(self, problem, state) -> None:
        """Move ``state`` (in place: it is the step's new state) to the next reg or level."""
        run = state.run
        level = run.levels[state.level]
        next_reg = max(state.reg * self.scaling, problem.reg)
        run.stage_attempts = 0
        # The finer level takes over once its first truncation is sparse: its threshold
        # (truncation * reg) at most the squared radius of a ball holding about
        # _SWITCH_KEPT of its points. A switch by the coarse level's cell size alone (reg
        # below h^2 / 16) kept 16.4M of the 10^8 pairs at 10^4 points in 3-D (most of the
        # solve's time and memory).
        if state.level < len(run.levels) - 1 and (
            state.reg == problem.reg
            or self.truncation * state.reg <= _switch_radius2(run, state.level + 1)
        ):
            finer = run.levels[state.level + 1]
            state.f, state.g = _extrapolate(level, finer, state.f, state.g, state.reg,
                                            self.truncation * state.reg, run.threads)
            state.x = np.concatenate([state.f, state.g])
            state.level += 1
            run.pattern = None
            run.level_log.append(_level_entry(finer, state.reg))
        else:
            state.reg = next_reg
            run.level_log[-1]["reg_end"] = next_reg

    # ---------------------------------------------------------------------------- result
    def _result_fields(self, problem, state):
        run = state.run
        reg, f, g = state.reg, state.f, state.g
        for index in range(state.level, len(run.levels) - 1):
            f, g = _prolong(run.levels[index], run.levels[index + 1], f, g, reg)
        level = run.levels[-1]
        mass = float(level.b.sum())
        fields = {"regime": run.regime, "levels": [dict(e) for e in run.level_log],
                  "reg_reached": reg, "n_newton": run.n_newton}
        if run.regime == "sharp":
            phi, psi = f - reg * level.log_a, g - reg * level.log_b
            pattern = run.pattern
            if (state.level != len(run.levels) - 1 or pattern is None
                    or pattern.margin(phi, psi, reg) < self._min_margin(problem, state)):
                pattern = run.pattern = None  # the solve is over: its pairs can go first
                pattern = _Pattern(level, phi, psi, reg, self.truncation * reg,
                                   run.threads)
            row_sums = pattern.sums(f, g, reg, run.threads)
            col_sums = pattern.sums(f, g, reg, run.threads, transposed=True)
            with np.errstate(over="ignore"):
                margin = pattern.margin(phi, psi, reg)
                dropped = float(level.a.sum() * mass * np.exp(-margin / reg))
            # The solve is over: the transposed pairs go before the plan's arrays come.
            run.pattern = None
            pattern.t_indptr = pattern.t_indices = pattern.t_cost = None
            plan, transport = _sparse_plan(pattern, f, g, reg, problem.shape, run)
            fields.update(kept=pattern.nnz)
        elif run.grid and len(level.x) * len(level.y) > _MAX_COST_PAIRS:
            # Exact marginals would cost two O(n m) passes: report the grid model's error.
            row_sums = col_sums = None
            transport = _online_transport_cost(level, f, g, reg, run)
            dropped = 0.0
            plan = _online_plan(problem, run, f, g, reg)
        else:
            zeros_x, zeros_y = np.zeros(len(level.x)), np.zeros(len(level.y))
            # Row sums of the plan: the row update's mass output at (f, g).
            _, row_sums = online_softmin(level.x, level.y, g, f, zeros_x, reg, run.kind,
                                         run.p, run.threads)
            _, col_sums = online_softmin(level.y, level.x, f, g, zeros_y, reg, run.kind,
                                         run.p, run.threads)
            transport = _online_transport_cost(level, f, g, reg, run)
            dropped = 0.0
            plan = _online_plan(problem, run, f, g, reg)
        f_full, g_full = _full_potentials(problem, run, f, g, reg)
        if row_sums is None:
            error, row_mass = run.grid_error, mass
        else:
            error = float(np.abs(row_sums - level.a).sum() + np.abs(col_sums - level.b).sum())
            row_mass = float(row_sums.sum())
        fields.update(
            x=np.concatenate([f_full, g_full]), f=f_full, g=g_full, plan=plan,
            transport_cost=transport, transport_cost_error_bound=dropped * run.cost_scale,
            dropped_mass_bound=dropped, marginal_error=error,
        )
        if state.intermediate:
            # Stopped during the epsilon scaling: the value and error of what is returned.
            fields["fun"] = float(level.a @ f + level.b @ g) - reg * row_mass
            fields["residual"] = error / mass
        return fields


def _grid_pays_off(x, y, reg: float, tol: float) -> bool:
    """Whether the grid transform's iterations cost less than the online kernel's
    (``_GRID_TERMS_PER_PAIR``); True where no grid applies (smooth_sinkhorn says why)."""
    try:
        grid = GaussGrid.covering(np.vstack([x, y]), reg, tol)
    except SmoothRegimeNotApplicable:
        return True
    shape = grid.shape[:x.shape[1]]
    terms = float(np.prod(shape)) * float(sum(shape))
    return terms <= _GRID_TERMS_PER_PAIR * len(x) * len(y)


def _newton_step(problem, state, pattern, level, max_move):
    """A damped Newton step on the dual restricted to the kept pairs, no potential moving by
    more than ``max_move``; None if the line search finds no acceptable step."""
    run, reg = state.run, state.reg
    n = len(level.x)
    mass = float(level.b.sum())

    threads = _threads(run, pattern.nnz)

    def negative_dual(f, g):
        # The plan's row and column sums in one pass over the kept pairs (parallel,
        # vectorized exp).
        row, col = pattern.marginals(f, g, reg, threads)
        value = reg * float(row.sum()) - float(level.a @ f + level.b @ g)
        error = float(np.abs(row - level.a).sum() + np.abs(col - level.b).sum())
        return value, row, col, error

    # BLAS on one thread: the step's dot products (CG's, the line search's) are over
    # vectors of n + m entries, too short to gain from a second thread, and OpenBLAS's
    # threads, woken between the OpenMP kernels, spun: 3 10^5 points in 3-D, one Newton
    # direction took 0.59 s CPU instead of 0.93 (one OpenMP thread, under load).
    with np.errstate(over="ignore", invalid="ignore"), _threadpool_controller().limit(
            limits=1, user_api="blas"):
        last, run.newton_trial = run.newton_trial, None
        if (last is not None and last[0]() is pattern and last[1] is state.f
                and last[2] is state.g and last[3] == reg):
            # The previous step's accepted trial, evaluated by its line search: the same
            # arrays, pattern and reg, so the same sums (a pass over the pairs saved).
            value, row, col, error = last[4]
        else:
            value, row, col, error = negative_dual(state.f, state.g)
        grad = np.concatenate([row - level.a, col - level.b])
        if not np.isfinite(value) or error == 0.0:
            return None
        # The Hessian without the entries negligible in both their row and their column
        # (SinkhornNewtonSparse's sparsification; the line search stays exact): a near map
        # keeps about one entry per row, and the factorization little fill-in.
        S = _significant_plan(pattern, state.f, state.g, reg, row, col, threads)
        diagonal = (1.0 + run.damping) * np.concatenate([row, col]) / reg
        shifted = diagonal + _NEWTON_SHIFT * error
        found = _multilevel_direction(shifted, S, grad, reg, error / mass)
        if found is None:
            return None
        direction = found.d
        # No potential moves by more than max_move (the truncation threshold) in one step:
        # a component of the kept pairs whose two sides' masses differ makes the restricted
        # dual unbounded along its (f - c, g + c) direction, which only the diagonal shift
        # held; such a step (18979 reg on 2-D Gaussian blobs to a shell at 10^4 points)
        # left the pairs' margin at -474 thresholds, the next selection's sums overflowed
        # and the solve ran to max_iter. A step past the threshold is re-selected anyway.
        largest = float(np.abs(direction).max())
        if largest > max_move:
            direction = direction * (max_move / largest)
        slope = float(grad @ direction)
        if not (np.isfinite(slope) and slope < 0.0):
            return None

        def evaluate(step):
            f = state.f + step * direction[:n]
            g = state.g + step * direction[n:]
            found = negative_dual(f, g)
            return found[0], -1e-4 * step * slope, found[3], (f, g, found)

        accepted = line_search(evaluate, value, error, max_halvings=12)
    if accepted is None:
        run.damping = next_damping(run.damping, None)
        return None
    (f, g, found), step = accepted
    new_value, new_error = found[0], found[3]
    run.newton_trial = (weakref.ref(pattern), f, g, reg, found)
    run.damping = next_damping(run.damping, step)
    return _PCState(
        x=np.concatenate([f, g]), fun=-new_value, residual=new_error / mass, f=f, g=g,
        level=state.level, reg=reg, run=run,
        record={"level": float(state.level), "reg": reg, "kept": float(pattern.nnz),
                "newton": 1.0, "intermediate": 0.0},
    )


def _significant_plan(pattern, f, g, reg, row, col, threads):
    """The kept plan at ``(f, g, reg)`` without its entries below ``_NEWTON_SPARSIFY`` of
    both their row's and their column's sums (``row``, ``col``), as a CSR matrix built
    straight from the pattern (:func:`significant_pairs`: no array over every kept pair,
    no COO triplets)."""
    with np.errstate(divide="ignore"):
        log_row, log_col = np.log(row), np.log(col)
    indptr, indices, data = significant_pairs(
        pattern.indptr, pattern.indices, pattern.x, pattern.y, f, g, log_row, log_col, reg,
        float(np.log(_NEWTON_SPARSIFY)), threads)
    return sp.csr_matrix((data, indices, indptr), shape=(len(pattern.x), len(pattern.y)))


class _Bipartite:
    """``[[diag(d[:n]), s S], [s S^T, diag(d[n:])]]``, never assembled: the Newton Hessian
    (an assembly by ``sp.bmat`` held the plan's entries twice more, with COO triplets on
    the way)."""

    def __init__(self, diagonal, S, scale):
        self.diagonal, self.S, self.scale = diagonal, S, scale
        self.shape = (diagonal.size, diagonal.size)
        self._indptr = np.asarray(S.indptr, dtype=np.int64)
        self._indices = np.asarray(S.indices, dtype=np.int32)
        self._work = np.empty(S.shape[1])

    def __matmul__(self, v):
        # One pass over S for both blocks, SciPy's arithmetic (S @ v and S.T @ v read it
        # twice, the latter by a scatter over its columns).
        out = np.empty(self.shape[0])
        bipartite_matvec(self._indptr, self._indices, self.S.data, self.diagonal, self.scale,
                         np.ascontiguousarray(v, dtype=np.float64), out, self._work)
        return out


def _strongest(A):
    """:func:`strongest_couplings` of a SciPy CSR matrix: each row's and each column's
    index of its largest positive entry (-1 for none)."""
    return strongest_couplings(np.asarray(A.indptr, dtype=np.int64),
                               np.asarray(A.indices, dtype=np.int32), A.data, A.shape[1])


def _aggregates(best):
    """The number of aggregates and each variable's: the connected components of the graph
    joining each variable to its strongest neighbour (``best``, -1 for none)."""
    size = best.size
    linked = np.flatnonzero(best >= 0)
    graph = sp.csr_matrix((np.ones(linked.size), (linked, best[linked])), shape=(size, size))
    return connected_components(graph, directed=True, connection="weak")


def _coarse_operator(A, labels, count, weight=1.0, diagonal=None):
    """:func:`coarse_operator` of a SciPy CSR matrix: ``P^T A P`` with ``P`` the
    aggregates ``labels``, or, with ``weight`` and ``diagonal``, ``P^T [[D, w A], [w A^T,
    D]] P`` with ``diagonal`` the aggregates' sums of ``D``, ``A`` of shape ``(n, m)`` and
    ``labels`` over ``n + m`` variables, as a CSR matrix."""
    labels = np.asarray(labels, dtype=np.int64)
    indptr = np.asarray(A.indptr, dtype=np.int64)
    indices = np.asarray(A.indices, dtype=np.int32)
    empty = np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0)
    if diagonal is None:
        offset, transposed = 0, empty
    else:
        offset = A.shape[0]
        transposed = csr_transpose(indptr, indices, A.shape[1], A.data)
    out = coarse_operator(indptr, indices, A.data, offset, *transposed, labels, count,
                          float(weight), diagonal)
    return sp.csr_matrix((out[2], out[1], out[0]), shape=(count, count))


def _multilevel_direction(diagonal, S, grad, reg, relative_error):
    """The Newton direction by CG preconditioned with an algebraic multigrid V-cycle.

    In the variables ``(f, -g)`` the Hessian is a weighted graph Laplacian plus a small
    diagonal. Each level joins every variable to the one it is most strongly coupled with
    (largest plan entry, or largest off-diagonal weight on the coarse levels) and takes the
    connected components of those links as the next level's variables (unsmoothed
    aggregation by strength; Galerkin coarse operators ``P^T A P``). Near convergence the
    plan is close to a map and the Laplacian nearly singular (diagonal dominance 1e-9..1e-7
    relative): clusters of nearby points, as geometric aggregation takes, are then only
    weakly coupled and the coarse space misses the smooth modes, while the strongly coupled
    pairs hold them. One damped Jacobi sweep before and after each coarse correction (a
    symmetric preconditioner), a sparse LU on the first level of at most ``_COARSEST_MAX``
    variables or on one that stops coarsening. Inexact Newton: relative residual
    ``min(0.1, sqrt(relative_error))``, at most ``_MULTILEVEL_MAX_CG`` iterations. None if
    the factorization fails or the direction is not finite.
    """
    n = S.shape[0]
    scale = 1.0 / reg
    H = _Bipartite(diagonal, S, scale)
    signs = np.concatenate([np.ones(n), -np.ones(S.shape[1])])
    # First level, from the bipartite Hessian: x_i's strongest y is the largest S_ij in
    # its row, y_j's strongest x the largest in its column.
    best_y, best_x = _strongest(S)
    count, labels = _aggregates(np.concatenate([np.where(best_y >= 0, n + best_y, -1), best_x]))
    # P^T A P with A = [[D_x, -s S], [-s S^T, D_y]]: the pairs inside an aggregate move
    # onto its diagonal.
    coarse = _coarse_operator(S, labels, count, -scale,
                              np.bincount(labels, weights=diagonal, minlength=count))
    operators, all_labels = [coarse], [labels]
    while coarse.shape[0] > _COARSEST_MAX:
        # Off-diagonal weights are -a_ij > 0; the diagonal, positive, is never the largest.
        count, labels = _aggregates(_strongest(-coarse)[0])
        if count > 0.75 * coarse.shape[0]:
            break  # no longer coarsening: factorize this level
        coarse = _coarse_operator(coarse, labels, count)
        operators.append(coarse)
        all_labels.append(labels)
    try:
        coarsest = splu(coarse.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                        options={"SymmetricMode": True})
    except RuntimeError:
        return None
    inverse_diagonals = [_JACOBI_WEIGHT / diagonal] + [
        _JACOBI_WEIGHT / A.diagonal() for A in operators[:-1]]
    sizes = [A.shape[0] for A in operators]
    hierarchy = ([H] + operators[:-1], all_labels, sizes, inverse_diagonals, coarsest, signs)
    size = H.shape[0]
    preconditioner = LinearOperator((size, size), matvec=lambda v: _v_cycle(0, v, hierarchy),
                                    dtype=float)
    iterations = 0

    def count_iteration(_):
        nonlocal iterations
        iterations += 1

    rtol = min(0.1, float(np.sqrt(relative_error)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direction, info = cg(LinearOperator((size, size), matvec=H.__matmul__, dtype=float),
                             -grad, rtol=rtol, maxiter=_MULTILEVEL_MAX_CG, M=preconditioner,
                             callback=count_iteration)
    if not np.all(np.isfinite(direction)):
        return None
    return Direction(direction, iterations, info == 0)


def _v_cycle(k, residual, hierarchy):
    """One V-cycle of :func:`_multilevel_direction` from level ``k`` (a module function,
    not a closure calling itself: that reference cycle kept each Newton step's operators
    alive until the garbage collector's next full pass). Level 0 is the Hessian in the
    variables ``(f, g)``, so its restriction and prolongation carry the signs of ``-g``."""
    operators, labels, sizes, inverse_diagonals, coarsest, signs = hierarchy
    if k == len(operators):
        return coarsest.solve(residual)
    A, parent, weight = operators[k], labels[k], inverse_diagonals[k]
    out = weight * residual
    rest = residual - A @ out
    if k == 0:
        rest *= signs
    correction = _v_cycle(k + 1, np.bincount(parent, weights=rest, minlength=sizes[k]),
                          hierarchy)[parent]
    if k == 0:
        correction *= signs
    out += correction
    out += weight * (residual - A @ out)
    return out


def online_softmin(x, y, g, f_old, log_a, reg, kind, p, n_threads):
    """The online row update (:func:`mmopt.ot._cloud_kernels.online_softmin`): a direct
    loop over the coordinates up to dimension 3, tiles of small matrix products above
    (:func:`mmopt.ot._cloud_gemm.online_softmin_gemm`)."""
    if x.shape[1] > 3:
        return online_softmin_gemm(x, y, g, f_old, log_a, reg, kind, p, n_threads)
    return _direct_softmin(x, y, g, f_old, log_a, reg, kind, p, n_threads)


def _threads(run, pairs: int) -> int:
    return run.threads if pairs >= _MIN_PARALLEL_PAIRS else 1


def _switch_radius2(run, index: int) -> float:
    """The squared radius of a ball holding ``_SWITCH_KEPT`` points of ``y`` around a point
    of ``x`` at level ``index``: the median over a sample of ``x`` of the squared distance to
    its ``_SWITCH_KEPT``-th nearest point of ``y``. (Not from the nearest-neighbour distance
    alone: the centroids of a clustered level's two clouds in one cell are much closer to
    each other than to the next cell's, which made the finer levels take over late.)"""
    if index not in run.switch_radius2:
        level = run.levels[index]
        sample = level.x[:: max(1, len(level.x) // _SPACING_SAMPLE)]
        k = int(min(_SWITCH_KEPT, len(level.y)))
        distance, _ = cKDTree(level.y).query(sample, k=[k])
        run.switch_radius2[index] = float(np.median(distance[:, 0] ** 2))
    return run.switch_radius2[index]


def _level_entry(level: CloudLevel, reg: float) -> dict:
    return {"n": len(level.x), "m": len(level.y), "cell": level.cell, "reg_start": reg,
            "reg_end": reg, "iterations": 0, "kept": 0, "truncations": 0}


def _prolong(coarse: CloudLevel, fine: CloudLevel, f, g, reg):
    """Potentials of ``fine``'s points from their clusters' in ``coarse`` (the parts
    ``phi = f - reg log a``, ``psi = g - reg log b`` are passed down)."""
    x_parent = np.empty(len(fine.x), dtype=np.int64)
    x_parent[fine.x_label] = coarse.x_label
    y_parent = np.empty(len(fine.y), dtype=np.int64)
    y_parent[fine.y_label] = coarse.y_label
    phi = (f - reg * coarse.log_a)[x_parent]
    psi = (g - reg * coarse.log_b)[y_parent]
    return phi + reg * fine.log_a, psi + reg * fine.log_b


def _extrapolate(coarse: CloudLevel, fine: CloudLevel, f, g, reg, threshold, threads):
    """Potentials of ``fine``'s points by one Sinkhorn half-step against the other side's
    clusters of ``coarse`` (geomloss's extrapolation): ``f_i = reg log a_i - reg log sum_J
    exp((G_J - C(x_i, Y_J)) / reg)`` over the clusters ``J`` within ``threshold`` of the
    row's best, likewise ``g``. Smooth where :func:`_prolong`'s are constant per cluster,
    so the finer level's iterations start near its solution; the potentials are only a
    starting point (the truncations that follow certify themselves)."""
    phi, psi = _prolong(coarse, fine, f, g, reg)
    out = []
    for points, own_log, others, other, other_log, start in (
        (fine.x, fine.log_a, coarse.y, g, coarse.log_b, phi),
        (fine.y, fine.log_b, coarse.x, f, coarse.log_a, psi),
    ):
        rows = np.full(len(points), -np.inf)
        indptr, indices, cost, _ = kept_pairs(points, others, rows, other - reg * other_log,
                                              threshold, n_threads=threads)
        new, _ = sparse_softmin(indptr, indices, cost, other, start, own_log, reg,
                                threads)
        out.append(np.where(np.isfinite(new), new, start))
    return out[0], out[1]


def _soft_max(values, log_weights, reg) -> float:
    """``reg log(sum_i w_i exp(values_i / reg))`` for weights ``w`` of sum 1, stably (at
    most ``max(values)``)."""
    shifted = values / reg + log_weights
    top = float(np.max(shifted))
    return reg * (top + float(np.log(np.exp(shifted - top).sum())))


def _sparse_plan(pattern, f, g, reg, shape, run):
    """The kept plan at ``(f, g, reg)`` as a CSR matrix of the problem's ``shape`` (the
    pattern's row ``i`` is its row ``run.rows[i]``, column ``j`` its column
    ``run.cols[j]``) and its transport cost ``<C, P>``, written block by block straight
    into the plan's arrays (no COO triplets, no array over every pair but the plan's)."""
    counts = np.zeros(shape[0], dtype=np.int64)
    counts[run.rows] = np.diff(pattern.indptr)
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    shift = indptr[run.rows] - pattern.indptr[:-1]  # from the pattern's positions
    indices = np.empty(pattern.nnz, dtype=np.int32 if shape[1] < 2**31 else np.int64)
    data, transport = np.empty(pattern.nnz), 0.0
    for first, last, start, stop, values, cost in pattern.blocks(f, g, reg, run.threads):
        target = np.arange(start, stop) + np.repeat(
            shift[first:last], np.diff(pattern.indptr[first:last + 1]))
        indices[target] = run.cols[pattern.indices[start:stop]]
        data[target] = values
        transport += float(values @ cost)
    return sp.csr_matrix((data, indices, indptr), shape=shape), transport


def _full_potentials(problem, run, f, g, reg):
    """Potentials of every point: points of zero mass get the soft c-transform of the
    other side's potentials, ``f_i = -reg log sum_j exp((g_j - C_ij) / reg)``."""
    n, m = problem.shape
    level = run.levels[-1]
    f_full, g_full = np.empty(n), np.empty(m)
    f_full[run.rows], g_full[run.cols] = f, g
    empty_rows = np.setdiff1d(np.arange(n), run.rows)
    empty_cols = np.setdiff1d(np.arange(m), run.cols)
    if empty_rows.size:
        zeros = np.zeros(empty_rows.size)
        f_full[empty_rows], _ = online_softmin(problem.x[empty_rows], level.y, g, zeros,
                                               zeros, reg, run.kind, run.p, run.threads)
    if empty_cols.size:
        zeros = np.zeros(empty_cols.size)
        g_full[empty_cols], _ = online_softmin(problem.y[empty_cols], level.x, f, zeros,
                                               zeros, reg, run.kind, run.p, run.threads)
    return f_full, g_full


# Pairs above which the smooth regime does not compute <C, P> (one more O(nm) pass).
_MAX_COST_PAIRS = 10**8
_COST_BLOCK = 1 << 22  # entries per block of that pass


def _online_transport_cost(level, f, g, reg, run) -> float:
    n, m = len(level.x), len(level.y)
    if n * m > _MAX_COST_PAIRS:
        return float("nan")
    rows_per_block = max(1, _COST_BLOCK // m)
    total = 0.0
    for start in range(0, n, rows_per_block):
        stop = min(n, start + rows_per_block)
        distance = np.sqrt(((level.x[start:stop, None, :] - level.y[None]) ** 2).sum(-1))
        cost = distance**run.p
        total += float((cost * np.exp((f[start:stop, None] + g[None] - cost) / reg)).sum())
    return total


def _online_plan(problem, run, f, g, reg) -> LinearOperator:
    """The plan as an operator: ``P v`` and ``P^T u`` by the online kernel, O(n + m)
    memory (for any sign of the vector: its positive and negative parts apart)."""
    level = run.levels[-1]
    n, m = problem.shape

    def apply(points, others, own, other, vector, size):
        out = np.zeros(size)
        vector = np.asarray(vector, dtype=float).ravel()
        for sign in (1.0, -1.0):
            part = np.maximum(sign * vector, 0.0)
            if not part.any():
                continue
            with np.errstate(divide="ignore"):
                shifted = other + reg * np.log(part)
            zeros = np.zeros(len(points))
            _, mass = online_softmin(points, others, shifted, own, zeros, reg, run.kind,
                                     run.p, run.threads)
            out += sign * mass
        return out

    def matvec(v):
        out = np.zeros(n)
        out[run.rows] = apply(level.x, level.y, f, g, np.asarray(v).ravel()[run.cols],
                              len(level.x))
        return out

    def rmatvec(u):
        out = np.zeros(m)
        out[run.cols] = apply(level.y, level.x, g, f, np.asarray(u).ravel()[run.rows],
                              len(level.y))
        return out

    return LinearOperator((n, m), matvec=matvec, rmatvec=rmatvec, dtype=float)


def pointcloud_sinkhorn(x, y, a=None, b=None, *, reg, cost="sqeuclidean", tol=1e-6,
                        regime="auto", **options) -> Result:
    """Entropic OT between point clouds without a cost matrix (see
    :class:`PointCloudSinkhorn`).

    Parameters
    ----------
    x, y : array-like of shape (n, d), (m, d)
        The clouds.
    a, b : array-like of shape (n,), (m,), optional
        Weights of equal total mass; None means uniform.
    reg : float
        Entropic regularization (> 0), in the units of the cost.
    cost : {"sqeuclidean", "euclidean"} or float, default="sqeuclidean"
        The ground cost (a float ``p``: ``|x - y|^p``).
    tol : float, default=1e-6
        Relative L1 marginal error to reach.
    regime : {"auto", "sharp", "smooth"}, default="auto"
        Sparse multiscale truncation (sharp plans) or every pair by the online kernel.
    **options
        Other options of :class:`PointCloudSinkhorn`.

    Returns
    -------
    Result
        With ``f``, ``g``, ``plan``, ``transport_cost``, ``dropped_mass_bound``,
        ``marginal_error``, ``levels``.

    Examples
    --------
    >>> from mmopt.ot import pointcloud_sinkhorn
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((400, 3))
    >>> res = pointcloud_sinkhorn(x, x + 0.01, reg=1e-4)
    >>> res.regime, bool(abs(res.transport_cost - 3e-4) < 1e-5)
    ('sharp', True)
    """
    problem = PointCloudOTProblem(x, y, a, b, reg=reg, cost=cost)
    return solve(problem, "pointcloud_sinkhorn", tol=tol, regime=regime, **options)
