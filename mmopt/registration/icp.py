"""Fast and Robust ICP: robust point-to-point / point-to-plane ICP with Anderson acceleration."""

from __future__ import annotations

import math
import numbers
import threading
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from mmopt._core._docstrings import SOLVER_PARAMS, fill_doc
from mmopt._core.anderson import ANDERSON_OPTION, AndersonAcceleration, make_accelerator
from mmopt._core.linesearch import backtracking
from mmopt._core.params import Constraint, InstanceOf, Interval, Options, Param, Rule
from mmopt._core.registry import register_solver, solve
from mmopt._core.result import Result, Status
from mmopt._core.solver import Solver, SolverState
from mmopt._core.validation import check_choice
from mmopt.losses import LOSSES, L2Loss, RobustLoss, TrimmedLoss, get_loss
from mmopt.registration._kernels import (
    cached_nearest,
    nearest_candidates,
    surface_planes,
    weighted_pair_moments,
)
from mmopt.registration._neighbors import _MIN_ROWS_PER_THREAD, BACKENDS, NeighborIndex
from mmopt.registration.kabsch import kabsch_from_moments
from mmopt.registration.multires import coarse_problem
from mmopt.registration.normals import _neighbourhood_geometry, sampled_geometry
from mmopt.registration.options import ScaleSchedule, StageCriteria
from mmopt.registration.problem import RegistrationProblem, check_rigid_transform
from mmopt.registration.se3 import _se3_exp, _se3_log
from mmopt.registration.symmetric import source_normals, symmetric_correspond, symmetric_step

__all__ = ["ICP", "icp", "point_to_plane_jacobian"]

METRICS = ("point_to_point", "point_to_plane", "hybrid", "symmetric")
INITS = ("centroids", "identity")
# The named losses at ICP's scale nu: Welsch's weight exp(-r^2 / (2 nu^2)) is c = sqrt(2);
# Huber's corner, Cauchy's half-weight point and Tukey's cutoff sit at nu (c = 1). "l2" and
# "trimmed" (keeping 90%) have no scale.
_NAMED_LOSS_C = {"welsch": math.sqrt(2.0), "huber": 1.0, "cauchy": 1.0, "tukey": 1.0}
# Surface refinement (see ICP): automatic when the target's noise estimate exceeds this
# fraction of its point spacing (the shipped real scans: 0.04; 0.5% noise: 0.3).
_REFINE_NOISE_RATIO = 0.1
# Kernel bandwidth of the smoothed surface, in units of max(noise, spacing), and the loss
# scale of the refinement, in units of nu_min (plane residuals of the smoothed surface
# spread wider than the noise estimate, which underestimates heavy noise).
_REFINE_BANDWIDTH = 2.5
_REFINE_NU_FACTOR = 1.5
# Smallest subsample of the coarse stages (see coarse_stride).
_COARSE_MIN_POINTS = 1000
# Scan-scale clouds (see ICP, "Multi-resolution"): above this many points (the larger
# cloud) multires="auto" solves a voxel-grid level first; the surface refinement matches at
# most _REFINE_MAX_POINTS source points; the point-to-point spacing and noise estimates use
# the neighbourhoods of at most _GEOMETRY_MAX_POINTS target points. All three sit above
# the sizes of the existing suite (at most 15k points), which keeps its results unchanged.
_MULTIRES_MIN_POINTS = 20000
_REFINE_MAX_POINTS = 20000
# The full-resolution level after a voxel-grid level starts near the solution: its stages
# match a regular subsample of at most this many source points (a final nu_min stage,
# with no refinement after it, matches all of them).
_FINE_MAX_POINTS = 20000
_GEOMETRY_MAX_POINTS = 20000
# Halvings of a refused surface-refinement step tried at scan scale (see _step).
_SURFACE_HALVINGS = 4
# At scan scale the refinement also ends when a step lowers its energy by less than this
# fraction of it (see _step).
_REFINE_ENERGY_RTOL = 1e-4
# A search costs ~0.3-4 us per row and neighbour (the most from far poses, whose bounds
# prune little), and starting its threads ~0.1-0.4 ms: with n_threads >= 2, a search that
# the run's last one predicts to take at least this long per thread runs on n_threads,
# whatever its size (its results do not depend on the thread count). See _query.
_PARALLEL_QUERY_SECONDS = 5e-4
# Candidates kept per source point for the nearest-point matches (see ICP._nearest).
_NEAREST_CANDIDATES = 4


# What schedule=None and stage_criteria=None mean. Made once: the groups are frozen, and
# checking a new one costs about a tenth of a small ICP iteration, which asks for the
# criteria at every step.
_DEFAULT_SCHEDULE = ScaleSchedule()
_DEFAULT_CRITERIA = StageCriteria()


def _moved(P: np.ndarray, T: np.ndarray) -> np.ndarray:
    """The rows of ``P`` moved by the 4x4 ``T``: ``P @ R^T + t``, the translation added in
    place (NumPy broadcasts the strided column ``T[:3, 3]`` over a new array several times
    slower than the product itself; the same result)."""
    X = P @ T[:3, :3].T
    X += T[:3, 3]
    return X


def _scale_free(loss: RobustLoss) -> bool:
    """Whether ``loss`` has no scale for the stages to anneal (least squares, trimmed)."""
    return isinstance(loss, L2Loss | TrimmedLoss)


def _loss_energy(loss: RobustLoss, r: np.ndarray, nu) -> float:
    """ICP's energy: ``sum_i rho(r_i / nu)`` (unit-free), or ``sum_i rho(r_i)`` without a
    scale (``nu`` None: squared units of ``r``)."""
    if nu is None:
        return loss.energy(r, 1.0)
    return loss.energy(np.asarray(r) / nu, 1.0)


def _loss_weights(loss: RobustLoss, r: np.ndarray, nu) -> np.ndarray:
    return loss.weights(r, 1.0 if nu is None else nu)


class _ScaleBounds(Constraint):
    """A pair ``(low, high)`` of real numbers with ``0 < low <= 1 <= high``."""

    def accepts_type(self, value) -> bool:
        return (
            isinstance(value, tuple | list | np.ndarray) and len(value) == 2
            and all(isinstance(b, numbers.Real) and not isinstance(b, bool | np.bool_)
                    for b in value)
        )

    def is_satisfied_by(self, value) -> bool:
        if not self.accepts_type(value):
            return False
        low, high = (float(b) for b in value)
        return 0.0 < low <= 1.0 <= high

    def describe(self) -> str:
        return "a pair (low, high) with 0 < low <= 1 <= high"

    def invalid_values(self) -> list:
        return [(2.0, 3.0), (0.0, 2.0), (0.5, 0.9), (float("nan"), 2.0)]

    def valid_value(self):
        return (0.5, 2.0)


@dataclass
class _Setup:
    """Everything fixed during one solve, in normalized coordinates."""

    P: np.ndarray
    Q: np.ndarray
    normals: np.ndarray | None
    index: NeighborIndex
    scale: float
    source_centroid: np.ndarray
    target_centroid: np.ndarray
    spacing: float
    noise: float
    nus: list  # nu of each stage (normalized); [None] for l2 / trimmed
    loss: RobustLoss  # the loss object (a name resolved)
    refine: bool = False  # the last stage is the surface refinement
    final_level: bool = True  # the full-resolution clouds (not a voxel-grid level)
    after_coarse: bool = False  # a level that starts from a voxel-grid level's pose
    source_normals: np.ndarray | None = None  # metric="symmetric" only


class _Prefetch:
    """A level's :class:`_Setup` built on a second thread while the solve runs the level
    before it (a multi-resolution solve with ``n_threads >= 2``): the full-resolution
    target's KD-tree and geometry then cost no wall time of their own."""

    def __init__(self, build):
        self._build = build
        self._setup = None
        self._thread = threading.Thread(target=self._run, name="mmopt-icp-level", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._setup = self._build()
        except Exception:  # built again, and raised, by the solving thread
            self._setup = None

    def result(self) -> _Setup:
        """The setup (waiting for the thread); built here when the thread failed, which
        raises its error in the solving thread."""
        self._thread.join()
        return self._build() if self._setup is None else self._setup


@dataclass
class _Run:
    """The per-solve context shared by the states of one run (never stored on the solver)."""

    setup: _Setup
    anderson: AndersonAcceleration | None = None
    stage_iters: list = field(default_factory=lambda: [0])  # iterations of each stage
    n_queries: int = 0  # nearest-neighbour searches of this run
    # Seconds per row and neighbour of the last search (times its threads), or 0 (see _query).
    row_seconds: float = 0.0
    # The surface refinement's candidate neighbours on a large source: (positions where
    # each row was searched, candidate indices, margins); see ICP._surface_neighbours.
    surface_neighbours: tuple | None = None
    # The nearest-point matches' candidates: (the source points matched, positions where
    # each row was searched, candidate indices, nearest and reach distances); see ICP._nearest.
    nearest: tuple | None = None
    # Multi-resolution: the problems of the levels (coarse first), the current one, the
    # stages of the levels before it, and one summary dict per finished level.
    problems: list = field(default_factory=list)
    level: int = 0
    stage_offset: int = 0
    levels: list = field(default_factory=list)
    # Seconds of each stage, and the clock of the last step's end (perf_counter).
    stage_times: list = field(default_factory=lambda: [0.0])
    clock: float = 0.0
    level_start: tuple = (0.0, 0, 0)  # (clock, iterations, queries) when the level began
    # The full-resolution level's setup, built on a second thread (see _Prefetch), or None.
    prefetch: _Prefetch | None = None


@dataclass
class _ICPState(SolverState):
    T: np.ndarray | None = None  # transform in normalized coordinates
    corr: tuple | None = None  # (moved source, residuals, distances, indices)
    G: np.ndarray | None = None  # plain step from T
    energy: float = np.inf  # energy in normalized units at the current nu
    stage: int = 0
    stage_iter: int = 0
    P: np.ndarray | None = None  # the source points matched (a subsample in coarse stages)
    metric: str = "point_to_point"  # residual of the current stage
    run: _Run | None = None
    settled: bool = False  # a scan-scale refinement step barely lowered the energy


@register_solver
@fill_doc(SOLVER_PARAMS)
class ICP(Solver):
    """Fast and Robust ICP (Zhang, Yao, Deng): robust ICP accelerated by Anderson.

    Minimizes ``E(T) = sum_i psi(r_i(T))`` over rigid transforms ``T`` (``target ~= T
    source``), where ``r_i`` is the distance from ``T p_i`` to its closest target point
    (``metric="point_to_point"``) or its offset along the target normal there
    (``"point_to_plane"``), and ``psi(r) = rho(r / nu)`` a robust loss of :mod:`mmopt.losses`
    at scale ``nu``.

    **Point-to-point** is majorization-minimization: with the closest points frozen, the
    robust loss is majorized by a weighted least-squares problem whose minimizer is a
    weighted Kabsch fit; re-matching can only lower the energy further, so every plain step
    decreases ``E``. **Point-to-plane** takes one Gauss-Newton step per iteration in the
    se(3) twist (left perturbation ``exp(delta) T``, whose Jacobian at ``delta = 0`` is exact)
    on the weighted linearized residuals, then backtracks until the energy with the closest
    points frozen decreases; a step whose re-matched energy is higher is refused (the pose
    stays, which ends the stage), so the energy never increases within a stage there either.

    **Anderson acceleration** runs on the 6-D twist ``log(T)`` (7-D with the log-scale for
    ``similarity=True``), with the energy safeguard: the extrapolated pose is kept only if
    its energy (after re-matching, which it needs anyway) is no larger than the current one;
    otherwise the plain step is taken (one more nearest-neighbour query) and the history is
    reset.

    **Stages** (the annealed ``nu``, set by ``schedule``, a :class:`ScaleSchedule`): the solver
    works in coordinates centred on each cloud's centroid and divided by the larger
    bounding-box diagonal. ``nu`` starts at ``schedule.init_factor`` times the median initial
    residual and halves at each stage down to ``nu_min``, the largest of the official floor
    ``spacing / (3 sqrt 3)`` (``spacing``: the target's typical point spacing) and
    ``schedule.noise_factor`` times the target's noise estimate (the median thickness of its
    10-point neighbourhoods across their local plane): on noisy data the official floor alone
    fits the noise. An intermediate stage ends as ``stage_criteria`` (a
    :class:`StageCriteria`) says: when the transform moves by less than its ``tol`` (Frobenius
    norm in normalized units) or after its ``max_iter`` iterations; the ``nu_min`` stage runs
    to the solver's ``tol``; the Anderson history is reset at each stage. The solve converges
    when the last stage (``nu = nu_min``, or the surface refinement below) does. With
    ``schedule.nu`` given, one stage runs at that scale (the "tracking" mode); ``"l2"`` and
    ``"trimmed"`` have one stage and no scale.

    **Surface refinement.** When the points are noisy relative to their spacing (the
    target's noise estimate above a tenth of its spacing), nearest-point matching at a small
    ``nu`` snaps each source point onto single noisy target points: the energy becomes a sum of
    sharp wells whose minimizer wanders by a noise-driven amount (from the true transform as
    well as from far starts), and a larger ``nu`` cannot help because the source points past
    the target's border (partial overlap) then pull tangentially. ``refine="auto"`` therefore
    adds one last stage that matches a smoothed target surface instead: each source point's
    ``refine_k`` nearest target points, Gaussian-weighted by distance (bandwidth ``2.5
    max(noise, spacing)``), give a local mean and a PCA normal; the residual is the offset from
    that plane (a denoised point-to-plane, in the spirit of moving least squares), the loss
    scale ``1.5 nu_min``, and the step is the point-to-plane Gauss-Newton step with its line
    search and energy safeguard. Plane residuals carry no tangential pull, so partial overlap
    biases them far less. On clean scans (the shipped pair) the stage is skipped, and so it is
    when a quarter of the source points or more sit exactly on target points (the same
    sampling: the matches are exact).

    **Multi-resolution** (scan scale, ``multires``): above 20,000 points (the larger cloud)
    the solve runs twice. First on a voxel-grid level: both clouds replaced by the means of
    their occupied voxels (:func:`~mmopt.registration.pyramid.voxel_downsample`, the voxel
    size chosen so that the target keeps about 15,000 cells; mean normals when the target
    has normals), with the whole annealed schedule and its stopping rules and without the
    surface refinement; then on the full clouds from that pose, where the initial residuals
    are small, so the same schedule rule gives only a few stages. Its stages match a
    regular subsample of at most 20,000 source points, except a last ``nu_min`` stage,
    which matches all of them; when the surface refinement follows, the ``nu_min`` stage
    only leads into its basin, so it matches the subsample too and ends as an
    intermediate stage does. On large clouds the refinement matches a regular subsample of
    at most 20,000 source points, takes each point's exact ``refine_k`` nearest target
    points from a cache of ``refine_k + refine_k // 2`` candidates (searched again only for
    the points that moved by more than half the gap between their last and their
    ``refine_k``-th candidate), and tapers its kernel weights (each lowered by
    that of the farthest neighbour, so that neighbours enter and leave at weight 0 and the
    smoothed surface moves continuously with the pose, so the refinement does not stall at
    start-dependent poses); a refused refinement step is
    halved up to four times before the stage ends, and the refinement also ends at a step
    that lowers its energy by less than ``1e-4`` of it (its neighbourhoods change with the
    pose, and from there its steps shrink slowly, moving the pose within the
    start-dependent spread of its result). The spacing
    and noise estimates of point-to-point come from the neighbourhoods of at most 20,000
    target points. Clouds of the existing sizes (up to 20,000 points) are solved exactly as
    without these.

    Searches for the losses whose weight vanishes far away are bounded at the loss's
    :attr:`~mmopt.losses.RobustLoss.search_bound` times ``nu`` (``5 nu`` for ``"welsch"``,
    ``nu`` for ``"tukey"``): farther points have (nearly) zero weight, and a bounded KD-tree
    search visits fewer nodes. Each source point also keeps its 4 nearest target points
    (within the bound) from its last search: while it has moved by less than these
    candidates can vouch for (half the gap between its nearest and its 4th), its match is
    picked from them, the same as a new search's; only the other points are searched again.

    Parameters
    ----------
    metric : {"point_to_point", "point_to_plane", "hybrid", "symmetric"}, \
default="point_to_point"
        Residual. Point-to-plane uses the target normals (estimated by PCA over
        ``normals_k`` neighbours when the problem has none). ``"hybrid"`` runs the
        point-to-point stages and refines with point-to-plane in the last stage: robust
        point-to-point finds the basin from far starts, where point-to-plane alone can
        stall. ``"symmetric"`` is Rusinkiewicz's symmetric point-to-plane distance along
        the sum of both normals (source normals estimated too when missing; see
        :mod:`mmopt.registration.symmetric`), with point-to-plane's step; it matches the
        whole source in every stage and is solved at full resolution only (no
        ``multires`` level).
    loss : {"welsch", "l2", "huber", "cauchy", "tukey", "trimmed"} or RobustLoss, \
default="welsch"
        Robust loss (``"l2"`` is classic ICP). A name is the :mod:`mmopt.losses` loss tuned
        to ICP's scale ``nu``: Welsch's weight ``exp(-r^2 / (2 nu^2))`` (``c = sqrt 2``);
        Huber, Cauchy and Tukey with ``c = 1`` (their weights bend at ``r = nu``);
        ``"trimmed"`` keeps 90% of the matches. A :class:`~mmopt.losses.RobustLoss` instance
        is used as is, its ``c`` in units of ``nu`` (e.g. ``WelschLoss(c=3.0)`` for a wider
        kernel, ``TrimmedLoss(keep=0.8)``).
    schedule : ScaleSchedule, optional
        The annealing of ``nu`` and the coarse-to-fine subsampling (see
        :class:`ScaleSchedule`; its defaults when None): ``ScaleSchedule(nu=0.01)`` runs one
        stage at that fixed scale.
    init : {"centroids", "identity"} or array of shape (4, 4), default="centroids"
        Start: translate the source centroid onto the target centroid, the identity, or a
        given rigid transform (in the data's units). ``x0`` of :meth:`solve` overrides it.
    similarity : bool, default=False
        Also fit a uniform scale (7 degrees of freedom; point-to-point only).
    scale_bounds : (float, float), default=(0.5, 2.0)
        Bounds on the scale when ``similarity`` is True.
    anderson : bool or AndersonAcceleration, default=True
        Anderson acceleration of the fixed-point map on the transform's parameters, with
        the shared safeguard (an extrapolated transform is kept only if the robust energy
        does not increase): True for the defaults, False for none, or an
        :class:`mmopt.AndersonAcceleration` whose options are used (each solve runs on a
        fresh copy of it).
    stage_criteria : StageCriteria, optional
        When the intermediate stages (``nu > nu_min``) end (see :class:`StageCriteria`; its
        defaults, ``max_iter=100`` and ``tol=1e-3``, when None). They only lead the pose
        into the basin of the final scale, so converging them to the solver's ``tol`` is
        wasted work; the ``nu_min`` stage and the refinement run to ``tol`` (on large
        clouds the refinement can end earlier, see "Multi-resolution").
    normals_k : int, default=10
        Neighbourhood size for normals, spacing and noise estimates; when the target normals
        are estimated (``metric`` other than ``"point_to_point"`` and no ``target_normals``),
        it must be smaller than the number of target points (``ValueError`` otherwise).
    refine : {"auto", True, False}, default="auto"
        Surface refinement stage (point-to-point metric with an annealed scaled loss only):
        ``"auto"`` runs it when the noise estimate exceeds a tenth of the spacing and the
        matches at the end of the annealing are inexact (see above).
    refine_k : int, default=32
        Target points that define the smoothed surface around each source point.
    inlier_threshold : float, optional
        Distance (data's units) below which a source point counts as an inlier in the
        diagnostics; ``max(3 nu, 2 spacing)`` at the final ``nu`` (``nu_min`` for scale-free
        losses) when None.
    neighbors : {"auto", "scipy", "pykdtree"}, default="auto"
        KD-tree library (``"auto"``: pykdtree when installed).
    n_threads : int, default=1
        Threads of scipy's KD-tree queries and of the compiled kernels, at least 1 (results
        do not depend on it); from 2, a multi-resolution solve also builds the full clouds'
        KD-tree and geometry on a second thread while it solves the voxel-grid level.
    multires : {"auto", True, False}, default="auto"
        Solve a voxel-grid level of both clouds first (see above): ``"auto"`` above 20,000
        points, True always (a small target keeps a quarter of its points there), False
        never. A fixed ``schedule.nu`` (tracking) and ``metric="symmetric"`` never do.
    tol : float, default=1e-5
        Stage (and final) stopping threshold on ``||T_k - T_{k-1}||_F`` in normalized units.
    max_iter : int, default=1000
        Total iteration cap.
    %(callback)s
    %(verbose)s

    Notes
    -----
    Result fields: ``x`` and ``transform`` (the 4x4 ``T``, ``target ~= T source``),
    ``rotation``, ``translation``, ``scale`` (1 unless ``similarity``), ``fun`` (the energy at
    the final ``nu``, ``sum_i rho(r_i / nu)``: unit-free; for ``"l2"`` and ``"trimmed"``
    ``sum_i r_i^2 / 2`` over the counted matches, in squared data units, and clouds so large
    that this overflows are rejected with a ``ValueError``), ``residual`` (last
    ``||T_k - T_{k-1}||_F``, normalized units; ``inf`` on an iteration that changed the
    stage), ``nu`` and ``nu_min`` (data's units; None for the scale-free losses ``"l2"`` and
    ``"trimmed"``), ``spacing`` and ``noise`` (the target estimates, data's units),
    ``n_stages``, ``refined`` (whether the surface refinement ran), ``n_coarse_stages``
    (stages run on the subsample), ``iterations_per_stage``, ``n_accepted`` and
    ``n_rejected`` (Anderson proposals kept / refused), ``acceptance_rate`` (0 when no
    proposal was made), ``n_queries`` (nearest-neighbour searches of the source cloud or of
    its subsample, each counted once whether its cached candidates or the tree answer it),
    ``inlier_ratio``, ``inlier_rmse`` (None without inliers),
    ``inlier_threshold``, ``correspondences`` (index of each source point's closest target
    point, -1 beyond the search bound). ``history`` adds ``nu`` (NaN for the scale-free
    losses), ``stage``, ``accepted`` (1, 0, NaN when not tried), ``n_queries`` and
    ``n_points`` (source points matched: the coarse subsample or all) per iteration.
    ``stage_times`` holds the seconds spent in each stage (an iteration counts in the stage
    it ended in; the setup in the first), and ``levels`` one dict per resolution level
    (``n_source``, ``n_target``, ``voxel_size`` (None at full resolution), ``nit``,
    ``n_queries``, ``time``); with the multi-resolution solve the counts above (``nit``,
    ``n_queries``, ``n_stages``, ``iterations_per_stage``, Anderson's, ``history``) cover
    both levels, and the other fields are the full-resolution level's. ``verbose=1`` shows a
    progress bar of the iterations with the current level and stage.

    The solver keeps nothing of a run on itself: one instance can serve several threads.

    References
    ----------
    J. Zhang, Y. Yao, B. Deng, "Fast and Robust Iterative Closest Point", IEEE TPAMI 44(7),
    3450-3466, 2022.

    Examples
    --------
    >>> from mmopt.registration import ICP, RegistrationProblem
    >>> from mmopt.registration.se3 import se3_exp
    >>> rng = np.random.default_rng(0)
    >>> source = rng.normal(size=(300, 3)) * [3.0, 2.0, 1.0]
    >>> T = se3_exp([0.0, 0.0, 0.3, 0.2, 0.0, 0.1])
    >>> target = source @ T[:3, :3].T + T[:3, 3]
    >>> res = ICP().solve(RegistrationProblem(source, target))
    >>> bool(res.success), bool(np.allclose(res.transform, T, atol=1e-4))
    (True, True)
    """

    name = "icp"
    problem_types = (RegistrationProblem,)
    residual_covers_x = False

    _options = {
        "metric": Param("point_to_point", Options(METRICS)),
        "loss": Param("welsch", Options(LOSSES), InstanceOf(RobustLoss)),
        "schedule": Param(None, InstanceOf(ScaleSchedule), None),
        "stage_criteria": Param(None, InstanceOf(StageCriteria), None),
        # An array-like transform is checked (shape, rigidity) when the solve starts.
        "init": Param("centroids", Options(INITS),
                      InstanceOf(np.ndarray, list, tuple, name="a (4, 4) rigid transform")),
        "similarity": Param(False, bool),
        "scale_bounds": Param((0.5, 2.0), _ScaleBounds()),
        "anderson": Param(True, *ANDERSON_OPTION),
        "normals_k": Param(10, Interval(int, 3, None)),
        "refine": Param("auto", Options({"auto"}), bool),
        "refine_k": Param(32, Interval(int, 3, None)),
        "inlier_threshold": Param(None, Interval(float, 0, None, closed="neither"), None),
        "neighbors": Param("auto", Options(BACKENDS)),
        "n_threads": Param(1, Interval(int, 1, None)),
        "multires": Param("auto", Options({"auto"}), bool),
        "tol": Param(1e-5),
    }
    _parameter_rules: ClassVar[list] = [
        Rule(("similarity", "metric"),
             lambda p: not p["similarity"] or p["metric"] == "point_to_point",
             "similarity=True needs metric='point_to_point'"),
    ]

    def _multires(self, largest: int) -> bool:
        """Whether to solve a voxel-grid level first (see ``multires``), for clouds of at
        most ``largest`` points."""
        if (self.multires is False or self._scale_schedule().nu is not None
                or self.metric == "symmetric"):
            return False
        return self.multires is True or largest > _MULTIRES_MIN_POINTS

    # ---------------------------------------------------------------------------- options
    def _resolved_loss(self) -> RobustLoss:
        """The loss object: a name tuned to ICP's scale (see ``loss``), or the instance."""
        if isinstance(self.loss, RobustLoss):
            return self.loss
        return get_loss(self.loss, c=_NAMED_LOSS_C.get(self.loss))

    def _scale_schedule(self) -> ScaleSchedule:
        return _DEFAULT_SCHEDULE if self.schedule is None else self.schedule

    def _stage_criteria(self) -> StageCriteria:
        return _DEFAULT_CRITERIA if self.stage_criteria is None else self.stage_criteria

    # --------------------------------------------------------------------- coordinates
    @staticmethod
    def _to_user(setup: _Setup, T: np.ndarray) -> np.ndarray:
        s, cs, ct = setup.scale, setup.source_centroid, setup.target_centroid
        out = T.copy()
        out[:3, 3] = s * T[:3, 3] + ct - T[:3, :3] @ cs
        return out

    @staticmethod
    def _from_user(setup: _Setup, T: np.ndarray) -> np.ndarray:
        s, cs, ct = setup.scale, setup.source_centroid, setup.target_centroid
        out = np.array(T, dtype=float)
        out[:3, 3] = (T[:3, 3] + T[:3, :3] @ cs - ct) / s
        return out

    def _params(self, T: np.ndarray) -> np.ndarray:
        """Anderson's variable: the twist of T (and the log-scale for similarities)."""
        if not self.similarity:
            return _se3_log(T)
        scale = float(np.cbrt(np.linalg.det(T[:3, :3])))
        rigid = T.copy()
        rigid[:3, :3] /= scale
        return np.append(_se3_log(rigid), math.log(scale))

    def _from_params(self, u: np.ndarray) -> np.ndarray:
        T = _se3_exp(u[:6])
        if self.similarity:
            low, high = self.scale_bounds
            T[:3, :3] *= float(np.clip(math.exp(u[6]), low, high))
        return T

    # --------------------------------------------------------------------------- setup
    def _make_setup(self, problem: RegistrationProblem) -> _Setup:
        s = problem.scale
        cs, ct = problem.source_centroid, problem.target_centroid
        P = np.ascontiguousarray((problem.source - cs) / s)
        Q = np.ascontiguousarray((problem.target - ct) / s)
        # The index and the geometry are cached on the problem and may serve several solves
        # (threads) at once: they are read-only here (the thread count goes with each query).
        index = problem.cached(
            ("index", self.neighbors), lambda: NeighborIndex(Q, backend=self.neighbors)
        )
        estimated = self.metric != "point_to_point" and problem.target_normals is None
        if estimated and self.normals_k >= Q.shape[0]:
            # Every neighbourhood would be the whole cloud: one normal for all points.
            raise ValueError(
                f"normals_k={self.normals_k} must be smaller than the number of target points "
                f"({Q.shape[0]}) to estimate the target normals of metric={self.metric!r}; "
                "lower normals_k or pass target_normals."
            )
        normals, thickness, spacing = problem.cached(
            self._geometry_key(Q.shape[0]), lambda: self._target_geometry(Q, index)
        )
        if self.metric != "point_to_point" and problem.target_normals is not None:
            normals = np.asarray(problem.target_normals)
        return _Setup(
            P=P, Q=Q, normals=normals, index=index, scale=s, source_centroid=cs,
            target_centroid=ct, spacing=spacing, noise=float(np.median(thickness)), nus=[None],
            loss=self._resolved_loss(),
            source_normals=source_normals(problem, self.normals_k, self.neighbors)
            if self.metric == "symmetric" else None,
        )

    def _geometry_key(self, n_target: int) -> tuple:
        """Cache key of the target geometry this solver needs (see _target_geometry)."""
        sampled = self.metric == "point_to_point" and n_target > _GEOMETRY_MAX_POINTS
        return ("sampled geometry" if sampled else "geometry", self.normals_k, self.neighbors)

    def _target_geometry(self, Q: np.ndarray, index) -> tuple:
        """``(normals, thickness, spacing)`` of the target ``Q`` (normalized coordinates),
        from its neighbourhoods searched in ``index`` (a tree over ``Q``).

        Point-to-point needs no normals, only the spacing and noise medians: on large
        targets they come from a subsample's neighbourhoods, and only their eigenvalues
        (None for the normals). Up to that size the normals are computed for every metric
        (the eigenvalues of ``eigh`` and ``eigvalsh`` differ by rounding, which would move
        the solves of the existing suite).
        """
        if self._geometry_key(Q.shape[0])[0] == "sampled geometry":
            return sampled_geometry(
                index, k=self.normals_k, max_points=_GEOMETRY_MAX_POINTS,
                n_threads=self.n_threads, normals=False,
            )
        # Smaller clouds than normals_k: the whole cloud is each neighbourhood (only the
        # noise estimate of point-to-point uses it then; estimated normals were refused).
        # Q is normalized (its diagonal is 1): no power-of-two rescaling as in
        # local_geometry, whose estimates these equal (its rescaling is exact).
        return _neighbourhood_geometry(
            index, Q, min(self.normals_k, Q.shape[0]), n_threads=self.n_threads
        )

    def _schedule(self, setup: _Setup, initial_residuals: np.ndarray) -> list:
        if _scale_free(setup.loss):
            return [None]
        schedule = self._scale_schedule()
        if schedule.nu is not None:
            return [schedule.nu / setup.scale]
        if schedule.nu_min is not None:
            nu_min = schedule.nu_min / setup.scale
        else:
            nu_min = max(
                setup.spacing / (3.0 * math.sqrt(3.0)), schedule.noise_factor * setup.noise
            )
        finite = initial_residuals[np.isfinite(initial_residuals)]
        nu = schedule.init_factor * float(np.median(np.abs(finite)))
        nus = []
        while nu > nu_min:
            nus.append(nu)
            nu = nu / 2.0
        nus.append(nu_min)
        if self._refines(setup):
            setup.refine = True
            nus.append(_REFINE_NU_FACTOR * nu_min)
        return nus

    def _refines(self, setup: _Setup) -> bool:
        if (self.metric != "point_to_point" or self.similarity or self.refine is False
                or not setup.final_level):
            return False
        if self.refine == "auto":
            return setup.noise > _REFINE_NOISE_RATIO * setup.spacing
        return True

    @staticmethod
    def _bound(setup: _Setup, nu) -> float:
        bound = setup.loss.search_bound
        if nu is None or bound is None:
            return np.inf
        return bound * nu

    # ------------------------------------------------------------------ correspondences
    def _query(self, run: _Run, X: np.ndarray, count: bool = True, **kwargs):
        run.n_queries += count
        if self.n_threads == 1:
            return run.setup.index.query(X, n_threads=1, **kwargs)
        # Threads for the searches of at least 2 * _PARALLEL_QUERY_SECONDS at the cost per
        # row of the last one (the default rows-per-thread rule for the first, and as a cap).
        rows = X.shape[0] * kwargs.get("k", 1)
        min_rows = _MIN_ROWS_PER_THREAD
        if run.row_seconds > 0.0:
            min_rows = int(min(max(_PARALLEL_QUERY_SECONDS / run.row_seconds, 1.0), min_rows))
        start = time.perf_counter()
        out = run.setup.index.query(X, n_threads=self.n_threads, min_rows_per_thread=min_rows,
                                    **kwargs)
        if rows:
            threads = max(1, min(self.n_threads, rows // min_rows))
            run.row_seconds = (time.perf_counter() - start) * threads / rows
        return out

    def _correspond(self, run: _Run, P: np.ndarray, metric: str, T: np.ndarray, nu) -> tuple:
        X = _moved(P, T)
        if metric == "surface":
            return self._surface_correspond(run, X)
        dist, idx = self._nearest(run, P, X, self._bound(run.setup, nu))
        if metric == "point_to_plane":
            residuals = self._plane_residuals(run.setup, X, idx)
        elif metric == "symmetric":
            return symmetric_correspond(run.setup, X, T, dist, idx)
        else:
            residuals = dist
        return X, residuals, dist, idx

    def _nearest(self, run: _Run, P: np.ndarray, X: np.ndarray, bound: float) -> tuple:
        """Distance and index of the nearest target point within ``bound`` of each row of
        ``X`` (the rows of ``P`` moved), -1 and inf where none: one search, counted in
        ``n_queries``, whose answers equal the KD-tree's bit for bit (up to ties).

        Each row keeps the ``_NEAREST_CANDIDATES`` nearest target points (within the bound
        then) of the position where it was last searched. Near convergence the points move
        by a small fraction of the spacing per iteration, so the candidates settle most
        rows' answers (see :func:`~mmopt.registration._kernels.cached_nearest`) at a
        fraction of a search's cost; only the other rows are searched in the tree.
        """
        run.n_queries += 1
        n = X.shape[0]
        n_target = run.setup.Q.shape[0]
        k = min(_NEAREST_CANDIDATES, n_target)
        cache = run.nearest
        if cache is None or not (cache[0].shape == P.shape and cache[0].strides == P.strides
                                 and cache[0].ctypes.data == P.ctypes.data):
            # A new set of source points (a stage's subsample, a level): search them all.
            # The cache holds P itself, so its address cannot be reused by another array.
            cache = (P, X.copy(), np.empty((n, k), dtype=np.intp), np.empty(n), np.empty(n))
            run.nearest = cache
            dist, idx, stale = np.empty(n), np.empty(n, dtype=np.intp), np.arange(n)
        else:
            _, origin, candidates, near, reach = cache
            dist, idx, stale = cached_nearest(X, origin, run.setup.Q, candidates, near, reach,
                                              bound)
        if stale.size:
            _, origin, candidates, near, reach = cache
            found, ids = self._query(run, X[stale], count=False, k=k, bound=bound)
            found, ids = found.reshape(-1, k), ids.reshape(-1, k)
            origin[stale], candidates[stale], near[stale] = X[stale], ids, found[:, 0]
            # Every target point closer than the k-th candidate is a candidate; fewer than
            # k within the bound: every point within it (all of them when k = n_target).
            last = found[:, -1]
            reach[stale] = np.where(np.isfinite(last), np.inf if k == n_target else last,
                                    bound)
            dist[stale], idx[stale] = found[:, 0], ids[:, 0]
        return dist, idx

    def _surface_correspond(self, run: _Run, X: np.ndarray) -> tuple:
        """Offsets of ``X`` from the smoothed target surface (see the class notes).

        Returns ``(X, residuals, dist, idx, centres, normals)``: ``dist`` and ``idx`` of the
        nearest target point, and per source point the kernel-weighted mean and the PCA
        normal of its ``refine_k`` nearest target points.
        """
        setup = run.setup
        k = min(self.refine_k, setup.Q.shape[0])
        h = _REFINE_BANDWIDTH * max(setup.noise, setup.spacing)
        if self._scan_scale(run):
            # Scan scale: the compiled kernel, the tapered weights.
            idx = self._surface_neighbours(run, X, k)
            residuals, closest, nearest, centres, normals = surface_planes(
                X, setup.Q, idx, h, taper=True, n_threads=self.n_threads
            )
            return X, residuals, closest, nearest, centres, normals
        # (The candidate cache of the scan scale does not pay here: the refinement's steps
        # on clouds of this size move most points past their candidates' margin.)
        dist, idx = self._query(run, X, k=k)
        neighbourhoods = setup.Q[idx]
        # Weights relative to the nearest point: no underflow for far source points.
        a = np.exp((dist[:, :1] ** 2 - dist**2) / (2.0 * h * h))
        a /= a.sum(axis=1, keepdims=True)
        centres = np.einsum("nk,nkj->nj", a, neighbourhoods)
        centred = neighbourhoods - centres[:, None, :]
        # (A batched matmul is 3x faster but rounds differently, which moved two of the
        # existing synthetic cases by up to 0.08 degrees: kept as it was.)
        covariance = np.einsum("nk,nki,nkj->nij", a, centred, centred)
        normals = np.linalg.eigh(covariance)[1][:, :, 0]
        residuals = np.einsum("ij,ij->i", normals, X - centres)
        return X, residuals, dist[:, 0], idx[:, 0], centres, normals

    @staticmethod
    def _scan_scale(run: _Run) -> bool:
        """Whether the refinement runs at scan scale: after a voxel-grid level, or on a
        subsample of a large source (clouds of the existing sizes keep the plain weights)."""
        return len(run.problems) > 1 or run.setup.P.shape[0] > _REFINE_MAX_POINTS

    def _surface_neighbours(self, run: _Run, X: np.ndarray, k: int) -> np.ndarray:
        """Indices (n, k) of the exact ``k`` nearest target points of each row of ``X``, at
        scan scale, from a cache of candidates.

        Each row keeps the ``K = k + k // 2`` nearest target points of the position ``x0``
        where it was last searched. If the row has since moved by ``delta = |x - x0|`` with
        ``2 delta < d_K - d_k`` (its K-th and k-th distances at ``x0``), every one of its
        ``k`` nearest points at ``x`` is among them (each lies within ``d_k + 2 delta`` of
        ``x0``), and they are picked from the candidates; only the rows that moved farther
        are searched again. Each call counts as one query in ``n_queries``.
        """
        setup = run.setup
        n_target = setup.Q.shape[0]
        n_cand = min(n_target, k + max(k // 2, 1))
        cache = run.surface_neighbours
        if cache is None or cache[1].shape[0] != X.shape[0]:
            stale = slice(None)
            cache = (X.copy(), np.empty((X.shape[0], n_cand), dtype=np.intp),
                     np.empty(X.shape[0]))
            run.surface_neighbours = cache
        else:
            origin, _, margin = cache
            moved = np.sqrt(np.einsum("ij,ij->i", X - origin, X - origin))
            # (With a relative slack for the rounding of the distances.)
            stale = np.flatnonzero(2.0 * moved * (1.0 + 1e-12) >= margin)
        origin, candidates, margin = cache
        run.n_queries += 1
        if not isinstance(stale, np.ndarray) or stale.size:
            dist, idx = self._query(run, X[stale], count=False, k=n_cand)
            origin[stale], candidates[stale] = X[stale], idx.reshape(-1, n_cand)
            dist = dist.reshape(-1, n_cand)
            # With every target point a candidate the picks are always exact.
            margin[stale] = np.inf if n_cand == n_target else dist[:, -1] - dist[:, k - 1]
        return nearest_candidates(X, setup.Q, candidates, k, n_threads=self.n_threads)

    @staticmethod
    def _plane_residuals(setup: _Setup, X, idx) -> np.ndarray:
        residuals = np.full(idx.shape, np.inf)
        ok = idx >= 0
        residuals[ok] = np.einsum("ij,ij->i", setup.normals[idx[ok]], X[ok] - setup.Q[idx[ok]])
        return residuals

    def _restrict(self, setup: _Setup, corr: tuple, nu) -> tuple:
        """Correspondences found under a wider bound, cut to the bound of ``nu``."""
        X, residuals, dist, idx = corr
        bound = self._bound(setup, nu)
        far = dist > bound
        if not far.any():
            return corr
        residuals, dist, idx = residuals.copy(), dist.copy(), idx.copy()
        residuals[far], dist[far], idx[far] = np.inf, np.inf, -1
        return X, residuals, dist, idx

    @staticmethod
    def _energy(setup: _Setup, corr: tuple, nu) -> float:
        return _loss_energy(setup.loss, corr[1], nu)

    # ------------------------------------------------------------------------ the steps
    def _plain_step(
        self, setup: _Setup, P: np.ndarray, metric: str, T: np.ndarray, corr: tuple, nu
    ) -> np.ndarray:
        X, residuals, _, idx = corr[:4]
        if metric == "point_to_point":
            # Unmatched points have infinite residuals, hence zero weight; the kernel reads
            # the matched pairs in place (no gathered copies) in one pass.
            w = _loss_weights(setup.loss, residuals, nu)
            total, p_sum, q_sum, cross, p_sq = weighted_pair_moments(P, setup.Q, idx, w)
            if not total > 0:
                return T
            p_bar, q_bar = p_sum / total, q_sum / total
            H = cross / total - np.outer(p_bar, q_bar)
            spread = p_sq / total - float(p_bar @ p_bar)
            return kabsch_from_moments(
                p_bar, q_bar, H, spread, similarity=self.similarity,
                scale_bounds=tuple(self.scale_bounds),
            )
        if metric == "symmetric":
            return symmetric_step(setup, T, corr, lambda r: _loss_weights(setup.loss, r, nu),
                                  lambda r: _loss_energy(setup.loss, r, nu))
        matched = idx >= 0
        w = _loss_weights(setup.loss, residuals[matched], nu)
        if not np.sum(w) > 0:
            return T
        if metric == "surface":
            centres, normals = corr[4][matched], corr[5][matched]
        else:
            centres = setup.Q[idx[matched]]
            normals = setup.normals[idx[matched]]
        return self._gauss_newton(
            setup.loss, T, X[matched], residuals[matched], centres, normals, w, nu
        )

    @staticmethod
    def _gauss_newton(loss, T, X, r, Q, normals, w, nu) -> np.ndarray:
        J = point_to_plane_jacobian(X, normals)
        Jw = J * w[:, None]
        A = Jw.T @ J
        b = Jw.T @ r
        # A tiny ridge keeps degenerate geometry (a plane: rotation about its normal and
        # in-plane translation are free) solvable; the line search guards the result.
        ridge = 1e-12 * max(float(np.trace(A)), np.finfo(float).tiny)
        delta = -np.linalg.solve(A + ridge * np.eye(6), b)
        if not np.all(np.isfinite(delta)):
            return T
        e0 = _loss_energy(loss, r, nu)

        def trial(step: float) -> tuple:
            D = _se3_exp(step * delta)
            Xs = _moved(X, D)
            return D, _loss_energy(loss, np.einsum("ij,ij->i", normals, Xs - Q), nu)

        # Strict decrease of the frozen-match energy (the Gauss-Newton model is not the
        # robust energy's, so no Armijo slope): the energy never increases within a stage.
        search = backtracking(trial, lambda _, t: t[1] < e0, max_trials=30)
        return search.trial[0] @ T if search.success else T

    def _init_state(self, problem, x0):
        clock = time.perf_counter()
        problems = [problem]
        prefetch = None
        if self._multires(max(problem.source.shape[0], problem.target.shape[0])):
            if self.n_threads > 1:
                # The full clouds' tree and geometry on a second thread, while this one
                # builds and solves the voxel-grid level.
                prefetch = _Prefetch(lambda: self._make_setup(problem))
            problems.insert(0, coarse_problem(self, problem))
        setup = self._make_setup(problems[0])
        setup.final_level = len(problems) == 1
        init = self.init if x0 is None else x0
        if isinstance(init, str):
            check_choice(init, "init" if x0 is None else "x0", INITS)
            T = np.eye(4)
            if init == "identity":
                T = self._from_user(setup, np.eye(4))
        else:
            name = "init" if x0 is None else "x0"
            T = self._from_user(
                setup, check_rigid_transform(init, name, similarity=self.similarity)
            )
            if not np.all(np.isfinite(T)):
                raise ValueError(
                    f"{name}: its translation is too large for the clouds' scale "
                    f"({setup.scale:.3g}): the start overflows float64."
                )
        run = _Run(setup, problems=problems, clock=clock, level_start=(clock, 0, 0),
                   prefetch=prefetch)
        return self._start_level(run, T, "init" if x0 is None else "x0")

    def _start_level(self, run: _Run, T: np.ndarray, name: str) -> _ICPState:
        """The first state of the current level from the pose ``T`` (its normalized
        coordinates): the schedule from the residuals there, the first stage's matches."""
        setup = run.setup
        metric = "point_to_point" if self.metric == "hybrid" else self.metric
        # The median initial residual that sets the schedule, from the sparsest subsample
        # (queries from a far start are the slowest); it is also the first stage's subsample
        # unless the schedule is too short to have coarse stages.
        stride = self._scale_schedule().coarse_stride
        probe = 1 if stride == 1 or metric == "symmetric" else max(
            stride, setup.P.shape[0] // _COARSE_MIN_POINTS)
        P = setup.P[::probe]
        corr = self._correspond(run, P, metric, T, None)
        setup.nus = self._schedule(setup, corr[1])
        nu = setup.nus[0]
        if self._stride(setup, 0) != probe:
            P = self._active_points(setup, 0)
            corr = self._correspond(run, P, metric, T, None)
        corr = self._restrict(setup, corr, nu)
        if self.metric == "hybrid" and len(setup.nus) == 1:
            metric, corr = self._switch_to_plane(setup, corr)
        run.anderson = make_accelerator(self.anderson)
        energy = self._energy(setup, corr, nu)
        fun = self._user_energy(setup, energy)
        squared_units = setup.scale * setup.scale * setup.P.shape[0]
        if _scale_free(setup.loss) and not (np.isfinite(squared_units) and np.isfinite(fun)
                                            or not np.isfinite(energy)):
            # Not a numerical failure of the solve: the energy is not representable.
            raise ValueError(
                f"source and target: with loss={self.loss!r} the energy is reported in squared "
                f"data units, which overflow float64 at the clouds' scale ({setup.scale:.3g}); "
                "rescale the clouds or use loss='welsch' (unit-free)."
            )
        if not np.isfinite(energy):
            raise ValueError(
                f"{name}: the start is so far from the target that the energy overflows "
                "float64; start closer (init='centroids')."
            )
        return _ICPState(
            x=self._to_user(setup, T), fun=fun, T=T, corr=corr,
            G=self._plain_step(setup, P, metric, T, corr, nu), energy=energy,
            P=P, metric=metric, run=run, intermediate=not setup.final_level,
        )

    def _next_level(self, run: _Run, T: np.ndarray, nit: int) -> _ICPState:
        """Leave the current level at pose ``T`` (its normalized coordinates) after ``nit``
        iterations in all: the next level starts there with its own schedule."""
        self._close_level(run, nit)
        T_user = self._to_user(run.setup, T)
        run.stage_offset += len(run.setup.nus)
        run.level += 1
        run.setup = self._level_setup(run, run.problems[run.level])
        run.setup.final_level = run.level == len(run.problems) - 1
        run.setup.after_coarse = True
        run.surface_neighbours = None
        run.nearest = None
        run.stage_iters.append(0)
        run.stage_times.append(0.0)
        state = self._start_level(run, self._from_user(run.setup, T_user), "x0")
        if run.anderson is not None:
            run.anderson.reset()
        return state

    def _level_setup(self, run: _Run, problem: RegistrationProblem) -> _Setup:
        """The setup of ``problem``: the prefetched one for the full-resolution level (used
        once), or built here."""
        if run.prefetch is not None and problem is run.problems[-1]:
            prefetch, run.prefetch = run.prefetch, None
            return prefetch.result()
        return self._make_setup(problem)

    @classmethod
    def _close_level(cls, run: _Run, nit: int) -> None:
        """Summarize the current level in ``run.levels``."""
        run.levels.append(cls._level_summary(run, nit))
        run.level_start = (time.perf_counter(), nit, run.n_queries)

    @staticmethod
    def _level_summary(run: _Run, nit: int) -> dict:
        """The current level so far, ``nit`` iterations done in all (see the Notes)."""
        problem = run.problems[run.level]
        start, nit0, queries0 = run.level_start
        return {
            "n_source": problem.source.shape[0], "n_target": problem.target.shape[0],
            "voxel_size": problem.cached(("voxel size",), lambda: None),
            "nit": nit - nit0, "n_queries": run.n_queries - queries0,
            "time": time.perf_counter() - start,
        }

    @staticmethod
    def _matches_noisy(setup: _Setup, corr: tuple) -> bool:
        """Whether nearest-point matches at the annealed solution are inexact.

        Where most source points coincide with target points (the same sampling, as in
        synthetic copies), nearest-point matching is exact and the smoothed surface would
        only blur it; the lower quartile of the match distances tells (0 there, a third of
        the spacing or more between independent scans).
        """
        dist = corr[2]
        quartile = np.partition(dist, dist.shape[0] // 4)[dist.shape[0] // 4]
        return bool(quartile > 0.1 * setup.spacing)

    def _stride(self, setup: _Setup, stage: int) -> int:
        # Early stages (all but the last three) match a regular subsample of the source:
        # at a large nu the fit averages over many points anyway, and each query is cheaper
        # (queries from a far pose are the slowest: the bound 5 nu prunes nothing). The
        # subsample doubles as nu halves, from about _COARSE_MIN_POINTS points. After a
        # voxel-grid level, every stage before nu_min matches at most _FINE_MAX_POINTS.
        n_annealed = len(setup.nus) - setup.refine
        n_coarse = n_annealed - 3
        stride = self._scale_schedule().coarse_stride
        if stride == 1 or self.metric == "symmetric":
            return 1
        capped = 1
        if setup.after_coarse and (stage < n_annealed - 1 or setup.refine):
            capped = -(-setup.P.shape[0] // _FINE_MAX_POINTS)
        if stage >= n_coarse:
            return capped
        sparsest = max(stride, setup.P.shape[0] // _COARSE_MIN_POINTS)
        return max(min(stride * 2 ** (n_coarse - 1 - stage), sparsest), capped)

    def _coarse(self, setup: _Setup, stage: int) -> bool:
        return self._stride(setup, stage) > 1

    def _active_points(self, setup: _Setup, stage: int) -> np.ndarray:
        return setup.P[:: self._stride(setup, stage)]

    def _switch_to_plane(self, setup: _Setup, corr: tuple) -> tuple:
        """Hybrid metric: the last stage refines with point-to-plane on the same matches.

        Returns the new metric and the correspondences with plane residuals.
        """
        X, _, dist, idx = corr
        return "point_to_plane", (X, self._plane_residuals(setup, X, idx), dist, idx)

    def _user_energy(self, setup: _Setup, energy: float) -> float:
        # Scaled losses: sum rho(r / nu) is unit-free; without a scale it is in squared units.
        return energy * setup.scale * setup.scale if _scale_free(setup.loss) else energy

    def _step(self, problem, state):
        run = state.run
        setup = run.setup
        P, metric = state.P, state.metric
        nu = setup.nus[state.stage]
        accepted = np.nan
        T_new = None
        aa = run.anderson
        if aa is not None:

            def evaluate(T_try):
                corr_try = self._correspond(run, P, metric, T_try, nu)
                return self._energy(setup, corr_try, nu), corr_try

            out = aa.safeguarded_step(
                self._params(state.T), self._params(state.G), evaluate, state.energy,
                to_point=self._from_params,
            )
            accepted = out.record
            if out.accepted:
                T_new, corr, energy = out.point, out.info, out.value
        if T_new is None:
            T_new = state.G
            corr = self._correspond(run, P, metric, T_new, nu)
            energy = self._energy(setup, corr, nu)
            if metric == "surface" and energy > state.energy and self._scan_scale(run):
                # At scan scale the planes move with the pose (continuously, with the
                # tapered weights): a shorter step along the same twist can still descend.
                twist = _se3_log(T_new @ np.linalg.inv(state.T))
                for _ in range(_SURFACE_HALVINGS):
                    twist = twist / 2.0
                    T_try = _se3_exp(twist) @ state.T
                    corr_try = self._correspond(run, P, metric, T_try, nu)
                    energy_try = self._energy(setup, corr_try, nu)
                    if energy_try <= state.energy:
                        T_new, corr, energy = T_try, corr_try, energy_try
                        break
            if metric != "point_to_point" and energy > state.energy:
                # Re-matching by Euclidean distance does not minimize the point-to-plane
                # residuals, so a Gauss-Newton step that lowered the frozen-match energy can
                # raise the re-matched one (seen: a 2-cycle between two poses). Staying put
                # keeps the energy monotone and ends the stage.
                T_new, corr, energy = state.T, state.corr, state.energy
        step = float(np.linalg.norm(T_new - state.T))
        stage, stage_iter = state.stage, state.stage_iter + 1
        run.stage_iters[-1] += 1
        residual = step
        # At scan scale the refinement's neighbourhoods are searched afresh at each pose, and
        # once its steps lower the energy by a fraction of a per mille they shrink only
        # slowly (by ~10% a step), drifting within the start-dependent spread of its final
        # pose: it ends there (see _should_stop).
        settled = (metric == "surface" and self._scan_scale(run)
                   and state.energy - energy < _REFINE_ENERGY_RTOL * abs(state.energy))
        last = stage == len(setup.nus) - 1
        if last and step < self.tol and not setup.final_level:
            # A voxel-grid level converged: the next level starts from its pose.
            new = self._next_level(run, T_new, sum(run.stage_iters))
            new.residual = np.inf
            new.record = self._record(run, new, accepted)
            self._tick(run)
            return new
        # The intermediate scales only lead into the basin: the stage criteria end them; the
        # nu_min stage (and the refinement after it) converge to tol.
        criteria = self._stage_criteria()
        intermediate = stage < len(setup.nus) - 1 - setup.refine
        if setup.after_coarse and setup.refine and stage == len(setup.nus) - 2:
            # At scan scale the nu_min stage matches a subsample too and only leads into
            # the refinement's basin.
            intermediate = True
        stage_tol = self.tol if criteria.tol is None or not intermediate else criteria.tol
        ending = not last and (step < stage_tol or stage_iter >= criteria.max_iter)
        if (
            ending and setup.refine and self.refine == "auto" and stage == len(setup.nus) - 2
            and not self._matches_noisy(setup, corr)
        ):
            # No refinement after all: the nu_min stage is the last one, on the whole source.
            stride = self._stride(setup, stage)
            setup.nus.pop()
            setup.refine, ending = False, False
            if self._stride(setup, stage) != stride:
                P = self._active_points(setup, stage)
                corr = self._correspond(run, P, metric, T_new, nu)
                energy = self._energy(setup, corr, nu)
                if aa is not None:
                    aa.reset()
                residual = np.inf
        if ending:
            # Next stage: a smaller nu. Correspondences found under the wider bound remain
            # valid; the energy and the plain step are those of the new problem.
            stage, stage_iter = stage + 1, 0
            run.stage_iters.append(0)
            run.stage_times.append(0.0)
            nu = setup.nus[stage]
            if setup.refine and stage == len(setup.nus) - 1:
                # The surface refinement: new residuals, matched afresh on every point (on
                # a regular subsample of large sources: the fit averages over thousands of
                # planes anyway, and each match costs a refine_k-neighbour search).
                metric = "surface"
                P = setup.P[:: -(-setup.P.shape[0] // _REFINE_MAX_POINTS)]
                corr = self._correspond(run, P, metric, T_new, nu)
            elif self._stride(setup, stage - 1) != self._stride(setup, stage):
                # A denser subsample, or the whole source: match its points (one query).
                P = self._active_points(setup, stage)
                corr = self._correspond(run, P, metric, T_new, nu)
            else:
                corr = self._restrict(setup, corr, nu)
            if self.metric == "hybrid" and stage == len(setup.nus) - 1:
                metric, corr = self._switch_to_plane(setup, corr)
            energy = self._energy(setup, corr, nu)
            if aa is not None:
                aa.reset()
            residual = np.inf
        new = _ICPState(
            x=self._to_user(setup, T_new),
            fun=self._user_energy(setup, energy),
            residual=residual,
            T=T_new,
            corr=corr,
            G=self._plain_step(setup, P, metric, T_new, corr, nu),
            energy=energy,
            stage=stage,
            stage_iter=stage_iter,
            P=P,
            metric=metric,
            run=run,
            intermediate=not setup.final_level,
            settled=settled,
        )
        new.record = self._record(run, new, accepted)
        self._tick(run)
        return new

    def _should_stop(self, problem, state):
        if state.settled:
            return Status.CONVERGED, (
                "Converged: the surface refinement's step lowered its energy by less than "
                f"{_REFINE_ENERGY_RTOL:g} of it."
            )
        return None

    @staticmethod
    def _record(run: _Run, state: _ICPState, accepted) -> dict:
        nu = run.setup.nus[state.stage]
        return {
            "nu": np.nan if nu is None else nu * run.setup.scale,
            "stage": run.stage_offset + state.stage,
            "level": run.level,
            "accepted": accepted,
            "n_queries": run.n_queries,
            "n_points": state.P.shape[0],
        }

    @staticmethod
    def _tick(run: _Run) -> None:
        """Charge the time since the last step's end to the current stage."""
        now = time.perf_counter()
        run.stage_times[-1] += now - run.clock
        run.clock = now

    def _result_fields(self, problem, state):
        run = state.run
        setup = run.setup
        T = state.x
        nu = setup.nus[state.stage]
        nu_min = setup.nus[-1]
        corr = state.corr
        # Stopped on a voxel-grid level (max_iter, callback): the diagnostics are those of
        # the full clouds at its pose (the scales carried over in data units).
        T_final, metric = state.T, state.metric
        if not setup.final_level:
            coarse = setup
            setup = self._level_setup(run, problem)
            T_final = self._from_user(setup, T)
            ratio = coarse.scale / setup.scale
            nu = None if nu is None else nu * ratio
            nu_min = None if nu_min is None else nu_min * ratio
            corr = (np.empty((0, 3)),)
        s = setup.scale
        if corr[0].shape[0] != setup.P.shape[0]:
            # Subsampled stage (coarse, or the refinement of a large source), or a voxel
            # level: match the whole source for the diagnostics (its nearest points: no
            # surface fit needed).
            metric = "point_to_point" if metric == "surface" else metric
            corr = self._correspond(_Run(setup), setup.P, metric, T_final, nu)
            run.n_queries += 1
        dist = corr[2]
        if self.inlier_threshold is not None:
            threshold = float(self.inlier_threshold)
        else:
            reference = nu if nu is not None else max(
                setup.spacing / (3.0 * math.sqrt(3.0)),
                self._scale_schedule().noise_factor * setup.noise,
            )
            threshold = max(3.0 * reference, 2.0 * setup.spacing) * s
        user_dist = dist * s
        inliers = user_dist <= threshold
        aa = run.anderson
        n_acc = 0 if aa is None else aa.n_accepted
        n_rej = 0 if aa is None else aa.n_rejected
        scale = float(np.cbrt(np.linalg.det(T[:3, :3])))
        n_stages = run.stage_offset + state.stage + 1
        return {
            "transform": T,
            "rotation": T[:3, :3] / scale,
            "translation": T[:3, 3].copy(),
            "scale": scale,
            # Scale-free losses (l2, trimmed) have no nu: None rather than a NaN.
            "nu": None if nu is None else nu * s,
            "nu_min": None if nu_min is None else nu_min * s,
            "spacing": setup.spacing * s,
            "noise": setup.noise * s,
            "n_stages": n_stages,
            "refined": bool(setup.final_level and setup.refine
                            and state.stage == len(setup.nus) - 1),
            "n_coarse_stages": run.stage_offset + sum(
                self._coarse(run.setup, k) for k in range(state.stage + 1)
            ),
            "iterations_per_stage": np.array(run.stage_iters[:n_stages], dtype=int),
            "stage_times": np.array(run.stage_times[:n_stages]),
            "levels": run.levels + [self._level_summary(run, sum(run.stage_iters))],
            "n_accepted": n_acc,
            "n_rejected": n_rej,
            # No proposal made (Anderson off, or converged before it extrapolated): 0.
            "acceptance_rate": n_acc / (n_acc + n_rej) if n_acc + n_rej else 0.0,
            "n_queries": run.n_queries,
            "inlier_ratio": float(np.mean(inliers)),
            # No inlier: the RMSE of an empty set is undefined (None, not a NaN).
            # In normalized units then scaled: squaring data units overflows at 1e300.
            "inlier_rmse": float(s * np.sqrt(np.mean(dist[inliers] ** 2))) if inliers.any()
            else None,
            "inlier_threshold": threshold,
            "correspondences": corr[3],
        }


def point_to_plane_jacobian(X: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Jacobian of ``r_i = n_i^T (exp(delta) x_i - q_i)`` in ``delta = (omega, v)`` at 0.

    ``d/d omega (omega x x) . n = x x n`` and ``d/d v = n``: rows ``(x_i x n_i, n_i)``. This
    is exact at ``delta = 0`` (the left-perturbation parametrization needs no Jacobian of
    ``exp`` away from the identity).

    Examples
    --------
    >>> from mmopt.registration.icp import point_to_plane_jacobian
    >>> point_to_plane_jacobian(np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 1.0]]))
    array([[ 0., -1.,  0.,  0.,  0.,  1.]])
    """
    return np.hstack([np.cross(X, normals), normals])


def icp(source, target, **options) -> Result:
    """Register ``source`` onto ``target`` (``target ~= T source``) with :class:`ICP`.

    Parameters
    ----------
    source : array-like of shape (n, 3)
        The moving cloud.
    target : array-like of shape (m, 3)
        The fixed cloud.
    **options
        ``target_normals`` and ``source_normals`` (see :class:`RegistrationProblem`), and the
        options of :class:`ICP` (``metric``, ``loss``, ``init``, ``anderson``, ``tol``, ...).

    Returns
    -------
    Result
        With ``transform`` (4x4), ``rotation``, ``translation`` and the diagnostics listed in
        :class:`ICP`.

    Examples
    --------
    >>> from mmopt.registration import icp
    >>> from mmopt.registration.se3 import se3_exp
    >>> rng = np.random.default_rng(1)
    >>> source = rng.normal(size=(500, 3)) * [3.0, 2.0, 1.0]
    >>> T = se3_exp([0.2, -0.1, 0.3, 0.5, 0.0, 0.0])
    >>> res = icp(source, source @ T[:3, :3].T + T[:3, 3])
    >>> bool(np.allclose(res.transform, T, atol=1e-4)), res.inlier_ratio
    (True, 1.0)
    """
    problem = RegistrationProblem(
        source,
        target,
        target_normals=options.pop("target_normals", None),
        source_normals=options.pop("source_normals", None),
    )
    x0 = options.pop("x0", None)
    return solve(problem, "icp", x0=x0, **options)
