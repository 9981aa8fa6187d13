"""The SSO solver: target-based surrogates on the full data (MM) or on minibatches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmopt._core._docstrings import SOLVER_PARAMS, fill_doc, references
from mmopt._core.params import InstanceOf, Interval, Options, Param
from mmopt._core.registry import register_solver
from mmopt._core.solver import SolverState
from mmopt._core.validation import check_array
from mmopt.mm.solver import MMSolver
from mmopt.mm.target_surrogate import TargetSurrogateProblem

__all__ = ["SSO"]


@dataclass
class _EpochState(SolverState):
    # Per-sample target gradients so far, and the generator that draws the minibatches.
    n_target_gradients: int = 0
    rng: np.random.Generator | None = None


@register_solver
@fill_doc(SOLVER_PARAMS, references("lavington2023"))
class SSO(MMSolver):
    """Target-based surrogate optimization, full-batch (MM) or stochastic (SSO).

    With ``batch_size=None`` each iteration is one MM step of a
    :class:`~mmopt.mm.TargetSurrogateProblem`: one gradient of the loss in target space on
    all samples, then the surrogate's minimization (exact for a linear model), with
    safeguarded Anderson acceleration as in :class:`~mmopt.mm.MMSolver`; the objective
    never increases. With a ``batch_size``, each iteration is one epoch of SSO [1]_,
    projected stochastic gradient descent in target space: the samples are shuffled and
    each minibatch ``S`` of ``b`` rows makes one outer step. Its loss gradient ``g_S`` in
    target space (the only one of the step) defines the stochastic surrogate

    ``s(theta) = <g_S, f_S(theta) - z_S> / b + ||f(theta) - z||^2 / (2 eta n) + penalty``

    whose mean over the minibatches is the full-batch surrogate; its minimizer is the
    projection onto the model's outputs of the target-space SGD step that moves the
    minibatch's targets by ``-eta (n / b) g_S`` and leaves the others. The problem
    minimizes it exactly (linear model, ``inner="exact"``: a solve with the design's Gram
    matrix) or by its ``n_inner`` gradient steps with an Armijo line search (any model;
    each step evaluates the model on all rows, never the loss gradient).
    ``projection="batch"`` restricts the proximity term to the minibatch (the surrogate of
    the minibatch's loss alone: cheaper inner steps for a costly model, but several of
    them overfit the minibatch). The target-space step is ``eta / (1 + epoch)``
    (``schedule="inverse"``, the decreasing step SGD needs on strongly convex losses) or
    ``eta`` (``"constant"``).

    Parameters
    ----------
    batch_size : int, optional
        Samples per minibatch; None for full-batch MM.
    anderson : bool or AndersonAcceleration, default=True
        Anderson acceleration of the full-batch steps (see :class:`~mmopt.mm.MMSolver`);
        minibatch epochs ignore it.
    stopping : {"step", "objective"}, default="step"
        The stopping quantity: the relative change of the parameters over one iteration,
        or the relative decrease of the objective.
    schedule : {"inverse", "constant"}, default="inverse"
        Target-space step of the minibatch epochs (see above).
    projection : {"full", "batch"}, default="full"
        Rows of the minibatch surrogates' proximity term: all (the paper's projection in
        target space) or the minibatch's.
    random_state : int, numpy Generator or None, default=None
        Seed of the minibatch order.
    tol : float, default=1e-6
        Stop when the stopping quantity is at most ``tol``.
    max_iter : int, default=1000
        Maximum number of iterations (MM steps, or epochs).
    %(callback)s
    %(verbose)s

    Notes
    -----
    The result's ``fun`` is the problem's objective on all samples (computed once per
    epoch in the minibatch mode, for the record). Extra fields: ``n_target_gradients``,
    the per-sample gradients of the loss in target space computed (``n_samples`` per
    full-batch evaluation, ``batch_size`` per minibatch: the unit in which SGD's cost is
    counted), also recorded per iteration in ``history``; in the full-batch mode also those
    of :class:`~mmopt.mm.MMSolver` (``n_evaluations``, ``n_accepted``, ``n_rejected``).

    With a constant step, minibatch SSO converges to a neighbourhood of the minimizer
    whose size shrinks with ``eta`` and grows with the gradient noise, as SGD with a
    constant step: its stopping test may never be met (status 1).

    %(references)s

    Examples
    --------
    >>> from mmopt.mm import SSO, LinearTargetModel, TargetSurrogateProblem
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 4))
    >>> y = (X @ [1.0, -1.0, 2.0, 0.0] + rng.standard_normal(200) > 0).astype(float)
    >>> problem = TargetSurrogateProblem(LinearTargetModel(), "logistic", X, y, alpha=1e-2)
    >>> res = SSO(tol=1e-10).solve(problem)
    >>> bool(res.success), bool(np.all(np.diff(res.history["fun"]) <= 1e-12))
    (True, True)
    >>> res.n_target_gradients == 200 * res.n_evaluations
    True
    """

    name = "sso"
    problem_types = (TargetSurrogateProblem,)
    required_methods = ("mm_step", "surrogate_step", "objective", "project", "initial_point")

    # Added to MMSolver's options (anderson, stopping and the common ones).
    _options = {
        "batch_size": Param(None, None, Interval(int, 1, None)),
        "schedule": Param("inverse", Options({"inverse", "constant"})),
        "projection": Param("full", Options({"full", "batch"})),
        "random_state": Param(None, None, Interval(int, 0, None),
                              InstanceOf(np.random.Generator, name="a numpy Generator")),
    }

    def _residual_covers_x(self) -> bool:
        return self.batch_size is None and super()._residual_covers_x()

    def _init_state(self, problem, x0):
        if self.batch_size is None:
            return super()._init_state(problem, x0)
        x = problem.initial_point() if x0 is None else check_array(x0, "x0", ndim=1)
        if x.shape != np.shape(problem.initial_point()):
            raise ValueError(f"x0 must have shape {np.shape(problem.initial_point())}, got "
                             f"{x.shape}.")
        fun = problem.objective(x)
        if not np.isfinite(fun):
            raise ValueError(f"the objective is not finite at the starting point x0 (got "
                             f"{fun!r}); check the problem's data and x0.")
        return _EpochState(x=np.array(x, dtype=float), fun=fun,
                           rng=np.random.default_rng(self.random_state))

    def _step(self, problem, state):
        if self.batch_size is None:
            new = super()._step(problem, state)
            new.record["n_target_gradients"] = self._full_count(problem, new)
            return new
        order = state.rng.permutation(problem.n_samples)
        epoch = state.n_target_gradients // problem.n_samples
        eta = problem.eta / (1.0 + epoch) if self.schedule == "inverse" else problem.eta
        x = state.x
        for start in range(0, problem.n_samples, self.batch_size):
            rows = np.sort(order[start:start + self.batch_size])
            x = problem.surrogate_step(x, rows, eta, self.projection)[0]
        fun = problem.objective(x)
        count = state.n_target_gradients + problem.n_samples
        if self.stopping == "objective":
            residual = abs(state.fun - fun) / max(abs(fun), np.finfo(float).tiny)
        else:
            residual = float(np.linalg.norm(x - state.x)) / max(float(np.linalg.norm(x)), 1.0)
        return _EpochState(x=x, fun=fun, residual=residual,
                           record={"n_target_gradients": count},
                           n_target_gradients=count, rng=state.rng)

    @staticmethod
    def _full_count(problem, state) -> int:
        return state.run.n_evaluations * problem.n_samples

    def _result_fields(self, problem, state):
        if self.batch_size is None:
            return {**super()._result_fields(problem, state),
                    "n_target_gradients": self._full_count(problem, state)}
        return {"n_target_gradients": state.n_target_gradients}
