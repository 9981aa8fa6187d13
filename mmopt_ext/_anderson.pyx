"""The step of :class:`mmopt._core.anderson.BatchedAnderson` for many small histories.

:func:`batched_update` records each problem's pair ``(x, G(x))`` in its ring of
differences, keeps its Gram matrix up to date, solves its column-normalized regularized
normal equations (LAPACK ``dsyev`` for the condition test, ``dgesv`` for the solve, as
NumPy's ``eigvalsh`` and ``solve`` do) and writes the extrapolated point: one pass over a
problem's buffers and one over its iterate, instead of some fifty NumPy calls per step,
which for a few problems of a thousand entries cost more than the arithmetic. Problems
whose full system is ill-conditioned are flagged for the caller's one-by-one fallback
(dropping old columns), which stays in Python.
"""

from cython.parallel import prange
from libc.math cimport isfinite, sqrt
from scipy.linalg.cython_blas cimport dgemv
from scipy.linalg.cython_lapack cimport dgesv, dsyev

# Largest memory the fixed-size work arrays of the small solves hold.
DEF MAX_MEMORY = 64
MEMORY_LIMIT = MAX_MEMORY


cdef int _solve_one(
    const double[:, ::1] gram, const double[::1] rhs, Py_ssize_t used, Py_ssize_t memory,
    double regularization, double max_condition, double[::1] theta,
) noexcept nogil:
    """theta of one history from its Gram matrix (the first ``used`` slots hold
    columns); returns 1, or 0 when the full normalized system is not usable."""
    cdef double A[MAX_MEMORY * MAX_MEMORY]
    cdef double E[MAX_MEMORY * MAX_MEMORY]
    cdef double norms[MAX_MEMORY]
    cdef double w[MAX_MEMORY]
    cdef double work[3 * MAX_MEMORY]
    cdef int ipiv[MAX_MEMORY]
    cdef int n = <int>used, nrhs = 1, lwork = 3 * MAX_MEMORY, info = 0
    cdef Py_ssize_t c, e
    cdef double low, high, value
    cdef char jobz = b'N'
    cdef char uplo = b'U'
    for c in range(used):
        value = gram[c, c]
        if not value > 0:  # (also False for NaN)
            return 0
        norms[c] = sqrt(value)
    for c in range(used):
        for e in range(used):
            value = gram[c, e] / (norms[c] * norms[e])
            if c == e:
                value = value + regularization
            if not isfinite(value):
                return 0
            A[c * n + e] = value
            E[c * n + e] = value
    dsyev(&jobz, &uplo, &n, E, &n, w, work, &lwork, &info)
    if info != 0:
        return 0
    low, high = w[0], w[n - 1]
    if used < memory:  # the unused slots: an identity block (eigenvalue 1 + regularization)
        low = min(low, 1.0 + regularization)
        high = max(high, 1.0 + regularization)
    if not (low > 0 and sqrt(high / low) <= max_condition):
        return 0
    for c in range(used):
        w[c] = rhs[c] / norms[c]
    dgesv(&n, &nrhs, A, &n, ipiv, w, &n, &info)
    if info != 0:
        return 0
    for c in range(memory):
        theta[c] = 0.0
    for c in range(used):
        value = w[c] / norms[c]
        if not isfinite(value):
            return 0
        theta[c] = value
    return 1


def batched_update(
    const double[:, ::1] X,
    const double[:, ::1] G,
    const Py_ssize_t[::1] rows,
    double[:, :, ::1] dG,
    double[:, :, ::1] dR,
    double[:, :, ::1] gram,
    double[:, ::1] g_prev,
    double[:, ::1] r_prev,
    unsigned char[::1] has_prev,
    Py_ssize_t[::1] n_cols,
    Py_ssize_t[::1] next_col,
    Py_ssize_t[::1] since_reset,
    int delay,
    double regularization,
    double max_condition,
    double damping,
    double[:, ::1] out,
    double[:, ::1] rhs,
    double[:, ::1] theta,
    signed char[::1] state,
    int n_threads,
):
    """One step of the histories ``rows`` (row ``i`` of ``X``, ``G`` is problem
    ``rows[i]``'s pair), in place on the accelerator's arrays.

    Writes ``out[i]``: the extrapolated point where ``state[i] == 1``, else ``G[i]``;
    ``state[i]`` is 0 where nothing was to be extrapolated (short history, delay) and 2
    where the full normalized system was unusable (``rhs[i]``, the history's products
    with the newest residual, is then left for the caller's fallback).
    """
    cdef Py_ssize_t k = rows.shape[0]
    cdef Py_ssize_t m = X.shape[1]
    cdef Py_ssize_t memory = dG.shape[1]
    cdef Py_ssize_t i, j, c, row, col
    cdef double r
    # BLAS arguments (a history's buffer of memory rows of m entries is, for Fortran, an
    # m x memory matrix with leading dimension m)
    cdef int bm = <int>m, bmem = <int>memory, one = 1
    cdef double alpha_one = 1.0, alpha_minus = -1.0, zero = 0.0, rest = 1.0 - damping
    cdef char trans = b'T'
    cdef char plain = b'N'
    if memory > MAX_MEMORY:
        raise ValueError(f"memory must be at most {MAX_MEMORY} here, got {memory}.")
    for i in prange(k, schedule="static", num_threads=n_threads, nogil=True):
        row = rows[i]
        if has_prev[row]:
            col = next_col[row]
            for j in range(m):
                r = G[i, j] - X[i, j]
                dG[row, col, j] = G[i, j] - g_prev[row, j]
                dR[row, col, j] = r - r_prev[row, j]
                g_prev[row, j] = G[i, j]
                r_prev[row, j] = r
            # the Gram matrix's row and column of the new slot: dR dR[col]
            dgemv(&trans, &bm, &bmem, &alpha_one, &dR[row, 0, 0], &bm, &dR[row, col, 0],
                  &one, &zero, &gram[row, col, 0], &one)
            for c in range(memory):
                gram[row, c, col] = gram[row, col, c]
            next_col[row] = (col + 1) % memory
            n_cols[row] = min(n_cols[row] + 1, memory)
        else:
            for j in range(m):
                g_prev[row, j] = G[i, j]
                r_prev[row, j] = G[i, j] - X[i, j]
        has_prev[row] = 1
        since_reset[row] = since_reset[row] + 1
        state[i] = 0
        if n_cols[row] > 0 and since_reset[row] > delay:
            dgemv(&trans, &bm, &bmem, &alpha_one, &dR[row, 0, 0], &bm, &r_prev[row, 0],
                  &one, &zero, &rhs[i, 0], &one)
            if _solve_one(gram[row], rhs[i], n_cols[row], memory, regularization,
                          max_condition, theta[i]):
                state[i] = 1
            else:
                state[i] = 2
        if state[i] == 1 and damping != 1.0:
            # x + damping r - dG theta + (1 - damping) dR theta
            for j in range(m):
                out[i, j] = X[i, j] + damping * r_prev[row, j]
            dgemv(&plain, &bm, &bmem, &rest, &dR[row, 0, 0], &bm, &theta[i, 0], &one,
                  &alpha_one, &out[i, 0], &one)
        else:
            for j in range(m):
                out[i, j] = G[i, j]
        if state[i] == 1:
            dgemv(&plain, &bm, &bmem, &alpha_minus, &dG[row, 0, 0], &bm, &theta[i, 0],
                  &one, &alpha_one, &out[i, 0], &one)
