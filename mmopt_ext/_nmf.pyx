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
    # Bounds are not checked inside the loops (boundscheck=False): check the shapes once, so
    # that mismatched inputs are an error instead of reads and writes out of bounds.
    if ratio.shape[0] != data.shape[0] or indices.shape[0] != data.shape[0]:
        raise ValueError("data, indices and ratio must have the same length.")
    if n_rows < 0 or W.shape[0] != n_rows or Ht.shape[1] != n_components:
        raise ValueError("W must have one row per row of X and Ht as many columns as W.")
    if n_rows > 0 and (indptr[0] != 0 or indptr[n_rows] > data.shape[0]):
        raise ValueError("indptr does not describe the stored entries.")
    for i in range(n_rows):
        if indptr[i + 1] < indptr[i]:
            raise ValueError("indptr must be non-decreasing.")
    for s in range(data.shape[0]):
        if indices[s] < 0 or indices[s] >= Ht.shape[0]:
            raise ValueError("a column index of X is out of range of H.")
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


def multiplicative_update(
    const double[:, ::1] factor,
    const double[:, ::1] numerator,
    const double[:, ::1] denominator,
    double[:, ::1] out,
    double eps,
):
    """One multiplicative update ``out = factor * numerator / denominator``, fused.

    A zero denominator is replaced by ``eps``. In the same pass, returns the four sums
    ``(<numerator, factor>, <denominator, factor>, ||out - factor||^2, ||factor||^2)``: the
    first two give the Frobenius objective at ``factor`` for free, the last two the length of
    the MM step.

    Serial on purpose: the loop is memory-bound, and an OpenMP team started between the BLAS
    products around it made each iteration ~50x slower on 2 cores (both thread pools spin).
    """
    cdef Py_ssize_t n_rows = factor.shape[0]
    cdef Py_ssize_t n_cols = factor.shape[1]
    cdef Py_ssize_t i, j
    cdef double f, num, den, new
    cdef double d_num = 0.0, d_den = 0.0, d_step = 0.0, d_norm = 0.0
    for i in range(2):
        if (numerator.shape[i] != factor.shape[i] or denominator.shape[i] != factor.shape[i]
                or out.shape[i] != factor.shape[i]):
            raise ValueError("factor, numerator, denominator and out must have one shape.")
    with nogil:
        for i in range(n_rows):
            for j in range(n_cols):
                f = factor[i, j]
                num = numerator[i, j]
                den = denominator[i, j]
                d_num += num * f
                d_den += den * f
                if den == 0.0:
                    den = eps
                new = f * (num / den)
                out[i, j] = new
                d_step += (new - f) * (new - f)
                d_norm += f * f
    return d_num, d_den, d_step, d_norm
