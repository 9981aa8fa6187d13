"""The base class of every solver: options, and the one iteration loop they all share."""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from mmopt._core.exceptions import ConvergenceWarning
from mmopt._core.params import Interval, Param, ParamsValidationMixin
from mmopt._core.result import STATUS_MESSAGES, Result, Status

__all__ = ["Solver", "SolverState", "StopSolve", "caller_stacklevel"]


class StopSolve(Exception):
    """Raised by a step to end the solve now.

    ``status`` is a :class:`mmopt._core.result.Status`; ``reason`` (a full sentence, e.g. why
    a line search could not make progress) becomes the result's message. With ``state``
    the step's new state is recorded as the last iteration; without it the solve ends on
    the state before the step.
    """

    def __init__(self, status: Status, reason: str, state: SolverState | None = None):
        super().__init__(reason)
        self.status = Status(status)
        self.reason = reason
        self.state = state


@dataclass
class SolverState:
    """What a solver carries from one iteration to the next.

    ``x``, ``fun`` and ``residual`` are read by the shared loop; ``record`` holds extra scalars
    to append to ``Result.history`` for this iteration. Solvers subclass it to add fields.
    A step returns a new state (or the old one updated after all its arrays were replaced), so
    that the loop can fall back to the previous state when a step fails.

    ``intermediate`` marks an iterate of an auxiliary problem (a continuation stage, such as
    the epsilon scaling of Sinkhorn-Newton-Sparse) whose ``fun`` and ``residual`` are the
    auxiliary problem's: the loop records it in the history and passes it to the callback,
    but never stops on its residual nor keeps it as the best iterate.
    """

    x: np.ndarray
    fun: float
    residual: float = np.inf
    record: dict[str, float] = field(default_factory=dict)
    intermediate: bool = False


class Solver(ParamsValidationMixin, BaseEstimator):
    """Base class of mmopt solvers.

    Options are keyword-only arguments of ``__init__`` and are only stored there, so
    ``get_params``/``set_params``/``clone`` and ``repr`` behave as in scikit-learn. Every solver
    has at least ``tol``, ``max_iter``, ``callback`` and ``verbose``.

    :meth:`solve` runs the shared loop: it starts the state, calls one step at a time, records
    the history, calls the callback, tests ``residual <= tol`` and ``max_iter``, times the run,
    shows progress, turns ``KeyboardInterrupt`` into status 3 (returning the best iterate) and a
    non-finite objective or iterate into status 4 (returning the last finite one; when there is
    none, because the start or the first step is already non-finite, it raises ``ValueError``
    instead of returning NaN fields under that promise).

    A subclass implements only the algorithm, never :meth:`solve` itself:

    - ``_init_state(problem, x0) -> SolverState``
    - ``_step(problem, state) -> SolverState`` (raise :class:`StopSolve` to end the solve
      from inside a step)
    - ``_should_stop(problem, state) -> (Status, reason) | Status | None`` (optional): a
      stopping test of its own (a cost budget, a stall), checked each iteration after the
      callback and before the ``tol`` test
    - ``_result_fields(problem, state) -> dict`` (extra ``Result`` fields, optional)
    - ``_close_state(problem, state)`` (optional): release what the run holds

    and declares ``name`` (its key in the registry), ``problem_types`` (the problem classes it
    accepts), ``required_methods`` (what it calls on the problem) and its options, each
    with its default and constraints, in ``_options`` (see :mod:`mmopt._core.params`), from
    which its ``__init__`` is written; the table is merged with the common one (``tol``,
    ``max_iter``, ``callback``, ``verbose``) and checked at the start of every solve.

    Examples
    --------
    >>> from mmopt.mm import MMProblem, MMSolver
    >>> problem = MMProblem(
    ...     objective=lambda x: float(np.sum((x - 1.0) ** 2)),
    ...     surrogate_minimizer=lambda x: 0.5 * (x + 1.0),
    ...     x0=np.zeros(2),
    ... )
    >>> res = MMSolver(tol=1e-10).solve(problem)
    >>> bool(res.success), np.allclose(res.x, 1.0)
    (True, True)
    """

    name: ClassVar[str] = "solver"
    problem_types: ClassVar[tuple[type, ...]] = ()
    required_methods: ClassVar[tuple[str, ...]] = ()
    # A solver sets this when a non-finite iterate always makes its residual NaN, so that
    # the loop need not scan the iterate every iteration.
    residual_covers_x: ClassVar[bool] = False
    # True when ``fun`` is maximized (a dual objective): the best iterate kept for an
    # interrupted solve is then the one with the largest value.
    maximize: ClassVar[bool] = False
    # True for a direct method whose one step gives the final answer (exact OT's LP solve):
    # there is no later iteration for max_iter or a callback to stop at.
    single_step: ClassVar[bool] = False
    # The options every solver has; subclasses add their own tables (merged along the MRO)
    # and set their own defaults (``"tol": Param(1e-9)``).
    _options: ClassVar[dict] = {
        "tol": Param(1e-6, Interval(float, 0, None)),
        "max_iter": Param(1000, Interval(int, 1, None)),
        "callback": Param(None, None, callable),
        "verbose": Param(0, Interval(int, 0, None)),
    }

    # ------------------------------------------------------------------ hooks for subclasses
    def _should_stop(self, problem, state: SolverState) -> tuple[Status, str] | Status | None:
        """A solver's own stopping test, checked after each recorded iteration.

        Return None to go on, or the status to end with (with a sentence that becomes the
        result's message, as ``(status, reason)``). Checked after the callback and before
        the ``tol`` test; a status other than 0 is reported like ``max_iter`` (with a
        :class:`~mmopt.ConvergenceWarning` for statuses 1, 4 and 5).
        """
        return None

    def _init_state(self, problem, x0) -> SolverState:  # pragma: no cover - abstract
        raise NotImplementedError

    def _step(self, problem, state: SolverState) -> SolverState:  # pragma: no cover
        raise NotImplementedError

    def _result_fields(self, problem, state: SolverState) -> dict[str, Any]:
        return {}

    def _residual_covers_x(self) -> bool:
        return self.residual_covers_x

    def _close_state(self, problem, state: SolverState) -> None:
        """Release what a run holds (worker threads, pools) however the solve ended.

        Called once by :meth:`solve` on the last state it knew of: after convergence, a
        stop, ``KeyboardInterrupt`` or an exception raised by a step or the callback. States
        that hold resources share them from one iteration to the next, so closing the last
        one releases them all.
        """

    # ------------------------------------------------------------------------ the contract
    def check_problem(self, problem) -> None:
        """Raise ``TypeError`` unless ``problem`` is something this solver can solve."""
        if self.problem_types and not isinstance(problem, self.problem_types):
            accepted = ", ".join(t.__name__ for t in self.problem_types)
            raise TypeError(
                f"solver {self.name!r} solves {accepted} instances; "
                f"got problem of type {type(problem).__name__}."
            )
        missing = [m for m in self.required_methods if not callable(getattr(problem, m, None))]
        if missing:
            raise TypeError(
                f"solver {self.name!r} needs the problem to provide "
                + ", ".join(f"{m}()" for m in missing)
                + f"; {type(problem).__name__} does not."
            )

    def solve(self, problem, x0=None) -> Result:
        """Solve ``problem`` starting from ``x0`` (the problem's default start when None).

        Returns
        -------
        Result
            See :class:`mmopt.Result` and the solver's own documentation for extra fields.
        """
        self._validate_params()
        self.check_problem(problem)
        start = time.perf_counter()
        state = self._init_state(problem, x0)
        # The latest state a step returned, also when the loop did not accept it.
        latest = [state]
        try:
            return self._run(problem, state, start, latest)
        finally:
            self._close_state(problem, latest[0])

    def _run(self, problem, state: SolverState, start: float, latest: list) -> Result:
        history: dict[str, list[float]] = {"fun": [], "residual": [], "time": []}
        best, improved = state, False
        status = Status.MAX_ITER
        reason = None
        nit = 0
        progress = _Progress(self.verbose, self.max_iter, self.name)
        try:
            for iteration in range(1, self.max_iter + 1):
                stopping = False
                try:
                    new_state = self._step(problem, state)
                except StopSolve as stop:
                    status, reason = stop.status, stop.reason
                    if stop.state is None:
                        break
                    new_state, stopping = stop.state, True
                latest[0] = new_state
                if not _is_finite(new_state, check_x=not self._residual_covers_x()):
                    status, reason = Status.NUMERICAL_FAILURE, None
                    break
                state, nit = new_state, iteration
                elapsed = time.perf_counter() - start
                _append(history, state, elapsed)
                if not state.intermediate and _is_better(state.fun, best.fun, self.maximize):
                    best, improved = state, True
                progress.update(nit, state)
                if self.callback is not None:
                    snapshot = self._make_result(
                        problem, state, None, nit, elapsed, history, final=False
                    )
                    try:
                        self.callback(snapshot)
                    except StopIteration:
                        status, reason = Status.CALLBACK, None
                        break
                stop = self._should_stop(problem, state)
                if stop is not None:
                    status, reason = stop if isinstance(stop, tuple) else (stop, None)
                    status = Status(status)
                    break
                if state.residual <= self.tol and not state.intermediate:
                    status, reason = Status.CONVERGED, None
                    break
                if stopping:
                    break
        except KeyboardInterrupt:
            status, reason = Status.INTERRUPTED, None
            # Interrupted in a continuation stage before any better iterate of the problem
            # itself: the latest iterate is the closest to a solution (solvers report the
            # problem's own value and residual for it in their result fields).
            if improved or not state.intermediate:
                state = best
        finally:
            progress.close()
        elapsed = time.perf_counter() - start
        result = self._make_result(problem, state, status, nit, elapsed, history, final=True)
        if status == Status.NUMERICAL_FAILURE and not _result_is_finite(result):
            # Status 4 promises the last finite iterate; with none (the start itself, or the
            # first step, already non-finite) the honest answer is an error, not NaN fields.
            raise ValueError(
                f"{type(self).__name__}: a non-finite value was met before any finite iterate "
                f"(fun={result.fun!r} after {nit} iterations); check the problem's data "
                "(its scale) and x0."
            )
        if reason:
            result.message = reason
        if status in (Status.MAX_ITER, Status.NUMERICAL_FAILURE, Status.STALLED):
            warnings.warn(
                f"{type(self).__name__}: {result.message} (nit={nit}, "
                f"residual={state.residual:.3g}, tol={self.tol:.3g})",
                ConvergenceWarning,
                stacklevel=caller_stacklevel(),
            )
        return result

    def _make_result(self, problem, state, status, nit, elapsed, history, *, final):
        history = {k: np.asarray(v, dtype=float) for k, v in history.items()}
        if not final:
            # A snapshot for the callback, without a status (the solve is still running); x is
            # a copy so that a callback cannot corrupt the iterate.
            return Result(
                x=np.array(state.x, copy=True),
                fun=float(state.fun),
                nit=nit,
                time=elapsed,
                residual=float(state.residual),
                history=history,
                solver=self.name,
            )
        result = Result(
            x=state.x,
            fun=float(state.fun),
            success=status == Status.CONVERGED,
            status=int(status),
            message=STATUS_MESSAGES[status],
            nit=nit,
            time=elapsed,
            residual=float(state.residual),
            history=history,
            solver=self.name,
        )
        result.update(self._result_fields(problem, state))
        return result


def _is_better(value: float, best: float, maximize: bool) -> bool:
    if not math.isfinite(best):
        return True
    return value >= best if maximize else value <= best


def caller_stacklevel() -> int:
    """Stack level of the first frame outside mmopt, so warnings point at the user's line.

    For ``warnings.warn(..., stacklevel=caller_stacklevel())`` called from mmopt code.
    """
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("mmopt"):
        frame, level = frame.f_back, level + 1
    return level


def _is_finite(state: SolverState, *, check_x: bool = True) -> bool:
    if not (math.isfinite(state.fun) and not math.isnan(state.residual)):
        return False
    if not check_x:
        return True
    # The sum is NaN or infinite whenever an entry is (and costs no temporary array); a false
    # alarm needs entries near 1e308.
    with np.errstate(over="ignore", invalid="ignore"):
        return math.isfinite(float(np.sum(state.x)))


def _result_is_finite(result: Result) -> bool:
    if not math.isfinite(result.fun):
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.asarray(result.x)
        return x.dtype.kind not in "fc" or bool(np.isfinite(x).all())


def _append(history, state: SolverState, elapsed: float) -> None:
    history["fun"].append(float(state.fun))
    history["residual"].append(float(state.residual))
    history["time"].append(elapsed)
    for key, value in state.record.items():
        # A quantity first seen late is padded with NaN so every array has one entry per
        # iteration.
        column = history.setdefault(key, [np.nan] * (len(history["fun"]) - 1))
        column.append(float(value))
    for column in history.values():
        if len(column) < len(history["fun"]):
            column.append(np.nan)


class _Progress:
    """A tqdm bar (verbose=1) or one line per iteration on stderr (verbose>=2)."""

    def __init__(self, verbose: int, total: int, name: str):
        self.verbose = int(verbose)
        self.bar = None
        if self.verbose == 1:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=name, leave=False, file=sys.stderr)

    def update(self, nit: int, state: SolverState) -> None:
        if self.bar is not None:
            self.bar.update(1)
            # Solvers that run in stages or levels (ICP's annealing and voxel pyramid)
            # record them: the bar shows where a long solve stands.
            stages = {key: int(state.record[key]) for key in ("level", "stage")
                      if key in state.record and np.isfinite(state.record[key])}
            self.bar.set_postfix(fun=f"{state.fun:.6g}", residual=f"{state.residual:.2e}",
                                 **stages)
        elif self.verbose >= 2:
            from tqdm import tqdm

            extra = "".join(f"  {k}={v:.4g}" for k, v in state.record.items())
            tqdm.write(
                f"iter {nit:5d}  fun={state.fun:.10g}  residual={state.residual:.3e}{extra}",
                file=sys.stderr,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
