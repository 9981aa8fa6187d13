"""The result object shared by every solver, and the one table of status codes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy.optimize import OptimizeResult

__all__ = ["InnerSolveResult", "Result", "Status", "STATUS_MESSAGES"]


class Status(IntEnum):
    """Why a solve ended. ``Result.status`` holds one of these values."""

    CONVERGED = 0
    MAX_ITER = 1
    CALLBACK = 2
    INTERRUPTED = 3
    NUMERICAL_FAILURE = 4
    STALLED = 5


STATUS_MESSAGES = {
    Status.CONVERGED: "Converged: the stopping quantity fell below tol.",
    Status.MAX_ITER: "Maximum number of iterations reached before convergence.",
    Status.CALLBACK: "Stopped by the callback (StopIteration).",
    Status.INTERRUPTED: "Interrupted by the user (KeyboardInterrupt); best iterate returned.",
    Status.NUMERICAL_FAILURE: (
        "Numerical failure: a non-finite value was met; the last finite iterate is returned."
    ),
    Status.STALLED: (
        "Stalled: the objective stopped improving before the stopping quantity reached tol."
    ),
}


class Result(OptimizeResult):
    """The outcome of a solve: a dict with attribute access, like scipy's ``OptimizeResult``.

    Every solver fills at least these fields; families add their own (``plan``,
    ``transform``, ``coef`` ...), documented by each solver.

    Attributes
    ----------
    x : ndarray
        The solution in the solver's natural variable.
    fun : float
        Objective value at ``x`` (each solver documents which objective).
    success : bool
        True when ``status == 0``.
    status : int
        0 converged, 1 ``max_iter`` reached, 2 stopped by the callback, 3 interrupted,
        4 numerical failure, 5 stalled: the objective stopped improving before the stopping
        quantity reached ``tol`` (see :class:`Status`).
    message : str
        Human-readable form of ``status``.
    nit : int
        Number of iterations done.
    time : float
        Wall-clock seconds spent in the solve.
    history : dict of ndarray
        One 1-D array per recorded quantity with one entry per iteration; always holds
        ``fun``, ``residual`` (the stopping quantity) and ``time`` (seconds since the start).
    solver : str
        Registered name of the solver that produced the result.

    Examples
    --------
    >>> from mmopt import Result
    >>> res = Result(x=[1.0], fun=0.5, status=0)
    >>> res.fun
    0.5
    """

    def __repr__(self) -> str:
        # OptimizeResult's repr prints every history array in full; summarize them instead.
        shown = {}
        for key, value in self.items():
            if key == "history" and isinstance(value, dict):
                shown[key] = {k: f"<{np.asarray(v).shape[0]} values>" for k, v in value.items()}
            elif isinstance(value, np.ndarray) and value.size > 20:
                shown[key] = f"<ndarray shape={value.shape} dtype={value.dtype}>"
            else:
                shown[key] = value
        width = max(map(len, shown), default=0) + 1
        return "\n".join(f"{k.rjust(width)}: {v!r}" for k, v in shown.items())

    def __dir__(self):
        return list(self.keys())


@dataclass
class InnerSolveResult:
    """What an inner solve returns: a Krylov solve, or a subproblem solved inside a step.

    One type for every family's inner solvers (:func:`mmopt._core.krylov.conjugate_gradient`,
    the lower-level solvers of :mod:`mmopt.bilevel.inner`, ...), so that a caller adds up
    their costs the same way.

    Attributes
    ----------
    x : ndarray
        The point reached.
    nit : int
        Iterations (CG steps, gradient steps or Newton steps).
    n_matvec : int
        Products with the operator (Hessian-vector products) spent.
    residual : float
        The stopping quantity at ``x``: ``||A x - b||`` for a linear solve, the gradient
        norm for a minimization.
    converged : bool
        Whether the residual reached the requested tolerance.
    """

    x: np.ndarray
    nit: int
    n_matvec: int
    residual: float
    converged: bool
