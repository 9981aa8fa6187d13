"""Incremental maintenance of a quadratic datafit's full gradient after block moves.

For a quadratic datafit the gradient is affine in ``x``: a move ``delta`` on block ``b``
changes it by ``H[:, b] @ delta``, with ``H`` the (constant) Hessian. Greedy rules need the
whole gradient at every iteration; forming it from the maintained ``X w`` costs
``O(nnz(X))``, the update ``O(p |b|)`` once the Hessian columns are known:

* least squares: ``H = X^T X / n``. Its columns are formed on demand and kept in a
  least-recently-used cache of bounded size (a ``p``-by-``capacity`` Fortran buffer); when
  ``p`` columns fit, this is the whole Gram matrix, built lazily. The same cache gives a
  variable block's bound matrix ``H[b][:, b]`` for its step;
* label propagation: ``H = A``, sparse, and the gradient is ``A x - c`` with ``A x`` already
  maintained: only the entries in the rows of the block's columns of ``A`` change, and they
  are re-formed from ``A x``, ``O(nnz(A[:, b]))`` and identical to a recomputation.

Non-quadratic datafits (logistic, multinomial) have no such update: their gradient depends
nonlinearly on ``X w``, so it is recomputed.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import scipy.sparse as sp

from mmopt.bcd import _kernels
from mmopt.bcd.datafits import LabelPropagationQuadratic, LeastSquares

__all__ = ["IncrementalGradient", "supports_incremental", "incremental_pays"]

#: Memory bound of the least-squares Gram-column cache, in bytes.
GRAM_CACHE_BYTES = 64 * 2**20


def supports_incremental(datafit) -> bool:
    """True for the datafits whose gradient this module can update incrementally."""
    return isinstance(datafit, (LeastSquares, LabelPropagationQuadratic))


def _capacity(datafit, max_bytes) -> int:
    p = datafit.n_coords
    return int(min(p, max(max_bytes // (8 * p), 0)))


def incremental_pays(datafit, block_size: int, *, max_bytes: int = GRAM_CACHE_BYTES) -> bool:
    """Whether an incremental update is cheaper than recomputing, judged by sizes alone.

    Label propagation: from 50,000 nodes (the recomputation ``A x - c`` is one vectorized
    pass; below that size it is faster than the update's indexing). Least squares: when a
    block's Gram columns fit in the cache and the update, ``p * block_size`` flops, is at most
    a quarter of a recomputation, ``nnz(X)`` flops (``n p`` dense), and forming a block's
    columns anew costs no more than a recomputation: for a sparse ``X``, about
    ``block_size * nnz(X)^2 / (n p) <= nnz(X)``; for a dense ``X`` (``block_size`` BLAS
    recomputations' worth per block) only when the whole Gram matrix fits in the cache, so
    each column is formed once.
    """
    if isinstance(datafit, LabelPropagationQuadratic):
        return datafit.n_coords >= 50_000
    if not isinstance(datafit, LeastSquares):
        return False
    X = datafit.X
    n, p = X.shape
    capacity = _capacity(datafit, max_bytes)
    if block_size > capacity:
        return False
    if sp.issparse(X):
        return 4 * p * block_size <= X.nnz and block_size * X.nnz <= n * p
    return capacity == p and 4 * block_size <= n


class IncrementalGradient:
    """Applies ``grad += H[:, block] @ delta`` for a quadratic datafit (see module docstring).

    Parameters
    ----------
    datafit : LeastSquares or LabelPropagationQuadratic
    max_bytes : int
        Memory bound of the least-squares Gram-column cache.

    Examples
    --------
    >>> from mmopt.bcd import LeastSquares
    >>> rng = np.random.default_rng(0)
    >>> f = LeastSquares(rng.standard_normal((6, 4)), rng.standard_normal(6))
    >>> x = np.zeros(4); aux = f.init_aux(x); grad = f.gradient(x, aux)
    >>> block, delta = np.array([1, 3]), np.array([0.5, -2.0])
    >>> x[block] += delta; f.update_aux(aux, block, delta)
    >>> IncrementalGradient(f).update(grad, block, delta)
    >>> bool(np.allclose(grad, f.gradient(x, aux)))
    True
    """

    def __init__(self, datafit, *, max_bytes: int = GRAM_CACHE_BYTES):
        if not supports_incremental(datafit):
            raise TypeError(
                "incremental gradients need a LeastSquares or LabelPropagationQuadratic "
                f"datafit, got {type(datafit).__name__}."
            )
        self.datafit = datafit
        if isinstance(datafit, LabelPropagationQuadratic):
            A = sp.csc_matrix(datafit.A, copy=True)
            A.sort_indices()
            A.indices = A.indices.astype(np.int32, copy=False)
            A.indptr = A.indptr.astype(np.int32, copy=False)
            self._A = A
            self.capacity = 0
            return
        self._A = None
        self._X_csr = None  # a row-wise copy for the sparse Gram columns, made on first use
        self.capacity = _capacity(datafit, max_bytes)
        # Columns are allocated on first use (np.empty touches no memory before).
        self._gram = np.empty((datafit.n_coords, self.capacity), order="F")
        self._slots: OrderedDict[int, int] = OrderedDict()  # column -> slot, oldest first
        self.n_formed = 0  # Gram columns formed so far (cache misses)

    def gram_columns(self, cols) -> np.ndarray:
        """``X^T X[:, cols] / n`` as a dense ``(p, len(cols))`` array (least squares)."""
        X, n = self.datafit.X, self.datafit.n_samples
        cols = np.asarray(cols, dtype=np.intp)
        if sp.issparse(X):
            # Compiled: the cost is the rows the columns touch, not nnz(X) each (scipy's
            # sparse product is ~20x slower here).
            if self._X_csr is None:
                self._X_csr = X.tocsr()
            G = _kernels.gram_columns(X, self._X_csr, cols)
        else:
            G = X.T @ X[:, cols]
        return G / n

    def update(self, grad: np.ndarray, block, delta, aux=None) -> None:
        """``grad += H[:, block] @ delta`` in place (zero entries of ``delta`` are skipped).

        Label propagation needs ``aux``, the maintained ``A x`` after the move.
        """
        block = np.asarray(block, dtype=np.intp)
        delta = np.asarray(delta, dtype=float)
        moved = delta != 0
        if not moved.all():
            block, delta = block[moved], delta[moved]
        if block.size == 0:
            return
        if self._A is not None:
            if aux is None:
                raise ValueError("label propagation needs aux (A x) to update the gradient.")
            A = self._A
            rows = np.concatenate([A.indices[A.indptr[j] : A.indptr[j + 1]] for j in block])
            grad[rows] = aux[rows] - self.datafit.c[rows]
            return
        if block.size > self.capacity:
            grad += self.gram_columns(block) @ delta
            return
        _kernels.add_columns(self._gram, self._cached_slots(block), delta, grad)

    def block_hessian(self, block) -> np.ndarray | None:
        """``H[block][:, block]`` read from the Gram cache (least squares), None otherwise.

        Variable blocks need this matrix (or its largest eigenvalue) before the move; taking
        it from the cache forms the block's columns once, for the step and the update.
        """
        block = np.asarray(block, dtype=np.intp)
        if self._A is not None or block.size > self.capacity:
            return None
        return self._gram[np.ix_(block, self._cached_slots(block))]

    def _cached_slots(self, block) -> np.ndarray:
        """Cache slots of the columns ``block``, forming the missing ones."""
        slots = np.empty(block.size, dtype=np.int32)
        missing = []
        for i, j in enumerate(block.tolist()):
            slot = self._slots.get(j)
            if slot is None:
                missing.append(i)
            else:
                self._slots.move_to_end(j)  # protected from eviction below
                slots[i] = slot
        if missing:
            cols = block[missing]
            G = self.gram_columns(cols)
            self.n_formed += len(missing)
            for m, i in enumerate(missing):
                if len(self._slots) < self.capacity:
                    slot = len(self._slots)
                else:
                    _, slot = self._slots.popitem(last=False)  # least recently used
                self._gram[:, slot] = G[:, m]
                self._slots[int(block[i])] = slot
                slots[i] = slot
        return slots
