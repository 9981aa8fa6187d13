"""scipy's L-BFGS-B, one iteration at a time, for solvers that run on the shared loop.

scipy.optimize.minimize owns its loop; the shared loop of :class:`mmopt.Solver` wants to
call one step at a time (for its history, callback, progress, stopping rule and Ctrl-C).
:class:`LBFGSBSteps` runs ``minimize`` in a worker thread that pauses in scipy's callback
after every iteration until the next step is asked for, so the curvature memory of L-BFGS-B
is kept across steps and no part of L-BFGS is re-implemented here.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

__all__ = ["LBFGSBSteps", "LBFGSBStep", "LBFGSBStopped"]

# Large enough never to be reached: the shared loop decides when to stop.
_UNBOUNDED = 2**31 - 1

# L-BFGS-B workers running now, and the BLAS limit they share: the limit is process-wide, so
# the first worker to start sets it and the last to end restores the original (with one
# limit per worker, overlapping workers restored each other's limit, not the original).
_blas_lock = threading.Lock()
_blas_workers = 0
_blas_limit = None


def _enter_single_threaded_blas() -> None:
    global _blas_workers, _blas_limit
    with _blas_lock:
        if _blas_workers == 0:
            _blas_limit = threadpool_limits(limits=1, user_api="blas")
        _blas_workers += 1


def _leave_single_threaded_blas() -> None:
    global _blas_workers, _blas_limit
    with _blas_lock:
        _blas_workers -= 1
        if _blas_workers == 0 and _blas_limit is not None:
            _blas_limit.restore_original_limits()
            _blas_limit = None


@dataclass
class LBFGSBStep:
    """One accepted L-BFGS-B iterate: point, value, gradient and evaluations so far."""

    x: np.ndarray
    fun: float
    grad: np.ndarray
    nfev: int


class LBFGSBStopped(Exception):
    """scipy's L-BFGS-B ended on its own (a line search that could not make progress)."""


class _Worker:
    """The worker thread's side of :class:`LBFGSBSteps`.

    It holds no reference to its :class:`LBFGSBSteps`, so that an abandoned one can be
    garbage-collected, whose finalizer then tells the paused worker to stop.
    """

    def __init__(self, fun_and_grad, x0, options):
        self.fun_and_grad = fun_and_grad
        self.x0 = x0
        self.options = options
        self.commands: queue.Queue = queue.Queue()
        self.reports: queue.Queue = queue.Queue()
        self.last = (None, np.nan, None)
        self.nfev = 0

    def evaluate(self, x):
        value, grad = self.fun_and_grad(x)
        self.nfev += 1
        self.last = (np.array(x, copy=True), float(value), np.array(grad, dtype=float))
        return float(value), np.asarray(grad, dtype=float)

    def pause(self, intermediate_result):
        x = np.array(intermediate_result.x, copy=True)
        last_x, value, grad = self.last
        if last_x is None or not np.array_equal(last_x, x):
            value, grad = self.fun_and_grad(x)
            self.nfev += 1
        self.reports.put(("step", LBFGSBStep(x, float(value), np.array(grad), self.nfev)))
        if self.commands.get() == "stop":
            raise StopIteration

    def run(self):
        try:
            # L-BFGS-B's BLAS calls work on vectors: threads never pay there, and on 2 busy
            # cores OpenBLAS's spinning threads made each iteration ~10x slower (measured at
            # n = 1000, memory 20: 14 ms vs 1.3 ms). The limit is process-wide while any
            # worker runs.
            _enter_single_threaded_blas()
            try:
                # An iterate near the float64 range overflows in L-BFGS-B's own norms and
                # dot products; the caller sees the non-finite values it returns, so
                # NumPy's warnings from this thread would only be noise.
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    result = minimize(
                        self.evaluate,
                        self.x0,
                        jac=True,
                        method="L-BFGS-B",
                        callback=self.pause,
                        options=self.options,
                    )
            finally:
                _leave_single_threaded_blas()
            self.reports.put(("done", str(result.message)))
        except BaseException as exc:  # handed to the caller's thread
            self.reports.put(("error", exc))

    def abandon(self):
        """Tell the worker to stop at its next pause, without waiting (a finalizer)."""
        self.commands.put("stop")


class LBFGSBSteps:
    """Iterate scipy's L-BFGS-B step by step.

    Parameters
    ----------
    fun_and_grad : callable
        ``fun_and_grad(x) -> (value, gradient)`` of the function to *minimize*.
    x0 : ndarray
        Starting point.
    memory : int
        Number of correction pairs (scipy's ``maxcor``).
    max_line_search : int
        Maximum function evaluations per line search (scipy's ``maxls``).

    Notes
    -----
    :meth:`step` returns the next accepted iterate, or raises :class:`LBFGSBStopped` when
    scipy stops by itself (its tolerances are set to zero, so only a failed line search
    stops it). :meth:`close` ends the worker thread and waits for it; call it when done (it
    is idempotent, and steps after it start nothing). It is also a context manager, and an
    instance dropped without :meth:`close` tells its worker to stop when it is
    garbage-collected. Each instance has its own worker: one instance serves one caller.

    Examples
    --------
    >>> from mmopt._core.lbfgs import LBFGSBSteps
    >>> with LBFGSBSteps(lambda x: (float(x @ x), 2 * x), np.ones(3), memory=5) as steps:
    ...     first = steps.step()
    >>> bool(first.fun < 3.0)
    True
    """

    def __init__(
        self,
        fun_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
        x0: np.ndarray,
        *,
        memory: int = 10,
        max_line_search: int = 20,
    ):
        options = {
            "maxcor": int(memory),
            "maxls": int(max_line_search),
            "maxiter": _UNBOUNDED,
            "maxfun": _UNBOUNDED,
            "ftol": 0.0,
            "gtol": 0.0,
        }
        self._worker = _Worker(fun_and_grad, np.array(x0, dtype=float, copy=True), options)
        self._thread: threading.Thread | None = None
        self._finished = False
        self._finalizer = weakref.finalize(self, self._worker.abandon)
        self._finalizer.atexit = False

    @property
    def nfev(self) -> int:
        """Evaluations of ``fun_and_grad`` so far."""
        return self._worker.nfev

    def step(self) -> LBFGSBStep:
        """Run one more L-BFGS-B iteration and return the accepted iterate."""
        if self._finished:
            raise LBFGSBStopped("L-BFGS-B was already stopped")
        worker = self._worker
        if self._thread is None:
            self._thread = threading.Thread(
                target=worker.run, name="mmopt-lbfgsb", daemon=True
            )
            self._thread.start()
        else:
            worker.commands.put("go")
        kind, payload = worker.reports.get()
        if kind == "step":
            return payload
        self._finished = True
        self._finalizer.detach()
        self._thread.join()
        if kind == "error":
            raise payload
        raise LBFGSBStopped(payload)

    def close(self) -> None:
        """Stop the worker thread and wait for it (it finishes the evaluation under way)."""
        if self._thread is None or self._finished:
            self._finished = True
            self._finalizer.detach()
            return
        self._finished = True
        self._finalizer.detach()
        worker = self._worker
        worker.commands.put("stop")
        # Drain until the worker reports its end (a step may be in flight).
        while True:
            kind, _ = worker.reports.get()
            if kind != "step":
                break
            worker.commands.put("stop")
        self._thread.join()

    def __enter__(self) -> LBFGSBSteps:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
