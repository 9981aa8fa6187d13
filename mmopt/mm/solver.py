"""The majorization-minimization solver, with safeguarded Anderson acceleration."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mmopt._core.anderson import AndersonAcceleration
from mmopt._core.registry import register_solver
from mmopt._core.solver import Solver, SolverState
from mmopt._core.validation import check_array, check_choice, check_scalar
from mmopt.mm.problem import MMProblem

__all__ = ["MMSolver"]


@dataclass
class _MMState(SolverState):
    # G(x) at the current iterate: the plain step, and the fallback when an extrapolated
    # point is rejected.
    plain_step: np.ndarray | None = None


@register_solver
class MMSolver(Solver):
    """Majorization-minimization with optional safeguarded Anderson acceleration.

    Iterates ``x <- G(x)`` where ``G`` is the problem's surrogate minimizer. With
    ``anderson=True`` the iterate is instead extrapolated by type-II Anderson acceleration
    (:class:`mmopt.AndersonAcceleration`) from the last ``m`` steps, and the extrapolated
    point is kept only if its objective is no larger than the current one; otherwise the plain
    MM step is taken and the Anderson history is reset. The objective therefore never
    increases, with or without acceleration.

    Two stopping quantities are offered. ``stopping="step"`` (default) is the relative
    fixed-point residual ``||G(x) - x|| / max(||x||, 1)`` at the current iterate: it bounds
    the error in ``x`` itself. ``stopping="objective"`` is the relative decrease
    ``|F(x_{k-1}) - F(x_k)| / |F(x_k)|`` (``ftol`` in ``scipy.optimize``): free, as ``F`` is
    evaluated anyway, where the residual reads two more full vectors per iteration (a
    sizeable share of the time for cheap MM steps such as NMF), but it only controls the
    objective, so ``x`` is accurate to about ``sqrt(tol)``.

    Parameters
    ----------
    anderson : bool, default=True
        Use Anderson acceleration.
    m : int, default=5
        Anderson memory.
    anderson_damping : float, default=1.0
        Anderson mixing parameter in (0, 1].
    anderson_regularization : float, default=1e-10
        Tikhonov term of the (column-normalized) Anderson least-squares problem.
    anderson_delay : int, default=0
        Plain steps after each Anderson reset before extrapolating again.
    stopping : {"step", "objective"}, default="step"
        Which stopping quantity ``tol`` applies to (see above).
    tol : float, default=1e-6
        Stop when the stopping quantity is at most ``tol``.
    max_iter : int, default=1000
        Maximum number of iterations.
    callback : callable, optional
        ``callback(intermediate_result)``, called after each iteration with a
        :class:`mmopt.Result` snapshot; raise ``StopIteration`` to stop (status 2).
    verbose : int, default=0
        0 silent, 1 a progress bar, 2 one line per iteration.

    Notes
    -----
    The result's ``fun`` is ``F(x)``. Extra fields: ``n_evaluations`` (calls of the problem's
    ``mm_step``, the unit of cost: a rejected extrapolation costs one more), ``n_accepted`` and
    ``n_rejected`` (Anderson proposals kept / refused). ``history`` also records ``accepted``
    per iteration (1 kept, 0 refused, NaN when no extrapolation was tried) and the cumulative
    ``n_evaluations``.

    Examples
    --------
    >>> import numpy as np
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
    """

    name = "mm"
    problem_types = (MMProblem,)
    required_methods = ("mm_step", "project", "initial_point")

    def __init__(
        self,
        *,
        anderson: bool = True,
        m: int = 5,
        anderson_damping: float = 1.0,
        anderson_regularization: float = 1e-10,
        anderson_delay: int = 0,
        stopping: str = "step",
        tol: float = 1e-6,
        max_iter: int = 1000,
        callback=None,
        verbose: int = 0,
    ):
        self.anderson = anderson
        self.m = m
        self.anderson_damping = anderson_damping
        self.anderson_regularization = anderson_regularization
        self.anderson_delay = anderson_delay
        self.stopping = stopping
        self.tol = tol
        self.max_iter = max_iter
        self.callback = callback
        self.verbose = verbose

    def _validate_params(self) -> None:
        super()._validate_params()
        if not isinstance(self.anderson, (bool, np.bool_)):
            raise TypeError(f"anderson must be True or False, got {self.anderson!r}.")
        check_scalar(self.m, "m", kind=int, min_value=1)
        check_choice(self.stopping, "stopping", ("step", "objective"))

    def _evaluate(self, problem, x):
        evaluation = problem.mm_step(x)
        plain_step, fun = evaluation[0], evaluation[1]
        # Squared lengths of the step and of x, when the problem got them for free.
        self._norms = evaluation[2] if len(evaluation) > 2 else None
        plain_step = np.asarray(plain_step, dtype=float)
        if plain_step.shape != x.shape:
            raise ValueError(
                f"the problem's surrogate minimizer returned shape {plain_step.shape} for an "
                f"iterate of shape {x.shape}."
            )
        self._n_evaluations += 1
        return plain_step, float(fun)

    def _residual_covers_x(self) -> bool:
        # ||G(x) - x|| / ||x|| is NaN whenever x (or G(x)) holds a NaN or an infinity.
        return self.stopping == "step"

    def _stopping_quantity(self, x, plain_step, previous_fun, fun):
        if self.stopping == "objective":
            return abs(previous_fun - fun) / max(abs(fun), np.finfo(float).tiny)
        if self._norms is not None:
            step_sq, x_sq = self._norms
            return math.sqrt(step_sq) / max(math.sqrt(x_sq), 1.0)
        # A work buffer reused across iterations: a fresh large temporary each time costs as
        # much as the arithmetic on problems with cheap MM steps.
        if self._work is None or self._work.shape != x.shape:
            self._work = np.empty_like(x)
        step = np.subtract(plain_step, x, out=self._work)
        return math.sqrt(float(step @ step)) / max(math.sqrt(float(x @ x)), 1.0)

    def _init_state(self, problem, x0):
        if x0 is None:
            x = np.array(problem.initial_point(), dtype=float)
        else:
            x = np.array(check_array(x0, "x0", ndim=1), dtype=float)
            expected = np.shape(problem.initial_point())
            if x.shape != expected:
                raise ValueError(f"x0 must have shape {expected}, got {x.shape}.")
        self._n_evaluations = 0
        self._work = None
        self._anderson = None
        if self.anderson:
            self._anderson = AndersonAcceleration(
                self.m,
                regularization=self.anderson_regularization,
                damping=self.anderson_damping,
                delay=self.anderson_delay,
            )
        plain_step, fun = self._evaluate(problem, x)
        return _MMState(
            x=x,
            fun=fun,
            residual=self._stopping_quantity(x, plain_step, np.inf, fun),
            plain_step=plain_step,
        )

    def _step(self, problem, state):
        accepted = np.nan
        proposal = None
        if self._anderson is not None:
            candidate = self._anderson.update(state.x, state.plain_step)
            if self._anderson.extrapolated:
                proposal = problem.project(candidate)
        if proposal is not None:
            plain_step, fun = self._evaluate(problem, proposal)
            if self._anderson.safeguard(fun, state.fun):
                x, accepted = proposal, 1.0
            else:
                proposal, accepted = None, 0.0
        if proposal is None:
            x = state.plain_step
            plain_step, fun = self._evaluate(problem, x)
        return _MMState(
            x=x,
            fun=fun,
            residual=self._stopping_quantity(x, plain_step, state.fun, fun),
            plain_step=plain_step,
            record={"accepted": accepted, "n_evaluations": self._n_evaluations},
        )

    def _result_fields(self, problem, state):
        aa = self._anderson
        return {
            "n_evaluations": self._n_evaluations,
            "n_accepted": 0 if aa is None else aa.n_accepted,
            "n_rejected": 0 if aa is None else aa.n_rejected,
        }
