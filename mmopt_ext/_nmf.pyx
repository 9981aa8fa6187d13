"""Kernels of the multiplicative-update NMF (Kullback-Leibler loss on sparse data)."""

from cython.parallel cimport prange


def sparse_ratio_and_kl(
    const double[::1] data,
    const int[::1] indices,
    const int[::1] indptr,
    const double[:, ::1] W,
    const double[:, ::1] Ht,
    double[::1] ratio,
    double eps,
    int n_threads,
):
    """For each stored entry (i, j) of a CSR matrix X, set ``ratio = X_ij / (W H)_ij``.

    Only the stored entries of ``W @ H`` are formed, so a sparse X never becomes dense.
    Returns the sum over stored entries of ``X_ij * log(X_ij / (W H)_ij)``, the data part of
    the generalized Kullback-Leibler divergence. ``Ht`` is ``H.T`` in C order so both factors
    are read along contiguous rows.
    """
    cdef Py_ssize_t n_rows = indptr.shape[0] - 1
    cdef Py_ssize_t n_components = W.shape[1]
    cdef Py_ssize_t i, j, s, c
    cdef double wh, x
    cdef double[::1] row_kl = _zeros(n_rows)
    with nogil:
        for i in prange(n_rows, schedule="static", num_threads=n_threads):
            for s in range(indptr[i], indptr[i + 1]):
                j = indices[s]
                wh = 0.0
                for c in range(n_components):
                    wh = wh + W[i, c] * Ht[j, c]
                if wh < eps:
                    wh = eps
                x = data[s]
                ratio[s] = x / wh
                if x > 0.0:
                    row_kl[i] += x * _log(x / wh)
    cdef double total = 0.0
    for i in range(n_rows):
        total += row_kl[i]
    return total


cdef extern from "math.h" nogil:
    double _log "log"(double)


cdef double[::1] _zeros(Py_ssize_t n):
    import numpy as np
    return np.zeros(n, dtype=np.float64)
