"""Nearest-neighbour searches through a KD-tree library (scipy's cKDTree, or pykdtree)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from mmopt._core.validation import check_choice, check_scalar

__all__ = ["NeighborIndex", "pykdtree_available"]

BACKENDS = ("auto", "scipy", "pykdtree")
# Fewer query points than this are searched on one thread by scipy: its workers are threads
# started for each call, which costs more than such a search saves.
_MIN_ROWS_PER_THREAD = 2048


_pykdtree_pool = None


def _pykdtree_threads():
    """A thread limiter for pykdtree's OpenMP runtime (made once, after pykdtree is loaded:
    a limiter only sees the libraries loaded before it)."""
    global _pykdtree_pool
    if _pykdtree_pool is None:
        import pykdtree.kdtree  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _pykdtree_pool = ThreadpoolController().select(user_api="openmp")
    return _pykdtree_pool


def pykdtree_available() -> bool:
    """True when the optional ``pykdtree`` package can be imported."""
    try:
        import pykdtree.kdtree  # noqa: F401
    except ImportError:
        return False
    return True


class NeighborIndex:
    """A KD-tree over fixed points, answering (bounded) nearest-neighbour queries.

    ``backend="auto"`` uses pykdtree when it is installed (faster per query; the user guide has
    the figures) and scipy's cKDTree otherwise; both return the exact nearest neighbour, so
    results do not depend on the backend or on the thread count (up to ties between equidistant
    points). Points with no neighbour within ``bound`` get distance ``inf`` and index ``-1``.

    The index is immutable after construction and its queries only read the tree, so one
    index can serve several solves (threads) at once; callers count their own queries.
    """

    def __init__(self, points: np.ndarray, *, backend: str = "auto"):
        check_choice(backend, "neighbors", BACKENDS)
        requested = backend
        if backend == "auto":
            backend = "pykdtree" if pykdtree_available() else "scipy"
        elif backend == "pykdtree" and not pykdtree_available():
            raise ImportError(
                "neighbors='pykdtree' needs the pykdtree package (pip install pykdtree)."
            )
        self._requested = requested
        self.backend = backend
        self.points = np.ascontiguousarray(points, dtype=np.float64)
        self._build()

    def _build(self) -> None:
        if self.backend == "pykdtree":
            from pykdtree.kdtree import KDTree

            self._tree = KDTree(self.points)
        else:
            self._tree = cKDTree(self.points)

    def __getstate__(self) -> dict:
        # pykdtree's trees do not pickle: an index sent to another process (joblib, Dask
        # workers) carries its points and is built again there.
        return {"points": self.points, "requested": self._requested}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["points"], backend=state["requested"])

    def query(self, x: np.ndarray, *, k: int = 1, bound: float = np.inf, n_threads: int = 1,
              min_rows_per_thread: int = _MIN_ROWS_PER_THREAD):
        """Distances and indices of the ``k`` nearest points to each row of ``x``.

        ``n_threads`` (at least 1) is the largest thread count of scipy's search: one
        thread per ``min_rows_per_thread`` rows times ``k`` at most (2048 by default; a
        caller that knows its searches are slower per row can lower it); pykdtree's OpenMP
        search uses at most ``n_threads`` threads.
        """
        n_threads = check_scalar(n_threads, "n_threads", kind=int, min_value=1)
        x = np.ascontiguousarray(x, dtype=np.float64)
        if self.backend == "pykdtree":
            # pykdtree takes its thread count from OpenMP's settings: bound it by n_threads
            # (set on this thread only, restored after the search).
            with _pykdtree_threads().limit(limits=n_threads):
                dist, idx = self._tree.query(
                    x, k=k, distance_upper_bound=None if not np.isfinite(bound) else float(bound)
                )
            idx = idx.astype(np.intp)
            idx[idx >= self.points.shape[0]] = -1
        else:
            workers = max(1, min(n_threads, (x.shape[0] * k) // max(min_rows_per_thread, 1)))
            dist, idx = self._tree.query(x, k=k, distance_upper_bound=bound, workers=workers)
            idx = np.asarray(idx, dtype=np.intp)
            idx[idx >= self.points.shape[0]] = -1
        return np.asarray(dist, dtype=float), idx
