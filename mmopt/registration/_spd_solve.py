"""Repeated solves of sparse symmetric positive definite systems with a fixed pattern.

SPARE's v-step solves ``H x = b`` once per outer iteration; ``H`` changes its values but not
its pattern (the ARAP Laplacian plus 3x3 diagonal blocks). Two back ends:

- ``"cholespy"``: a sparse Cholesky factorization (CHOLMOD, through the optional
  ``cholespy`` package, ``pip install mmopt[cholesky]``). cholespy offers no numeric-only
  refactorization, so every solve analyses the pattern again.
- ``"superlu"``: scipy's SuperLU in its symmetric mode: a symmetric fill-reducing order
  (minimum degree on the pattern, by blocks of ``block_size`` unknowns) chosen once for the
  pattern, and the diagonal as pivot (no row exchanges: ``H`` is SPD, so LU without
  pivoting is Cholesky's factorization up to a diagonal scaling and as stable). The fill is
  then a function of the pattern alone. With SuperLU's default partial pivoting and a
  column order (COLAMD), rows were exchanged where the diagonal was weak (SPARE's rejected
  pairs leave only the ARAP and proximal terms there), and the fill grew with the number
  of such rows (the user guide has the figures).

``"auto"`` is SuperLU: in its symmetric mode it was the faster of the two on SPARE's
systems with cholespy installed (the user guide has the figures); cholespy stays an option.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from mmopt._core.validation import check_choice, check_scalar

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
    block_size : int, default=1
        SuperLU's order keeps the unknowns ``block_size * i .. block_size * (i + 1) - 1``
        together (SPARE's three coordinates of a point: its blocks are coupled as wholes).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from mmopt.registration._spd_solve import SPDSolver
    >>> H = sp.diags([4.0, 5.0, 6.0]).tocsc()
    >>> SPDSolver("superlu").solve(H, np.array([4.0, 10.0, 18.0]))
    array([1., 2., 3.])
    """

    def __init__(self, method: str = "auto", block_size: int = 1):
        check_choice(method, "linear_solver", LINEAR_SOLVERS)
        self.block_size = check_scalar(block_size, "block_size", kind=int, min_value=1)
        if method == "auto":
            method = "superlu"
        elif method == "cholespy" and not cholespy_available():
            raise ImportError(
                "linear_solver='cholespy' needs the optional cholespy package "
                "(pip install cholespy); use 'superlu' or 'auto'."
            )
        self.method = method
        # SuperLU's symmetric order for one pattern: the pattern (indptr, indices), the order
        # and where the permuted matrix takes each of its values from H's data.
        self._pattern: tuple[np.ndarray, np.ndarray] | None = None
        self._order: np.ndarray | None = None
        self._permuted: sp.csc_matrix | None = None
        self._source: np.ndarray | None = None

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
        if not H.has_canonical_format:  # sorted, no duplicates (a copy: H is the caller's)
            H = H.copy()
            H.sum_duplicates()
        if self._pattern is None or not (
                np.array_equal(self._pattern[0], H.indptr)
                and np.array_equal(self._pattern[1], H.indices)):
            self._set_pattern(H)
        P = self._permuted
        P = sp.csc_matrix((H.data[self._source], P.indices, P.indptr), shape=P.shape)
        lu = splu(P, permc_spec="NATURAL", diag_pivot_thresh=0.0,
                  options={"SymmetricMode": True})
        order = self._order
        y = lu.solve(np.asarray(rhs)[order])
        x = np.empty_like(y)
        x[order] = y
        return x

    def _set_pattern(self, H: sp.csc_matrix) -> None:
        """Choose the symmetric order of ``H``'s pattern and the permuted pattern."""
        self._pattern = (H.indptr.copy(), H.indices.copy())
        self._order = order = _symmetric_order(H, self.block_size)
        # The permuted matrix's entries, each labelled by its place in H's data (from 1:
        # no label is an explicit zero that an operation could drop).
        labels = sp.csc_matrix((np.arange(1, H.nnz + 1, dtype=float), H.indices, H.indptr),
                               shape=H.shape)
        P = labels[order][:, order].tocsc()
        P.sort_indices()
        self._source = P.data.astype(np.intp) - 1
        self._permuted = P


def _symmetric_order(H: sp.csc_matrix, block_size: int) -> np.ndarray:
    """A fill-reducing symmetric order of ``H``'s pattern: SuperLU's minimum degree on
    ``A^T + A`` for the graph of its blocks (``block_size`` unknowns each), blocks expanded."""
    n = H.shape[0]
    b = block_size if n % block_size == 0 else 1
    coo = H.tocoo()
    rows, cols = coo.row // b, coo.col // b
    off = rows != cols
    m = n // b
    # The symmetrized pattern with the values of a strictly diagonally dominant matrix
    # (nonsingular): SuperLU orders by the pattern, but returns the order by factorizing.
    G = sp.csc_matrix((np.ones(off.sum()), (rows[off], cols[off])), shape=(m, m))
    G = (G + G.T).tocsc()
    G.data[:] = -1.0
    G = (G + sp.diags(np.diff(G.indptr) + 1.0)).tocsc()
    lu = splu(G, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
              options={"SymmetricMode": True})
    blocks = np.argsort(lu.perm_c)  # perm_c maps a column to its place: the order is its inverse
    return (b * blocks[:, None] + np.arange(b)).ravel()
