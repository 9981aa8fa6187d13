"""Sparsity-constrained optimal transport: at most k nonzeros in each column of the plan."""

from __future__ import annotations

import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, cg

from mmopt._core._docstrings import fill_doc, references
from mmopt._core.exceptions import ConvergenceWarning
from mmopt._core.lbfgs import LBFGSBSteps, LBFGSBStopped
from mmopt._core.linesearch import backtracking
from mmopt._core.params import Interval, Options, Param
from mmopt._core.registry import register_solver, solve
from mmopt._core.result import Result, Status
from mmopt._core.solver import Solver, SolverState, StopSolve
from mmopt._core.threads import effective_n_threads
from mmopt._core.validation import check_array
from mmopt.ot._kernels import sparse_columns
from mmopt.ot._support import OT_PARAMS
from mmopt.ot.problem import OTProblem

__all__ = ["SparsityConstrainedOT", "sparsity_constrained_ot"]

# Sinkhorn iterations of the entropic warm start (init="sinkhorn").
_ENTROPIC_START_ITERATIONS = 30
# Restarts of L-BFGS-B (fresh curvature memory) tried in a row after failed line searches.
_MAX_RESTARTS = 2
# Newton on the (semi-)dual: tried every this many L-BFGS-B iterations (doubling after each
# failure, up to the maximum) until a step halves the marginal error; kept while steps keep
# doing so.
_NEWTON_INTERVAL = 10
_MAX_NEWTON_INTERVAL = 160
_MAX_CG = 200
_MAX_HALVINGS = 3
# Iterations over which the objective's rise is compared with ftol.
_STALL_WINDOW = 20
_KINK_HINT = (
    "With a small k this can be inherent (ties at the k-th entry of a column); polish=True "
    "repairs the marginals on the found support when it admits a plan."
)


@dataclass
class _SparseOTRun:
    """What one solve holds from step to step: the conjugates, the L-BFGS-B worker and the
    controls of the Newton steps and of the stall test. Made by ``_init_state`` and carried
    by every state of the solve, never stored on the solver."""

    conj: _Conjugates
    reg: float
    steps: LBFGSBSteps
    recent: deque
    best_residual: float = np.inf
    since_best: int = 0
    newton_mode: bool = False
    since_newton: int = 0
    n_newton: int = 0
    newton_interval: int = _NEWTON_INTERVAL
    lbfgs_stale: bool = False


@dataclass
class _SparseOTState(SolverState):
    grad: np.ndarray | None = None  # gradient of the maximized objective at x
    run: _SparseOTRun | None = None  # shared by every state of one solve


class _Conjugates:
    """Value and gradient of the (semi-)dual on the support of ``a`` and ``b``."""

    def __init__(self, problem: OTProblem, k: int, reg: float, formulation: str, n_threads):
        self.rows = np.flatnonzero(problem.a > 0)
        self.cols = np.flatnonzero(problem.b > 0)
        self.a = problem.a[self.rows]
        self.b = problem.b[self.cols]
        # Columns are read contiguously by the kernel: keep C transposed.
        self.Ct = np.ascontiguousarray(problem.C[np.ix_(self.rows, self.cols)].T)
        self.spread = max(float(np.ptp(self.Ct)), np.finfo(float).tiny) if self.Ct.size else 1.0
        self.k, self.reg, self.formulation = k, reg, formulation
        self.n_threads = n_threads
        self.n = self.rows.size
        self.nfev = 0
        self._cached_x = None
        self._cached = None

    def columns(self, x):
        """The kernel's output at ``x``; the last one is kept (L-BFGS-B's accepted point
        is its last evaluation, which the Newton step and the result reuse)."""
        if self._cached_x is not None and np.array_equal(self._cached_x, x):
            return self._cached
        if self.formulation == "semi_dual":
            out = sparse_columns(
                "semi_dual", x, None, self.Ct, self.b, self.reg, self.k,
                n_threads=self.n_threads,
            )
        else:
            out = sparse_columns(
                "dual", x[: self.n], x[self.n :], self.Ct, None, self.reg, self.k,
                n_threads=self.n_threads,
            )
        self.nfev += 1
        self._cached_x, self._cached = np.array(x, copy=True), out
        return out

    def newton_direction(self, x, grad):
        """Solve ``(-H + shift I) d = grad`` by preconditioned CG; ``H`` the Hessian at ``x``.

        Where the top-k supports do not change, the objective is quadratic with
        ``-H = (1/reg) sum_j (D_j - 1_j 1_j^T / |S_j|)`` for the semi-dual (``D_j`` the
        diagonal indicator of column j's support ``S_j``) and
        ``-H = (1/reg) [[diag(B 1), B], [B^T, diag(B^T 1)]]`` for the dual (``B`` the 0/1
        support pattern): sparse, applied from the pattern without forming it. The shift
        (1e-10 of the mean diagonal) covers the null directions (constant potentials).
        """
        rows, _, nnz, *_ = self.columns(x)
        m = nnz.size
        width = rows.shape[1]
        keep = np.arange(width)[None, :] < nnz[:, None]
        indptr = np.concatenate([[0], np.cumsum(nnz, dtype=np.int64)])
        pattern = sp.csc_array(
            (np.ones(int(indptr[-1])), rows[keep], indptr), shape=(self.n, m)
        )
        pattern_t = pattern.T.tocsr()
        row_count = np.asarray(pattern.sum(axis=1)).ravel()
        inv_reg = 1.0 / self.reg
        if self.formulation == "semi_dual":
            inv_size = np.divide(1.0, nnz, out=np.zeros(m), where=nnz > 0)
            diagonal = row_count - pattern @ inv_size
            shift = 1e-10 * max(float(diagonal.mean()), 1e-300)

            def matvec(v):
                v = np.ravel(v)
                mixed = pattern @ ((pattern_t @ v) * inv_size)
                return inv_reg * (row_count * v - mixed) + shift * inv_reg * v

            size = self.n
        else:
            col_count = nnz.astype(float)
            diagonal = np.concatenate([row_count, col_count])
            shift = 1e-10 * max(float(diagonal.mean()), 1e-300)
            n = self.n

            def matvec(v):
                v = np.ravel(v)
                top = row_count * v[:n] + pattern @ v[n:]
                bottom = pattern_t @ v[:n] + col_count * v[n:]
                return inv_reg * (np.concatenate([top, bottom]) + shift * v)

            size = n + m
        # A potential that no column's support involves has no curvature (and no coupling):
        # the quadratic model is linear along it, so it is left out of the step.
        curved = diagonal > 1e-12 * max(float(diagonal.max(initial=0.0)), 1e-300)
        rhs = np.where(curved, grad, 0.0)
        preconditioner = np.divide(
            1.0, inv_reg * (diagonal + shift), out=np.zeros(size), where=curved
        )
        operator = LinearOperator((size, size), matvec=matvec, dtype=float)
        jacobi = LinearOperator((size, size), matvec=lambda v: preconditioner * np.ravel(v))
        direction, _ = cg(operator, rhs, rtol=1e-10, maxiter=_MAX_CG, M=jacobi)
        direction[~curved] = 0.0
        # A trust region: potentials never need to move by more than the cost's spread.
        largest = float(np.abs(direction).max(initial=0.0))
        if largest > self.spread:
            direction *= self.spread / largest
        return direction

    def value_and_grad(self, x):
        """The maximized objective and its gradient (the marginal violations).

        Near the float64 range the value may overflow: L-BFGS-B and the Newton step treat
        a non-finite value as a failed trial, so NumPy need not warn about it.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            return self._value_and_grad(x)

    def _value_and_grad(self, x):
        *_, phi, row_sums, col_sums = self.columns(x)
        if self.formulation == "semi_dual":
            value = float(x @ self.a - self.b @ phi)
            return value, self.a - row_sums
        alpha, beta = x[: self.n], x[self.n :]
        value = float(alpha @ self.a + beta @ self.b - phi.sum())
        return value, np.concatenate([self.a - row_sums, self.b - col_sums])

    def negated(self, x):
        value, grad = self.value_and_grad(x)
        return -value, -grad


@register_solver
@fill_doc(references("liu2023", "blondel2018", "byrd1995"))
class SparsityConstrainedOT(Solver):
    r"""Optimal transport with at most ``k`` nonzeros per column of the plan.

    The primal problem (Liu, Puigcerver and Blondel, ICLR 2023) is

    .. math::

        \min_{T \ge 0,\ T 1 = a,\ T^\top 1 = b,\ \|t_j\|_0 \le k}
        \langle T, C \rangle + \sum_j \frac{\mathrm{reg}}{2} \|t_j\|^2,

    with ``reg`` meaning what it means in POT's ``ot.smooth`` (larger is smoother). It is
    solved through a concave relaxation, by scipy's L-BFGS-B:

    - ``"semi_dual"`` (default): maximize over ``f`` the function
      :math:`\langle f, a\rangle - \sum_j b_j \phi_j(f - c_j)`, where the column maximizer
      keeps the top-``k`` entries of ``f - c_j`` and projects them onto the simplex.
      Columns sum to ``b`` exactly; only the rows can be violated.
    - ``"dual"``: maximize over ``(f, g)`` the function
      :math:`\langle f, a\rangle + \langle g, b\rangle - \sum_j \frac{1}{2\,\mathrm{reg}}
      \mathrm{top}_k\big([f + g_j - c_j]_+\big)^2`; both marginals can be violated.

    The plan's columns come from a Cython kernel that selects each column's top ``k``
    entries with a bounded heap (no sort; ties keep the smaller row index), so every plan
    has at most ``k`` nonzeros per column, whatever the iterate.

    Parameters
    ----------
    k : int, optional
        Maximum number of nonzeros per column (``1 <= k``, and ``k * m >= n`` so that every
        row can be served). None, or ``k >= n``, means no constraint: quadratically
        regularized OT.
    reg : float, optional
        Strength of the quadratic regularization; the problem's ``reg`` when None.
    formulation : {"semi_dual", "dual"}, default="semi_dual"
    tol : float, default=1e-8
        Stop when the L1 marginal error ``||T 1 - a||_1 + ||T^T 1 - b||_1`` is at most
        ``tol``.
    ftol, patience : float, default=1e-6, and int, default=200
        Declare the solve stalled (status 5, with a warning) when the marginal error is above
        ``tol`` and has not halved in ``patience`` iterations while the objective rose by at
        most ``ftol`` (relative) over the last 20. This is how a solve at a kink ends (see
        Notes), where L-BFGS-B keeps creeping up the objective while the marginal error
        hovers at the kink's floor; ``ftol=0`` disables it.
    max_iter : int, default=10000
        Maximum number of L-BFGS-B iterations.
    memory : int, default=20
        L-BFGS-B correction pairs.
    init : {"sinkhorn", "zeros"}, default="sinkhorn"
        Start (without ``x0``) from the potentials of a rough entropic plan (30 Sinkhorn
        iterations at ``reg = (max C - min C) / 100``), or from zero. The entropic start is
        close to the optimum and usually saves iterations.
    newton : bool, default=True
        Also take Newton steps: where the columns' supports stay put the objective is
        quadratic with a sparse Hessian (``k`` entries per column), so a Newton step, solved
        by conjugate gradients in ``O(k m)`` per product, lands on the optimum of that
        piece. One is tried every 10 L-BFGS-B iterations (less often after failures) and
        kept up while each halves the marginal error; L-BFGS-B alone stalls near
        ``1e-8`` (its line search works on objective values, which stop changing in
        double precision before the marginals are exact).
    polish : bool, default=False
        After the solve, rescale the rows and columns of the plan on its support (matrix
        scaling, as Sinkhorn does) so that both marginals hold while the support, hence
        the sparsity, is kept. Only applied when it reaches ``tol``; ``Result.polished``
        tells.
    n_threads : int or None, default=1
        Threads of the column kernel, a positive integer (None: all available CPUs). The
        result does not depend on it. One thread is the default because an evaluation is
        short, so that starting threads for it rarely pays (see the user guide).
    callback, verbose
        As in every solver.

    Notes
    -----
    With a small ``k`` the relaxation can have its optimum at a kink, where two rows tie
    for the ``k``-th place of a column: the exact optimum then mixes two ``k``-sparse
    columns, and a marginal violation of the returned ``k``-sparse plan is inherent, not a
    sign of slow convergence. The solve then ends as stalled (``status`` 5, a
    :class:`~mmopt.ConvergenceWarning`) once the objective stops rising (``ftol``) or
    L-BFGS-B's line search cannot raise it even after a restart; ``row_violation`` and
    ``column_violation`` say where the violation is. ``polish=True``
    repairs the marginals on the found support whenever that support admits a plan.

    ``Result.x`` holds the potentials (``f``, or ``concat(f, g)`` for the dual); ``fun``
    is the maximized (semi-)dual objective. Extra fields: ``plan`` (a
    ``scipy.sparse.csc_array`` of shape (n, m), at most ``k`` nonzeros per column; dense
    with ``plan_format="dense"``), ``f``, ``g`` (dual only), ``transport_cost``
    (``<C, T>``), ``objective`` (the primal value ``<C, T> + reg/2 ||T||^2``),
    ``marginal_error``, ``row_violation`` and ``column_violation`` (L1 each),
    ``nnz_per_column``, ``nfev``, ``k``, ``formulation``, ``polished``. Rows (columns) of
    zero mass get the c-transform of the other side's potentials, ``f_i = min_j (C_ij -
    g_j)``: the largest potential at which they would receive no mass (for the
    semi-dual, ``g`` is the one its plan implies, ``T_ij = [f_i + g_j - C_ij]_+ / reg``).

    %(references)s

    Examples
    --------
    >>> from mmopt.ot import OTProblem, SparsityConstrainedOT
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.random((30, 2)), rng.random((20, 2))
    >>> C = ((x[:, None] - y[None]) ** 2).sum(-1)
    >>> res = SparsityConstrainedOT(k=5, reg=0.1).solve(OTProblem([], [], C, reg=0.1))
    >>> int(res.nnz_per_column.max()) <= 5, res.plan.shape, res.status
    (True, (30, 20), 0)
    """

    name = "sparsity_constrained"
    problem_types = (OTProblem,)
    maximize = True

    # The common options (tol, max_iter, callback, verbose) are checked by the base class.
    _options = {
        "k": Param(None, None, Interval(int, 1, None)),
        "reg": Param(None, None, Interval(float, 0, None, closed="neither")),
        "formulation": Param("semi_dual", Options({"semi_dual", "dual"})),
        "tol": Param(1e-8),
        "ftol": Param(1e-6, Interval(float, 0, None)),
        "patience": Param(200, Interval(int, 1, None)),
        "max_iter": Param(10_000),
        "memory": Param(20, Interval(int, 1, None)),
        "init": Param("sinkhorn", Options({"sinkhorn", "zeros"})),
        "newton": Param(True, bool),
        "polish": Param(False, bool),
        "plan_format": Param("sparse", Options({"sparse", "dense"})),
        "n_threads": Param(1, None, Interval(int, 1, None)),
    }

    # ----------------------------------------------------------------------------- setup
    def _init_state(self, problem, x0):
        reg = problem.reg if self.reg is None else float(self.reg)
        n_rows = int(np.count_nonzero(problem.a > 0))
        n_cols = int(np.count_nonzero(problem.b > 0))
        k = n_rows if self.k is None else min(int(self.k), n_rows)
        if k * n_cols < n_rows:
            raise ValueError(
                f"k * m must be at least n so that every row can be served: k={self.k}, "
                f"m={n_cols} and n={n_rows} (rows and columns of positive mass)."
            )
        conj = _Conjugates(problem, k, reg, self.formulation, effective_n_threads(self.n_threads))
        n, m = problem.shape
        size = n if self.formulation == "semi_dual" else n + m
        if x0 is None:
            start = self._entropic_start(conj) if self.init == "sinkhorn" else np.zeros(
                self._full_to_support(conj, n).size
            )
        else:
            x0 = check_array(x0, "x0", ndim=1, finite=False)
            if x0.shape != (size,):
                what = "(n,) = f" if self.formulation == "semi_dual" else "(n + m,) = concat(f, g)"
                raise ValueError(f"x0 must have shape ({size},), {what}; got {x0.shape}.")
            start = x0[self._full_to_support(conj, n)]
            if not np.isfinite(start).all():
                raise ValueError("x0 must be finite on the entries of positive mass.")
        value, grad = conj.value_and_grad(start)
        # The worker thread starts on the first step; _close_state ends it.
        run = _SparseOTRun(
            conj=conj,
            reg=reg,
            steps=LBFGSBSteps(conj.negated, start, memory=self.memory),
            recent=deque(maxlen=_STALL_WINDOW + 1),
        )
        return self._make_state(run, start, value, grad)

    def _close_state(self, problem, state):
        if state.run is not None:
            state.run.steps.close()

    def _entropic_start(self, conj):
        """Potentials of a rough entropic plan: 30 Sinkhorn iterations at reg = spread / 100.

        The (semi-)dual's optimum is near the entropic one's, so the solve starts there
        rather than at zero, for the cost of a few dozen matrix-vector products.
        """
        # Why: it saved 35-40% of the L-BFGS-B iterations on 1000-point problems (k = 2, 5,
        # reg 0.1 and 0.01); the scaling domain applies at that reg.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            try:
                rough = solve(
                    OTProblem(conj.a, conj.b, conj.Ct.T, conj.spread / 100.0),
                    "sinkhorn",
                    tol=0.0,
                    max_iter=_ENTROPIC_START_ITERATIONS,
                    n_threads=conj.n_threads,
                )
            except ValueError:  # a cost too large for its spread in float64: no start
                size = conj.n if self.formulation == "semi_dual" else conj.n + conj.b.size
                return np.zeros(size)
        f, g = rough.f - rough.f.mean(), rough.g + rough.f.mean()
        if not (np.isfinite(f).all() and np.isfinite(g).all()):
            return np.zeros(conj.n if self.formulation == "semi_dual" else conj.n + g.size)
        return f if self.formulation == "semi_dual" else np.concatenate([f, g])

    def _full_to_support(self, conj, n):
        if self.formulation == "semi_dual":
            return conj.rows
        return np.concatenate([conj.rows, n + conj.cols])

    # ------------------------------------------------------------------------------ step
    def _step(self, problem, state):
        run = state.run
        new_state = None
        tried_newton = False
        if self.newton and (run.newton_mode or run.since_newton >= run.newton_interval):
            new_state, tried_newton = self._newton_step(state), True
        if new_state is None:
            new_state = self._lbfgs_step(state, newton_tried=tried_newton)
        if new_state.residual < 0.5 * run.best_residual:
            run.best_residual = new_state.residual
            run.since_best = 0
        else:
            run.since_best += 1
        recent = run.recent
        recent.append(new_state.fun)
        if (
            len(recent) == recent.maxlen
            and run.since_best >= self.patience
            and new_state.residual > self.tol
        ):
            gain = new_state.fun - recent[0]
            scale = max(abs(new_state.fun), np.finfo(float).tiny)
            if gain <= self.ftol * scale:
                raise StopSolve(
                    Status.STALLED,
                    f"Stalled: the marginal error ({new_state.residual:.3g} > tol) has not "
                    f"halved in {run.since_best} iterations and the objective "
                    f"rose by only {gain / scale:.2g} (relative) over the last "
                    f"{recent.maxlen - 1}. {_KINK_HINT}",
                    state=new_state,
                )
        return new_state

    @staticmethod
    def _make_state(run, x, fun, grad, *, newton=False):
        return _SparseOTState(
            x=x, fun=fun, residual=float(np.abs(grad).sum()), grad=grad,
            record={"newton": float(newton)}, run=run,
        )

    def _newton_step(self, state):
        """A Newton step with a backtracking line search; None when it does not pay."""
        # Its values are tested for finiteness (CG on a system near the float64 range may
        # overflow and is then rejected): NumPy need not warn.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._try_newton(state)

    def _try_newton(self, state):
        run = state.run
        conj = run.conj
        run.since_newton = 0
        direction = conj.newton_direction(state.x, state.grad)
        slope = float(state.grad @ direction)
        if not (np.isfinite(slope) and slope > 0):
            run.newton_mode = False
            return None
        # Judged on the marginal error, the quantity to drive to zero (a semismooth Newton
        # globalization): the objective is only asked not to drop beyond its rounding
        # error, since near the optimum it stops changing in double precision.
        rounding = 1e-13 * max(abs(state.fun), 1.0)

        def trial(step_size):
            x = state.x + step_size * direction
            value, grad = conj.value_and_grad(x)
            return x, value, grad, float(np.abs(grad).sum())

        def accept(step_size, point):
            _, value, _, residual = point
            return bool(
                np.isfinite(value)
                and value >= state.fun - rounding
                and residual <= (1.0 - 1e-4 * step_size) * state.residual
            )

        search = backtracking(trial, accept, max_trials=_MAX_HALVINGS + 1)
        if search.success:
            x, value, grad, residual = search.trial
            run.newton_mode = residual <= 0.5 * state.residual
            run.newton_interval = _NEWTON_INTERVAL
            run.n_newton += 1
            # L-BFGS-B's curvature pairs belong to the path it took; start afresh.
            run.lbfgs_stale = True
            return self._make_state(run, x, value, grad, newton=True)
        # Failed attempts cost evaluations: at a kink they keep failing, so back off.
        run.newton_mode = False
        run.newton_interval = min(2 * run.newton_interval, _MAX_NEWTON_INTERVAL)
        return None

    def _restart_lbfgs(self, run, x):
        run.steps.close()
        run.steps = LBFGSBSteps(run.conj.negated, x, memory=self.memory)
        run.lbfgs_stale = False

    def _lbfgs_step(self, state, *, newton_tried):
        """The next L-BFGS-B iterate. After a failed line search a Newton step is tried
        (L-BFGS-B mostly fails where the objective is flat to rounding, which Newton,
        judged on the marginal error, gets past), then L-BFGS-B restarts with no memory."""
        run = state.run
        run.newton_mode = False
        if run.lbfgs_stale:
            self._restart_lbfgs(run, state.x)
        for _ in range(_MAX_RESTARTS + 1):
            try:
                step = run.steps.step()
            except LBFGSBStopped as stopped:
                reason = str(stopped)
                if self.newton and not newton_tried:
                    newton_tried = True
                    new_state = self._newton_step(state)
                    if new_state is not None:
                        return new_state
                self._restart_lbfgs(run, state.x)
                continue
            run.since_newton += 1
            # The gradient of the maximized objective is the negated one L-BFGS-B saw.
            return self._make_state(run, step.x, -step.fun, -step.grad)
        raise StopSolve(
            Status.STALLED,
            "Stalled: L-BFGS-B's line search cannot raise the objective any further "
            f"({reason}) while the marginal error is still {state.residual:.3g} > tol. "
            + _KINK_HINT,
        )

    # ---------------------------------------------------------------------------- result
    def _result_fields(self, problem, state):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._fields(problem, state)

    def _fields(self, problem, state):
        run = state.run
        conj = run.conj
        n, m = problem.shape
        rows, values, nnz, *_ = conj.columns(state.x)
        plan = _assemble_plan(rows, values, nnz, conj.rows, conj.cols, (n, m))
        polished = False
        if self.polish:
            scaled = _scale_on_support(plan, problem.a, problem.b, tol=self.tol)
            if scaled is not None:
                plan, polished = scaled, True
        fields = _plan_report(plan, problem, run.reg)
        f_support = state.x[: conj.n]
        if self.formulation == "dual":
            g_support = state.x[conj.n :]
        else:
            g_support = _implied_column_potentials(conj, f_support, rows, values, nnz)
        f, g = _full_potentials(problem, conj, f_support, g_support)
        fields.update(f=f, k=conj.k, formulation=self.formulation, polished=polished)
        fields["nfev"] = conj.nfev
        fields["n_newton"] = run.n_newton
        full_x = f
        if self.formulation == "dual":
            fields["g"] = g
            full_x = np.concatenate([f, g])
        fields["x"] = full_x
        if self.plan_format == "dense":
            fields["plan"] = plan.toarray()
        return fields


def _implied_column_potentials(conj, f, rows, values, nnz):
    """The column potentials of the semi-dual's plan: ``g_j = reg T_ij - f_i + C_ij`` on
    any entry of column j's support (the plan is ``[f_i + g_j - C_ij]_+ / reg`` there)."""
    g = np.zeros(nnz.size)
    has = nnz > 0
    first = rows[has, 0]
    cols = np.flatnonzero(has)
    g[has] = conj.reg * values[has, 0] - f[first] + conj.Ct[cols, first]
    return g


def _full_potentials(problem, conj, f_support, g_support):
    """``f`` and ``g`` on every row and column: rows and columns of zero mass get the
    c-transform of the other side's potentials, ``f_i = min_j (C_ij - g_j)``, the largest
    potential at which they would receive no mass."""
    n, m = problem.shape
    f, g = np.empty(n), np.empty(m)
    f[conj.rows], g[conj.cols] = f_support, g_support
    C = problem.C
    empty_rows = np.setdiff1d(np.arange(n), conj.rows)
    empty_cols = np.setdiff1d(np.arange(m), conj.cols)
    if empty_rows.size:
        f[empty_rows] = (C[np.ix_(empty_rows, conj.cols)] - g_support[None, :]).min(axis=1)
    if empty_cols.size:
        g[empty_cols] = (C[np.ix_(conj.rows, empty_cols)] - f_support[:, None]).min(axis=0)
    return f, g


def _assemble_plan(rows, values, nnz, row_ids, col_ids, shape):
    """A CSC array of the full shape from the kernel's compressed columns."""
    indptr_support = np.concatenate([[0], np.cumsum(nnz, dtype=np.int64)])
    width = rows.shape[1]
    keep = np.arange(width)[None, :] < nnz[:, None]
    indices = row_ids[rows[keep]]
    data = values[keep]
    # Columns of zero mass stay empty.
    counts = np.zeros(shape[1], dtype=np.int64)
    counts[col_ids] = np.diff(indptr_support)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    plan = sp.csc_array((data, indices, indptr), shape=shape)
    plan.sort_indices()
    return plan


def _plan_report(plan, problem, reg):
    """Costs and marginal violations of a sparse plan."""
    row_violation = float(np.abs(np.asarray(plan.sum(axis=1)).ravel() - problem.a).sum())
    column_violation = float(np.abs(np.asarray(plan.sum(axis=0)).ravel() - problem.b).sum())
    coo = plan.tocoo()
    transport_cost = float(np.dot(problem.C[coo.row, coo.col], coo.data))
    return {
        "plan": plan,
        "transport_cost": transport_cost,
        "objective": transport_cost + 0.5 * reg * float(np.dot(coo.data, coo.data)),
        "marginal_error": row_violation + column_violation,
        "row_violation": row_violation,
        "column_violation": column_violation,
        "nnz_per_column": np.diff(plan.indptr).astype(np.intp),
    }


def _scale_on_support(plan, a, b, *, tol, max_iter=10_000):
    """Rescale rows and columns of ``plan`` on its support to match ``a`` and ``b``.

    Alternating scaling (Sinkhorn-Knopp on the sparse pattern). Returns None when it does
    not reach ``tol`` (the support admits no plan with these marginals, or only in the limit).
    """
    K = sp.csr_array(plan)
    u, v = np.ones(a.size), np.ones(b.size)
    Kt = K.T.tocsr()
    for _ in range(max_iter):
        Kv = K @ v
        # A support that admits no plan drives the scalings to inf: None, without warnings.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            u = np.where(a > 0, a / Kv, 0.0)
        if not np.isfinite(u).all():
            return None
        Ktu = Kt @ u
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            v = np.where(b > 0, b / Ktu, 0.0)
        if not np.isfinite(v).all():
            return None
        # Columns now sum to b exactly; the rows tell the error.
        row_error = float(np.abs(u * (K @ v) - a).sum())
        if row_error <= tol:
            scaled = sp.csc_array(sp.diags_array(u) @ K @ sp.diags_array(v))
            scaled.sort_indices()
            return scaled
    return None


@fill_doc(OT_PARAMS, references("liu2023"))
def sparsity_constrained_ot(a, b, C, k, reg, **options) -> Result:
    """Optimal transport with at most ``k`` nonzeros per column (:class:`SparsityConstrainedOT`).

    Parameters
    ----------
    %(histograms)s
    C : array-like of shape (n, m)
        Cost matrix.
    k : int
        Maximum number of nonzeros per column (NumPy integers accepted).
    reg : float
        Quadratic regularization strength (> 0), as in POT's ``ot.smooth``.
    **options
        Options of :class:`SparsityConstrainedOT` (``formulation``, ``tol``, ``max_iter``,
        ``memory``, ``polish``, ``plan_format``, ``n_threads``, ``callback``, ``verbose``)
        and ``x0`` (warm-start potentials).

    Returns
    -------
    Result
        With ``plan`` (sparse), ``f`` (and ``g`` for the dual), ``transport_cost``,
        ``objective``, ``row_violation``, ``column_violation``, ``marginal_error``,
        ``nnz_per_column``.

    %(references)s

    Examples
    --------
    >>> from mmopt.ot import sparsity_constrained_ot
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    >>> res = sparsity_constrained_ot([], [], C, k=2, reg=0.1)
    >>> res.plan.toarray().round(3)
    array([[0.333, 0.   ],
           [0.   , 0.333],
           [0.167, 0.167]])
    """
    x0 = options.pop("x0", None)
    return solve(OTProblem(a, b, C, reg), "sparsity_constrained", x0=x0, k=k, reg=reg, **options)
