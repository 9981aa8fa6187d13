"""Partial optimal transport: move only a given mass, exactly (an LP) or entropically."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from mmopt._core._docstrings import SOLVER_PARAMS, fill_doc, references
from mmopt._core.exceptions import ConvergenceWarning
from mmopt._core.params import Interval, Options, Param
from mmopt._core.registry import register_solver, solve
from mmopt._core.result import Result
from mmopt._core.solver import Solver, SolverState
from mmopt._core.validation import check_array, check_scalar
from mmopt.ot._kernels import dense_plan, plan_marginals, plan_row_sums, sparsify_plan
from mmopt.ot._newton import line_search, newton_direction, next_damping
from mmopt.ot._support import (
    OT_PARAMS,
    SCALING_MAX_RATIO,
    SCALING_OPTIONS,
    ScalingRun,
    log_ratio_sum,
    measure,
)
from mmopt.ot.exact import exact_ot
from mmopt.ot.problem import CostMatrixProblem

__all__ = ["PartialOTProblem", "PartialSinkhorn", "partial_ot"]

# Newton: sparsification budget relative to the gradient's L1 norm.
_NEWTON_NU = 1e-2
# Epsilon scaling: each coarser stage runs until its residual is this fraction of the mass.
_STAGE_TOL = 1e-2


def _check_partial(a, b, C, mass):
    C = check_array(C, "C", ndim=2)
    n, m = C.shape
    a = measure(a, "a", n, "row")
    b = measure(b, "b", m, "column")
    limit = min(float(a.sum()), float(b.sum()))
    if mass is None:
        mass = limit
    mass = check_scalar(mass, "mass", min_value=0.0, include_min=False)
    if mass > limit * (1.0 + 1e-12):
        raise ValueError(
            f"mass must be at most min(sum(a), sum(b)) = {limit!r}, got {mass!r}."
        )
    return a, b, C, min(mass, limit)


@dataclass(frozen=True, repr=False)
@fill_doc(OT_PARAMS)
class PartialOTProblem(CostMatrixProblem):
    r"""Entropic partial optimal transport: move exactly ``mass`` of ``a`` onto ``b``.

    .. math::

        \min_{P \ge 0,\ P 1 \le a,\ P^\top 1 \le b,\ 1^\top P 1 = m}
        \langle C, P \rangle + \mathrm{reg} \sum_{ij} P_{ij} (\log P_{ij} - 1),

    POT's ``entropic_partial_wasserstein`` problem. Its dual, in ``f <= 0``, ``g <= 0``
    (the multipliers of the two inequalities) and ``t`` (of the total mass), with
    ``P_ij = exp((f_i + g_j + t - C_ij) / reg)``, is

    .. math::

        \max_{f \le 0,\ g \le 0,\ t}\ \langle a, f \rangle + \langle b, g \rangle + m t
        - \mathrm{reg} \sum_{ij} P_{ij}.

    Parameters
    ----------
    a, b : array-like of shape (n,), (m,)
        Non-negative measures; empty means uniform.
    C : array-like of shape (n, m)
        Finite cost matrix.
    mass : float or None
        Mass to transport, in ``(0, min(sum a, sum b)]``; None for that upper bound.
    %(entropic_reg)s

    Examples
    --------
    >>> from mmopt.ot import PartialOTProblem
    >>> PartialOTProblem([], [], np.ones((3, 2)), 0.5, 0.1)
    PartialOTProblem(n=3, m=2, mass=0.5, reg=0.1)
    """

    a: np.ndarray
    b: np.ndarray
    C: np.ndarray
    mass: float | None
    reg: float

    default_solver = "partial_sinkhorn"
    _repr_fields = ("mass", "reg")

    def __post_init__(self):
        a, b, C, mass = _check_partial(self.a, self.b, self.C, self.mass)
        reg = check_scalar(self.reg, "reg", min_value=0.0, include_min=False)
        self._set_fields(a=a, b=b, C=C, mass=mass, reg=reg)


class _Run(ScalingRun):
    """One solve's constants: the support, the kernel or the transposed cost. The plan is
    ``exp((f + g + t - C) / reg)``: the half steps see ``t`` folded into the other side."""

    def __init__(self, problem: PartialOTProblem, method: str, n_threads):
        super().__init__(problem, method, n_threads)
        self.mass = problem.mass
        # Epsilon scaling: (reg, iterations) of the coarser stages that gave the start.
        self.stages = []

    def marginals(self, f, g, t):
        return plan_marginals(self.C, self.Ct, f, g + t, self.reg, n_threads=self.threads)

    def error(self, f, g, rows, cols):
        return (_kkt(rows, self.a, f) + _kkt(cols, self.b, g)
                + abs(float(rows.sum()) - self.mass))

    def negative_dual(self, f, g, t, total):
        return -(float(self.a @ f + self.b @ g) + self.mass * t - self.reg * total)

    def newton_step(self, f, g, t, rows, cols, damping):
        """A projected Newton step (Bertsekas) on the dual from ``(f, g, t)``, the plan's
        marginals there being ``rows``, ``cols``; None when it makes no progress.

        The Hessian of the negative dual in ``(f, g, t)`` is ``(1/reg) [[diag(r), P, r],
        [P^T, diag(c), c], [r^T, c^T, sum P]]`` (``r``, ``c`` the plan's marginals). The
        potentials at their bound 0 whose gradient pushes them beyond it are held there;
        the Newton system in the others, with the plan sparsified as for unbalanced OT, is
        solved by :func:`newton_direction`, and the step is projected on ``f, g <= 0``
        with an Armijo search along the projected arc.
        """
        reg = self.reg
        n, m = f.size, g.size
        total = float(rows.sum())
        grad = np.concatenate([rows - self.a, cols - self.b, [total - self.mass]])
        value = self.negative_dual(f, g, t, total)
        grad_norm = float(np.abs(grad).sum())
        if grad_norm == 0.0 or not math.isfinite(value):
            return None
        free_f = ~((f >= 0.0) & (rows < self.a))
        free_g = ~((g >= 0.0) & (cols < self.b))
        if not (free_f.any() and free_g.any()):
            return None
        reduced = np.concatenate([grad[:n][free_f], grad[n:n + m][free_g], grad[-1:]])
        # The held potentials' gradients do not enter the system: the sparsification
        # budget is relative to the free part's.
        reduced_norm = float(np.abs(reduced).sum())
        budget = _NEWTON_NU * reduced_norm
        S = sparsify_plan(self.C, f, g + t, reg, rows, cols, budget, budget)
        # The full Hessian is sum_ij P_ij (e_i + e_j + e_t)(e_i + e_j + e_t)^T. With the
        # full marginals on the diagonal and the border, a dropped entry leaves
        # [[1, 0, 1], [0, 1, 1], [1, 1, 1]] P_ij, which is indefinite; counting its mass
        # twice in the corner makes it [[1, 0, 1], [0, 1, 1], [1, 1, 2]] P_ij >= 0.
        dropped = max(total - float(S.sum()), 0.0)
        S = S[free_f][:, free_g].tocsr()
        diagonal = (1.0 + damping) * np.concatenate([rows[free_f], cols[free_g]]) / reg
        diagonal += 1e-12 * reduced_norm
        border = np.concatenate([rows[free_f], cols[free_g]]) / reg
        corner = (1.0 + damping) * (total + dropped) / reg + 1e-12 * reduced_norm
        found = newton_direction(diagonal, S, reduced, reg, border=(border, corner))
        if found is None or not np.all(np.isfinite(found.d)):
            return None
        solution = found.d
        df, dg = np.zeros(n), np.zeros(m)
        nf = int(free_f.sum())
        df[free_f] = solution[:nf]
        dg[free_g] = solution[nf:-1]
        dt = float(solution[-1])
        if not float(reduced @ solution) < 0:
            return None

        def evaluate(step):
            f1 = np.minimum(f + step * df, 0.0)
            g1 = np.minimum(g + step * dg, 0.0)
            t1 = t + step * dt
            with np.errstate(over="ignore", invalid="ignore"):
                total1 = float(plan_row_sums(self.C, f1, g1 + t1, reg,
                                             n_threads=self.threads).sum())
            new_value = self.negative_dual(f1, g1, t1, total1)
            if not new_value <= value + 1e-13 * max(abs(value), 1.0):
                return None
            # Armijo along the projected arc: the decrease the gradient predicts for the
            # displacement actually taken.
            predicted = -float(grad[:n] @ (f1 - f) + grad[n:n + m] @ (g1 - g)
                               + grad[-1] * (t1 - t))
            rows1, cols1 = self.marginals(f1, g1, t1)
            error = self.error(f1, g1, rows1, cols1)
            return new_value, 1e-4 * predicted, error, (f1, g1, t1, rows1, cols1, error)

        found = line_search(evaluate, value, self.error(f, g, rows, cols))
        if found is None:
            return None
        payload, step = found
        return (*payload, step)


@dataclass
class _PartialState(SolverState):
    f: np.ndarray | None = None
    g: np.ndarray | None = None
    t: float = 0.0
    run: _Run | None = None
    # Newton stage: the plan's marginals at (f, g, t), its damping, and whether it is on.
    marginals: tuple | None = None
    damping: float = 0.0
    # Newton steps are tried once the residual is below this (lowered tenfold after a
    # step that made no progress).
    newton_below: float = math.inf


def _kkt(sums, target, potential):
    """L1 violation of ``sums <= target`` with equality where the multiplier is < 0."""
    excess = np.maximum(sums - target, 0.0)
    slack = np.where(potential < 0, np.abs(sums - target), 0.0)
    return float(np.maximum(excess, slack).sum())


@register_solver
@fill_doc(SOLVER_PARAMS, OT_PARAMS)
class PartialSinkhorn(Solver):
    r"""Block coordinate ascent on the dual of entropic partial OT (Benamou et al.).

    Each iteration maximizes the dual of :class:`PartialOTProblem` exactly in each block:

    .. math::

        f_i = \min\Big(0,\ \mathrm{reg} \log a_i - \mathrm{reg} \log \sum_j
        e^{(g_j + t - C_{ij})/\mathrm{reg}}\Big),

    the same for ``g``, then ``t`` so that the plan's total is ``m`` (in the scaling domain:
    rows scaled by ``min(1, a / P 1)``, columns by ``min(1, b / P^T 1)``, the whole plan by
    ``m / sum P``). The dual increases at every block and the iterates converge to the
    optimum.

    Parameters
    ----------
    method : {"auto", "log", "scaling"}, default="auto"
        Log domain (the Cython log-sum-exp kernel; stable at any ``reg``) or scaling domain
        (BLAS products with ``exp(-C / reg)``); ``"auto"`` takes the scaling domain when
        ``(max C - min C) / reg <= 100``.
    newton : bool or None, default=None
        Switch to projected Newton steps on the dual (the
        potentials held at their bound 0 are left out, the plan is sparsified, Armijo
        search along the projected arc) once the residual is below ``newton_switch``
        times the mass; a step that makes no progress goes back to block steps until the
        residual is ten times smaller. None: Newton on the log-domain path (``reg`` small
        against the cost's spread), where block steps need many iterations.
    newton_switch : float, default=1e-2
        See ``newton``.
    eps_scaling : bool or None, default=None
        Start from the solutions of coarser problems: ``reg_0 = (max C - min C) / 100``
        (the largest ``reg`` of the log-domain path), then ``reg_0 / eps_factor``, ... down to
        ``reg``, each stage solved (block and Newton steps) until its residual is a hundredth
        of the mass, from the potentials of the one before (the plan is ``exp((f + g + t -
        C) / reg)``: the potentials are on the cost's scale at every ``reg``). The final
        problem is solved to ``tol`` from there; the solution does not change, only the
        work to reach it. None: on when ``x0`` is None and ``reg_0 > eps_factor reg``.
        Only the final stage counts in ``nit``, ``max_iter`` and the callback; the stages
        are in ``Result.eps_stages``.
    eps_factor : float, default=4.0
        Ratio of consecutive ``reg`` of the epsilon-scaling stages (> 1).
    tol : float, default=1e-9
        Stop when the L1 violation of the optimality conditions (each row and column sum at
        most its mass, with equality where its multiplier is negative) is at most ``tol``;
        the row part recorded at iteration ``k`` is that of iterate ``k - 1``.
    %(scaling_options)s

    Notes
    -----
    ``Result.x`` is ``concat(f, g, [t])`` (``-inf`` on rows/columns of zero mass), ``fun``
    the dual objective (maximized). Extra fields: ``plan``, ``f``, ``g``, ``t``,
    ``transported_mass``, ``transport_cost``, ``objective`` (the primal objective),
    ``row_marginal``, ``col_marginal``, ``kkt_error`` (exact at the returned iterate),
    ``method``.

    References
    ----------
    .. [1] J.-D. Benamou, G. Carlier, M. Cuturi, L. Nenna, G. Peyré, "Iterative Bregman
       projections for regularized transportation problems", SIAM J. Sci. Comput. 37
       (2015).

    Examples
    --------
    >>> from mmopt.ot import PartialOTProblem, PartialSinkhorn
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> res = PartialSinkhorn().solve(PartialOTProblem([0.5, 0.5], [0.5, 0.5], C, 0.5, 0.01))
    >>> np.round(res.plan, 6)
    array([[0.25, 0.  ],
           [0.  , 0.25]])
    """

    name = "partial_sinkhorn"
    problem_types = (PartialOTProblem,)
    maximize = True

    _options = {
        "method": Param("auto", Options({"auto", "log", "scaling"})),
        "newton": Param(None, None, bool),
        "newton_switch": Param(1e-2, Interval(float, 0, None)),
        "eps_scaling": Param(None, None, bool),
        "eps_factor": Param(4.0, Interval(float, 1, None, closed="neither")),
        **SCALING_OPTIONS,
    }

    def _init_state(self, problem, x0):
        run = _Run(problem, self.method, self.n_threads)
        if x0 is None:
            f, g, t = np.zeros(run.rows.size), np.zeros(run.cols.size), 0.0
            x0 = self._eps_scaling_start(problem, run)
        if x0 is not None:
            f, g, rest = run.read_start(x0, extra=1)
            f, g, t = np.minimum(f, 0.0), np.minimum(g, 0.0), float(rest[0])
        return _PartialState(
            x=np.concatenate([f, g, [t]]), fun=-np.inf, f=f, g=g, t=t, run=run
        )

    def _eps_scaling_start(self, problem, run):
        """Potentials from the coarser stages of epsilon scaling, or None (stages off)."""
        spread = float(run.C.max() - run.C.min()) if run.C.size else 0.0
        reg0 = spread / SCALING_MAX_RATIO
        wanted = self.eps_scaling
        if wanted is None:
            wanted = reg0 > self.eps_factor * run.reg
        if not wanted or not reg0 > run.reg:
            return None
        regs = []
        reg = reg0
        while reg > run.reg * (1.0 + 1e-12):
            regs.append(reg)
            reg /= self.eps_factor
        stage = PartialSinkhorn(
            method=self.method, newton=self.newton, newton_switch=self.newton_switch,
            eps_scaling=False, tol=_STAGE_TOL * run.mass, max_iter=self.max_iter,
            n_threads=self.n_threads,
        )
        x = None
        for reg in regs:
            coarse = PartialOTProblem(problem.a, problem.b, problem.C, problem.mass, reg)
            with warnings.catch_warnings():
                # A stage only has to give a start; the final solve reports convergence.
                warnings.simplefilter("ignore", ConvergenceWarning)
                res = stage.solve(coarse, x0=x)
            run.stages.append((reg, res.nit))
            x = np.where(np.isfinite(res.x), res.x, 0.0)
        return x

    def _use_newton(self, run, state):
        wanted = run.method == "log" if self.newton is None else bool(self.newton)
        return wanted and state.residual <= min(self.newton_switch * run.mass,
                                                state.newton_below)

    def _newton(self, run, state):
        if state.marginals is None:
            rows, cols = run.marginals(state.f, state.g, state.t)
        else:
            rows, cols = state.marginals
        out = run.newton_step(state.f, state.g, state.t, rows, cols, state.damping)
        if out is None:
            return None
        f, g, t, rows, cols, error, step = out
        fun = -run.negative_dual(f, g, t, float(rows.sum()))
        return _PartialState(
            x=np.concatenate([f, g, [t]]), fun=fun, residual=error, f=f, g=g, t=t, run=run,
            marginals=(rows, cols), damping=next_damping(state.damping, step),
            newton_below=state.newton_below,
            record={"newton": 1.0, "step": step},
        )

    def _step(self, problem, state):
        run, reg = state.run, state.run.reg
        if self._use_newton(run, state):
            new_state = self._newton(run, state)
            if new_state is not None:
                return new_state
            # No progress: block steps until the residual is ten times smaller.
            state = _PartialState(x=state.x, fun=state.fun, residual=state.residual,
                                  f=state.f, g=state.g, t=state.t, run=run,
                                  newton_below=state.residual / 10.0)
        f, g, t = state.f, state.g, state.t
        h, row_mass = run.half(f, g + t, run.log_a, False)
        row_error = _kkt(row_mass, run.a, f)
        f = np.minimum(h, 0.0)
        h, _ = run.half(g, f + t, run.log_b, True)
        g = np.minimum(h, 0.0)
        # Column sums now: b_j exp((g_j - h_j) / reg), i.e. b_j where g_j = h_j.
        cols = run.b * np.exp((g - h) / reg)
        total = float(cols.sum())
        t = t + reg * (math.log(run.mass) - math.log(total))
        cols *= run.mass / total
        residual = row_error + _kkt(cols, run.b, g)
        fun = float(run.a @ f + run.b @ g) + run.mass * t - reg * run.mass
        return _PartialState(
            x=np.concatenate([f, g, [t]]), fun=fun, residual=residual, f=f, g=g, t=t,
            run=run, newton_below=state.newton_below, record={"newton": 0.0},
        )

    def _result_fields(self, problem, state):
        run, reg = state.run, state.run.reg
        block = dense_plan(run.C, state.f, state.g + state.t, reg, n_threads=run.threads)
        plan = run.plan(block)
        f, g = run.potentials(state.f, state.g)
        rows_s, cols_s = block.sum(axis=1), block.sum(axis=0)
        cost = float(np.vdot(run.C, block))
        total = float(rows_s.sum())
        # sum P (log P - 1), with log P_ij = (f_i + g_j + t - C_ij) / reg.
        entropy = log_ratio_sum(state.f, state.g + state.t, rows_s, cols_s, cost, reg) - total
        return {
            "x": np.concatenate([f, g, [state.t]]),
            "plan": plan,
            "f": f,
            "g": g,
            "t": state.t,
            "transported_mass": float(plan.sum()),
            "transport_cost": cost,
            "objective": cost + reg * entropy,
            "row_marginal": plan.sum(axis=1),
            "col_marginal": plan.sum(axis=0),
            "kkt_error": _kkt(rows_s, run.a, state.f) + _kkt(cols_s, run.b, state.g)
            + abs(total - run.mass),
            "method": run.method,
            "eps_stages": list(run.stages),
        }


def _exact_partial(a, b, C, mass) -> Result:
    """Exact partial OT as balanced OT with one dummy row and one dummy column."""
    n, m = C.shape
    # Shifting C by a constant shifts the objective by mass * constant; with C >= 0 any
    # positive dummy-to-dummy cost keeps the dummies from trading mass with each other
    # (moving mass along a real pair and the dummy pair to the two dummy pairs lowers the
    # cost), so exactly ``mass`` moves between real points.
    low = float(C.min())
    shifted = C - low
    extended = np.zeros((n + 1, m + 1))
    extended[:n, :m] = shifted
    extended[n, m] = 2.0 * float(shifted.max()) + 1.0
    a_ext = np.concatenate([a, [float(b.sum()) - mass]])
    b_ext = np.concatenate([b, [float(a.sum()) - mass]])
    res = exact_ot(a_ext, b_ext, extended)
    plan = np.array(res.plan[:n, :m])
    cost = float(np.vdot(C, plan))
    res.update(
        x=plan, plan=plan, fun=cost, transport_cost=cost, transported_mass=float(plan.sum()),
        row_marginal=plan.sum(axis=1), col_marginal=plan.sum(axis=0),
        f=None if res.f is None else np.array(res.f[:n]),
        g=None if res.g is None else np.array(res.g[:m]),
        solver="partial_exact",
    )
    res.pop("marginal_error", None)
    return res


@fill_doc(references("chizat2018"))
def partial_ot(a, b, C, mass=None, reg=None, **options) -> Result:
    r"""Partial optimal transport: move exactly ``mass`` between ``a`` and ``b``.

    .. math::

        \min_{P \ge 0,\ P 1 \le a,\ P^\top 1 \le b,\ 1^\top P 1 = m}
        \langle C, P \rangle\ \Big[ + \mathrm{reg} \sum_{ij} P_{ij} (\log P_{ij} - 1)\Big].

    With ``reg=None`` the linear program is solved exactly, as balanced OT between ``a``
    plus a dummy point of mass ``sum(b) - m`` and ``b`` plus a dummy point of mass
    ``sum(a) - m`` (zero cost to the dummies, a prohibitive one between them) by
    :func:`exact_ot`; POT's ``ot.partial.partial_wasserstein``. With ``reg > 0`` the entropic
    problem is solved by :class:`PartialSinkhorn`; POT's
    ``ot.partial.entropic_partial_wasserstein``.

    Parameters
    ----------
    a, b : array-like of shape (n,), (m,)
        Non-negative measures; empty means uniform.
    C : array-like of shape (n, m)
        Cost matrix.
    mass : float, optional
        Mass to move, in ``(0, min(sum a, sum b)]``; that bound when None.
    reg : float, optional
        Entropic regularization; None for the exact problem.
    **options
        With ``reg``: ``x0`` and the options of :class:`PartialSinkhorn`.

    Returns
    -------
    Result
        With ``plan``, ``transported_mass``, ``transport_cost``, ``row_marginal``,
        ``col_marginal``, and ``f``, ``g`` (dual potentials).

    %(references)s

    Examples
    --------
    >>> from mmopt.ot import partial_ot
    >>> C = np.array([[0.0, 2.0], [1.0, 5.0]])
    >>> res = partial_ot([0.5, 0.5], [0.5, 0.5], C, mass=0.5)
    >>> res.plan, res.transport_cost
    (array([[0.5, 0. ],
           [0. , 0. ]]), 0.0)
    """
    if reg is None:
        if options:
            raise TypeError(
                "options " + ", ".join(repr(k) for k in sorted(options))
                + " apply to the entropic problem only (pass reg)."
            )
        a, b, C, mass = _check_partial(a, b, C, mass)
        return _exact_partial(a, b, C, mass)
    x0 = options.pop("x0", None)
    problem = PartialOTProblem(a, b, C, mass, reg)
    return solve(problem, PartialSinkhorn, x0=x0, **options)
