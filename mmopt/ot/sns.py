"""Sinkhorn-Newton-Sparse: Sinkhorn warm start, then Newton steps on a sparsified Hessian."""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields

import numpy as np

from mmopt._core._docstrings import fill_doc
from mmopt._core.params import Interval, Options, Param
from mmopt._core.registry import register_solver
from mmopt._core.result import Result
from mmopt.ot._kernels import plan_marginals, sparsify_plan
from mmopt.ot._newton import line_search, newton_direction, next_damping
from mmopt.ot._support import OT_PARAMS
from mmopt.ot.problem import OTProblem, solve_ot
from mmopt.ot.sinkhorn import (
    _MAX_RELAX_FAILURES,
    Sinkhorn,
    _dual_value,
    _iteration,
    _SinkhornRun,
    _SinkhornState,
)

__all__ = ["SinkhornNewtonSparse", "sinkhorn_newton_sparse"]

# "auto" takes Newton steps once the observed convergence rate of Sinkhorn (the ratio of
# successive marginal errors over the last _RATE_WINDOW iterations) predicts more than
# _NEWTON_MIN_REMAINING iterations left to reach tol: a Newton step costs a few to a few
# dozen Sinkhorn iterations' worth (sparsification, linear solve, line search) and a handful
# of them finish from there; where Sinkhorn is about to finish, it just finishes.
_NEWTON_MIN_REMAINING = 100
_RATE_WINDOW = 5
# Epsilon scaling of stage 1 above this (max C - min C) / reg (below it Sinkhorn needs few
# iterations at reg itself).
_EPSILON_SCALING_MIN_RATIO = 200.0
# "auto" factorizes the sparsified Hessian when it has at most this many entries per row
# and column on average (a near-matching, small reg: little fill-in, and CG struggles);
# denser plans are well conditioned and CG converges in a few dozen products.
_DIRECT_MAX_DEGREE = 20
# Stage 1 at small reg starts at reg = (max C - min C) / this ratio, where Sinkhorn converges
# in a few dozen iterations, and divides reg by ``reg_scaling`` each time the marginal error
# reaches ``switch_tol`` (epsilon scaling): 3-8x fewer Sinkhorn iterations at reg = 1e-4
# than starting at the target reg.
_SCALING_START_RATIO = 100.0
# Backtracking halvings before a Newton step counts as failed (steps down to 2**-11).
_MAX_HALVINGS = 12
# After a failed Newton step, Sinkhorn iterations before the next try: 1, 2, 4, ... up to this.
_MAX_NEWTON_BACKOFF = 32


@dataclass
class _SNSRun(_SinkhornRun):
    """Sinkhorn's run context plus the Newton stage's counters and controls (mutated by the
    steps of one solve, never shared between solves)."""

    use_newton: bool = False
    n_sinkhorn: int = 0
    n_newton: int = 0
    newton_pause: int = 0
    newton_backoff: int = 1
    damping: float = 0.0
    cg_failed: bool = False
    level_reg: float = 0.0  # the reg of the current epsilon-scaling level
    # Marginal errors of the latest Sinkhorn iterations at reg (the rate estimate).
    errors: list = field(default_factory=list)
    errors_omega: float = 1.0  # the over-relaxation of the iterations that made them


@dataclass
class _SNSState(_SinkhornState):
    stage: str = "sinkhorn"


@register_solver
class SinkhornNewtonSparse(Sinkhorn):
    r"""Sinkhorn-Newton-Sparse (Tang et al., ICLR 2024) for entropic optimal transport.

    Stage 1 runs Sinkhorn (:class:`Sinkhorn`) until the L1 marginal error is below
    ``switch_tol``. Stage 2 takes Newton steps on the concave dual
    :math:`L(f, g)`: the Hessian
    :math:`-\frac{1}{\mathrm{reg}}\begin{bmatrix}\mathrm{diag}(S1) & S\\ S^\top &
    \mathrm{diag}(S^\top 1)\end{bmatrix}` is built from a sparsified plan ``S`` (per row and
    per column, the smallest entries whose total is at most ``drop_budget * ||grad||_1``
    are dropped, selected in O(nm) by binning the entries by magnitude), shifted by
    ``shift * ||grad||_1`` (the Hessian's null direction ``(1, -1)``) and damped
    Levenberg-Marquardt style (the diagonal scaled by ``1 + lam``, ``lam`` growing after
    short or failed steps and shrinking after full ones: at small ``reg`` the dual is far
    from quadratic and undamped steps overshoot). The system is solved by a sparse LU
    factorization when the sparsified plan is near a matching, by Jacobi-preconditioned
    conjugate gradients otherwise. A backtracking line search accepts a step that raises the
    dual value (Armijo, by more than its rounding error) or lowers the marginal error
    without losing value, and treats a non-finite trial value as a reason to backtrack; if
    it fails, Sinkhorn iterations are taken instead (more of them after each failure).

    With ``newton="auto"`` Newton steps are taken once Sinkhorn's marginal error is below
    ``switch_tol`` and its observed rate (the ratio of the errors 5 iterations apart)
    predicts more than 100 iterations left to ``tol`` (at the rate of the over-relaxed
    iteration that rate implies, ``omega - 1``, while over-relaxation is still to come):
    where Sinkhorn is about to finish (large ``reg``, an easy problem) it finishes, and
    where it converges slowly Newton takes over whatever ``reg``. After a Newton step that
    fails, the rate is measured afresh before the next try.

    Parameters
    ----------
    newton : {"auto", "always", "never"}, default="auto"
        When to use the Newton stage: by the observed convergence rate, as soon as the
        error is below ``switch_tol``, or never.
    switch_tol : float, default=1e-2
        L1 marginal error, relative to the total mass, at which stage 1 hands over to
        Newton steps (and each level of the epsilon scaling to the next).
    reg_scaling : float or None, default=3.0
        Epsilon scaling of stage 1 when Newton steps may be used and
        ``(max C - min C) / reg > 200``: Sinkhorn starts at
        ``reg' = (max C - min C) / 100`` and divides ``reg'`` by this factor each time its
        marginal error (at ``reg'``) reaches ``switch_tol``, down to ``reg``. None: stage 1
        runs at ``reg`` only.
    drop_budget : float, default=1e-3
        Sparsification budget: the mass of the entries dropped from each row and column
        of the Hessian's plan, relative to the gradient's L1 norm.
    shift : float, default=1e-3
        Diagonal shift of the Newton system, relative to the gradient's L1 norm.
    linear_solver : {"auto", "direct", "cg"}, default="auto"
        How the Newton system is solved: a sparse LU factorization of the sparsified
        Hessian (``"direct"``), or Jacobi-preconditioned conjugate gradients (``"cg"``).
        ``"auto"`` factorizes when the sparsified plan keeps at most 20 entries per row and
        column on average (small ``reg``: a near-matching, where CG converges slowly),
        and for every step after CG has once failed to reach ``cg_tol`` within ``max_cg``
        iterations.
    cg_tol : float, default=1e-2
        Relative residual at which conjugate gradients stop (an inexact Newton step).
    max_cg : int, default=500
        Maximum conjugate-gradient iterations per Newton step.
    method, overrelaxation, tol, max_iter, n_threads, callback, verbose
        As in :class:`Sinkhorn` (for the Sinkhorn iterations); ``max_iter`` counts Sinkhorn
        iterations and Newton steps.

    Notes
    -----
    Besides :class:`Sinkhorn`'s fields, the result holds ``n_sinkhorn`` and ``n_newton``
    (iteration counts per stage), and ``history`` records per iteration ``newton`` (1 for a
    Newton step), ``cg_iterations``, ``hessian_density`` (fraction of the plan's entries
    kept) and ``step`` (the line-search step length).

    References
    ----------
    .. [1] X. Tang, M. Shavlovsky, H. Rahmanian, E. Tardini, K. K. Thekumparampil, T. Xiao,
       L. Ying, "Accelerating Sinkhorn algorithm with sparse Newton iterations", ICLR
       (2024).

    Examples
    --------
    >>> from mmopt.ot import sinkhorn_newton_sparse
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.random((40, 2)), rng.random((40, 2))
    >>> C = ((x[:, None] - y[None]) ** 2).sum(-1)
    >>> res = sinkhorn_newton_sparse([], [], C / C.max(), reg=1e-3, tol=1e-9)
    >>> bool(res.success), res.n_newton > 0
    (True, True)
    """

    name = "sns"
    problem_types = (OTProblem,)
    # Added to Sinkhorn's options (method, overrelaxation, n_threads and the common ones).
    _options = {
        "newton": Param("auto", Options({"auto", "always", "never"})),
        "switch_tol": Param(1e-2, Interval(float, 0, None)),
        "reg_scaling": Param(3.0, None, Interval(float, 1, None, closed="neither")),
        "drop_budget": Param(1e-3, Interval(float, 0, 1)),
        "shift": Param(1e-3, Interval(float, 0, None)),
        "linear_solver": Param("auto", Options({"auto", "direct", "cg"})),
        "cg_tol": Param(1e-2, Interval(float, 0, None, closed="neither")),
        "max_cg": Param(500, Interval(int, 1, None)),
    }

    def _start_run(self, problem) -> _SNSRun:
        base = super()._start_run(problem)
        return _SNSRun(**{f.name: getattr(base, f.name) for f in dataclass_fields(_SinkhornRun)})

    def _init_state(self, problem, x0):
        state = super()._init_state(problem, x0)
        run = state.run
        support = run.support
        spread = float(support.C.max() - support.C.min())
        run.use_newton = self.newton != "never"
        # Epsilon scaling (the scaling domain absorbs the potentials at each new level).
        run.level_reg = problem.reg
        if (
            run.use_newton
            and self.reg_scaling is not None
            and x0 is None
            and spread / problem.reg > _EPSILON_SCALING_MIN_RATIO
            and spread / _SCALING_START_RATIO > problem.reg
        ):
            run.level_reg = spread / _SCALING_START_RATIO
        return _SNSState(x=state.x, fun=state.fun, f=state.f, g=state.g, run=run)

    def _step(self, problem, state):
        run = state.run
        if run.level_reg > problem.reg:
            return self._scaling_step(problem, state)
        in_newton = state.stage == "newton" or (
            run.use_newton
            and not state.intermediate
            and np.isfinite(state.residual)
            and state.residual <= self.switch_tol
            and (self.newton == "always" or self._iterations_left(run) > _NEWTON_MIN_REMAINING)
        )
        if in_newton and run.newton_pause > 0:
            run.newton_pause -= 1
        elif in_newton:
            # The step tests every value it computes for finiteness (a trial point that
            # overflows is backtracked from): NumPy need not warn about them.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                new = self._newton_step(problem, state)
            run.errors.clear()  # the rate is Sinkhorn's, measured afresh after Newton
            if new is not None:
                run.n_newton += 1
                run.newton_backoff = 1
                return new
            # A failed attempt costs a linear solve and a line search (several Sinkhorn
            # iterations' worth): wait longer before each new one.
            run.newton_pause = run.newton_backoff
            run.newton_backoff = min(2 * run.newton_backoff, _MAX_NEWTON_BACKOFF)
        run.n_sinkhorn += 1
        new = super()._step(problem, state)
        omega = run.scaling.omega if run.scaling is not None else 1.0
        if omega != run.errors_omega:  # a new rate: the iteration changed
            run.errors.clear()
            run.errors_omega = omega
        run.errors.append(new.residual)
        del run.errors[:-(_RATE_WINDOW + 1)]
        return _SNSState(
            x=new.x,
            fun=new.fun,
            residual=new.residual,
            f=new.f,
            g=new.g,
            run=run,
            record={"newton": 0.0, "cg_iterations": 0.0, "hessian_density": np.nan,
                    "step": np.nan, "reg": problem.reg, "intermediate": 0.0},
        )

    def _scaling_step(self, problem, state):
        """A Sinkhorn iteration at the current level of the epsilon scaling.

        An intermediate state: its value and residual are the level's (the dual at the
        level's reg and the row marginal error of the previous iterate there), recorded in
        the history with the level as ``reg``; the loop neither stops on them nor keeps the
        state as the best iterate.
        """
        run = state.run
        support, level = run.support, run.level_reg
        f, g, error, _, _ = _iteration(run, level, state.f, state.g, self.method == "auto")
        if error <= self.switch_tol * support.mass:
            next_level = level / self.reg_scaling
            run.level_reg = next_level if next_level > 1.01 * problem.reg else problem.reg
        run.n_sinkhorn += 1
        return _SNSState(
            x=np.concatenate([f, g]),
            fun=_dual_value(support, f, g, level * support.mass),
            residual=error / support.mass,
            f=f,
            g=g,
            run=run,
            record={"newton": 0.0, "cg_iterations": 0.0, "hessian_density": np.nan,
                    "step": np.nan, "reg": level, "intermediate": 1.0},
            intermediate=True,
        )

    def _iterations_left(self, run) -> float:
        """Sinkhorn iterations still needed to reach ``tol`` at the rate of the last ones
        (0 until enough iterations were seen; infinite when the error stopped falling)."""
        errors = run.errors
        if len(errors) <= _RATE_WINDOW or not errors[-1] > self.tol:
            return 0.0
        scaling = run.scaling
        if scaling is not None and scaling.omega != 1.0:
            # Over-relaxed Sinkhorn: not monotone, and its first sweeps may raise the
            # error; it is judged once it has brought the error below its value at the
            # switch, at its own rate then.
            if scaling.relaxed_sweeps != -np.inf or not errors[-1] < errors[0]:
                return 0.0
        if not (errors[0] > 0 and errors[-1] < errors[0]):
            return np.inf
        log_rate = np.log(errors[-1] / errors[0]) / _RATE_WINDOW
        if (
            self.overrelaxation
            and scaling is not None
            and scaling.omega == 1.0
            and scaling.relax_failures < _MAX_RELAX_FAILURES
        ):
            # Sinkhorn is about to be over-relaxed: its rate will be omega - 1, with
            # omega = 2 / (1 + sqrt(1 - rate)), the benchmark for Newton steps.
            root = np.sqrt(-np.expm1(log_rate))
            log_rate = np.log((1.0 - root) / (1.0 + root)) if root < 1.0 else -np.inf
            if log_rate == -np.inf:
                return 0.0
        return float(np.log(self.tol / errors[-1]) / log_rate)

    @staticmethod
    def _dual(run, reg, f, g):
        """The dual value at (f, g), the plan's marginals and the L1 marginal error."""
        support = run.support
        if run.Ct is None:  # made once, when the Newton stage first needs it
            run.Ct = np.ascontiguousarray(support.C.T)
        rows, cols = plan_marginals(support.C, run.Ct, f, g, reg, n_threads=run.threads)
        total = float(rows.sum())
        if not np.isfinite(total):
            return -np.inf, rows, cols, np.inf
        value = _dual_value(support, f, g, reg * total)
        error = float(np.abs(rows - support.a).sum() + np.abs(cols - support.b).sum())
        return value, rows, cols, error

    def _newton_step(self, problem, state):
        run, reg = state.run, problem.reg
        support = run.support
        f, g = state.f, state.g
        value, row, col, _ = self._dual(run, reg, f, g)
        if not np.isfinite(value):
            return None
        grad_f, grad_g = support.a - row, support.b - col
        grad_norm = float(np.abs(grad_f).sum() + np.abs(grad_g).sum())
        if grad_norm == 0.0:
            return None
        budget = self.drop_budget * grad_norm
        S = sparsify_plan(support.C, f, g, reg, row, col, budget, budget)
        density = S.nnz / (row.size * col.size)
        # The diagonal keeps the full plan's marginals (only the off-diagonal block is
        # sparsified): the matrix is then the bipartite Laplacian of S plus the dropped mass
        # on the diagonal, whose only null direction is the full Hessian's own (1, -1),
        # which the shift takes care of. With S's own sums instead, every connected
        # component of S's graph adds a null direction, along which the step is garbage
        # (steps stalled near 1e-7 that way).
        # Levenberg-Marquardt damping, lam times the Hessian's diagonal on top of the shift:
        # at small reg the dual is far from quadratic and a plain Newton step overshoots,
        # so lam grows after short or failed steps and shrinks after full ones.
        diagonal = (1.0 + run.damping) * np.concatenate([row, col]) / reg
        diagonal += self.shift * grad_norm
        grad = np.concatenate([grad_f, grad_g])
        # Once CG has failed to converge (an ill-conditioned system, small reg), the
        # remaining steps factorize: CG failed again at every later step when measured.
        solver = "direct" if self.linear_solver == "auto" and run.cg_failed else (
            self.linear_solver
        )
        found = newton_direction(
            diagonal, S, -grad, reg, solver=solver, direct_max_degree=_DIRECT_MAX_DEGREE,
            cg_tol=self.cg_tol, max_cg=self.max_cg,
        )
        if found is None:  # a singular factor: fall back to a Sinkhorn step
            return None
        run.cg_failed = run.cg_failed or not found.cg_converged
        direction, n = found.d, row.size
        slope = float(grad @ direction)
        if not np.isfinite(slope) or slope <= 0:
            return None

        # Near the optimum the dual value changes below its rounding error, where Armijo's
        # test passes on noise with ever shorter steps (thousands of useless Newton steps
        # were measured): the search keeps a step that raises the value by more than the
        # rounding error, or lowers the marginal error without losing value beyond it.
        def evaluate(step):
            f_new, g_new = f + step * direction[:n], g + step * direction[n:]
            new_value, _, _, error = self._dual(run, reg, f_new, g_new)
            return -new_value, 1e-4 * step * slope, error, (f_new, g_new, new_value, error)

        # The line search compares absolute marginal errors (the residual is relative).
        residual = state.residual * support.mass if np.isfinite(state.residual) else grad_norm
        accepted = line_search(evaluate, -value, residual, max_halvings=_MAX_HALVINGS)
        run.damping = next_damping(run.damping, None if accepted is None else accepted[1])
        if accepted is None:
            return None
        (f_new, g_new, new_value, error), step = accepted
        return _SNSState(
            x=np.concatenate([f_new, g_new]),
            fun=new_value,
            residual=error / support.mass,
            f=f_new,
            g=g_new,
            run=run,
            stage="newton",
            record={"newton": 1.0, "cg_iterations": float(found.cg_iterations),
                    "hessian_density": density, "step": step, "reg": reg,
                    "intermediate": 0.0},
        )

    def _result_fields(self, problem, state):
        fields = super()._result_fields(problem, state)
        if state.intermediate:
            # Stopped (max_iter, interrupt, callback) during the epsilon scaling: report the
            # problem's own dual value and marginal error, not the level's.
            value, _, _, error = self._dual(state.run, problem.reg, state.f, state.g)
            fields["fun"], fields["residual"] = value, error / state.run.support.mass
        fields["n_sinkhorn"] = state.run.n_sinkhorn
        fields["n_newton"] = state.run.n_newton
        return fields


@fill_doc(OT_PARAMS)
def sinkhorn_newton_sparse(a, b, C=None, reg=None, **options) -> Result:
    """Entropic OT by Sinkhorn-Newton-Sparse (see :class:`SinkhornNewtonSparse`).

    Parameters
    ----------
    %(balanced_ot_args)s
    **options
        Options of :class:`SinkhornNewtonSparse` and ``x0`` (warm-start potentials).

    Returns
    -------
    Result

    Examples
    --------
    >>> from mmopt.ot import sinkhorn_newton_sparse
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> np.round(sinkhorn_newton_sparse([], [], C, reg=0.05).plan, 6)
    array([[0.5, 0. ],
           [0. , 0.5]])
    """
    return solve_ot(a, b, C, reg, "sns", options)
