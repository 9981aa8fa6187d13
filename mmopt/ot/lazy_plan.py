"""An entropic OT plan between point clouds, applied tile by tile from its potentials."""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import LinearOperator

from mmopt._core.validation import check_array

__all__ = ["LazyPlan"]

# Entries of one tile of the plan (rows x columns), and the most entries toarray() returns.
_TILE_ENTRIES = 1 << 18
_MAX_DENSE_ENTRIES = 1 << 25


class LazyPlan:
    r"""The plan ``P_ij = exp((f_i + g_j - |x_i - y_j|^2) / reg) [* a_i b_j]``, never stored.

    Products with vectors, rows, marginals are computed over tiles of rows (about
    ``2^18`` entries each), so memory stays ``O(n + m)`` while time is ``O(n m)`` per
    product. Exponents are evaluated as they are (the potentials of a converged solver keep
    them at most about 0).

    Parameters
    ----------
    x, y : array of shape (n, d), (m, d)
        The clouds.
    f, g : array of shape (n,), (m,)
        The potentials (as :func:`mmopt.ot.sinkhorn` returns them).
    reg : float
        The entropic regularization.
    a, b : array of shape (n,), (m,), optional
        Weights multiplying the rows and columns, for potentials in the convention
        ``P_ij = a_i b_j exp((f_i + g_j - C_ij) / reg)``; None: no weight.

    Examples
    --------
    >>> x = np.array([[0.0], [1.0]])
    >>> plan = LazyPlan(x, x, np.zeros(2), np.zeros(2), reg=1.0)
    >>> plan.matvec(np.ones(2)).round(4)
    array([1.3679, 1.3679])
    """

    def __init__(self, x, y, f, g, reg: float, a=None, b=None):
        self.x = check_array(x, "x", ndim=2)
        self.y = check_array(y, "y", ndim=2)
        if self.x.shape[1] != self.y.shape[1]:
            raise ValueError(
                f"x and y must have the same dimension, got {self.x.shape[1]} and "
                f"{self.y.shape[1]}."
            )
        n, m = self.x.shape[0], self.y.shape[0]
        self.f = check_array(f, "f", shape=(n,))
        self.g = check_array(g, "g", shape=(m,))
        if not (np.isfinite(reg) and reg > 0):
            raise ValueError(f"reg must be a positive finite number, got {reg!r}.")
        self.reg = float(reg)
        self.a = None if a is None else check_array(a, "a", shape=(n,), nonnegative=True)
        self.b = None if b is None else check_array(b, "b", shape=(m,), nonnegative=True)
        self.shape = (n, m)
        self.dtype = np.dtype(np.float64)
        self._rows_per_tile = max(1, _TILE_ENTRIES // m)

    def _tile(self, rows):
        """The plan's rows ``rows`` (a slice or an index array) as a dense block."""
        sq = ((self.x[rows][:, None, :] - self.y[None, :, :]) ** 2).sum(axis=-1)
        block = np.exp((self.f[rows][:, None] + self.g[None, :] - sq) / self.reg)
        if self.a is not None:
            block *= self.a[rows][:, None]
        if self.b is not None:
            block *= self.b[None, :]
        return block

    def _tiles(self):
        for start in range(0, self.shape[0], self._rows_per_tile):
            rows = slice(start, min(start + self._rows_per_tile, self.shape[0]))
            yield rows, self._tile(rows)

    def matvec(self, v):
        """``P @ v`` for ``v`` of shape (m,) or (m, k)."""
        v = check_array(v, "v", ndim=(1, 2))
        if v.shape[0] != self.shape[1]:
            raise ValueError(f"v must have {self.shape[1]} rows, got {v.shape[0]}.")
        out = np.empty((self.shape[0],) + v.shape[1:])
        for rows, block in self._tiles():
            out[rows] = block @ v
        return out

    def rmatvec(self, u):
        """``P.T @ u`` for ``u`` of shape (n,) or (n, k)."""
        u = check_array(u, "u", ndim=(1, 2))
        if u.shape[0] != self.shape[0]:
            raise ValueError(f"u must have {self.shape[0]} rows, got {u.shape[0]}.")
        out = np.zeros((self.shape[1],) + u.shape[1:])
        for rows, block in self._tiles():
            out += block.T @ u[rows]
        return out

    def sum(self, axis: int | None = None):
        """The total mass (``axis=None``), the column sums (0) or the row sums (1)."""
        if axis is None:
            return float(self.matvec(np.ones(self.shape[1])).sum())
        if axis == 1:
            return self.matvec(np.ones(self.shape[1]))
        if axis == 0:
            return self.rmatvec(np.ones(self.shape[0]))
        raise ValueError(f"axis must be None, 0 or 1, got {axis!r}.")

    def row(self, i: int):
        """Row ``i`` of the plan, shape (m,)."""
        i = int(i)
        if not -self.shape[0] <= i < self.shape[0]:
            raise IndexError(f"row {i} is out of range for {self.shape[0]} rows.")
        return self._tile(np.array([i]))[0]

    def rows(self, idx):
        """Rows ``idx`` of the plan, shape (len(idx), m)."""
        idx = np.asarray(idx, dtype=np.intp).ravel()
        if idx.size and not ((-self.shape[0] <= idx) & (idx < self.shape[0])).all():
            raise IndexError(f"row indices out of range for {self.shape[0]} rows.")
        out = np.empty((idx.size, self.shape[1]))
        for start in range(0, idx.size, self._rows_per_tile):
            chunk = idx[start : start + self._rows_per_tile]
            out[start : start + chunk.size] = self._tile(chunk)
        return out

    def toarray(self):
        """The dense plan; refused above ``2^25`` entries (256 MB)."""
        n, m = self.shape
        if n * m > _MAX_DENSE_ENTRIES:
            raise MemoryError(
                f"a dense {n} x {m} plan has {n * m} entries, above the limit of "
                f"{_MAX_DENSE_ENTRIES}: use matvec/rmatvec/rows instead."
            )
        out = np.empty((n, m))
        for rows, block in self._tiles():
            out[rows] = block
        return out

    def aslinearoperator(self) -> LinearOperator:
        """The plan as a :class:`scipy.sparse.linalg.LinearOperator`."""
        return LinearOperator(
            self.shape, matvec=self.matvec, rmatvec=self.rmatvec,
            matmat=self.matvec, rmatmat=self.rmatvec, dtype=self.dtype,
        )

    def __repr__(self) -> str:
        return f"LazyPlan(shape={self.shape}, reg={self.reg:.3g})"
