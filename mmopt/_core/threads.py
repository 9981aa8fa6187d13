"""How many threads a compiled kernel may use."""

from __future__ import annotations

import contextlib
import contextvars
import operator

import joblib

from mmopt_ext._openmp_helpers import openmp_enabled, openmp_max_threads

__all__ = ["check_n_threads", "effective_n_threads", "single_threaded", "openmp_enabled"]

# Below this many entries a pass over the data takes a few microseconds: waking a team of
# threads costs more than it saves, and on a busy machine each parallel region waits for a
# time slice per thread (milliseconds).
MIN_PARALLEL_SIZE = 1 << 16

# Set inside solve_many workers: the processes already run in parallel, so kernels must not
# each start a full team of threads on top of them.
_forced_threads: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "mmopt_forced_threads", default=None
)


def effective_n_threads(n_threads: int | None = None, size: int | None = None) -> int:
    """Resolve a user's ``n_threads`` the way scikit-learn does.

    ``None`` means OpenMP's default (which honours ``OMP_NUM_THREADS``) capped by the CPUs this
    process may use, or 1 inside a :func:`mmopt.solve_many` worker; a negative value counts
    back from the number of CPUs (``-1`` is all of them). With ``size`` (the number of entries
    a kernel's pass reads), passes over fewer than ``MIN_PARALLEL_SIZE`` entries run on one
    thread.

    Examples
    --------
    >>> from mmopt._core.threads import effective_n_threads
    >>> effective_n_threads(1)
    1
    >>> effective_n_threads(-1, size=100)
    1
    """
    if n_threads is not None:
        n_threads = check_n_threads(n_threads)
    if not openmp_enabled() or (size is not None and size < MIN_PARALLEL_SIZE):
        return 1
    if n_threads is None:
        forced = _forced_threads.get()
        if forced is not None:
            return forced
        return max(1, min(openmp_max_threads(), joblib.cpu_count()))
    if n_threads < 0:
        # (joblib reads the cgroup quota files: only asked when needed, kernels resolve
        # their thread count on every call)
        n_threads = max(1, joblib.cpu_count() + 1 + n_threads)
    return n_threads


def check_n_threads(n_threads, name: str = "n_threads"):
    """Check a ``n_threads`` option without resolving it (problems call it at construction).

    ``None`` or a non-zero integer; a negative value counts back from the number of CPUs, so
    it must leave at least one (``-1`` is all of them, ``-cpu_count`` one).

    Examples
    --------
    >>> from mmopt._core.threads import check_n_threads
    >>> check_n_threads(-1)
    -1
    """
    if n_threads is None:
        return None
    if isinstance(n_threads, bool):
        raise TypeError(f"{name} must be an integer or None, got {n_threads!r}.")
    try:
        n_threads = operator.index(n_threads)
    except TypeError:
        raise TypeError(f"{name} must be an integer or None, got {n_threads!r}.") from None
    if n_threads == 0:
        raise ValueError(f"{name} must not be 0: use None, a positive or a negative integer.")
    if n_threads < 0:
        cpus = joblib.cpu_count()
        if n_threads < -cpus:
            raise ValueError(
                f"{name}={n_threads} leaves no thread: negative values count back from the "
                f"{cpus} CPUs (-1 is all of them), so it must be >= {-cpus}."
            )
    return n_threads


_controller = None


def _threadpool_controller():
    """One ``threadpoolctl.ThreadpoolController`` per process, made on first use.

    Making one inspects every loaded library (milliseconds); limiting threads with it does
    not. Libraries loaded after it are not seen (as with scikit-learn's cached controller):
    mmopt's kernels, NumPy's and SciPy's BLAS are loaded by then.
    """
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


@contextlib.contextmanager
def single_threaded():
    """Within this context, ``effective_n_threads(None)`` is 1 (and BLAS uses one thread)."""
    token = _forced_threads.set(1)
    try:
        with _threadpool_controller().limit(limits=1):
            yield
    finally:
        _forced_threads.reset(token)
