"""MAID: the method of adaptive inexact descent for bilevel problems (Salehi et al.).

Each outer iteration works with an inexact hypergradient whose error is bounded a posteriori:

1. every lower level is solved from its warm start until ``||grad_x Phi_k|| <= mu_k eps``,
   which certifies ``||x_k - x_k*|| <= eps``;
2. every adjoint system ``A_k q_k = grad g_k(x_k)`` is solved by warm-started CG to a
   residual ``delta``;
3. ``z = (1/K) sum_k -B_k^T q_k + grad r(theta)``, with an error bound ``omega`` (below).

The hypergradient is accepted when ``omega <= (1 - eta) ||z||`` (then ``-z`` is a descent
direction); otherwise ``eps`` and ``delta`` shrink by ``tau`` (or at once by the factor their
part of the bound is off by, with a margin; a side whose part is already below half of what
is needed is left alone) and it is recomputed. A trial
step ``theta+ = P(theta - alpha z)`` is accepted by an inexact sufficient-decrease test that
compares an *upper* bound of the new objective with a *lower* bound of the old one.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from mmopt._core._docstrings import SOLVER_PARAMS, fill_doc, references
from mmopt._core.krylov import conjugate_gradient
from mmopt._core.linesearch import backtracking
from mmopt._core.params import Interval, Options, Param
from mmopt._core.registry import register_solver
from mmopt._core.result import InnerSolveResult, Status
from mmopt._core.solver import Solver, SolverState, StopSolve
from mmopt._core.validation import check_array
from mmopt.bilevel.inner import _inverse_diagonal, fista, newton_cg
from mmopt.bilevel.problem import BilevelProblem

__all__ = ["MAID", "HypergradientEstimate"]

_SCHEDULES = ("adaptive", "geometric", "quadratic", "cubic", "fixed")
_INNER = ("auto", "fista", "newton-cg")
# Hyperparameters up to which Broyden estimates of dx*/dtheta (n x m per instance) are kept.
_BROYDEN_MAX = 8


def _segment_change(method, x, theta, v, radius, grad_norm):
    """A lower level's ``hessian_change`` or ``cross_change`` at ``x`` for the segment to
    ``x*`` (``||x - x*|| <= radius``, ``||grad_x Phi(x)|| = grad_norm``): with the
    gradient norm when the method accepts it (a sharper bound for ``y = x*`` only), else
    over the whole ball."""
    if radius <= 0:
        return 0.0
    if _takes_grad_norm(getattr(method, "__func__", method)):
        return method(x, theta, v, radius, grad_norm=grad_norm)
    return method(x, theta, v, radius)


@functools.lru_cache(maxsize=256)
def _takes_grad_norm(function) -> bool:
    # Cached: inspecting a signature costs as much as a small Hessian-vector product.
    try:
        return "grad_norm" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class _Evaluation:
    """Lower levels solved at one ``theta`` to one accuracy, and the upper level there."""

    theta: np.ndarray
    xs: list
    errors: np.ndarray  # certified ||x_k - x_k*|| (achieved ||grad|| / modulus)
    residuals: np.ndarray  # achieved ||grad_x Phi_k(x_k)||
    moduli: np.ndarray  # certified lower bounds of lambda_min(A_k) near x_k and x_k*
    values: np.ndarray  # g_k(x_k)
    grads: list  # grad g_k(x_k)
    fun: float  # mean g_k(x_k) + r(theta)
    slack: float  # |f(theta) - fun| <= slack
    # With the adjoints: fun - mean q_k . grad_x Phi_k(x_k) (a dual-weighted residual
    # correction), within corrected_slack of f(theta): second order in the errors.
    corrected: float | None = None
    corrected_slack: float | None = None
    qs: list | None = None  # the adjoints solved at this point
    adjoint_residual: float | None = None  # the largest adjoint residual reached
    ts: list | None = None  # the tangents A^-1 B (one hyperparameter), when offered


_COST_COUNTERS = ("n_lower_iter", "n_hvp", "n_cg_iter", "n_lower_solves", "n_backtracks",
                  "n_accuracy_retries", "cost")


@dataclass
class _MAIDRun:
    """One run's bookkeeping, shared by all its states (the solver keeps its options only)."""

    cost: dict = field(default_factory=lambda: dict.fromkeys(_COST_COUNTERS, 0))
    certified: bool = True  # every constant of the error bound was supplied
    modulus_hints: dict = field(default_factory=dict)  # curvature certified per instance
    tangents: dict = field(default_factory=dict)  # warm starts of the tangent solves
    # The parts of the last bound due to the adjoint residual and to the Hessian's change.
    bound_from_adjoint: float = 0.0
    bound_from_change: float = 0.0
    stalled: bool = False  # no step passes at the accuracy floor


@dataclass
class _MAIDState(SolverState):
    run: _MAIDRun = field(default_factory=_MAIDRun)
    evaluation: _Evaluation | None = None
    qs: list = field(default_factory=list)
    z: np.ndarray | None = None
    bound: float = np.inf
    eps: float = 0.1
    delta: float = 0.1
    step: float = 1.0
    outer: int = 0
    previous: _Evaluation | None = None  # the evaluation at the previous accepted point
    # Broyden estimates of dx_k*/dtheta and dq_k/dtheta (warm starts), when kept.
    jac_x: list | None = None
    jac_q: list | None = None


class HypergradientEstimate(NamedTuple):
    """What :meth:`MAID.hypergradient` returns."""

    z: np.ndarray
    bound: float
    fun: float
    x_lower: list
    certified: bool


@register_solver
@fill_doc(SOLVER_PARAMS, references("salehi2023", "pedregosa2016"))
class MAID(Solver):
    r"""Adaptively inexact first-order method for bilevel learning (MAID).

    Solves a :class:`BilevelProblem` ``min_theta (1/K) sum_k g_k(x_k*(theta)) + r(theta)``
    over a box by projected inexact gradient descent, choosing the lower-level accuracy
    ``eps`` and the adjoint accuracy ``delta`` on the fly (``accuracy="adaptive"``, MAID) or
    from an a-priori schedule (the HOAG baselines).

    **Error bound.** With ``m`` a certified lower bound of the Hessian ``A``'s eigenvalues
    near ``x`` (``mu``, or the lower level's ``local_mu``), ``e = ||grad_x Phi(x)|| / m``
    (the certified distance to ``x*``), ``r = ||A q - grad g(x)||`` (the true CG residual),
    ``c(q)`` a bound on ``||(A(x*) - A(x)) q||`` (the lower level's ``hessian_change``, or
    ``L_A e ||q||`` with ``L_A`` the Lipschitz constant of ``A``), ``L_B`` that of the mixed
    derivative ``B`` in ``x`` and ``L_g`` that of ``grad g``, the adjoint error is
    ``e_q = (r + L_g e + c(q)) / m`` (from ``q - q* = A*^{-1} (A* q - grad g(x*))``) and,
    with ``b(q)`` a bound on ``||(B(x*) - B(x))^T q||`` (the lower level's
    ``cross_change``, or ``L_B e ||q||``),

    .. math::

        \|z - \nabla f(\theta)\| \le \omega = \|B(x)\|\, e_q + b(q) + L_B\, e\, e_q

    (per instance, then averaged): a bound of the form ``c1 eps + c2 delta + c3 eps^2``.
    With one hyperparameter and a lower level that offers ``jvp_theta`` (``B``), the first
    term becomes ``min(||B|| / m, T) (r + L_g e + c(q))`` with ``T = ||t|| + (||s|| + c(t))
    / m >= ||A*^-1 B||``, from the tangent ``t ~ A^-1 B`` solved by warm-started CG to a
    residual ``s`` (``B^T (q* - q) = (A*^-1 B)^T (A* q - grad g(x*))``): ``||B|| / m``
    pays for the flattest direction of ``A`` (an unpenalized intercept) even when ``B``
    does not point there. ``-t`` is also ``dx*/dtheta``: trial points start from
    ``x - (theta_new - theta) t``. The bound is *certified* when the lower and upper levels
    supply every constant (and ``mu`` is a valid bound); the result says so in
    ``bound_certified``.

    **Sharper bound along the Newton correction.** Where the accuracy test fails only
    because of the change terms ``c(q)`` and ``b(q)`` (bounds over the whole ball of radius
    ``e``, whose worst case concentrates the error where the Hessian changes fastest), the
    Newton correction ``d ~ A^-1 grad_x Phi(x)`` is computed by a few CG iterations
    (counted in the cost): ``||x - d - x*|| <= e_d = (||grad_x Phi(x) - A d|| + c(d)) / m``,
    second order in ``e``, and the changes become the computed ``||(A(x - d) - A(x)) q||``
    (and ``||(B(x - d) - B(x))^T q||``) plus the bounds on the ball of radius ``e_d`` around
    ``x - d``.

    **Warm starts.** Trial points start from the current lower-level solutions and adjoints
    extrapolated to first order: along the tangent (one hyperparameter, ``jvp_theta``), or
    with Broyden estimates of ``dx*/dtheta`` and ``dq/dtheta`` updated after each accepted
    move (up to 8 hyperparameters), else along the previous move.

    **Sufficient decrease.** The plain computed value ``mean g_k(x_k)`` is within ``mean(||grad
    g_k|| e_k + L_g e_k^2 / 2)`` of ``f``; MAID uses the adjoints (solved at every trial point,
    warm-started, and reused by the next hypergradient) for a sharper estimate, the
    dual-weighted residual correction ``f_hat = mean(g_k(x_k) - q_k . grad_x Phi_k(x_k)) +
    r(theta)``, within ``s = mean((r_k + c_k(q_k)) e_k + L_g e_k^2 / 2)`` of ``f``
    (second order in the errors; ``grad_x Phi(x) = Abar (x - x*)`` with ``Abar`` the mean
    Hessian on the segment). A step is accepted when ``(f_hat(theta+) + s+) - (f_hat(theta)
    - s) <= -(eta / alpha) ||theta+ - theta||^2`` (the principled test: ``eta``, not the
    ``eta^2`` of the authors' code). A failed test shrinks the step by ``backtrack``; after
    ``max_backtracks`` failures ``eps`` and ``delta`` shrink by ``tau`` (from the accuracies
    reached, often far below the ones asked for) and the iteration ends without moving.
    When the computed values pass and only the slack ``s + s+`` fails the test, no shorter
    step can pass (it asks for more decrease relative to the slack): the iteration ends at
    once, ``eps`` and ``delta`` shrink by the factor the slack is off (at
    most ``tau``) and the step is kept. On success ``eps``, ``delta`` are multiplied by
    ``accuracy_growth`` (> 1: cheaper next time) and the step by ``step_growth``.

    **HOAG schedules** (``accuracy="geometric"``, ``"quadratic"``, ``"cubic"``,
    ``"fixed"``): ``eps_k = eps0 * s_k``, ``delta_k = delta0 * s_k`` with ``s_k = 0.9^k``,
    ``1/(k+1)^2``, ``1/(k+1)^3`` or 1; no accuracy test, and HOAG's lenient decrease test
    ``(f_hat(theta+) - s+) - (f_hat(theta) + s) <= -(eta / alpha) ||theta+ - theta||^2`` (the
    inexactness is tolerated rather than guarded against); after a failed iteration the step
    is shrunk once by ``backtrack``.

    Parameters
    ----------
    accuracy : {"adaptive", "geometric", "quadratic", "cubic", "fixed"}, default="adaptive"
        How ``eps`` and ``delta`` are chosen (see above).
    eps0, delta0 : float, default=0.1
        Initial lower-level and adjoint accuracies.
    step0 : float or "auto", default="auto"
        Initial step ``alpha``; ``"auto"`` makes the first trial move of length 1 in
        ``theta`` (``1 / ||z_0||``; a factor ``e`` on a log-penalty), the paper uses 0.1.
    eta : float, default=1e-4
        Parameter of the accuracy and sufficient-decrease tests, in (0, 1).
    tau : float, default=0.5
        Shrink factor of ``eps`` and ``delta`` on a failed test.
    accuracy_growth : float, default=1.05
        Growth factor of ``eps`` and ``delta`` after a successful step (the paper's
        ``nu``).
    backtrack : float, default=0.5
        Shrink factor of the step on a failed decrease test.
    step_growth : float, default=10/9
        Growth factor of the step after a successful one (``step_rule="growth"``).
    step_rule : {"growth", "bb"}, default="growth"
        Step after a successful iteration: the previous one times ``step_growth`` (the
        paper's rule), or the Barzilai-Borwein step ``s.s / s.y`` from the move ``s`` and
        the change ``y`` of the hypergradient (within a factor 10 of the previous step; the
        growth rule when ``s.y <= 0``). The sufficient-decrease test guards both.
    max_backtracks : int, default=10
        Failed decrease tests before ``eps``, ``delta`` shrink.
    max_accuracy_retries : int, default=30
        Failed accuracy tests in a row before the hypergradient is used anyway.
    min_eps : float, default=1e-13
        Floor of ``eps`` and ``delta`` (rounding limits what can be certified).
    inner_solver : {"auto", "fista", "newton-cg"} or callable, default="auto"
        Lower-level solver: ``"auto"`` uses the lower level's own solver when it has one,
        Newton-CG when it offers a dense ``hessian``, FISTA otherwise. A callable
        ``inner_solver(lower, x0, theta, gtol) -> (x, n_iter)`` (or an
        :class:`~mmopt._core.result.InnerSolveResult`, whose ``n_matvec`` is then counted)
        plugs in any solver (for example an mmopt solver on the lower-level problem).
    max_inner_iter : int, default=10000
        Iteration cap of each lower-level solve.
    max_cost : int, optional
        Budget on the total lower-level + CG iterations; the solve stops with status 1 when
        it is spent. It also stops with status 1 when ``eps`` and ``delta`` sit at
        ``min_eps`` and still no step passes (``tol`` below what rounding allows).
    tol : float, default=1e-6
        Stop when the projected hypergradient ``||theta - P(theta - z)||`` is at most ``tol``.
    xtol : float, optional
        With ``step_rule="bb"``, also stop when the next move ``||theta - P(theta - alpha
        z)||`` with the Barzilai-Borwein step ``alpha`` (the secant estimate of the distance
        to the stationary point, from the curvature seen along the last move) is at most
        ``xtol``, once the hypergradient has passed the accuracy test. A tolerance on the
        hyperparameters themselves (for a log-penalty, ``xtol=1e-2`` asks for the penalty to
        about 1%), independent of the scale of the upper-level objective; unlike ``tol`` it
        rests on the secant's curvature estimate, not on a certificate.
    max_iter : int, default=200
        Maximum outer iterations.
    %(callback)s
    %(verbose)s

    Notes
    -----
    The result's ``x`` (also ``theta``) holds the hyperparameters, ``fun`` the computed
    upper-level objective ``mean g_k(x_k) + r(theta)`` at the returned lower-level solutions
    ``x_lower`` (a list, one per instance; ``f`` is within ``fun_error`` of it). Extra
    fields: ``hypergradient``, ``bound`` (its error bound), ``bound_certified``, ``eps``,
    ``delta``, ``step``, and the cost counters ``n_lower_iter``, ``n_hvp``, ``n_cg_iter``,
    ``n_lower_solves``, ``n_backtracks``, ``n_accuracy_retries``. ``history`` records per
    iteration ``eps``, ``delta``, ``step``, ``bound``, ``z_norm``, ``accepted``, and the
    cumulative ``n_lower_iter``, ``n_cg_iter``, ``n_hvp``, ``n_lower_solves`` and ``cost``
    (lower + CG iterations).

    %(references)s

    Examples
    --------
    >>> from mmopt.bilevel import MAID
    >>> from mmopt.bilevel.glm import ridge_cv_problem
    >>> from sklearn.datasets import load_diabetes
    >>> X, y = load_diabetes(return_X_y=True)
    >>> res = MAID(tol=1e-4).solve(ridge_cv_problem(X, y, cv=5))
    >>> bool(res.success), res.bound_certified
    (True, True)
    """

    name = "maid"
    problem_types = (BilevelProblem,)
    residual_covers_x = False
    _options = {
        "accuracy": Param("adaptive", Options(_SCHEDULES)),
        "eps0": Param(0.1, Interval(float, 0, None, closed="neither")),
        "delta0": Param(0.1, Interval(float, 0, None, closed="neither")),
        "step0": Param("auto", Interval(float, 0, None, closed="neither"), Options({"auto"})),
        "eta": Param(1e-4, Interval(float, 0, 1, closed="neither")),
        "tau": Param(0.5, Interval(float, 0, 1, closed="neither")),
        "accuracy_growth": Param(1.05, Interval(float, 1, None)),
        "backtrack": Param(0.5, Interval(float, 0, 1, closed="neither")),
        "step_growth": Param(10.0 / 9.0, Interval(float, 1, None)),
        "step_rule": Param("growth", Options({"growth", "bb"})),
        "max_backtracks": Param(10, Interval(int, 0, None)),
        "max_accuracy_retries": Param(30, Interval(int, 0, None)),
        "min_eps": Param(1e-13, Interval(float, 0, None)),
        "inner_solver": Param("auto", Options(_INNER), callable),
        "max_inner_iter": Param(10_000, Interval(int, 1, None)),
        "max_cost": Param(None, Interval(int, 1, None), None),
        "xtol": Param(None, Interval(float, 0, None), None),
        "max_iter": Param(200),
    }

    # ------------------------------------------------------------------ the shared loop
    def _should_stop(self, problem, state: _MAIDState):
        """Stop with status 1 when the cost budget is spent or no step can pass any more."""
        run = state.run
        if self.max_cost is not None and run.cost["cost"] >= self.max_cost:
            return Status.MAX_ITER, "Cost budget (max_cost) spent before convergence."
        if run.stalled:
            return Status.MAX_ITER, (
                "Stalled: no step passes the decrease test at the accuracy floor (min_eps); "
                "tol is below what floating point can certify."
            )
        return None

    def _validate_theta(self, problem, x0):
        if x0 is None:
            return np.array(problem.theta0)
        theta = check_array(x0, "x0", ndim=(0, 1)).reshape(-1)
        if theta.shape != problem.theta0.shape:
            raise ValueError(
                f"x0 must have shape {problem.theta0.shape} (one entry per hyperparameter), "
                f"got {theta.shape}."
            )
        return problem.project(np.array(theta))

    def _init_state(self, problem, x0) -> _MAIDState:
        run = _MAIDRun()
        theta = self._validate_theta(problem, x0)
        state = _MAIDState(
            x=theta,
            run=run,
            fun=np.inf,
            eps=float(self.eps0),
            delta=float(self.delta0),
            step=1.0 if self.step0 == "auto" else float(self.step0),
            qs=[np.zeros_like(np.asarray(low.x0, dtype=float)) for low in problem.lowers],
        )
        if self.accuracy != "adaptive":
            state.eps, state.delta = self._scheduled(0)
        starts = [np.array(low.x0, dtype=float) for low in problem.lowers]
        evaluation = self._evaluate(run, problem, theta, starts, state.eps, chain=True)
        state = self._hypergradient_with_test(problem, state, evaluation)
        if self.step0 == "auto":
            # A first trial move of length 1 in theta: a factor e on a log-penalty.
            z_norm = float(np.linalg.norm(state.z))
            state.step = 1.0 / z_norm if z_norm > 0 else 1.0
            state.record["step"] = state.step
        return state

    def _scheduled(self, k):
        """``(eps, delta)`` of the a-priori schedules, or ``(None, None)`` when adaptive."""
        factor = {
            "adaptive": None,
            "geometric": 0.9**k,
            "quadratic": 1.0 / (k + 1) ** 2,
            "cubic": 1.0 / (k + 1) ** 3,
            "fixed": 1.0,
        }[self.accuracy]
        if factor is None:
            return None, None
        return max(self.eps0 * factor, self.min_eps), max(self.delta0 * factor, self.min_eps)

    def _step(self, problem, state: _MAIDState) -> _MAIDState:
        theta, old, z, run = state.x, state.evaluation, state.z, state.run
        adaptive = self.accuracy == "adaptive"
        eps = state.eps
        # MAID compares an upper bound of the new value with a lower bound of the old one;
        # HOAG's lenient test compares the other way round (tolerating the inexactness).
        sign = 1.0 if adaptive else -1.0
        # MAID's values: with the adjoints' dual-weighted residual correction, whose error
        # is second order in eps (the plain values' slack ||grad g|| eps is first order).
        corrected = adaptive and old.corrected is not None
        old_fun, old_slack = (old.corrected, old.corrected_slack) if corrected else (
            old.fun, old.slack)
        lower_old = old_fun - sign * old_slack

        def trial(step):
            """``(outcome, theta_new, evaluation, adjoints, shrink)`` at step ``step``."""
            theta_new = problem.project(theta - step * z)
            move = theta_new - theta
            if not move.any():
                return "no move", theta_new, None, None, self.tau
            x_starts, q_starts = self._predict(state, move)
            new = self._evaluate(run, problem, theta_new, x_starts, eps)
            new_fun, new_slack, trial_qs = new.fun, new.slack, None
            if corrected:
                # The adjoints at the trial point (warm-started): needed for the next
                # hypergradient anyway when the step passes.
                trial_qs = self._hypergradient(run, problem, new, q_starts, state.delta)[2]
                new_fun, new_slack = new.corrected, new.corrected_slack
            upper_new = new_fun + sign * new_slack
            # Differences below the rounding of the values cannot be resolved.
            rounding = 8 * np.finfo(float).eps * max(abs(new_fun), abs(old_fun))
            target = -(self.eta / step) * float(move @ move) + rounding
            if upper_new - lower_old <= target:
                return "accepted", theta_new, new, trial_qs, self.tau
            if adaptive and new_fun - old_fun <= target:
                # The computed values pass and only the slack of the bounds fails the test:
                # a shorter step cannot fix that (it only asks for more decrease relative to
                # the slack). Tighten eps and delta instead, by the factor the slack is off
                # (slack is about linear in eps), and keep this step.
                slack = new_slack + old_slack
                shrink = self.tau
                if slack > 0:
                    shrink = max(min(self.tau, 0.5 * (target - (new_fun - old_fun)) / slack),
                                 1e-3)
                return "slack", theta_new, new, trial_qs, shrink
            return "rejected", theta_new, new, trial_qs, self.tau

        # Backtracking ends on an accepted step, or early when shortening cannot help (no
        # move left, or only the slack fails).
        search = backtracking(trial, lambda step, t: t[0] != "rejected", step=state.step,
                              shrink=self.backtrack, max_trials=self.max_backtracks + 1)
        run.cost["n_backtracks"] += search.n_trials - 1
        step = search.step
        outcome, theta_new, new, trial_qs, shrink = search.trial
        accepted = outcome == "accepted"
        if accepted:
            growth = self.accuracy_growth
            next_state = _MAIDState(
                x=theta_new, fun=new.fun, qs=trial_qs if corrected else state.qs,
                run=run, outer=state.outer + 1,
                eps=max(eps * growth, self.min_eps) if adaptive else eps,
                delta=max(state.delta * growth, self.min_eps) if adaptive else state.delta,
                step=step * self.step_growth, previous=old,
                jac_x=state.jac_x, jac_q=state.jac_q,
            )
            evaluation = new
        else:
            if adaptive and eps <= self.min_eps and state.delta <= self.min_eps:
                # The accuracy floor is reached and still no step passes: nothing more can
                # be certified in floating point.
                run.stalled = True
            # No step passed: the bounds are too loose (adaptive), or the step too long.
            # Shrink from the accuracies reached (often far below the ones asked for after
            # a run of successes): shrinking only the requests would re-solve nothing and
            # fail the same test again.
            reached_eps = min(eps, float(old.errors.max()))
            reached_delta = state.delta if old.adjoint_residual is None else min(
                state.delta, old.adjoint_residual)
            next_state = _MAIDState(
                x=theta, fun=old.fun, qs=state.qs, run=run, outer=state.outer + 1,
                eps=max(reached_eps * shrink, self.min_eps) if adaptive else eps,
                delta=max(reached_delta * shrink, self.min_eps) if adaptive else state.delta,
                # Adaptive: the bounds were too loose (or the step, shortened above until
                # only the slack failed). Schedules: the step shrinks once per failed
                # iteration (HOAG's L *= 2), not by every backtrack.
                step=step if adaptive and shrink != self.tau else (
                    state.step if adaptive else state.step * self.backtrack),
                previous=state.previous, jac_x=state.jac_x, jac_q=state.jac_q,
            )
            evaluation = old
        if not adaptive:
            next_state.eps, next_state.delta = self._scheduled(next_state.outer)
        next_state = self._hypergradient_with_test(problem, next_state, evaluation)
        if accepted:
            self._broyden(next_state, state, theta_new - theta)
        if accepted and self.step_rule == "bb":
            # Barzilai-Borwein: the step that fits the curvature seen along the move (the
            # secant, a Newton step in one dimension), kept within a factor 10 of the step
            # that passed; the decrease test still guards every trial.
            s_move, y_change = theta_new - theta, next_state.z - z
            sy = float(s_move @ y_change)
            if sy > 0:
                next_state.step = min(max(float(s_move @ s_move) / sy, 0.1 * step), 10 * step)
                next_state.record["step"] = next_state.step
                if self.xtol is not None and self._secant_converged(problem, next_state):
                    next_state.record["accepted"] = 1.0
                    raise StopSolve(
                        Status.CONVERGED,
                        "Converged: the secant estimate of the distance to the stationary "
                        "point fell below xtol.",
                        next_state,
                    )
        next_state.record["accepted"] = float(accepted)
        return next_state

    def _secant_converged(self, problem, state) -> bool:
        """The next (Barzilai-Borwein) move is at most ``xtol`` and its direction is
        trustworthy (the hypergradient passed the accuracy test)."""
        z = state.z
        if not state.bound <= (1 - self.eta) * float(np.linalg.norm(z)):
            return False
        move = problem.project(state.x - state.step * z) - state.x
        return float(np.linalg.norm(move)) <= self.xtol

    def _broyden(self, new_state, old_state, move) -> None:
        """Broyden's update of the estimates of ``dx_k*/dtheta`` and ``dq_k/dtheta`` from
        the accepted ``move`` (``J += (dx - J move) move^T / |move|^2``: the secant along
        the move, unchanged across it), for the next warm starts. Kept for a few
        hyperparameters only (an ``n x m`` matrix per instance)."""
        m = move.size
        norm2 = float(move @ move)
        if m > _BROYDEN_MAX or norm2 == 0:
            return
        new_xs, old_xs = new_state.evaluation.xs, old_state.evaluation.xs
        pairs = (("jac_x", new_xs, old_xs), ("jac_q", new_state.qs, old_state.qs))
        for name, news, olds in pairs:
            jacs = getattr(old_state, name)
            if jacs is None:
                jacs = [np.zeros((np.size(v), m)) for v in olds]
            updated = []
            for jac, v_new, v_old in zip(jacs, news, olds):
                miss = (v_new - v_old) - jac @ move
                updated.append(jac + np.outer(miss, move / norm2))
            setattr(new_state, name, updated)

    @staticmethod
    def _predict(state, move):
        """Warm starts at ``theta + move``: the lower-level solutions and the adjoints
        extrapolated to first order, with the tangents (one hyperparameter, a lower level
        with ``jvp_theta``) or the Broyden estimates of their derivatives in ``theta``
        (a few hyperparameters), otherwise along the previous accepted move (a secant
        estimate applied to the part of ``move`` parallel to it); the current ones when
        there is no estimate yet."""
        old, previous = state.evaluation, state.previous
        if state.jac_x is not None:
            xs = [x + jac @ move for x, jac in zip(old.xs, state.jac_x)]
            qs = [q + jac @ move for q, jac in zip(state.qs, state.jac_q)]
        elif previous is None or previous.qs is None:
            xs, qs = old.xs, state.qs
        else:
            xs, qs = MAID._secant(old, previous, state, move)
        if old.ts is not None and move.size == 1:
            # First order: dx*/dtheta = -A^-1 B = -t.
            xs = [x - move[0] * t for x, t in zip(old.xs, old.ts)]
        return xs, qs

    @staticmethod
    def _secant(old, previous, state, move):
        last = old.theta - previous.theta
        norm2 = float(last @ last)
        if norm2 == 0:
            return old.xs, state.qs
        c = min(max(float(move @ last) / norm2, -4.0), 4.0)
        xs = [x + c * (x - x_prev) for x, x_prev in zip(old.xs, previous.xs)]
        qs = [q + c * (q - q_prev) for q, q_prev in zip(state.qs, previous.qs)]
        return xs, qs

    # --------------------------------------------------------------------- the oracle
    def hypergradient(self, problem, theta, *, eps: float = 1e-10, delta: float = 1e-10):
        """The inexact oracle at ``theta``: lower levels to accuracy ``eps`` (from their
        default starts), adjoints to residual ``delta``.

        Returns
        -------
        HypergradientEstimate
            A named tuple ``(z, bound, fun, x_lower, certified)``: the hypergradient
            estimate, its a-posteriori error bound, the computed objective
            ``mean g_k(x_k) + r(theta)``, the lower-level solutions, and whether the bound is
            certified (the solver object is not changed, so one instance serves many
            threads).

        Examples
        --------
        >>> from sklearn.datasets import load_diabetes
        >>> from mmopt.bilevel import MAID
        >>> from mmopt.bilevel.glm import ridge_cv_problem
        >>> X, y = load_diabetes(return_X_y=True)
        >>> z, bound, fun, _, certified = MAID().hypergradient(ridge_cv_problem(X, y),
        ...                                                   np.zeros(1))
        >>> bool(bound < 1e-6 * np.linalg.norm(z)), certified
        (True, True)
        """
        self._validate_params()
        self.check_problem(problem)
        run = _MAIDRun()
        theta = self._validate_theta(problem, theta)
        starts = [np.array(low.x0, dtype=float) for low in problem.lowers]
        evaluation = self._evaluate(run, problem, theta, starts, float(eps), chain=True)
        qs = [np.zeros_like(x) for x in starts]
        z, bound, _, _ = self._hypergradient(run, problem, evaluation, qs, float(delta),
                                             directional=True)
        return HypergradientEstimate(z, bound, evaluation.fun, evaluation.xs,
                                     bool(run.certified))

    def _hypergradient_with_test(self, problem, state, evaluation) -> _MAIDState:
        """Hypergradient at ``state.x``; in adaptive mode, tighten until the accuracy test
        ``bound <= (1 - eta) ||z||`` passes (at most ``max_accuracy_retries`` times)."""
        theta, run = state.x, state.run
        adaptive = self.accuracy == "adaptive"
        for retry in range(self.max_accuracy_retries + 1):
            if evaluation.errors.max() > state.eps * (1 + 1e-12):
                evaluation = self._evaluate(run, problem, theta, evaluation.xs, state.eps)
            z, bound, qs, reached = self._hypergradient(
                run, problem, evaluation, state.qs, state.delta
            )
            z_norm = float(np.linalg.norm(z))
            needed = (1 - self.eta) * z_norm
            if adaptive and bound > needed and bound - run.bound_from_change < needed:
                # The sharper bound along the Newton correction, where the plain one fails
                # because of the Hessian's change (the part it sharpens) and would pass
                # without it; the adjoints are warm-started at their solutions (no CG
                # iterations).
                z, bound, qs, reached = self._hypergradient(
                    run, problem, evaluation, qs, state.delta, directional=True)
                z_norm = float(np.linalg.norm(z))
            state.qs = qs
            if not adaptive or bound <= (1 - self.eta) * z_norm:
                break
            projected = float(np.linalg.norm(theta - problem.project(theta - z)))
            if projected + bound <= self.tol:
                # Certified convergence: the true projected hypergradient is at most
                # projected + bound <= tol (the projection is non-expansive), so no step
                # is needed and no more accuracy either.
                break
            # A side is done when its solver cannot reach the accuracy asked for (rounding)
            # or sits at the floor: asking it for more would only burn iterations.
            lower_done = (evaluation.errors.max() > state.eps * (1 + 1e-12)
                          or state.eps <= self.min_eps)
            adjoint_done = not reached or state.delta <= self.min_eps
            if lower_done and adjoint_done:
                break
            if retry < self.max_accuracy_retries:
                run.cost["n_accuracy_retries"] += 1
                # The bound is about linear in eps and delta: shrink by tau, or at once by
                # the factor the bound says is missing (with a margin), whichever is smaller.
                # Enough for either test: the accuracy test, or certified convergence.
                factor_eps = factor_delta = self.tau
                if bound > 0 and z_norm > 0:
                    needed = (1 - self.eta) * z_norm
                    if projected < self.tol:
                        needed = max(needed, self.tol - projected)
                    # Half of what is needed for each side, from its own part of the bound:
                    # a side already well below its half is not asked for more.
                    parts = {"delta": run.bound_from_adjoint}
                    parts["eps"] = max(bound - parts["delta"], 0.0)
                    factors = {
                        side: 1.0 if part <= 0.5 * needed
                        else max(min(self.tau, 0.25 * needed / part), 1e-6)
                        for side, part in parts.items()
                    }
                    if factors["eps"] == factors["delta"] == 1.0:
                        factors = dict.fromkeys(factors, self.tau)  # rounding: both
                    factor_eps, factor_delta = factors["eps"], factors["delta"]
                # From the accuracy reached (often below the one asked for): shrinking only
                # the request would re-solve nothing.
                if not lower_done and factor_eps < 1:
                    reached_eps = min(state.eps, float(evaluation.errors.max()))
                    state.eps = max(reached_eps * factor_eps, self.min_eps)
                if not adjoint_done and factor_delta < 1:
                    state.delta = max(state.delta * factor_delta, self.min_eps)
        state.evaluation, state.z, state.bound = evaluation, z, bound
        state.fun = evaluation.fun
        state.residual = float(np.linalg.norm(theta - problem.project(theta - z)))
        state.record.update(
            eps=state.eps, delta=state.delta, step=state.step, bound=bound, z_norm=z_norm,
            **{k: float(v) for k, v in run.cost.items() if k.startswith("n_") or k == "cost"},
        )
        return state

    def _inner(self, lower, x0, theta, gtol) -> InnerSolveResult:
        method = self.inner_solver
        if callable(method):
            out = method(lower, x0, theta, gtol)
            if isinstance(out, InnerSolveResult):
                return out
            x, nit = out
            x = np.asarray(x, dtype=float)
            norm = float(np.linalg.norm(lower.grad_x(x, theta)))
            return InnerSolveResult(x, int(nit), 0, norm, norm <= gtol)
        if method == "auto":
            custom = getattr(lower, "custom_solver", None)
            if custom is not None:
                x, nit = custom(x0, theta, gtol)
                x = np.asarray(x, dtype=float)
                norm = float(np.linalg.norm(lower.grad_x(x, theta)))
                return InnerSolveResult(x, int(nit), 0, norm, norm <= gtol)
            method = getattr(lower, "inner_solver_hint", None) or (
                "newton-cg" if callable(getattr(lower, "hessian", None)) else "fista"
            )
        solver = newton_cg if method == "newton-cg" else fista
        return solver(lower, x0, theta, gtol, max_iter=self.max_inner_iter)

    def _evaluate(self, run, problem, theta, starts, eps, *, chain=False) -> _Evaluation:
        """Solve every lower level at ``theta`` to accuracy ``eps`` from ``starts``; with
        ``chain`` (cold starts), each instance starts from the previous one's solution
        instead (cross-validation folds have similar solutions)."""
        xs, errors, moduli, values, grads, residuals = [], [], [], [], [], []
        slack = 0.0
        for k, (lower, upper) in enumerate(zip(problem.lowers, problem.uppers)):
            mu = BilevelProblem.check_mu(lower.mu(theta), k)
            start = starts[k]
            if chain and k > 0 and np.shape(xs[-1]) == np.shape(start):
                start = xs[-1]
            # The curvature certified last time (below mu with an intercept) sets the
            # stopping test, so that one solve usually certifies eps.
            hint = min(run.modulus_hints.get(k, mu), mu)
            out = self._solve_lower(run, lower, start, theta, hint * eps)
            modulus, error = self._certify(run, lower, out, theta, mu, k)
            # A local modulus below mu (an unpenalized intercept) certifies less than the
            # stopping test assumed, or nothing yet when the ball it needs is too large:
            # continue from the point reached until it certifies eps.
            for _ in range(8):
                if error <= eps * (1 + 1e-12) or not out.converged:
                    break
                gtol = 0.5 * modulus * eps if math.isfinite(error) else 0.1 * out.residual
                out = self._solve_lower(run, lower, out.x, theta, gtol)
                modulus, error = self._certify(run, lower, out, theta, mu, k)
            if not math.isfinite(error):
                # No certificate: the global mu is only a heuristic here.
                run.certified = False
                modulus, error = mu, out.residual / mu
            value, grad = upper.value(out.x), upper.grad(out.x)
            L_g = upper.L_g
            if L_g is None:
                run.certified, L_g = False, 0.0
            slack += float(np.linalg.norm(grad)) * error + 0.5 * L_g * error**2
            xs.append(out.x)
            errors.append(error)
            residuals.append(out.residual)
            moduli.append(modulus)
            values.append(value)
            grads.append(grad)
        n = len(xs)
        fun = float(np.mean(values)) + problem.penalty_value(theta)
        return _Evaluation(theta, xs, np.array(errors), np.array(residuals), np.array(moduli),
                           np.array(values), grads, fun, slack / n)

    def _solve_lower(self, run, lower, x0, theta, gtol) -> InnerSolveResult:
        out = self._inner(lower, x0, theta, gtol)
        run.cost["n_lower_iter"] += out.nit
        run.cost["n_hvp"] += out.n_matvec
        run.cost["n_lower_solves"] += 1
        # Every Hessian-vector product of a truncated Newton solve is a CG iteration.
        run.cost["cost"] += out.nit + out.n_matvec
        return out

    def _certify(self, run, lower, out, theta, mu, k=0):
        """``(modulus, error)``: a curvature bound valid on a ball around ``out.x`` that
        holds ``x*``, and the certified distance ``||x - x*|| <= ||grad|| / modulus``.

        With ``m`` a lower bound of the Hessian's eigenvalues on the ball of radius ``R``
        around ``x``, ``t -> Phi(x + t u)`` has a derivative ``>= -||grad|| + m t`` there, so
        ``||grad|| <= m R`` puts the minimizer within ``||grad|| / m`` of ``x``.
        """
        norm = out.residual
        global_valid = getattr(lower, "mu_certified", True)
        radius = 2.0 * norm / min(run.modulus_hints.get(k, mu), mu)
        for _ in range(3):
            local = lower.local_mu(out.x, theta, radius)
            if local is None or (global_valid and local <= mu):
                break  # nothing sharper than the global bound
            if local > 0 and norm <= local * radius:
                run.modulus_hints[k] = local
                return local, norm / local
            # The curvature near x is below half of mu: look again on a larger ball.
            radius = 2.0 * norm / local if local > 0 else 10.0 * radius
        else:
            if not global_valid:
                return mu, math.inf  # solve more accurately: a smaller ball may certify
        if not global_valid and local is None:
            run.certified = False
        return mu, norm / mu

    def _hypergradient(self, run, problem, evaluation, q_starts, delta, *, directional=False):
        """``z``, its error bound, and the adjoint solutions (warm starts for next time).

        With ``directional``, the changes of ``A`` and ``B`` between ``x`` and ``x*`` are
        also bounded along the Newton correction where they dominate the bound (see
        :meth:`_newton_correction`): a few more CG iterations for a much sharper bound.
        """
        theta = evaluation.theta
        z = np.zeros_like(theta)
        bound = 0.0
        qs = []
        reached = True
        ts, residuals = [], []
        correction = corrected_slack = from_adjoint = from_change = 0.0
        for k, (lower, upper) in enumerate(zip(problem.lowers, problem.uppers)):
            x, grad, e = evaluation.xs[k], evaluation.grads[k], evaluation.errors[k]
            mu = evaluation.moduli[k]
            q_start = q_starts[k]
            if k > 0 and not q_start.any() and qs[-1].shape == q_start.shape:
                q_start = qs[-1]  # a cold start: the previous instance's adjoint is closer
            inv_diag = _inverse_diagonal(lower, x, theta)
            cg = conjugate_gradient(
                lambda v, lower=lower, x=x: lower.hvp_xx(x, theta, v), grad, q_start, delta,
                inv_diag=inv_diag,
            )
            run.cost["n_cg_iter"] += cg.nit
            run.cost["n_hvp"] += cg.n_matvec
            run.cost["cost"] += cg.nit
            reached = reached and cg.converged
            residuals.append(cg.residual)
            q = cg.x
            z_k = -lower.vjp_theta(x, theta, q)
            z += z_k
            qs.append(q)
            # Constants of the bound; a missing one is estimated and the bound not certified.
            L_g = upper.L_g
            L_B = lower.cross_lipschitz(theta)
            norm_B = lower.cross_norm(x, theta)
            q_norm = float(np.linalg.norm(q))
            # ||(A(x*) - A(x)) q||, from the lower level or from the Hessian's Lipschitz
            # constant.
            gn = evaluation.residuals[k]
            change = _segment_change(lower.hessian_change, x, theta, q, e, gn)
            if change is None:
                L_A = lower.hessian_lipschitz(theta)
                if L_A is None:
                    run.certified, L_A = False, 0.0
                change = L_A * e * q_norm
            if None in (L_g, L_B, norm_B):
                run.certified = False
            L_g, L_B = L_g or 0.0, L_B or 0.0
            if norm_B is None:
                norm_B = float(np.linalg.norm(z_k)) / q_norm if q_norm > 0 else 0.0
            # q - q* = A*^{-1} rho with rho = A* q - g* = (A* - A) q + (A q - grad g(x))
            # + (grad g(x) - grad g(x*)), ||rho|| <= R.
            R = cg.residual + L_g * e + change
            e_q = R / mu
            # B*^T q* - B^T q = B^T (q* - q) + (B* - B)^T q + (B* - B)^T (q* - q), and
            # |B^T (q* - q)| = |(A*^{-1} B)^T rho| <= min(||B|| / mu, ||A*^{-1} B||) R.
            gain = norm_B / mu
            if theta.size == 1:
                t, t_bound = self._tangent(run, lower, x, theta, mu, e, k, inv_diag, gn)
                ts.append(t)
                gain = min(gain, t_bound)
            cross = _segment_change(lower.cross_change, x, theta, q, e, gn)
            if cross is None:
                cross = L_B * e * q_norm
            # The slack of the corrected value needs the change on the whole segment.
            segment_change = change
            if directional and e > 0 and change > cg.residual + L_g * e:
                newton = self._newton_correction(run, lower, x, theta, e, gn, mu, inv_diag)
                if newton is not None:
                    d, e_newton = newton
                    change = min(change, self._endpoint_change(
                        run, lower, x, theta, q, d, e_newton, lower.hvp_xx, lower.hessian_change,
                        lower.hessian_lipschitz))
                    cross = min(cross, self._endpoint_change(
                        run, lower, x, theta, q, d, e_newton, lower.vjp_theta, lower.cross_change,
                        lower.cross_lipschitz))
                    R = cg.residual + L_g * e + change
                    e_q = R / mu
            bound += gain * R + cross + L_B * e * e_q
            from_change += (gain + L_B * e / mu) * change + cross
            # The part due to the adjoint residual (the rest is due to the lower level).
            from_adjoint += (gain + L_B * e / mu) * cg.residual
            # g(x*) = g(x) - q . grad_x Phi(x) + ((A - Abar) q - res) . (x* - x) + O(L_g e^2),
            # with grad_x Phi(x) = Abar (x - x*), Abar the mean Hessian on the segment.
            correction += float(q @ lower.grad_x(x, theta))
            corrected_slack += (cg.residual + segment_change) * e + 0.5 * L_g * e * e
        n = len(qs)
        z = z / n + problem.penalty_grad(theta)
        evaluation.corrected = evaluation.fun - correction / n
        evaluation.corrected_slack = corrected_slack / n
        evaluation.qs = qs
        evaluation.adjoint_residual = max(residuals)
        evaluation.ts = ts if len(ts) == n and all(t is not None for t in ts) else None
        run.bound_from_adjoint = from_adjoint / n
        run.bound_from_change = from_change / n
        return z, bound / n, qs, reached

    def _newton_correction(self, run, lower, x, theta, e, grad_norm, mu, inv_diag):
        """``(d, e_d)``: the Newton correction ``d ~ A^-1 grad_x Phi(x)`` (CG to 30% of the
        gradient: a rough ``d`` suffices, the rest is certified) and a certified bound
        ``e_d >= ||x - d - x*||``, or None when the Hessian's change cannot be bounded.

        ``x - x* = Abar^-1 grad_x Phi(x)`` (``Abar`` the mean Hessian on the segment, at
        least ``m``), so ``x - d - x* = Abar^-1 ((grad_x Phi(x) - A d) + (A - Abar) d)``:
        ``e_d = (||grad_x Phi(x) - A d|| + c(d)) / m``, second order in ``e``. The changes of
        ``A`` and ``B`` from ``x`` to ``x*`` are then measured along ``d`` and bounded only
        on the small ball of radius ``e_d`` around ``x - d`` (:meth:`_endpoint_change`),
        instead of over the whole ball of radius ``e``, where the worst case (a move
        concentrated where the Hessian changes fastest) is far from the actual error.
        """
        g = lower.grad_x(x, theta)
        matvec = lambda v: lower.hvp_xx(x, theta, v)  # noqa: E731
        cg = conjugate_gradient(matvec, g, np.zeros_like(g), 0.3 * grad_norm, max_iter=20,
                                inv_diag=inv_diag)
        run.cost["n_cg_iter"] += cg.nit
        run.cost["n_hvp"] += cg.n_matvec + 1
        run.cost["cost"] += cg.nit
        d = cg.x
        residual = float(np.linalg.norm(g - matvec(d)))  # the true residual, certified
        change = _segment_change(lower.hessian_change, x, theta, d, e, grad_norm)
        if change is None:
            L_A = lower.hessian_lipschitz(theta)
            if L_A is None:
                return None
            change = L_A * e * float(np.linalg.norm(d))
        return d, (residual + change) / mu

    def _endpoint_change(self, run, lower, x, theta, v, d, radius, apply, change, lipschitz):
        """Bound on ``||M(x*) v - M(x) v||`` (``M`` = ``A`` with ``apply=hvp_xx``, or
        ``B^T`` with ``vjp_theta``) from ``||x - d - x*|| <= radius``: the change to ``x - d``
        computed, plus the bound of the change on the ball around it."""
        y = x - d
        direct = float(np.linalg.norm(apply(y, theta, v) - apply(x, theta, v)))
        if apply == lower.hvp_xx:
            run.cost["n_hvp"] += 2
        rest = change(y, theta, v, radius) if radius > 0 else 0.0
        if rest is None:
            constant = lipschitz(theta)
            if constant is None:
                return math.inf
            rest = constant * radius * float(np.linalg.norm(v))
        return direct + rest

    def _tangent(self, run, lower, x, theta, mu, e, k, inv_diag, grad_norm):
        """``(t, T)``: the tangent ``t ~ A^-1 b`` (``b = B``, one hyperparameter; ``-t`` is
        ``dx*/dtheta``) by warm-started CG, and a certified bound ``T >= ||A*^-1 b||``, or
        ``(None, inf)`` when the lower level offers no ``jvp_theta``.

        With ``s = b - A t``: ``A*^-1 b = t + A*^-1 (s + (A - A*) t)``, so ``||A*^-1 b|| <=
        ||t|| + (||s|| + c(t)) / m`` (``c`` the bound on the Hessian's change, ``m`` the
        certified curvature). CG runs until the residual's share is at most a quarter of
        ``||t||``: a rough ``t`` suffices.
        """
        b = lower.jvp_theta(x, theta, np.ones(1))
        if b is None:
            return None, math.inf
        b = np.asarray(b, dtype=float)
        start = run.tangents.get(k)
        if start is None or start.shape != b.shape:
            start = np.zeros_like(b)
        matvec = lambda v: lower.hvp_xx(x, theta, v)  # noqa: E731
        tol = 0.25 * mu * float(np.linalg.norm(start)) if start.any() else 0.1 * float(
            np.linalg.norm(b))
        for _ in range(3):
            cg = conjugate_gradient(matvec, b, start, tol, inv_diag=inv_diag)
            run.cost["n_cg_iter"] += cg.nit
            run.cost["n_hvp"] += cg.n_matvec
            run.cost["cost"] += cg.nit
            start = cg.x
            t_norm = float(np.linalg.norm(start))
            if cg.residual <= 0.5 * mu * t_norm or not cg.converged:
                break
            tol = 0.25 * mu * t_norm
        run.tangents[k] = start
        change = _segment_change(lower.hessian_change, x, theta, start, e, grad_norm)
        if change is None:
            L_A = lower.hessian_lipschitz(theta)
            if L_A is None:
                return start, math.inf
            change = L_A * e * t_norm
        return start, t_norm + (cg.residual + change) / mu

    def _result_fields(self, problem, state) -> dict:
        evaluation, run = state.evaluation, state.run
        return {
            "theta": state.x,
            "x_lower": evaluation.xs,
            "fun_error": evaluation.slack,
            "hypergradient": state.z,
            "bound": state.bound,
            "bound_certified": bool(run.certified),
            "eps": state.eps,
            "delta": state.delta,
            "step": state.step,
            **{k: int(v) for k, v in run.cost.items()},
        }
