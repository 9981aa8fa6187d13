"""Repeated solves of sparse symmetric positive definite systems with a fixed pattern.

SPARE's v-step solves ``H x = b`` once per outer iteration; ``H`` changes its values but not
its pattern (the ARAP Laplacian plus 3x3 diagonal blocks). Two back ends:

- ``"cholespy"``: a sparse Cholesky factorization (CHOLMOD, through the optional
  ``cholespy`` package, ``pip install mmopt[cholesky]``). cholespy offers no numeric-only
  refactorization, so every solve analyses the pattern again.
- ``"superlu"``: scipy's SuperLU. The first factorization picks the column order (COLAMD);
  later ones reuse it (``permc_spec="NATURAL"`` on the permuted columns), which skips the
  ordering step: the pattern, hence the order's quality, does not change.

``"auto"`` takes cholespy when it can be imported, SuperLU otherwise.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from mmopt._core.validation import check_choice

__all__ = ["LINEAR_SOLVERS", "SPDSolver", "cholespy_available"]

LINEAR_SOLVERS = ("auto", "cholespy", "superlu")


def cholespy_available() -> bool:
    """True when the optional ``cholespy`` package can be imported."""
    try:
        import cholespy  # noqa: F401
    except ImportError:
        return False
    return True


class SPDSolver:
    """Solves ``H x = b`` for a sequence of SPD matrices ``H`` sharing one pattern.

    One instance serves one run (it remembers SuperLU's column order after its first
    factorization); it is not shared between threads.

    Parameters
    ----------
    method : {"auto", "cholespy", "superlu"}, default="auto"
        The back end (see the module notes).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from mmopt.registration._spd_solve import SPDSolver
    >>> H = sp.diags([4.0, 5.0, 6.0]).tocsc()
    >>> SPDSolver("superlu").solve(H, np.array([4.0, 10.0, 18.0]))
    array([1., 2., 3.])
    """

    def __init__(self, method: str = "auto"):
        check_choice(method, "linear_solver", LINEAR_SOLVERS)
        if method == "auto":
            method = "cholespy" if cholespy_available() else "superlu"
        elif method == "cholespy" and not cholespy_available():
            raise ImportError(
                "linear_solver='cholespy' needs the optional cholespy package "
                "(pip install cholespy); use 'superlu' or 'auto'."
            )
        self.method = method
        self._columns: np.ndarray | None = None  # SuperLU's column order, once chosen

    def solve(self, H: sp.spmatrix, rhs: np.ndarray) -> np.ndarray:
        """The solution of ``H x = rhs`` (``rhs`` of shape (n,) or (n, k))."""
        H = sp.csc_matrix(H)
        if self.method == "cholespy":
            return self._cholespy(H, rhs)
        return self._superlu(H, rhs)

    @staticmethod
    def _cholespy(H: sp.csc_matrix, rhs: np.ndarray) -> np.ndarray:
        from cholespy import CholeskySolverD, MatrixType

        factor = CholeskySolverD(H.shape[0], H.indptr.astype(np.int32),
                                 H.indices.astype(np.int32),
                                 np.ascontiguousarray(H.data, dtype=np.float64),
                                 MatrixType.CSC)
        b = np.ascontiguousarray(rhs, dtype=np.float64)
        x = np.zeros_like(b)
        factor.solve(b, x)
        return x

    def _superlu(self, H: sp.csc_matrix, rhs: np.ndarray) -> np.ndarray:
        if self._columns is None:
            lu = splu(H, permc_spec="COLAMD")
            # perm_c maps a column to its place: the order is its inverse.
            self._columns = np.argsort(lu.perm_c)
            return lu.solve(rhs)
        cols = self._columns
        y = splu(H[:, cols], permc_spec="NATURAL").solve(rhs)
        x = np.empty_like(y)
        x[cols] = y
        return x
