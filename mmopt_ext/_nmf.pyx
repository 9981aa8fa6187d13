"""Kernels of the multiplicative-update NMF (Kullback-Leibler loss on sparse data)."""

from cython.parallel cimport prange
from libc.math cimport log

import numpy as np


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
    """For each stored entry (i, j) of a CSR matrix X, set ``ratio = X_ij / max((W H)_ij, eps)``.

    Only the stored entries of ``W @ H`` are formed, so a sparse X never becomes dense.
    Returns the sum over stored entries of ``X_ij * log(X_ij / max((W H)_ij, eps))``, the
    data term of the generalized Kullback-Leibler divergence. ``Ht`` is ``H.T`` in C order so
    that both factors are read along contiguous rows.
    """
    cdef Py_ssize_t n_rows = indptr.shape[0] - 1
    cdef Py_ssize_t n_components = W.shape[1]
    cdef Py_ssize_t i, j, s, c
    cdef double wh, x, acc
    cdef double[::1] row_kl = np.zeros(n_rows, dtype=np.float64)
    cdef double total = 0.0
    with nogil:
        for i in prange(n_rows, schedule="static", num_threads=n_threads):
            acc = 0.0
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
                    acc = acc + x * log(x / wh)
            row_kl[i] = acc
        # Summing the per-row terms in a fixed order keeps the result independent of the
        # number of threads.
        for i in range(n_rows):
            total += row_kl[i]
    return total
