"""Sinkhorn for k histograms sharing one cost: ``b`` of shape (m, k), solved together.

The problems iterate on one absorbed kernel ``K_ij = exp((F_i + G_j - C_ij) / reg)`` (shared
base potentials ``F``, ``G``) with a scaling vector each (``U`` (k, n), ``V`` (k, m)), so
that each half-iteration is one matrix-matrix product (``V @ K.T``, ``U @ K``: BLAS GEMM)
for all of them instead of k matrix-vector products. Each problem has its own stopping test
and over-relaxation and leaves as soon as it converges; the last few iterate on one pass
over the kernel (each block of its rows swept by every problem while in cache:
:func:`mmopt_ext._sinkhorn.scaling_iterations`). When scalings leave their range the
base moves to the middle of the problems' potentials (one recomputed kernel for all);
problems too far from the others for one kernel form further groups with their own
kernels (clustered so that each fits one: :func:`_groups`), started where they stand. A
problem whose sweep fails, or whose group recomputes its kernel too often, is finished
alone by :class:`~mmopt.ot.Sinkhorn` (absorption, log domain where needed).

Where reg is small against the cost's spread (``_LEVEL_MIN_RATIO``) the problems are first
solved loosely at 10x reg (epsilon scaling, itself so started where that ratio still
holds), and start at reg from those potentials.

Each problem's column scalings are Anderson-mixed (:class:`_Anderson`, over
:class:`~mmopt._core.anderson.BatchedAnderson`, whose step is one compiled pass per
problem), with restarts and a fall-back to over-relaxation as safeguard; the log-domain
passes around the mixing are compiled too (:mod:`mmopt_ext._batched_sinkhorn`). On small
kernels (``_SMALL_MAX_ENTRIES``) the last few problems are finished alone once their
errors fall slowly (:meth:`_Batch._slow`); on tiny ones (``_ALONE_MAX_ENTRIES``) at once,
and k <= ``_FUSED_MAX`` problems one by one.

References
----------
H. F. Walker and P. Ni, "Anderson acceleration for fixed-point iterations", SIAM J.
Numer. Anal. 49(4), 2011.
B. Schmitzer, "Stabilized sparse scaling algorithms for entropy regularized transport
problems", SIAM J. Sci. Comput. 41(3), 2019 (epsilon scaling, section 3.2).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from threadpoolctl import ThreadpoolController

from mmopt._core.anderson import AndersonAcceleration
from mmopt._core.exceptions import ConvergenceWarning
from mmopt._core.registry import get_solver
from mmopt._core.result import STATUS_MESSAGES, Result, Status
from mmopt._core.solver import caller_stacklevel
from mmopt._core.threads import effective_n_threads
from mmopt._core.validation import check_array, check_scalar
from mmopt.ot._kernels import log_half_step
from mmopt.ot.problem import OTProblem, _histogram, _mass_rtol
from mmopt_ext._batched_sinkhorn import masked_residual as _masked_residual
from mmopt_ext._batched_sinkhorn import select_mixed as _select_mixed
from mmopt_ext._sinkhorn import dense_plan as _dense_plan
from mmopt_ext._sinkhorn import scaling_iterations as _scaling_iterations

# Scalings stay in [e^-L, e^L] and kernel entries below e^floor are zeroed, with
# floor = log(tiny) + L + 20: K_ij v_j >= e^(floor - L) stays a normal float64 (no subnormal
# slow path in the products). A zeroed entry of a problem's plan is below e^(floor + 2 L)
# (its potentials are within L of the base): L is the largest, at most _MAX_LOG_BOUND, that
# keeps this below e^-_TRUNCATION times the total mass.
_MAX_LOG_BOUND = 200.0
_TRUNCATION = 60.0
_LOG_TINY = float(np.log(np.finfo(float).tiny))
# After moving the base, a problem whose potentials are further from it than this share of
# L (in units of reg) leaves for another group: it would soon leave the range again.
_SPREAD_SHARE = 0.65
# Problems that leave (or start) together are clustered into groups that each fit one
# kernel (:func:`_groups`) up to this many: the pairwise distances cost O(c^2 (n + m)).
_MAX_CLUSTERED = 256
# Below this L (total masses below about 1e-200) the problems are solved alone.
_MIN_LOG_BOUND = 20.0
# The last few problems: _FUSED_MAX (the size rule below, and at n_threads > 1 the switch
# from GEMMs to scaling_iterations) and _SHARED_SWEEP_MAX (that switch on one thread). With
# that many problems left or fewer, they iterate on one pass over the shared kernel
# (scaling_iterations, problems in pairs sharing each load of K) instead of through GEMMs.
# On one thread, n = 1000: the paired sweep costs ~145 us per problem-iteration, the two
# GEMMs 230-400 us at 4-7 problems (OpenBLAS packs K for a few columns), 150-240 at 8-12,
# ~100 at 32; mixtures k = 32, reg 1e-3, seeds 0-2: 7-15% less CPU time switching at 12
# than at 4 (loaded machine, CPU time). At n_threads > 1 the fused sweeps' OpenMP region
# alternates with BLAS calls (libgomp's spinning workers): not measured on an idle
# machine, so the switch stays at _FUSED_MAX there.
_FUSED_MAX = 4
_SHARED_SWEEP_MAX = 12
# Below _SMALL_MAX_ENTRIES kernel entries (n m) a one-problem sweep costs less than the
# Python around it (the mixing, the bookkeeping): with few problems the batch pays only
# while the mixing converges fast. What the iterations show decides: a group on such a
# kernel with at most _FUSED_MAX problems left, after at least _PROBE_ITERATIONS
# iterations, whose largest error did not fall tenfold over the last _PROBE_ITERATIONS / 2
# (slow problems, where mixing saves less) hands them to warm-started single solves. Below
# _ALONE_MAX_ENTRIES even fast mixing does not pay for that Python: a group's last
# _FUSED_MAX problems go alone at once, and k <= _FUSED_MAX problems are solved one by one.
# Chosen from measured times (BENCHMARKS.md, ot_batched, "size rule").
_SMALL_MAX_ENTRIES = 300_000
_ALONE_MAX_ENTRIES = 30_000
_PROBE_ITERATIONS = 30
# Anderson mixing of each problem's column scalings (log domain): memory (differences kept),
# Tikhonov weight (on the column-normalized system), the residual growth over the smallest
# that refuses an extrapolated iterate, and refusals after which the problem over-relaxes.
_ANDERSON_MEMORY = 6
_ANDERSON_RIDGE = 1e-10
_ANDERSON_GROWTH = 2.0
_ANDERSON_MAX_RESTARTS = 5
# Epsilon scaling: where the cost's spread over reg exceeds _LEVEL_MIN_RATIO, the problems
# are first solved at _LEVEL_FACTOR times reg (itself so warm-started where its ratio
# still exceeds it), to an L1 marginal error of _LEVEL_TOL times the mass; their
# potentials there start the next level. One thread, k = 32, reg 1e-3 (ratio 1000), CPU
# time against none (loaded machine): mixtures n = 1000 0.52-0.94 (seeds 0-5), n = 300
# 0.73-0.90, n = 100 0.30-0.65, n = 1500 0.93, images 1024 px 0.91; at ratio 333 (3e-3)
# mixed, 0.79-1.15 (n = 300 lost), so not there.
_LEVEL_MIN_RATIO = 500.0
_LEVEL_FACTOR = 10.0
_LEVEL_TOL = 0.1

_CONTROLLER = None


def _blas_limit(threads: int):
    """A context limiting BLAS to ``threads`` threads (the controller is built once)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=threads, user_api="blas")


class _Relaxation:
    """One column's over-relaxation state (the fields :func:`_choose_relaxation` reads)."""

    def __init__(self):
        self.omega = 1.0
        self.errors = []
        self.switch_error = np.inf
        self.relaxed_sweeps = 0
        self.relax_failures = 0


def check_batched(a, b, C, reg):
    """Validate ``(a, b, C, reg)`` with ``b`` of shape (m, k); returns float64 arrays.

    ``a`` is one histogram shared by the k problems (empty means uniform); each column of
    ``b`` has the total mass of ``a`` (up to the histograms' precision: a column given in
    float32 is rescaled to it in float64).
    """
    C = check_array(C, "C", ndim=2)
    n, m = C.shape
    if a is not None and np.ndim(a) == 2:
        raise ValueError(
            f"a must be 1-D (one source histogram shared by the k problems of b's columns), "
            f"got shape {np.shape(a)}."
        )
    a = _histogram(a, "a", n, "rows")
    b = check_array(b, "b", ndim=2, nonnegative=True, min_size=0)
    if b.shape[0] != m or b.shape[1] == 0:
        raise ValueError(
            f"b must have shape (m, k) = ({m}, k) with k >= 1 (one column per problem, one row "
            f"per column of C), got {b.shape}."
        )
    mass = float(a.sum())
    with np.errstate(over="ignore"):
        masses = b.sum(axis=0)
    tolerance = _mass_rtol((a, b), max(n, m)) * mass
    bad = np.flatnonzero(~(np.abs(masses - mass) <= tolerance))
    if bad.size:
        j = int(bad[0])
        raise ValueError(
            f"every column of b must have the total mass of a ({mass!r}); column {j} has "
            f"sum(b[:, {j}])={float(masses[j])!r} ({bad.size} such column(s))."
        )
    b = b * (mass / masses)
    reg = check_scalar(reg, "reg", min_value=0.0, include_min=False)
    return a, b, C, reg


def batched_sinkhorn(a, b, C, reg, *, return_plan: bool = False, **options) -> Result:
    """Sinkhorn for the k problems ``(a, b[:, j], C, reg)``; see :func:`mmopt.ot.sinkhorn`."""
    from mmopt.ot.sinkhorn import check_reg_resolution

    start = time.perf_counter()
    for name in ("x0", "callback"):
        if options.get(name) is not None:
            raise ValueError(
                f"{name} is not supported with batched histograms (b of shape (m, k)); "
                "solve the columns one by one to use it."
            )
    if options.get("verbose"):
        raise ValueError(
            "verbose is not supported with batched histograms (b of shape (m, k)); "
            "Result.history records the largest residual of the columns still running."
        )
    options.pop("x0", None)
    solver = get_solver("sinkhorn", **options)
    solver._validate_params()
    a, b, C, reg = check_batched(a, b, C, reg)
    check_reg_resolution(C, reg)
    threads = effective_n_threads(solver.n_threads)
    n, m = C.shape
    k = b.shape[1]
    out = _Output(n, m, k, return_plan)
    shared = _Shared(a, b, C, reg, solver, threads, out)
    if (solver.method == "log" or shared.log_bound < _MIN_LOG_BOUND
            or (k <= _FUSED_MAX and shared.tiny)):
        alone = dict.fromkeys(range(k))
    else:
        with _blas_limit(threads):
            warm = {}
            levels = _levels(shared.C, reg)
            for level_reg, next_reg in zip(levels, levels[1:] + [reg]):
                level = _Shared(a, b, C, level_reg, solver, threads, out, _LEVEL_TOL, warm)
                level.history = shared.history  # (the levels' iterations recorded too)
                for j, potentials in _run_groups(level, warm).items():
                    # (left alone: the next level starts them where they stand, or from
                    # zero potentials after a failed sweep)
                    if potentials is None:
                        warm.pop(j, None)
                    else:
                        warm[j] = potentials
                _next_level(warm, level, next_reg)
                out.status[:] = -1  # (a level's statuses are no answers; nit counts on)
            alone = _run_groups(shared, warm)
    if alone:
        _solve_alone(alone, shared)
    return out.result(a, shared.history, start)


def _levels(C, reg):
    """The regularizations of the epsilon-scaling levels before ``reg``, largest first."""
    spread = float(C.max() - C.min())
    levels = []
    level = reg
    while spread > _LEVEL_MIN_RATIO * level:
        level *= _LEVEL_FACTOR
        levels.append(level)
    return levels[::-1]


def _next_level(warm, level, reg):
    """Move the potentials in ``warm`` from ``level.reg`` to ``reg``: the entropic terms
    ``reg log a`` and ``reg log b`` rescaled, relative to the weights' median.

    Kept as they are, a weight of 1e-38 would leave its row or column about 9 x 88 below
    the others' exponents at a tenth of the regularization (an underflowing sweep).
    Relative to the median, typical rows and columns keep theirs: rescaled in full, each
    problem's plan would start far too heavy (first errors of 1e23 times the mass at
    n = 1000, mixtures: the same iterates after that, up to each problem's scale).
    """
    positive = level.b > 0
    log_a = np.log(level.a)
    log_a -= np.median(log_a)
    step = reg - level.reg
    for j, (f, g) in warm.items():
        log_b = np.log(level.b[positive[:, j], j])
        g = g.copy()
        g[positive[:, j]] += step * (log_b - np.median(log_b))
        warm[j] = (f + step * log_a, g)


def _run_groups(shared, warm):
    """Solve every problem in groups, each on its own shared kernel, and return those to
    finish alone. The problems with potentials in ``warm`` (problem -> ``(f, g)``) start
    from them, in groups that fit one kernel each (:func:`_groups`), the others from zero
    potentials in one group; the problems that leave a group (too far from the others for
    one kernel) form the next groups, started where they stand."""
    # (the problems at max_iter are left out: only a level's can be)
    start = np.flatnonzero(shared.out.nit < shared.max_iter)
    warm = {j: warm[j] for j in start if j in warm}
    cold = np.array([j for j in start if j not in warm], dtype=int)
    groups = [(cold, None)] if cold.size else []
    if warm:
        groups += _groups(warm, shared)
    alone = {}
    while groups:
        columns, potentials = groups.pop()
        left, failed = _Batch(shared, columns, potentials).run()
        if left:
            groups += _groups(left, shared)
        alone.update(failed)
    return alone


def _groups(potentials, shared):
    """The problems of ``potentials`` (a dict problem -> ``(f, g)``) in groups that each fit
    one kernel, largest last: each group's columns and stacked potentials.

    Greedy: the problem with the most others within reach (potentials at most twice the
    spread allowed from the base apart, in the gauge centred as :meth:`_Batch._rebase`
    does) starts a group, and the others within reach of all its members join it, nearest
    first. One group per run of :meth:`_Batch._rebase`'s peeling would instead gather the
    problems far from the others on every side into one group, to be split again.
    """
    columns = np.array(list(potentials))
    f = np.stack([f for f, _ in potentials.values()])
    g = np.stack([g for _, g in potentials.values()])
    c = columns.size
    if c == 1 or c > _MAX_CLUSTERED:
        return [(columns, (f, g))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gn = np.where(np.isfinite(g), g, np.nan)
        shift = 0.5 * (np.nanmean(gn - np.nanmean(gn, axis=0), axis=1)
                       - np.mean(f - np.mean(f, axis=0), axis=1))
        fs, gs = f + shift[:, None], gn - shift[:, None]
        distance = np.empty((c, c))
        for i in range(c):
            distance[i] = np.maximum(np.abs(fs - fs[i]).max(axis=1),
                                     np.nanmax(np.abs(gs - gs[i]), axis=1))
    near = ~(distance > 2.0 * shared.max_spread * shared.reg)  # (NaN: no column in common)
    remaining = np.ones(c, dtype=bool)
    groups = []
    while remaining.any():
        reach = near & remaining & remaining[:, None]
        first = int(np.argmax(np.where(remaining, reach.sum(axis=1), -1)))
        members = [first]
        for j in np.argsort(distance[first]):
            if j != first and reach[first, j] and near[j, members].all():
                members.append(int(j))
        remaining[members] = False
        members = np.sort(members)
        groups.append((columns[members], (f[members], g[members])))
    return sorted(groups, key=lambda group: group[0].size)


class _Shared:
    """What every group of one batched solve reads: the data and the answers' store.

    At an epsilon-scaling level (``warm`` given) the problems stop at ``tol`` and only their
    potentials are kept, in ``warm``; otherwise ``tol`` is the solver's and the answers go
    to ``out``.
    """

    def __init__(self, a, b, C, reg, solver, threads, out, tol=None, warm=None):
        self.full_a, self.full_C = a, C
        self.rows = rows = np.flatnonzero(a > 0)
        if rows.size < a.size:  # rows of zero mass never carry mass: left out
            C = np.ascontiguousarray(C[rows])
            a = a[rows]
        self.a, self.b, self.C, self.reg = a, b, C, reg
        self.solver, self.threads, self.out = solver, threads, out
        self.tol = solver.tol if tol is None else tol
        # (the levels take at most half of max_iter: the rest is reg's)
        self.max_iter = solver.max_iter if warm is None else solver.max_iter // 2
        self.warm = warm
        self.mass = float(a.sum())
        self.history = {"residual": [], "n_active": [], "time": []}
        self.start = time.perf_counter()
        self.relax = [_Relaxation() for _ in range(b.shape[1])]
        self.log_bound = min(
            _MAX_LOG_BOUND, (np.log(self.mass) - _TRUNCATION - _LOG_TINY - 20.0) / 3.0
        )
        self.bound = float(np.exp(self.log_bound))
        self.floor = _LOG_TINY + self.log_bound + 20.0
        self.max_spread = _SPREAD_SHARE * self.log_bound
        self.small = C.shape[0] * C.shape[1] <= _SMALL_MAX_ENTRIES
        self.sweep_max = _SHARED_SWEEP_MAX if threads == 1 else _FUSED_MAX
        self.tiny = C.shape[0] * C.shape[1] <= _ALONE_MAX_ENTRIES


class _Output:
    """Each column's answer, filled as the columns finish."""

    def __init__(self, n, m, k, return_plan):
        self.f, self.g = np.full((n, k), -np.inf), np.full((m, k), -np.inf)
        self.fun = np.full(k, np.nan)
        self.transport_cost = np.full(k, np.nan)
        self.objective = np.full(k, np.nan)
        self.marginal_error = np.full(k, np.nan)
        self.status = np.full(k, -1)
        self.nit = np.zeros(k, dtype=int)
        self.method = np.full(k, "scaling", dtype=object)
        self.plan = np.zeros((k, n, m)) if return_plan else None

    def result(self, a, history, start) -> Result:
        status = Status(int(self.status.max()))
        failed = np.flatnonzero(self.status != Status.CONVERGED)
        elapsed = time.perf_counter() - start
        message = STATUS_MESSAGES[status]
        if failed.size:
            message = f"{message} Columns not converged: {failed.tolist()}."
            warnings.warn(
                f"sinkhorn (batched): {failed.size} of {self.status.size} columns did not "
                f"converge (columns {failed[:10].tolist()}"
                f"{' ...' if failed.size > 10 else ''}; see Result.column_status).",
                ConvergenceWarning,
                stacklevel=caller_stacklevel(),
            )
        fields = {
            "x": np.concatenate([self.f, self.g]),
            "fun": self.fun,
            "success": status == Status.CONVERGED,
            "status": int(status),
            "message": message,
            "nit": int(self.nit.max()),
            "time": elapsed,
            "history": {key: np.asarray(value) for key, value in history.items()},
            "solver": "sinkhorn",
            "f": self.f,
            "g": self.g,
            "transport_cost": self.transport_cost,
            "objective": self.objective,
            "marginal_error": self.marginal_error,
            "residual": float(self.marginal_error.max() / a.sum()),
            "column_status": self.status,
            "column_nit": self.nit,
            "method": self.method,
        }
        if self.plan is not None:
            fields["plan"] = self.plan
        return Result(fields)


class _Batch:
    """A group of problems iterating together on one shared kernel.

    Scalings are stored one problem per row: ``U`` (c, n), ``V`` (c, m), so that
    ``V @ K.T`` and ``U @ K`` are the GEMMs and a problem's scalings are contiguous for
    the fused one-problem sweep (:func:`mmopt_ext._sinkhorn.scaling_iteration`) that
    takes over when few problems are left.
    """

    def __init__(self, shared, columns, potentials=None):
        self.shared = shared
        self.a, self.C, self.reg, self.mass = shared.a, shared.C, shared.reg, shared.mass
        self.solver, self.threads, self.out = shared.solver, shared.threads, shared.out
        self.active = columns
        self.B = np.ascontiguousarray(shared.b[:, columns].T)
        self.zeros = bool((self.B == 0).any())
        self.offset = shared.out.nit[columns].copy()  # iterations done before this group
        c = columns.size
        self.column_error = np.zeros(c)
        self.omega = np.ones(c)
        self.relax = shared.relax  # each problem's, kept from group to group
        self.anderson = _Anderson(c) if self.solver.overrelaxation else None
        self.K = None
        self.CK = None  # C * K (transport costs), made when a problem first needs it
        self.left = {}  # problems that leave for another group: their potentials (f, g)
        self.largest_error = []  # the largest error of the active problems, per iteration
        self.failed = {}  # problems whose sweep failed: finished alone from scratch
        # Started from potentials, the first iterate's column error is not known (0 in
        # column_error): it must not stop on its row error alone.
        self.unmeasured = potentials is not None
        if potentials is None:
            self._start()
        else:
            f, g = potentials
            self.U, self.V = f, g  # replaced by the scalings in _rebase
            self._rebase(f, g, np.ones(c, dtype=bool))

    # -------------------------------------------------------------------------- kernel
    def _set_kernel(self, F, G):
        self.F, self.G = F, G
        if self.K is None:
            self.K = np.empty(self.C.shape)
        _dense_plan(self.C, F, G, float(self.reg), self.K, self.threads, self.shared.floor)
        self.CK = None

    def _start(self):
        """One log-domain iteration from zero potentials, shared by all problems: the rows'
        update is the same for every problem, and the columns' is ``reg log b + h`` with
        ``h`` the same for every problem; ``h + reg log(mass)`` is the base."""
        reg, C = self.reg, self.C
        n, m = C.shape
        Ct = np.ascontiguousarray(C.T)
        f, _ = log_half_step(C, np.zeros(m), np.zeros(n), np.log(self.a), reg,
                             n_threads=self.threads)
        h, _ = log_half_step(Ct, f, np.zeros(m), np.zeros(m), reg, n_threads=self.threads)
        self._set_kernel(f, h + reg * np.log(self.mass))
        self.U = np.ones((self.active.size, n))
        self.V = self.B / self.mass

    # --------------------------------------------------------------------------- loop
    def run(self):
        """Iterate until every problem has converged, reached ``max_iter`` or left.

        Returns ``(left, alone)``: the problems that left for another group and those
        to finish alone (frequent absorptions: a shared kernel does not pay), each
        mapped to its potentials ``(f, g)`` (None after a failed sweep).
        """
        from mmopt.ot.sinkhorn import _MAX_ABSORPTION_SHARE, _MIN_ABSORPTIONS

        solver, history = self.solver, self.shared.history
        alone = {}
        absorptions = 0
        it = 0
        while self.active.size:
            if self.active.size <= _FUSED_MAX and (
                    self.shared.tiny or (self.shared.small and self._slow(it))):
                # A small kernel's slow tail: each problem alone costs less (see
                # _ALONE_MAX_ENTRIES), warm-started where it stands.
                self.out.nit[self.active] = self.offset + it
                alone.update(self._potentials())
                break
            it += 1
            if self.active.size > self.shared.sweep_max:
                error, out_of_range = self._gemm_sweep(it)
            else:
                error, out_of_range = self._fused_sweeps(it)
            if not self.active.size:
                break
            history["residual"].append(float(error.max() / self.mass))
            self.largest_error.append(float(error.max()))
            history["n_active"].append(self.active.size)
            history["time"].append(time.perf_counter() - self.shared.start)
            if solver.overrelaxation:
                self._relaxation(error)
            last = self.offset + it >= self.shared.max_iter
            if last.any():
                # max_iter reached: these report status 1 from where they stand (their
                # exact error is computed on that iterate); a sweep that failed on the
                # last iteration (non-finite scalings) leaves nothing to report from, so
                # those are finished alone like any failed sweep (from zero potentials).
                _, _, finite = self._current()
                for c in np.flatnonzero(last & ~finite):
                    j = int(self.active[c])
                    self.out.nit[j] = self.offset[c] + it
                    self.failed[j] = None
                answered = last & finite
                if answered.any():
                    self._finish(answered, self.offset[answered] + it, Status.MAX_ITER)
                self._keep(~last)
                out_of_range = out_of_range[~last]
            if out_of_range.any():
                absorptions += 1
                if absorptions >= _MIN_ABSORPTIONS and absorptions > _MAX_ABSORPTION_SHARE * it:
                    self.out.nit[self.active] = self.offset + it
                    alone.update(self._potentials())
                    break
                self._absorb(it)
        alone.update(self.failed)
        return self.left, alone

    def _slow(self, it):
        """Whether the group, after at least ``_PROBE_ITERATIONS`` iterations, has not cut
        its largest error tenfold over the last half of that many."""
        window = _PROBE_ITERATIONS // 2
        if it < _PROBE_ITERATIONS:
            return False
        return not self.largest_error[-1] <= 0.1 * self.largest_error[-1 - window]

    def _keep(self, keep):
        """Drop the problems not in ``keep`` from the working arrays."""
        self.active, self.U, self.V, self.B = (
            self.active[keep], self.U[keep], self.V[keep], self.B[keep]
        )
        self.column_error, self.omega = self.column_error[keep], self.omega[keep]
        self.offset = self.offset[keep]
        if self.anderson is not None:
            self.anderson.keep(keep)

    def _gemm_sweep(self, it):
        """One iteration of every active problem through two GEMMs; returns the errors of
        the incoming iterates (of the problems still active) and which left the range."""
        U, V, B, K, a = self.U, self.V, self.B, self.K, self.a
        S = V @ K.T
        error = np.abs(U * S - a).sum(axis=1) + self.column_error
        done = (error <= self.shared.tol * self.mass) & (not self.unmeasured)
        self.unmeasured = False
        if done.any():
            self._finish(done, self.offset[done] + it - 1, Status.CONVERGED, S[done])
            keep = ~done
            self._keep(keep)
            U, V, B, S, error = self.U, self.V, self.B, S[keep], error[keep]
            if not self.active.size:
                return error, done[keep]
        omega = self.omega[:, None]
        relaxed = self.omega != 1.0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            target = a / S
            U = U * (target / U) ** omega if relaxed.any() else target
            R = U @ K
            target = B / R
            if relaxed.any():
                target = V * (target / V) ** omega
                if self.zeros:
                    target[B == 0] = 0.0
            V, self.column_error = self._mix(V, target, R)
        self.U, self.V = U, V
        return error, self._out_of_range(U, V, B)

    def _fused_sweeps(self, it):
        """One iteration of the active problems, all on one pass over the kernel (each
        block of its rows swept by every problem while in cache)."""
        c = self.active.size
        n, m = self.C.shape
        if getattr(self, "acc", None) is None or self.acc.shape[0] < c:
            self.acc = np.empty((c, max(1, min(self.threads, n // 4)), m))
        acc = self.acc[:c]
        mixed = (self.anderson.on.copy() if self.anderson is not None
                 else np.zeros(c, dtype=bool))
        previous_U, previous_V = self.U.copy(), self.V.copy()
        row_error, within, column_error, _ = _scaling_iterations(
            self.K, self.a, self.B, self.U, self.V, acc, self.omega, self.shared.bound,
            self.threads)
        sums = acc[:, 0] if acc.shape[1] == 1 else acc.sum(axis=1)
        error = row_error + self.column_error
        done = (error <= self.shared.tol * self.mass) & (not self.unmeasured)
        self.unmeasured = False
        self.column_error = np.where(self.omega != 1.0, column_error, 0.0)
        out_of_range = np.zeros(c, dtype=bool)
        check = ~within & ~mixed  # (mixed problems are checked after mixing)
        if check.any():  # (zero-mass columns have v = 0: checked again without them)
            out_of_range[check] = self._out_of_range(
                self.U[check], self.V[check], self.B[check])
        if mixed.any():
            self.V, column_error = self._mix(previous_V, self.V, sums)
            self.column_error[mixed] = column_error[mixed]
            out_of_range[mixed] = self._out_of_range(
                self.U[mixed], self.V[mixed], self.B[mixed])
        if done.any():
            self.U[done], self.V[done] = previous_U[done], previous_V[done]
            self._finish(done, self.offset[done] + it - 1, Status.CONVERGED)
            keep = ~done
            self._keep(keep)
            error, out_of_range = error[keep], out_of_range[keep]
        return error, out_of_range

    def _mix(self, V, target, R):
        """The new column scalings from the incoming ``V``, the column update ``target``
        (over-relaxed where ``omega != 1``) and ``R = U K``: Anderson-mixed for the
        problems that mix; returns them and their column-marginal errors."""
        B = self.B
        if self.anderson is not None and self.anderson.on.any():
            V, column_error = self.anderson.step(V, target, B, R)
        else:
            V, column_error = target, np.full(V.shape[0], np.nan)
        relaxed = (self.omega != 1.0)
        if self.anderson is not None:
            relaxed |= self.anderson.on
        missing = relaxed & np.isnan(column_error)
        if missing.any():
            column_error[missing] = np.abs(V[missing] * R[missing] - B[missing]).sum(axis=1)
        column_error[~relaxed] = 0.0
        return V, column_error

    def _relaxation(self, error):
        from mmopt.ot.sinkhorn import _MAX_RELAX_FAILURES, _choose_relaxation

        mixing = self.anderson.on if self.anderson is not None else np.zeros(error.size, bool)
        for c, j in enumerate(self.active):
            if mixing[c]:
                continue
            state = self.relax[int(j)]
            if state.relax_failures < _MAX_RELAX_FAILURES:
                _choose_relaxation(state, float(error[c]), self.mass)
                self.omega[c] = state.omega

    def _out_of_range(self, U, V, B):
        with np.errstate(invalid="ignore"):
            high = self.shared.bound
            low = 1.0 / high
            bad = ~((U.min(axis=1) >= low) & (U.max(axis=1) <= high))
            Vc = np.where(B > 0, V, 1.0) if self.zeros else V
            bad |= ~((Vc.min(axis=1) >= low) & (Vc.max(axis=1) <= high))
        return bad

    def _current(self):
        """The active problems' potentials ``(f, g)`` (-inf at zero mass) and which are
        finite (a failed sweep's are not)."""
        reg = self.reg
        with np.errstate(divide="ignore", invalid="ignore"):
            f = self.F + reg * np.log(self.U)
            g = self.G + reg * np.log(self.V)
        positive = self.B > 0
        finite = np.isfinite(f).all(axis=1) & (np.isfinite(g) | ~positive).all(axis=1)
        return f, np.where(positive, g, -np.inf), finite

    def _potentials(self):
        f, g, finite = self._current()
        return {int(j): (f[c], g[c]) if finite[c] else None for c, j in enumerate(self.active)}

    def _absorb(self, it):
        """Move the shared base to the middle of the problems' potentials (one new kernel);
        the problems too far from it leave for another group, those with non-finite
        scalings (a failed sweep) to be finished alone from scratch."""
        f, g, finite = self._current()
        self._rebase(f, g, finite, it)

    def _rebase(self, f, g, keep, it=0):
        """Set the base to the middle of the potentials ``f`` (c, n), ``g`` (c, m) of the
        problems in ``keep`` and recompute the kernel and scalings; the problems too far
        from the others for the scalings' range move to ``self.left``."""
        reg = self.reg
        positive = self.B > 0
        g = np.where(positive, g, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            F0 = np.nanmean(f[keep], axis=0) if keep.any() else 0.0
            G0 = np.nanmean(g[keep], axis=0) if keep.any() else 0.0
            # Each problem's gauge (f + s, g - s) centred, so that the spread measures the
            # potentials, not the arbitrary constant between f and g.
            shift = 0.5 * (np.nanmean(g - G0, axis=1) - np.mean(f - F0, axis=1))
            f, g = f + shift[:, None], g - shift[:, None]
            keep = keep.copy()
            while keep.any():
                F = 0.5 * (f[keep].min(axis=0) + f[keep].max(axis=0))
                G = 0.5 * (np.nanmin(g[keep], axis=0) + np.nanmax(g[keep], axis=0))
                G = np.where(np.isfinite(G), G, 0.0)
                spread = np.maximum(np.abs(f - F).max(axis=1),
                                    np.nanmax(np.abs(g - G), axis=1)) / reg
                spread[~keep] = -np.inf
                worst = int(np.argmax(spread))
                if spread[worst] <= self.shared.max_spread:
                    break
                keep[worst] = False
        finite = np.isfinite(f).all(axis=1)
        for c in np.flatnonzero(~keep):
            j = int(self.active[c])
            self.out.nit[j] = self.offset[c] + it
            if finite[c]:
                self.left[j] = (f[c], np.where(positive[c], g[c], -np.inf))
            else:
                self.failed[j] = None
        f, g, positive = f[keep], g[keep], positive[keep]
        self._keep(keep)
        if self.active.size:
            previous = self.V
            self._set_kernel(F, G)
            self.U = np.exp((f - F) / reg)
            with np.errstate(invalid="ignore"):
                self.V = np.where(positive, np.exp((g - G) / reg), 0.0)
            if self.anderson is not None:
                # The same iterates in the new base: log v moves by a constant per problem.
                with np.errstate(divide="ignore", invalid="ignore"):
                    self.anderson.shift(np.where(
                        positive, np.log(self.V) - np.log(previous), 0.0))

    # ------------------------------------------------------------------------- results
    def _finish(self, done, nit, status, S=None):
        """Record the answers of the active problems ``done`` at their scalings (``S =
        V K^T`` when known) after ``nit`` iterations (one per problem)."""
        out, reg, a = self.out, self.reg, self.a
        U, V = self.U[done], self.V[done]
        if self.shared.warm is not None:  # an epsilon-scaling level: its potentials only
            with np.errstate(divide="ignore"):
                f = self.F + reg * np.log(U)
                g = np.where(self.B[done] > 0, self.G + reg * np.log(V), -np.inf)
            for c, j in enumerate(self.active[done]):
                self.shared.warm[int(j)] = (f[c], g[c])
            out.status[self.active[done]] = status
            out.nit[self.active[done]] = nit
            return
        if S is None:
            S = V @ self.K.T
        if self.CK is None:
            self.CK = self.C * self.K
        row_sums, col_sums = U * S, V * (U @ self.K)
        transport = np.einsum("ci,ci->c", U, V @ self.CK.T)
        with np.errstate(divide="ignore"):
            f = self.F + reg * np.log(U)
            g = self.G + reg * np.log(V)
        rows_support = self.shared.rows
        for c, j in enumerate(self.active[done]):
            b = self.shared.b[:, j]
            fj, gj = _full_potentials(self.shared, f[c], g[c], b)
            rows, cols = row_sums[c], col_sums[c]
            total = float(rows.sum())
            positive = b > 0
            dual = (float(a @ fj[rows_support]) + float(b[positive] @ gj[positive])
                    - reg * total)
            entropy = (float(rows @ fj[rows_support]) + float(cols[positive] @ gj[positive])
                       - transport[c]) / reg - total
            out.f[:, j], out.g[:, j] = fj, gj
            out.fun[j] = dual
            out.transport_cost[j] = transport[c]
            out.objective[j] = transport[c] + reg * entropy
            out.marginal_error[j] = float(np.abs(rows - a).sum() + np.abs(cols - b).sum())
            out.status[j] = status
            out.nit[j] = nit[c]
            if out.plan is not None:
                block = self.K * U[c, :, None]
                block *= V[c]
                out.plan[j][rows_support] = block

class _Anderson:
    """Anderson mixing of the problems' column updates in the log domain, one history per
    problem (:class:`~mmopt._core.anderson.BatchedAnderson`).

    The fixed-point map is one Sinkhorn iteration acting on ``x = log v`` (entries of zero
    mass left out, held at 0): ``T(x) = log(b / (K^T (a / K e^x)))``. Safeguard (the
    accelerator's rule): an extrapolated iterate is kept if its residual ``sum b |T(x) -
    x|`` is finite and at most ``_ANDERSON_GROWTH`` times the problem's smallest so far;
    otherwise its history is reset (the iterate stands: evaluating it was the iteration
    just done). After ``_ANDERSON_MAX_RESTARTS`` refusals a problem stops mixing
    (over-relaxation instead), so every problem keeps Sinkhorn's convergence.
    """

    def __init__(self, c):
        self.accelerator = AndersonAcceleration(
            memory=_ANDERSON_MEMORY, regularization=_ANDERSON_RIDGE).batched(c)
        self.on = np.ones(c, dtype=bool)
        self.best = np.full(c, np.inf)
        self.x = None  # log v of the current iterates (rows of problems that mix)
        self.known = np.zeros(c, dtype=bool)  # whether x holds the row's current log v

    @property
    def restarts(self):
        return self.accelerator.n_rejected

    def keep(self, keep):
        self.accelerator.keep(keep)
        self.on, self.best, self.known = self.on[keep], self.best[keep], self.known[keep]
        if self.x is not None:
            self.x = self.x[keep]

    def shift(self, delta):
        """The same iterates after a change of base: ``log v`` moved by ``delta``."""
        self.accelerator.shift(delta)
        if self.x is not None:
            self.x += delta

    def step(self, V, target, B, R):
        """The new scalings and their column-marginal errors: rows of ``target`` (the
        map's values at ``V``) for the problems that do not mix, Anderson steps for those
        that do (``R = U K``, the column sums the errors are taken against). Returns
        ``(V, column_error)``, ``column_error`` NaN for the problems that do not mix."""
        c, m = V.shape
        column_error = np.full(c, np.nan)
        rows = np.flatnonzero(self.on)
        if not rows.size:
            return target, column_error
        if self.x is None:
            self.x = np.zeros(V.shape)
        # The passes below run on one thread whatever n_threads: they cost O(k m memory),
        # and an OpenMP region between the BLAS products leaves libgomp's workers spinning
        # on the cores OpenBLAS's threads need (2 threads, k = 32, n = 1000, reg 1e-3:
        # 2.2 s with the passes on 2 threads, 0.78 s on one).
        threads = 1
        # log v (carried from the last step, log V after a restart), the map's value
        # log t, and the safeguard's residual sum b |log t - log v|.
        known = self.known[rows]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x = self.x[rows]
            if not known.all():
                x[~known] = np.log(V[rows[~known]])
            log_target = np.log(target[rows])
        residual = np.empty(rows.size)
        _masked_residual(x, log_target, B, rows, residual, threads)
        ok = np.isfinite(residual)
        accelerator = self.accelerator
        tried = accelerator.extrapolated[rows]
        if tried.any():
            accelerator.safeguard(residual[tried], _ANDERSON_GROWTH * self.best[rows[tried]],
                                  rows[tried])
            self.on[rows[accelerator.n_rejected[rows] > _ANDERSON_MAX_RESTARTS]] = False
        self.best[rows] = np.minimum(self.best[rows], residual)
        moved = rows
        if not ok.all():  # (a failed sweep: no pair recorded, the problem starts afresh)
            accelerator.reset(rows[~ok])
            self.known[rows[~ok]] = False
            moved, x, log_target = rows[ok], x[ok], log_target[ok]
        out = target.copy()
        if moved.size:
            proposal = accelerator.update(x, log_target, moved, n_threads=threads)
            errors = np.empty(moved.size)
            with np.errstate(over="ignore", invalid="ignore"):
                mixed = np.exp(proposal)
            # the mixed scalings where usable, the carried log v, the column errors
            _select_mixed(proposal, mixed, log_target,
                          accelerator.extrapolated[moved].view(np.int8), B, R, moved, out,
                          self.x, errors, threads)
            self.known[moved] = True
            column_error[moved] = errors
        return out, column_error


def _full_potentials(shared, f, g, b):
    """Potentials of the problem's shape: rows of zero mass and columns of zero mass in
    ``b`` get the soft c-transform of the other side's (as :class:`Sinkhorn` does)."""
    reg, threads, rows = shared.reg, shared.threads, shared.rows
    C = shared.full_C
    n = C.shape[0]
    f_full = np.empty(n)
    f_full[rows] = f
    empty_cols = np.flatnonzero(b == 0)
    cols = np.flatnonzero(b > 0)
    g = g.copy()
    if empty_cols.size:
        block = np.ascontiguousarray(C[np.ix_(rows, empty_cols)].T)
        g[empty_cols], _ = log_half_step(
            block, f, np.zeros(empty_cols.size), np.zeros(empty_cols.size), reg,
            n_threads=threads,
        )
    if rows.size < n:
        empty_rows = np.setdiff1d(np.arange(n), rows)
        block = np.ascontiguousarray(C[np.ix_(empty_rows, cols)])
        f_full[empty_rows], _ = log_half_step(
            block, g[cols], np.zeros(empty_rows.size), np.zeros(empty_rows.size), reg,
            n_threads=threads,
        )
    return f_full, g


def _solve_alone(columns, shared):
    """Finish ``columns`` (a dict: problem -> its potentials, or None) one by one with
    :class:`Sinkhorn`, warm-started where their group left them (from zero potentials
    after a failed sweep)."""
    solver, out = shared.solver, shared.out
    params = solver.get_params(deep=False)
    a, C, reg = shared.full_a, shared.full_C, shared.reg
    n = C.shape[0]
    for j, guess in sorted(columns.items()):
        done = int(out.nit[j])
        params["max_iter"] = max(1, solver.max_iter - done)
        x0 = None
        if guess is not None:
            f = np.full(n, -np.inf)
            f[shared.rows] = guess[0]
            x0 = np.concatenate([f, guess[1]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = get_solver("sinkhorn", **params).solve(
                OTProblem(a, shared.b[:, j], C, reg), x0=x0
            )
        out.f[:, j], out.g[:, j] = res.f, res.g
        out.fun[j] = res.fun
        out.transport_cost[j] = res.transport_cost
        out.objective[j] = res.objective
        out.marginal_error[j] = res.marginal_error
        out.status[j] = res.status
        out.nit[j] = done + res.nit
        out.method[j] = res.method
        if out.plan is not None:
            out.plan[j] = res.plan
