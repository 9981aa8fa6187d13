"""Sinkhorn's algorithm for entropic optimal transport, in the stabilized scaling domain or the
log domain."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmopt._core._docstrings import SOLVER_PARAMS, fill_doc
from mmopt._core.params import Options, Param
from mmopt._core.registry import register_solver
from mmopt._core.result import Result
from mmopt._core.solver import Solver, SolverState
from mmopt._core.threads import effective_n_threads
from mmopt.ot._batched import batched_sinkhorn
from mmopt.ot._kernels import dense_plan, log_half_step
from mmopt.ot._support import OT_PARAMS, SCALING_OPTIONS, Support, log_ratio_sum
from mmopt.ot.problem import OTProblem, solve_ot
from mmopt_ext._sinkhorn import dense_plan as _dense_plan
from mmopt_ext._sinkhorn import scaled_plan as _scaled_plan
from mmopt_ext._sinkhorn import scaling_iteration as _scaling_iteration

__all__ = ["Sinkhorn", "sinkhorn"]

# Largest rounding error tolerated in the plan's exponents (a relative error of e^0.1 - 1,
# about 10%, in each entry of the plan).
_MAX_EXPONENT_ERROR = 0.1
# The scaling domain keeps its kernel relative to the potentials at the last absorption,
# K_ij = exp((f_i + g_j - C_ij) / reg), with the scalings u, v in [1 / _BOUND, _BOUND];
# entries of exponent below _KERNEL_FLOOR + log(mass) are set to 0 (they are below 1e-260
# of the plan's scale even times _BOUND ** 2), so that K v and K^T u never meet a subnormal
# number; at masses so small that this floor would itself be subnormal (below 1e-200), the
# floor is the smallest normal number's exponent: all the float64 range can hold.
_BOUND = 1e20
_KERNEL_FLOOR = -600.0
_NORMAL_FLOOR = float(np.log(np.finfo(float).tiny))
# "auto" runs the log domain below this total mass.
_MIN_SCALING_MASS = 1e-200
# The scaling domain gives way to the log domain for the rest of a solve when absorptions
# (each recomputing the kernel: an exp per entry) or failed sweeps become this frequent.
_MAX_ABSORPTION_SHARE = 1.0 / 3.0
_MIN_ABSORPTIONS = 10
# Over-relaxation: once the error's rates over the last three windows of _RATE_WINDOW
# plain sweeps agree within 10% (in log), the scalings are over-relaxed by
# omega = 2 / (1 + sqrt(1 - rate)), at most _MAX_OMEGA; if the error then grows past
# _RELAX_GROWTH times its value at the switch (a transient growth is normal: the relaxed
# iteration is not monotone), or is not below that value after _RELAX_PATIENCE sweeps,
# plain sweeps resume and the rate is measured again, up to _MAX_RELAX_FAILURES times.
_RATE_WINDOW = 5
_RATE_SWEEPS = 3 * _RATE_WINDOW + 1
_MAX_OMEGA = 1.9
_RELAX_GROWTH = 1e3
_RELAX_PATIENCE = 100  # relaxed sweeps within which the error must fall below the switch's
_MAX_RELAX_FAILURES = 3
# ... and only once the error is below this fraction of the mass: the linear regime, where
# the rate means something (earlier windows can agree by chance, and relaxing there fails).
_RELAX_MAX_ERROR = 0.1
# Kernels of at least _SINGLE_MIN_ENTRIES entries (past the L2 caches, where reading K
# bounds the sweep) are also kept as a float32 copy, made at each absorption, and swept in
# it while the marginal error (relative to the mass) is above max(_SINGLE_UNTIL, 10 tol):
# half the memory traffic, products and sums still in float64. The copy's errors are
# bounded: rounding moves each row and column sum by at most 2^-24 of itself (the row sums
# total at most the mass plus the row error), and the entries below float32's smallest
# normal number (0 in the copy) add at most that number times sum(u) sum(v). That margin
# is added to the errors a float32 sweep reports, so they never claim a tol they do not
# meet; a sweep whose margin would exceed a tenth of the threshold (scalings far from 1)
# reads K itself. The phase ends for good at the threshold.
_SINGLE_MIN_ENTRIES = 1 << 18
_SINGLE_UNTIL = 1e-6
_FLOAT32_ROUNDING = 2.0**-24
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)


class _ScalingKernel:
    """The scaling domain's absorbed kernel and scalings (one solve's working memory).

    The potentials it last produced are ``f_base + reg log u`` and ``g_base + reg log v``;
    an iteration starting from any other potentials (a warm start, a Newton step, a new
    ``reg``) absorbs them first: ``f_base, g_base = f, g``, ``u = v = 1`` and the kernel
    recomputed, as does one after the scalings left ``[1 / _BOUND, _BOUND]``.
    """

    def __init__(self, n: int, m: int, threads: int, single_until: float | None = None):
        self.K = np.empty((n, m))
        # The float32 phase (see _SINGLE_MIN_ENTRIES): K32 the copy while it runs, None where
        # it never runs or has ended.
        self.single_until = single_until
        self.K32 = None if single_until is None else np.empty((n, m), dtype=np.float32)
        self.margin = 0.0  # what the incoming iterate's column error may be off by
        # One partial K^T u per block of rows (the blocks run in parallel).
        blocks = max(1, min(threads, n // 4))
        self.acc = np.empty((blocks, m))
        self.threads = blocks
        self.u, self.v = np.ones(n), np.ones(m)
        self.reg = None
        self.f = self.g = None  # the potentials of the last iteration
        # The iterate before it, on the same kernel (None after an absorption): over-relaxed
        # solves return that one, and its plan is diag(u_prev) K diag(v_prev), no exp needed.
        self.u_prev, self.v_prev = np.empty(n), np.empty(m)
        self.f_prev = self.g_prev = None
        self.f_base = self.g_base = None
        self.absorb = True
        self.absorptions = 0
        self.sweeps = 0
        # The last iterate's column-marginal error and total mass (0 and sum(b) after a
        # plain sweep, up to rounding).
        self.column_error = 0.0
        self.mass = None
        self.omega = 1.0
        self.errors = []  # errors of the latest plain sweeps (the rate estimate)
        self.switch_error = np.inf  # the error when over-relaxation started
        self.relaxed_sweeps = 0
        self.last_relaxed = False  # whether the last iterate came from a relaxed sweep
        self.relax_failures = 0

    def absorb_potentials(self, support, reg, f, g, threads):
        floor = max(_KERNEL_FLOOR + np.log(support.mass), _NORMAL_FLOOR)
        _dense_plan(support.C, f, g, float(reg), self.K, threads, float(floor), self.K32)
        self.f_base, self.g_base, self.reg = f, g, reg
        self.u.fill(1.0)
        self.v.fill(1.0)
        self.absorb = False
        self.absorptions += 1


@dataclass
class _SinkhornRun:
    """What one solve computes once and reads at every step (never stored on the solver,
    so that one solver object can run several solves at once)."""

    support: Support
    method: str  # "log" or "scaling", the domain in use
    threads: int
    full_C: np.ndarray  # the problem's cost, rows and columns of zero mass included
    Ct: np.ndarray | None = None  # C.T in C order (log domain)
    scaling: _ScalingKernel | None = None  # the scaling domain's kernel and scalings


@dataclass
class _SinkhornState(SolverState):
    f: np.ndarray | None = None  # row potentials on the support of a
    g: np.ndarray | None = None  # column potentials on the support of b
    run: _SinkhornRun | None = None  # shared by every state of one solve


@register_solver
@fill_doc(SOLVER_PARAMS, OT_PARAMS)
class Sinkhorn(Solver):
    r"""Sinkhorn's algorithm: exact alternating maximization of the entropic OT dual.

    Each iteration sets the row potentials ``f`` so that the plan's rows sum to ``a``, then
    the column potentials ``g`` so that its columns sum to ``b``:

    .. math::

        f_i = \mathrm{reg} \log a_i - \mathrm{reg} \log \sum_j e^{(g_j - C_{ij})/\mathrm{reg}},
        \qquad g_j = \mathrm{reg} \log b_j - \mathrm{reg} \log \sum_i
        e^{(f_i - C_{ij})/\mathrm{reg}}.

    The scaling domain (the default) iterates on scalings of an absorbed kernel
    (Schmitzer's stabilization): with potentials ``(F, G)`` fixed at the last absorption,
    ``K_ij = exp((F_i + G_j - C_ij) / reg)``, ``u = a / (K v)``, ``v = b / (K^T u)`` and
    ``(f, g) = (F + reg log u, G + reg log v)``. Both products take one pass over ``K``
    (a Cython sweep: each row's dot product with ``v`` gives ``u_i``, and the row, still in
    cache, is added into ``K^T u``; the row marginal error comes out of the same pass; rows
    in parallel). When ``u`` or ``v`` leave ``[1e-20, 1e20]`` they are absorbed into the
    potentials and the kernel recomputed, so that it neither underflows nor overflows at
    any ``reg``. Kernels of 2^18 entries or more are also kept in float32, and swept there
    (in float64 arithmetic, half the memory traffic) while the marginal error is above
    ``max(1e-6, 10 tol)``; the errors those sweeps report include a bound on the float32
    rounding, so they never claim a ``tol`` the float64 kernel does not meet, and the
    last iterations, the plan and the reported errors are float64. In the log domain (a
    Cython kernel, one log-sum-exp per row in a single pass shifted by the previous
    potential, a SIMD ``exp`` on AVX-512/AVX2 CPUs, rows in parallel) each half-iteration
    pays an ``exp`` per entry instead of a multiply-add.

    Parameters
    ----------
    method : {"auto", "log", "scaling"}, default="auto"
        ``"scaling"``: the stabilized scaling domain; a sweep that fails (a row of the
        kernel underflowing entirely, far from the solution) is redone in the log domain.
        ``"auto"``: the same, moving the rest of the solve to the log domain once
        absorptions or failed sweeps are frequent (at least 10 and a third of the
        iterations), where recomputing the kernel would cost more than the log domain.
        ``Result.method`` is the domain the solve ended in.
    overrelaxation : bool, default=True
        Over-relax the scaling domain's updates once Sinkhorn's linear rate is measured:
        ``u = u^(1 - w) (a / K v)^w`` (likewise ``v``) with ``w = 2 / (1 + sqrt(1 -
        rate))``, the optimal relaxation of the linearized iteration (Thibault et al.,
        2017), where ``rate`` is the observed ratio of successive marginal errors over
        5 plain iterations (used once two successive windows agree within 10%). If the
        error then grows tenfold the plain iteration resumes. The fixed point is the same;
        slow problems (small ``reg``) take fewer iterations.
    tol : float, default=1e-9
        Stop when the L1 marginal error relative to the total mass,
        ``(||P 1 - a||_1 + ||P^T 1 - b||_1) / sum(b)`` (``Result.residual``), is at most
        ``tol``. The row sums come out of the next row update, so the error recorded at
        iteration ``k`` is that of iterate ``k - 1`` (the returned iterate is at least as
        good; its exact absolute error is ``Result.marginal_error``). After an over-relaxed
        iteration, whose columns are not exact, the error covers rows and columns, and the
        solve returns iterate ``k - 1`` itself when it meets ``tol``.
    max_iter : int, default=10000
        Maximum number of iterations (one row and one column update each).
    n_threads : int, optional
        Threads of the Cython kernels (a positive integer); all available CPUs when None.
    %(callback)s
    %(verbose)s

    Notes
    -----
    ``Result.x`` is ``concat(f, g)``; ``fun`` is the dual objective
    ``<a, f> + <b, g> - reg * sum(P)`` (maximized; it equals the regularized primal objective
    at the optimum). Extra fields: ``plan`` (n, m), ``f``, ``g``, ``transport_cost``
    (``<C, P>``), ``objective`` (``<C, P> + reg * sum P (log P - 1)``), ``marginal_error``
    (L1 of both violations, computed on the returned plan), ``method`` (the domain used).
    Rows or columns of zero mass get zero plan entries; their potentials (which no finite
    value makes optimal) are the soft c-transform of the other side's,
    ``f_i = -reg log sum_j exp((g_j - C_ij) / reg)`` over the columns of positive mass (the
    potential a row of unit mass would have there), so ``x`` is finite. ``tol`` is relative
    to the total mass, so any common scale of ``a`` and ``b`` gives the same plan up to that
    scale (``method="auto"`` takes the log domain below a total mass of 1e-200, where
    ``diag(u) K diag(v)`` would lose digits); below about 1e-290 the plan's smallest entries
    underflow float64, and ``marginal_error`` can then exceed ``tol * sum(b)`` although
    the potentials meet ``tol``.

    References
    ----------
    .. [1] M. Cuturi, "Sinkhorn distances: lightspeed computation of optimal transport",
       Advances in Neural Information Processing Systems 26 (2013).
    .. [2] B. Schmitzer, "Stabilized sparse scaling algorithms for entropy regularized
       transport problems", SIAM J. Sci. Comput. 41 (2019).
    .. [3] A. Thibault, L. Chizat, C. Dossal, N. Papadakis, "Overrelaxed Sinkhorn-Knopp
       algorithm for regularized optimal transport", Algorithms 14 (2021).

    Examples
    --------
    >>> from mmopt.ot import OTProblem, Sinkhorn
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.random((5, 2)), rng.random((6, 2))
    >>> C = ((x[:, None] - y[None]) ** 2).sum(-1)
    >>> res = Sinkhorn(method="log").solve(OTProblem([], [], C, reg=1e-2))
    >>> bool(res.success), bool(res.marginal_error < 1e-9)
    (True, True)
    """

    name = "sinkhorn"
    problem_types = (OTProblem,)
    maximize = True
    # fun = <a, f> + <b, g> - reg sum(P) with a, b > 0 on the support (the iterate x): a
    # non-finite entry of x makes fun non-finite, which the loop checks without scanning x.
    residual_covers_x = True

    _options = {
        "method": Param("auto", Options({"auto", "log", "scaling"})),
        "overrelaxation": Param(True, bool),
        **SCALING_OPTIONS,
    }

    # ----------------------------------------------------------------------------- setup
    def _start_run(self, problem) -> _SinkhornRun:
        support = Support(problem)
        check_reg_resolution(support.C, problem.reg)
        method = self.method
        if method == "auto":
            # Plans of total mass near the float64 underflow range lose their digits in
            # diag(u) K diag(v) (u, v down to 1e-20): the log domain keeps them.
            method = "scaling" if support.mass >= _MIN_SCALING_MASS else "log"
        threads = effective_n_threads(self.n_threads, size=support.C.size)
        run = _SinkhornRun(support, method, threads, problem.C)
        if method == "log":
            run.Ct = np.ascontiguousarray(support.C.T)
        else:
            single_until = None
            if support.C.size >= _SINGLE_MIN_ENTRIES:
                single_until = max(_SINGLE_UNTIL, 10.0 * self.tol)
            run.scaling = _ScalingKernel(
                support.rows.size, support.cols.size, run.threads, single_until
            )
        return run

    def _init_state(self, problem, x0):
        run = self._start_run(problem)
        support = run.support
        if x0 is None:
            f, g = np.zeros(support.rows.size), np.zeros(support.cols.size)
        else:
            f, g, _ = support.read_start(x0)
            f, g = _usable_start(run, problem.reg, f, g)
        return _SinkhornState(x=np.concatenate([f, g]), fun=-np.inf, f=f, g=g, run=run)

    # ------------------------------------------------------------------------------ step
    def _step(self, problem, state):
        run, reg = state.run, problem.reg
        support = run.support
        f, g, error, mass, relaxed = _iteration(
            run, reg, state.f, state.g, self.method == "auto", self.overrelaxation
        )
        # The residual is relative to the total mass, so that tol means the same at any
        # scale of the histograms (an absolute 1e-9 is met by any plan at masses of 1e-10).
        residual = error / support.mass
        if relaxed and residual <= self.tol and np.isfinite(state.fun):
            # An over-relaxed iterate need not be better than the one it came from, whose
            # error (rows and columns) meets tol: that one is the answer.
            return _SinkhornState(
                x=state.x, fun=state.fun, residual=residual, f=state.f, g=state.g, run=run
            )
        fun = _dual_value(support, f, g, reg * mass)
        return _SinkhornState(
            x=np.concatenate([f, g]), fun=fun, residual=residual, f=f, g=g, run=run
        )

    # ---------------------------------------------------------------------------- result
    def _result_fields(self, problem, state):
        # Potentials or costs near the float64 range (a numerical failure, status 4) may
        # overflow here: the fields then say so, NumPy need not warn.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._fields(problem, state)

    def _fields(self, problem, state):
        run, reg = state.run, problem.reg
        support = run.support
        f, g = support.potentials(state.f, state.g)
        _zero_mass_potentials(run, reg, f, g, state.f, state.g)
        scaling = run.scaling
        u = v = None
        if scaling is not None and scaling.reg == reg:
            # The scaling domain's last iterate at reg (not an epsilon-scaling level's), or the
            # one before it (an over-relaxed solve returns that one), on the same kernel: its
            # plan is diag(u) K diag(v), without an exp per entry.
            if state.f is scaling.f and state.g is scaling.g:
                u, v = scaling.u, scaling.v
            elif state.f is scaling.f_prev and state.g is scaling.g_prev:
                u, v = scaling.u_prev, scaling.v_prev
        if u is not None:
            # Result fields are built once, when the solve is over: the plan takes the
            # kernel's memory (no n x m allocation and its page faults, ~3% of a 40-iteration
            # solve at 1000 x 900). The run keeps a fresh buffer and forgets its kernel, so
            # that anything iterating on it afterwards absorbs anew.
            block = scaling.K
            rows, cols, transport_cost = _scaled_plan(block, support.C, u, v, run.threads)
            scaling.K = np.empty_like(block)
            scaling.reg = None
            scaling.f = scaling.g = scaling.f_prev = scaling.g_prev = None
        else:
            block = dense_plan(support.C, state.f, state.g, reg, n_threads=run.threads)
            transport_cost = float(np.vdot(support.C, block))
            rows, cols = block.sum(axis=1), block.sum(axis=0)
        plan = support.plan(block)
        total = float(rows.sum())
        # sum P (log P - 1)
        entropy_term = log_ratio_sum(state.f, state.g, rows, cols, transport_cost, reg) - total
        marginal_error = float(
            np.abs(rows - support.a).sum()
            + np.abs(cols - support.b).sum()
        )
        fields = {
            "x": np.concatenate([f, g]),
            "plan": plan,
            "f": f,
            "g": g,
            "transport_cost": transport_cost,
            "objective": transport_cost + reg * entropy_term,
            "marginal_error": marginal_error,
            "method": run.method,
        }
        if not np.isfinite(state.fun):
            # The start itself (no step was accepted): its dual value and marginal error.
            fields["fun"] = _dual_value(support, state.f, state.g, reg * total)
            fields["residual"] = marginal_error / support.mass
        return fields


def check_reg_resolution(C, reg) -> None:
    """Raise ``ValueError`` when ``reg`` is below the rounding of the plan's exponents.

    The exponents ``(f_i + g_j - C_ij) / reg`` are computed to about ``eps * |C| / reg``:
    beyond ``_MAX_EXPONENT_ERROR`` they carry no digit and every plan is rounding noise.
    """
    largest = max(float(C.max()), -float(C.min()))  # max |C| without an |C| temporary
    if largest * np.finfo(float).eps > _MAX_EXPONENT_ERROR * reg:
        spread = float(C.max() - C.min())
        raise ValueError(
            f"reg={reg:.3g} is too small for the cost (max |C| = {largest:.3g}, spread "
            f"{spread:.3g}): in float64 the plan's exponents (f + g - C) / reg would be pure "
            "rounding error. Use a larger reg, or exact_ot for unregularized transport."
        )


def _dual_value(support: Support, f, g, penalty: float) -> float:
    """``<a, f> + <b, g> - penalty``; a value beyond float64 becomes inf or NaN quietly
    (the loop reports it as status 4).

    ``np.vdot`` and Python floats do not raise NumPy's floating-point warnings, and cost
    less than an ``np.errstate`` context in every iteration.
    """
    return float(np.vdot(support.a, f)) + float(np.vdot(support.b, g)) - penalty


def _usable_start(run: _SinkhornRun, reg, f, g):
    """Warm-start potentials the iterations can use.

    Potentials so large that the plan ``exp((f_i + g_j - C_ij) / reg)`` overflows, or that
    their rounding exceeds ``reg`` (the plan's entries then carry no digit), are replaced
    by an equivalent start: ``f`` shifted to a largest entry of 0 (the dual is invariant
    under ``(f + c, g - c)``) and ``g`` its column update, so that the plan's columns are
    exact as after any iteration (the first iteration's error is then the rows').
    """
    C = run.support.C
    scale = max(float(np.abs(f).max(initial=0.0)), float(np.abs(g).max(initial=0.0)))
    with np.errstate(over="ignore", invalid="ignore"):
        top = float(((g[None, :] - C).max(axis=1) + f).max()) / reg
    if np.isfinite(top) and top <= 700.0 and scale * np.finfo(float).eps <= 1e-3 * reg:
        return f, g
    f = f - f.max()
    Ct = run.Ct if run.Ct is not None else np.ascontiguousarray(C.T)
    g, _ = log_half_step(Ct, f, np.zeros_like(g), run.support.log_b, reg, n_threads=run.threads)
    return f, g


def _zero_mass_potentials(run: _SinkhornRun, reg, f, g, f_support, g_support):
    """Fill in the potentials of rows and columns of zero mass (in place).

    Their plan entries are zero, which no finite potential gives; they get the soft
    c-transform of the other side's potentials, ``f_i = -reg log sum_j exp((g_j - C_ij) /
    reg)`` over the columns of positive mass (and likewise ``g_j``): the potential of a
    row of unit mass placed there, finite, and the unregularized c-transform
    ``min_j (C_ij - g_j)`` as ``reg`` goes to 0.
    """
    support = run.support
    if support.full:
        return
    C = run.full_C
    empty_rows = np.setdiff1d(np.arange(f.size), support.rows)
    empty_cols = np.setdiff1d(np.arange(g.size), support.cols)
    if empty_rows.size:
        block = np.ascontiguousarray(C[np.ix_(empty_rows, support.cols)])
        f[empty_rows], _ = log_half_step(
            block, g_support, np.zeros(empty_rows.size), np.zeros(empty_rows.size), reg,
            n_threads=run.threads,
        )
    if empty_cols.size:
        block = np.ascontiguousarray(C[np.ix_(support.rows, empty_cols)].T)
        g[empty_cols], _ = log_half_step(
            block, f_support, np.zeros(empty_cols.size), np.zeros(empty_cols.size), reg,
            n_threads=run.threads,
        )


def _iteration(run: _SinkhornRun, reg, f, g, automatic=True, relax=False):
    """One row and one column update at ``reg``.

    Returns ``(f_new, g_new, error, mass, relaxed)``: ``error`` is the L1 marginal error of
    the plan at the incoming ``(f, g)`` (its rows, plus its columns where they were not
    exact: after an over-relaxed iteration), ``mass`` the total mass of the plan at the
    new potentials, ``relaxed`` whether this iteration was over-relaxed (``relax`` allows
    it, in the scaling domain).

    In the scaling domain a sweep that fails (a kernel row that underflows entirely, far
    from the solution at small ``reg``) is redone in the log domain; with ``automatic``,
    frequent failures or absorptions move the rest of the solve to the log domain.
    """
    if run.method == "scaling":
        state = run.scaling
        if automatic and state.absorptions >= _MIN_ABSORPTIONS and (
            state.absorptions > _MAX_ABSORPTION_SHARE * state.sweeps
        ):
            run.method, run.scaling = "log", None
        else:
            out = _scaling_step(run, reg, f, g, relax)
            if out is not None:
                return out
        if run.Ct is None:
            run.Ct = np.ascontiguousarray(run.support.C.T)
    support = run.support
    f_new, row_mass = log_half_step(support.C, g, f, support.log_a, reg, n_threads=run.threads)
    g_new, _ = log_half_step(run.Ct, f_new, g, support.log_b, reg, n_threads=run.threads)
    # After the column update the plan's columns sum to b exactly, so sum(P) = mass.
    return (f_new, g_new, float(np.abs(row_mass - support.a).sum()), support.mass, False)


def _scaling_step(run: _SinkhornRun, reg, f, g, relax):
    """A scaling-domain iteration (fused Cython sweep) with absorption and, with ``relax``,
    over-relaxation; None if the sweep failed."""
    state, support = run.scaling, run.support
    own = reg == state.reg and f is state.f and g is state.g
    if not own:
        # Potentials from elsewhere (a start, the log domain, a Newton step, a new reg):
        # their column error is not known (0 for those of a column update), and the rate
        # is measured afresh.
        state.column_error, state.mass = 0.0, None
        state.omega, state.switch_error = 1.0, np.inf
        state.last_relaxed = False
        state.errors.clear()
    if state.absorb or not own:
        state.absorb_potentials(support, reg, f, g, run.threads)
        state.f_prev = state.g_prev = None
    else:
        np.copyto(state.u_prev, state.u)
        np.copyto(state.v_prev, state.v)
        state.f_prev, state.g_prev = f, g
    state.sweeps += 1
    omega = state.omega
    single = state.K32 is not None
    if single:
        threshold = state.single_until * support.mass
        flushed = _FLOAT32_TINY * float(state.u.sum()) * float(state.v.sum())
        single = _FLOAT32_ROUNDING * support.mass + flushed <= 0.1 * threshold
    row_error, within, column_error, mass = _scaling_iteration(
        state.K32 if single else state.K, support.a, support.b, state.u, state.v, state.acc,
        _BOUND, state.threads, omega,
    )
    error = row_error + state.column_error + state.margin
    state.margin = 0.0
    if single:
        # The copy's row sums at the incoming scalings, and (carried to the next sweep) its
        # column sums at the new ones, are within these margins of the kernel's.
        error += _FLOAT32_ROUNDING * (support.mass + row_error) + flushed
        state.margin = _FLOAT32_ROUNDING * (mass if omega != 1.0 else support.mass) + (
            _FLOAT32_TINY * float(state.u.sum()) * float(state.v.sum())
        )
        if not state.margin <= threshold:
            # Scalings far from 1 (an absorption is due, or overflow): the copy's column
            # sums bound the kernel's loosely or not at all. The next error is kept above
            # the threshold, so that it neither ends the phase nor meets tol (<= threshold /
            # 10); errors that large are far from both anyway.
            state.margin = 1.01 * threshold
        if error <= threshold:
            state.K32 = None  # the rest of the solve sweeps K itself
    if within:  # positive, finite scalings: no NumPy warning to silence
        f_new = state.f_base + reg * np.log(state.u)
        g_new = state.g_base + reg * np.log(state.v)
    else:
        with np.errstate(all="ignore"):
            f_new = state.f_base + reg * np.log(state.u)
            g_new = state.g_base + reg * np.log(state.v)
        # Absorb at the next iteration; a non-finite scaling means the sweep failed.
        state.absorb = True
        if not (np.isfinite(f_new).all() and np.isfinite(g_new).all() and np.isfinite(error)):
            state.f = state.g = None
            if omega != 1.0:
                state.relax_failures += 1
            return None
    # The incoming iterate's error is known exactly (rows and columns) when it or this
    # sweep was relaxed; the caller then returns it rather than the new one on convergence.
    relaxed = omega != 1.0 or (own and state.last_relaxed)
    state.last_relaxed = omega != 1.0
    state.f, state.g = f_new, g_new
    state.column_error = column_error if omega != 1.0 else 0.0
    state.mass = mass if omega != 1.0 else support.mass
    if relax and state.relax_failures < _MAX_RELAX_FAILURES:
        _choose_relaxation(state, error, support.mass)
    return f_new, g_new, float(error), state.mass, relaxed


def _choose_relaxation(state: _ScalingKernel, error: float, mass: float) -> None:
    """Start over-relaxation once the plain rate is steady; stop it if the error grows."""
    errors = state.errors
    if state.omega != 1.0:
        state.relaxed_sweeps += 1
        if error < state.switch_error:
            state.relaxed_sweeps = -np.inf  # it pays off: no more patience test
        if not error <= _RELAX_GROWTH * state.switch_error or (
            state.relaxed_sweeps > _RELAX_PATIENCE
        ):
            state.omega = 1.0
            state.relax_failures += 1
            errors.clear()
        return
    errors.append(error)
    del errors[:-_RATE_SWEEPS]
    if len(errors) < _RATE_SWEEPS or not min(errors) > 0.0 or error > _RELAX_MAX_ERROR * mass:
        return
    w = _RATE_WINDOW
    rates = np.diff(np.log(errors[::w])) / w  # oldest window first
    recent = rates[-1]
    if (rates < 0.0).all() and np.all(np.abs(rates - recent) <= 0.1 * abs(recent)):
        rate = float(np.exp(recent))
        state.omega = min(2.0 / (1.0 + np.sqrt(1.0 - rate)), _MAX_OMEGA)
        state.switch_error = error
        state.relaxed_sweeps = 0


def _is_batch(b) -> bool:
    """``b`` of shape (m, k); a ragged or non-numeric ``b`` goes on to the histogram checks,
    whose error names it."""
    try:
        return np.ndim(b) == 2
    except (TypeError, ValueError):
        return False


@fill_doc(OT_PARAMS)
def sinkhorn(a, b, C=None, reg=None, **options) -> Result:
    """Entropic optimal transport by Sinkhorn's algorithm (see :class:`Sinkhorn`).

    Parameters
    ----------
    a, b : array-like of shape (n,), (m,) or (m, k)
        Non-negative histograms of equal total mass; empty means uniform. ``b`` of shape
        (m, k) holds k target histograms (each of the mass of ``a``): the k problems
        ``(a, b[:, j], C, reg)`` are solved together (batched: matrix-matrix products on
        one shared kernel, each problem with its own stopping test; see Returns).
    %(cost_or_clouds)s
    %(entropic_reg)s
    **options
        Options of :class:`Sinkhorn` (``method``, ``tol``, ``max_iter``, ``n_threads``,
        ``callback``, ``verbose``) and ``x0`` (warm-start potentials ``concat(f, g)``;
        potentials whose plan overflows, or too large for ``reg`` in float64, are replaced
        by an equivalent start: ``f`` shifted to a largest entry of 0, ``g`` its column
        update). With batched ``b``: ``return_plan`` (default False) adds the plans;
        ``x0``, ``callback`` and ``verbose`` are not available.

    Returns
    -------
    Result
        With ``plan``, ``f``, ``g``, ``transport_cost``, ``objective``, ``marginal_error``.
        With ``b`` of shape (m, k): ``fun``, ``transport_cost`` (POT's batched return
        value), ``objective``, ``marginal_error``, ``column_status`` and ``column_nit``
        of shape (k,), ``method`` (k,), ``f`` (n, k), ``g`` (m, k), ``x`` (n + m, k);
        ``status`` is the worst problem's (0 only when all converged), ``nit`` the most
        iterations any took; ``plan`` (k, n, m) only with ``return_plan=True``. The
        problems share one stabilized kernel (``K_ij = exp((F_i + G_j - C_ij) / reg)``,
        scalings ``U`` (k, n), ``V`` (k, m), two GEMMs per iteration with ``n_threads``
        BLAS threads); each stops on its own ``tol`` and is accelerated on its own
        (Anderson mixing of its column scalings with ``overrelaxation=True``, safeguarded
        by restarts and a fall-back to over-relaxation);
        problems too far apart for one kernel continue in further groups, and one whose
        kernel needs recomputing too often is finished alone by :class:`Sinkhorn`.

    Examples
    --------
    >>> from mmopt.ot import sinkhorn
    >>> res = sinkhorn([0.5, 0.5], [0.5, 0.5], np.array([[0.0, 1.0], [1.0, 0.0]]), reg=0.05)
    >>> np.round(res.plan, 6)
    array([[0.5, 0. ],
           [0. , 0.5]])
    >>> B = np.array([[0.5, 0.2], [0.5, 0.8]])  # two target histograms
    >>> batch = sinkhorn([0.5, 0.5], B, np.array([[0.0, 1.0], [1.0, 0.0]]), reg=0.05)
    >>> batch.transport_cost.round(6), batch.column_status
    (array([0. , 0.3]), array([0, 0]))
    """
    clouds = C is None and ("x" in options or "y" in options)
    if not clouds and b is not None and _is_batch(b):
        return batched_sinkhorn(a, b, C, reg, **options)
    if "return_plan" in options:
        raise TypeError("return_plan is an option of batched histograms only (b of shape "
                        "(m, k)); a single problem's Result always holds its plan.")
    return solve_ot(a, b, C, reg, "sinkhorn", options)
