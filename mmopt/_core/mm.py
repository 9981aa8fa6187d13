"""Majorization-minimization: the problem protocol and the solver, with safeguarded
Anderson acceleration.

Here in ``_core`` (and re-exported by :mod:`mmopt.mm`) because other families build on
them: SP²OT (:mod:`mmopt.ot.sp2ot`) is an :class:`MMProblem` solved by :class:`MMSolver`,
and families import each other only through ``_core``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mmopt._core._docstrings import SOLVER_PARAMS, fill_doc
from mmopt._core.anderson import (
    ANDERSON_OPTION,
    AndersonAcceleration,
    anderson_counts,
    make_accelerator,
)
from mmopt._core.params import Options, Param
from mmopt._core.problem import Problem
from mmopt._core.registry import register_solver
from mmopt._core.solver import Solver, SolverState
from mmopt._core.validation import check_array, check_callable

__all__ = ["MMProblem", "MMSolver"]


class MMProblem(Problem):
    """A problem solvable by majorization-minimization.

    To minimize ``F``, MM builds at ``x`` a surrogate ``Q(.|x) >= F`` that touches ``F`` at
    ``x`` and moves to its minimizer ``G(x) = argmin Q(.|x)``; ``F`` then never increases.
    The problem supplies ``F`` (:meth:`objective`) and ``G`` (:meth:`surrogate_minimizer`),
    either as callables given here or by overriding the methods in a subclass (as the built-in
    problems do). Iterates are flat float vectors.

    Parameters
    ----------
    objective : callable ``objective(x) -> float``
        The function ``F`` to minimize.
    surrogate_minimizer : callable ``surrogate_minimizer(x) -> ndarray``
        ``G(x)``, the minimizer of the majorizer built at ``x``; same shape as ``x``.
    x0 : array-like of shape (d,)
        Default starting point.
    project : callable ``project(x) -> ndarray``, optional
        Maps an extrapolated (Anderson) point back into the domain of ``F`` (for example
        clipping to the non-negative orthant). Identity when None.

    Notes
    -----
    Subclasses may also override :meth:`mm_step`, which returns ``(G(x), F(x))`` together:
    most MM problems compute ``F(x)`` almost for free while building the surrogate at ``x``
    (the residuals of IRLS, the products of NMF), and the solver only ever asks for both.
    It may return a third element, ``(||G(x) - x||^2, ||x||^2)``, when it gets those in the
    same pass; the solver then skips reading both vectors again for its stopping test.

    Examples
    --------
    Minimize ``F(x) = sum(log(cosh(x - 2)))`` with the quadratic majorizer of curvature 1:

    >>> from mmopt.mm import MMProblem
    >>> problem = MMProblem(
    ...     objective=lambda x: float(np.sum(np.log(np.cosh(x - 2.0)))),
    ...     surrogate_minimizer=lambda x: x - np.tanh(x - 2.0),
    ...     x0=np.zeros(3),
    ... )
    >>> res = problem.solve(tol=1e-10)
    >>> np.round(res.x, 6)
    array([2., 2., 2.])
    """

    default_solver = "mm"

    def __init__(
        self,
        objective: Callable[[np.ndarray], float],
        surrogate_minimizer: Callable[[np.ndarray], np.ndarray],
        x0,
        *,
        project: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self._objective = check_callable(objective, "objective", allow_none=False)
        self._surrogate_minimizer = check_callable(
            surrogate_minimizer, "surrogate_minimizer", allow_none=False
        )
        self._project = check_callable(project, "project")
        self.x0 = check_array(x0, "x0", ndim=1)

    def objective(self, x: np.ndarray) -> float:
        """Return ``F(x)``."""
        value = self._objective(x)
        if isinstance(value, bool) or not isinstance(value, numbers.Real | np.ndarray):
            raise TypeError(
                f"objective must return a real number, got {type(value).__name__}."
            )
        if np.ndim(value) != 0 and np.size(value) != 1:
            raise TypeError(
                f"objective must return a scalar, got an array of shape {np.shape(value)}."
            )
        return float(np.asarray(value).reshape(()))

    def surrogate_minimizer(self, x: np.ndarray) -> np.ndarray:
        """Return ``G(x)``, the minimizer of the majorizer of ``F`` built at ``x``."""
        return _as_iterate(self._surrogate_minimizer(x), "surrogate_minimizer", x)

    def project(self, x: np.ndarray) -> np.ndarray:
        """Map an extrapolated point back into the domain (identity by default)."""
        if getattr(self, "_project", None) is None:
            return x
        return _as_iterate(self._project(x), "project", x)

    def mm_step(self, x: np.ndarray) -> tuple:
        """Return ``(G(x), F(x))``; override to share work between the two.

        An override may append ``(||G(x) - x||^2, ||x||^2)`` as a third element.
        """
        return self.surrogate_minimizer(x), self.objective(x)

    def initial_point(self) -> np.ndarray:
        """The default starting point."""
        return self.x0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(d={np.size(self.initial_point())})"


def _as_iterate(value, name: str, x: np.ndarray) -> np.ndarray:
    """A user callable's output as a float vector shaped like ``x``, or an error naming it."""
    if value is None:
        raise TypeError(f"{name} must return an array shaped like x, got None.")
    try:
        out = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must return an array of real numbers, got {type(value).__name__}."
        ) from None
    if out.shape != np.shape(x):
        raise ValueError(
            f"{name}: the surrogate minimizer returned shape {out.shape} for an iterate of "
            f"shape {np.shape(x)}."
        )
    return out



class _MMRun:
    """What one solve carries besides the iterate: counts, the accelerator, a work buffer.

    Made by ``_init_state`` and shared by the states of that solve only, so that the solver
    object keeps nothing but its options and can serve several threads at once.
    """

    def __init__(self, anderson: AndersonAcceleration | None):
        self.anderson = anderson
        self.n_evaluations = 0
        self.work: np.ndarray | None = None
        # Squared lengths of the last plain step and iterate, when the problem got them free.
        self.norms = None


@dataclass
class _MMState(SolverState):
    # G(x) at the current iterate: the plain step, and the fallback when an extrapolated
    # point is rejected.
    plain_step: np.ndarray | None = None
    run: _MMRun | None = None


@register_solver
@fill_doc(SOLVER_PARAMS)
class MMSolver(Solver):
    """Majorization-minimization with optional safeguarded Anderson acceleration.

    Iterates ``x <- G(x)`` where ``G`` is the problem's surrogate minimizer. With Anderson
    acceleration on, the iterate is instead extrapolated by type-II Anderson acceleration
    (:class:`mmopt.AndersonAcceleration`) from the last ``memory`` steps, projected with the
    problem's ``project``, and kept only if its objective is no larger than the current one
    (:meth:`mmopt.AndersonAcceleration.safeguarded_step`); otherwise the plain MM step is
    taken and the Anderson history is reset. The objective therefore never increases, with
    or without acceleration.

    Two stopping quantities are offered. ``stopping="step"`` (default) is the relative
    fixed-point residual ``||G(x) - x|| / max(||x||, 1)`` at the current iterate: it bounds
    the error in ``x`` itself. ``stopping="objective"`` is the relative decrease
    ``|F(x_{k-1}) - F(x_k)| / |F(x_k)|`` (``ftol`` in ``scipy.optimize``): free, as ``F`` is
    evaluated anyway, where the residual reads two more full vectors per iteration, but it
    only controls the objective, so ``x`` is accurate to about ``sqrt(tol)``.

    Parameters
    ----------
    anderson : bool or AndersonAcceleration, default=True
        Anderson acceleration: True for the default :class:`mmopt.AndersonAcceleration`
        (memory 5), False for plain MM, or a configured instance (``memory``, ``damping``,
        ``regularization``, ``max_condition``, ``delay``). An instance is a configuration:
        each solve runs with its own fresh copy, so it is never changed by a solve.
    stopping : {"step", "objective"}, default="step"
        Which stopping quantity ``tol`` applies to (see above).
    tol : float, default=1e-6
        Stop when the stopping quantity is at most ``tol``.
    max_iter : int, default=1000
        Maximum number of iterations.
    %(callback)s
    %(verbose)s

    Notes
    -----
    The result's ``fun`` is ``F(x)``. Extra fields: ``n_evaluations`` (calls of the problem's
    ``mm_step``, the unit of cost: a rejected extrapolation costs one more), ``n_accepted`` and
    ``n_rejected`` (Anderson proposals kept / refused). ``history`` also records ``accepted``
    per iteration (1 kept, 0 refused, NaN when no extrapolation was tried) and the cumulative
    ``n_evaluations``.

    References
    ----------
    .. [1] K. Lange, *MM Optimization Algorithms*, SIAM, 2016.
    .. [2] H. F. Walker and P. Ni, "Anderson acceleration for fixed-point iterations",
       *SIAM J. Numer. Anal.* 49(4), 1715-1735, 2011.

    Examples
    --------
    >>> from mmopt.mm import MMProblem, MMSolver
    >>> A = np.diag([1.0, 10.0, 100.0])
    >>> L = 100.0  # curvature of the majorizer: largest eigenvalue of A
    >>> problem = MMProblem(
    ...     objective=lambda x: 0.5 * float(x @ A @ x) - float(x.sum()),
    ...     surrogate_minimizer=lambda x: x - (A @ x - 1.0) / L,
    ...     x0=np.zeros(3),
    ... )
    >>> plain = MMSolver(anderson=False, tol=1e-10, max_iter=10000).solve(problem)
    >>> fast = MMSolver(tol=1e-10).solve(problem)
    >>> bool(fast.nit < plain.nit / 10), np.round(fast.x, 6)
    (True, array([1.  , 0.1 , 0.01]))
    >>> from mmopt import AndersonAcceleration
    >>> MMSolver(anderson=AndersonAcceleration(memory=3), tol=1e-10).solve(problem).success
    True
    """

    name = "mm"
    problem_types = (MMProblem,)
    required_methods = ("mm_step", "project", "initial_point")

    _options = {
        "anderson": Param(True, *ANDERSON_OPTION),
        "stopping": Param("step", Options({"step", "objective"})),
    }

    def _evaluate(self, problem, x, run: _MMRun):
        evaluation = problem.mm_step(x)
        if not isinstance(evaluation, tuple | list) or len(evaluation) not in (2, 3):
            raise TypeError(
                "the problem's mm_step must return (G(x), F(x)) or (G(x), F(x), norms); got "
                f"{type(evaluation).__name__}."
            )
        plain_step, fun = evaluation[0], evaluation[1]
        # Squared lengths of the step and of x, when the problem got them for free.
        run.norms = evaluation[2] if len(evaluation) > 2 else None
        plain_step = np.asarray(plain_step, dtype=float)
        if plain_step.shape != x.shape:
            raise ValueError(
                f"the problem's surrogate minimizer returned shape {plain_step.shape} for an "
                f"iterate of shape {x.shape}."
            )
        run.n_evaluations += 1
        return plain_step, _objective_value(fun)

    def _residual_covers_x(self) -> bool:
        # ||G(x) - x|| / ||x|| is NaN whenever x (or G(x)) holds a NaN or an infinity.
        return self.stopping == "step"

    def _stopping_quantity(self, x, plain_step, previous_fun, fun, run: _MMRun):
        if self.stopping == "objective":
            return abs(previous_fun - fun) / max(abs(fun), np.finfo(float).tiny)
        if run.norms is not None:
            step_sq, x_sq = run.norms
            return math.sqrt(step_sq) / max(math.sqrt(x_sq), 1.0)
        # A work buffer reused across iterations: a fresh large temporary each time costs as
        # much as the arithmetic on problems with cheap MM steps.
        if run.work is None or run.work.shape != x.shape:
            run.work = np.empty_like(x)
        step = np.subtract(plain_step, x, out=run.work)
        with np.errstate(over="ignore", invalid="ignore"):
            # An overflow makes the residual infinite or NaN, which the loop reports.
            return math.sqrt(float(step @ step)) / max(math.sqrt(float(x @ x)), 1.0)

    def _init_state(self, problem, x0):
        if x0 is None:
            x = np.array(problem.initial_point(), dtype=float)
        else:
            x = np.array(check_array(x0, "x0", ndim=1), dtype=float)
            expected = np.shape(problem.initial_point())
            if x.shape != expected:
                raise ValueError(f"x0 must have shape {expected}, got {x.shape}.")
        if not np.isfinite(x).all():
            raise ValueError("the starting point x0 must not contain NaN or infinite values.")
        run = _MMRun(make_accelerator(self.anderson))
        plain_step, fun = self._evaluate(problem, x, run)
        if not math.isfinite(fun):
            # No finite iterate to fall back to: status 4 could not keep its promise.
            raise ValueError(
                f"the objective is not finite at the starting point x0 (got {fun!r}); "
                "check the problem's data and x0."
            )
        return _MMState(
            x=x,
            fun=fun,
            residual=self._stopping_quantity(x, plain_step, np.inf, fun, run),
            plain_step=plain_step,
            run=run,
        )

    def _step(self, problem, state):
        run = state.run
        accepted = np.nan
        if run.anderson is not None:
            outcome = run.anderson.safeguarded_step(
                state.x,
                state.plain_step,
                lambda point: self._evaluate(problem, point, run)[::-1],
                state.fun,
                to_point=problem.project,
            )
            accepted = outcome.record
            if outcome.accepted:
                x, fun, plain_step = outcome.point, outcome.value, outcome.info
        if run.anderson is None or not outcome.accepted:
            x = state.plain_step
            plain_step, fun = self._evaluate(problem, x, run)
        return _MMState(
            x=x,
            fun=fun,
            residual=self._stopping_quantity(x, plain_step, state.fun, fun, run),
            plain_step=plain_step,
            record={"accepted": accepted, "n_evaluations": run.n_evaluations},
            run=run,
        )

    def _result_fields(self, problem, state):
        return {
            "n_evaluations": state.run.n_evaluations,
            **anderson_counts(state.run.anderson),
        }


def _objective_value(fun) -> float:
    """``F(x)`` as a float; a clear error when the problem's objective returned no number."""
    if type(fun) is float:  # the usual case, without the checks below (once per evaluation)
        return fun
    if isinstance(fun, bool) or not isinstance(fun, numbers.Real | np.ndarray):
        raise TypeError(
            "the problem's objective must return a real number, got "
            f"{type(fun).__name__}."
        )
    if isinstance(fun, np.ndarray) and fun.size != 1:
        raise TypeError(
            f"the problem's objective must return a scalar, got an array of shape {fun.shape}."
        )
    return float(fun)


# Their public home is mmopt.mm (which re-exports them): documentation links, reprs,
# pickles and the registry's family name use that path.
MMProblem.__module__ = MMSolver.__module__ = "mmopt.mm"
