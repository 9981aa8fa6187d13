"""Sinkhorn's algorithm for entropic optimal transport, in the log or the scaling domain."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmopt._core.registry import register_solver, solve
from mmopt._core.result import Result
from mmopt._core.solver import Solver, SolverState
from mmopt._core.threads import effective_n_threads
from mmopt._core.validation import check_array, check_choice
from mmopt.ot._kernels import dense_plan, log_half_step
from mmopt.ot.problem import OTProblem, check_n_threads

__all__ = ["Sinkhorn", "sinkhorn"]

# In the scaling domain the kernel exp(-C/reg) has entries down to exp(-spread/reg); above
# this ratio they come close enough to underflow (and the scalings to overflow) that the
# log domain is used instead.
_SCALING_MAX_RATIO = 100.0
# Largest rounding error tolerated in the plan's exponents (a relative error of e^0.1 - 1,
# about 10%, in each entry of the plan).
_MAX_EXPONENT_ERROR = 0.1


@dataclass
class _SinkhornRun:
    """What one solve computes once and reads at every step (never stored on the solver,
    so that one solver object can run several solves at once)."""

    support: _Support
    method: str  # "log" or "scaling", the domain in use
    threads: int
    full_C: np.ndarray  # the problem's cost, rows and columns of zero mass included
    Ct: np.ndarray | None = None  # C.T in C order (log domain)
    K: np.ndarray | None = None  # exp(-C / reg) (scaling domain)


@dataclass
class _SinkhornState(SolverState):
    f: np.ndarray | None = None  # row potentials on the support of a
    g: np.ndarray | None = None  # column potentials on the support of b
    run: _SinkhornRun | None = None  # shared by every state of one solve


class _Support:
    """The problem restricted to the rows and columns with positive mass."""

    def __init__(self, problem: OTProblem):
        self.rows = np.flatnonzero(problem.a > 0)
        self.cols = np.flatnonzero(problem.b > 0)
        self.a = problem.a[self.rows]
        self.b = problem.b[self.cols]
        self.full = self.rows.size == problem.a.size and self.cols.size == problem.b.size
        if self.full:  # no copy of C (the problem holds a read-only view of it)
            self.C = np.ascontiguousarray(problem.C)
        else:
            self.C = np.ascontiguousarray(problem.C[np.ix_(self.rows, self.cols)])
        self.mass = float(self.b.sum())
        self.log_a = np.log(self.a)
        self.log_b = np.log(self.b)


@register_solver
class Sinkhorn(Solver):
    r"""Sinkhorn's algorithm: exact alternating maximization of the entropic OT dual.

    Each iteration sets the row potentials ``f`` so that the plan's rows sum to ``a``, then
    the column potentials ``g`` so that its columns sum to ``b``:

    .. math::

        f_i = \mathrm{reg} \log a_i - \mathrm{reg} \log \sum_j e^{(g_j - C_{ij})/\mathrm{reg}},
        \qquad g_j = \mathrm{reg} \log b_j - \mathrm{reg} \log \sum_i
        e^{(f_i - C_{ij})/\mathrm{reg}}.

    In the log domain (a Cython kernel, one log-sum-exp per row in a single pass shifted by
    the previous potential, a SIMD ``exp`` on AVX-512/AVX2 CPUs, rows in
    parallel) this is stable for any ``reg``; the scaling domain (``u = a / K v``,
    ``K = exp(-C / reg)``, BLAS matrix-vector products) is faster but underflows when
    ``C / reg`` is large.

    Parameters
    ----------
    method : {"auto", "log", "scaling"}, default="auto"
        ``"auto"`` uses the scaling domain when ``(max C - min C) / reg <= 100`` and the
        log domain otherwise.
    tol : float, default=1e-9
        Stop when the L1 marginal error ``||P 1 - a||_1 + ||P^T 1 - b||_1`` is at most ``tol``.
        The row sums come out of the next row update, so the error recorded at iteration
        ``k`` is that of iterate ``k - 1`` (the returned iterate is at least as good; its
        exact error is ``Result.marginal_error``).
    max_iter : int, default=10000
        Maximum number of iterations (one row and one column update each).
    n_threads : int, optional
        Threads of the log-domain kernel (a positive integer); all available CPUs when None.
    callback : callable, optional
        ``callback(intermediate_result)`` after each iteration; ``StopIteration`` stops.
    verbose : int, default=0
        0 silent, 1 a progress bar, 2 a line per iteration.

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
    potential a row of unit mass would have there), so ``x`` is finite.

    Examples
    --------
    >>> import numpy as np
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

    def __init__(
        self,
        *,
        method: str = "auto",
        tol: float = 1e-9,
        max_iter: int = 10_000,
        n_threads: int | None = None,
        callback=None,
        verbose: int = 0,
    ):
        self.method = method
        self.tol = tol
        self.max_iter = max_iter
        self.n_threads = n_threads
        self.callback = callback
        self.verbose = verbose

    def _validate_params(self) -> None:
        super()._validate_params()
        check_choice(self.method, "method", ("auto", "log", "scaling"))
        check_n_threads(self.n_threads)

    # ----------------------------------------------------------------------------- setup
    def _start_run(self, problem) -> _SinkhornRun:
        support = _Support(problem)
        spread = float(support.C.max() - support.C.min())
        # The plan's exponents (f_i + g_j - C_ij) / reg are computed to about eps * |C| /
        # reg: beyond this they carry no digit and every plan is rounding noise.
        rounding = float(np.abs(support.C).max()) * np.finfo(float).eps
        if rounding > _MAX_EXPONENT_ERROR * problem.reg:
            raise ValueError(
                f"reg={problem.reg:.3g} is too small for the cost (max |C| = "
                f"{float(np.abs(support.C).max()):.3g}, spread {spread:.3g}): in float64 the "
                "plan's exponents (f + g - C) / reg would be pure rounding error. Use a "
                "larger reg, or exact_ot for unregularized transport."
            )
        method = self.method
        if method == "auto":
            method = "scaling" if spread / problem.reg <= _SCALING_MAX_RATIO else "log"
        run = _SinkhornRun(support, method, effective_n_threads(self.n_threads), problem.C)
        if method == "log":
            run.Ct = np.ascontiguousarray(support.C.T)
        else:
            with np.errstate(under="ignore"):
                run.K = np.multiply(support.C, -1.0 / problem.reg)
                np.exp(run.K, out=run.K)
        return run

    def _init_state(self, problem, x0):
        run = self._start_run(problem)
        support = run.support
        n, m = problem.shape
        if x0 is None:
            f, g = np.zeros(support.rows.size), np.zeros(support.cols.size)
        else:
            x0 = check_array(x0, "x0", ndim=1, finite=False)
            if x0.shape != (n + m,):
                raise ValueError(f"x0 must have shape ({n + m},) = (n + m,), got {x0.shape}.")
            f, g = np.array(x0[:n][support.rows]), np.array(x0[n:][support.cols])
            if not (np.isfinite(f).all() and np.isfinite(g).all()):
                raise ValueError("x0 must be finite on the entries of positive mass.")
            f, g = _usable_start(run, problem.reg, f, g)
        return _SinkhornState(x=np.concatenate([f, g]), fun=-np.inf, f=f, g=g, run=run)

    # ------------------------------------------------------------------------------ step
    def _step(self, problem, state):
        run, reg = state.run, problem.reg
        support = run.support
        f, g, row_mass = _iteration(run, reg, state.f, state.g)
        # After the column update the plan's columns sum to b exactly, so sum(P) = mass.
        fun = _dual_value(support, f, g, reg * support.mass)
        error = float(np.abs(row_mass - support.a).sum())
        return _SinkhornState(
            x=np.concatenate([f, g]), fun=fun, residual=error, f=f, g=g, run=run
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
        n, m = problem.shape
        f = np.empty(n)
        g = np.empty(m)
        f[support.rows], g[support.cols] = state.f, state.g
        _zero_mass_potentials(run, reg, f, g, state.f, state.g)
        block = dense_plan(support.C, state.f, state.g, reg, n_threads=run.threads)
        if support.full:
            plan = block
        else:
            plan = np.zeros((n, m))
            plan[np.ix_(support.rows, support.cols)] = block
        transport_cost = float(np.vdot(support.C, block))
        rows, cols = block.sum(axis=1), block.sum(axis=0)
        # sum P (log P - 1) from the potentials: log P_ij = (f_i + g_j - C_ij) / reg, so no
        # logarithm of the n x m entries is needed.
        total = float(rows.sum())
        entropy_term = (
            float(state.f @ rows + state.g @ cols) - transport_cost
        ) / reg - total
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
            fields["residual"] = marginal_error
        return fields


def _dual_value(support: _Support, f, g, penalty: float) -> float:
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


def _iteration(run: _SinkhornRun, reg, f, g):
    """One row and one column update at ``reg``; also the row sums of the plan at the
    incoming ``(f, g)``."""
    support = run.support
    if run.method == "log":
        f_new, row_mass = log_half_step(
            support.C, g, f, support.log_a, reg, n_threads=run.threads
        )
        g_new, _ = log_half_step(run.Ct, f_new, g, support.log_b, reg, n_threads=run.threads)
        return f_new, g_new, row_mass
    # A kernel that underflows makes the scalings overflow (inf, then NaN): the loop sees
    # the non-finite iterate and ends with status 4, so NumPy need not warn as well.
    with np.errstate(all="ignore"):
        u_old = np.exp(f / reg)
        v_old = np.exp(g / reg)
        Kv = run.K @ v_old
        row_mass = u_old * Kv
        u = support.a / Kv
        v = support.b / (run.K.T @ u)
        return reg * np.log(u), reg * np.log(v), row_mass


def sinkhorn(a, b, C, reg, **options) -> Result:
    """Entropic optimal transport by Sinkhorn's algorithm (see :class:`Sinkhorn`).

    Parameters
    ----------
    a, b : array-like of shape (n,), (m,)
        Non-negative histograms of equal total mass; empty means uniform.
    C : array-like of shape (n, m)
        Cost matrix.
    reg : float
        Entropic regularization (> 0).
    **options
        Options of :class:`Sinkhorn` (``method``, ``tol``, ``max_iter``, ``n_threads``,
        ``callback``, ``verbose``) and ``x0`` (warm-start potentials ``concat(f, g)``;
        potentials whose plan overflows, or too large for ``reg`` in float64, are replaced
        by an equivalent start: ``f`` shifted to a largest entry of 0, ``g`` its column
        update).

    Returns
    -------
    Result
        With ``plan``, ``f``, ``g``, ``transport_cost``, ``objective``, ``marginal_error``.

    Examples
    --------
    >>> import numpy as np
    >>> from mmopt.ot import sinkhorn
    >>> res = sinkhorn([0.5, 0.5], [0.5, 0.5], np.array([[0.0, 1.0], [1.0, 0.0]]), reg=0.05)
    >>> np.round(res.plan, 6)
    array([[0.5, 0. ],
           [0. , 0.5]])
    """
    x0 = options.pop("x0", None)
    return solve(OTProblem(a, b, C, reg), "sinkhorn", x0=x0, **options)
