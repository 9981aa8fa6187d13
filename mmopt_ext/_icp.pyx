"""Kernel of robust point-to-point ICP: weighted moments of matched pairs, in one pass."""

import numpy as np


def weighted_pair_moments(
    const double[:, ::1] P,
    const double[:, ::1] Q,
    const Py_ssize_t[::1] idx,
    const double[::1] w,
):
    """Moments of the pairs ``(P[i], Q[idx[i]])`` with weights ``w[i]`` (``idx[i] < 0`` skipped).

    Returns ``(total, p_sum, q_sum, cross, p_sq)``: ``sum w``, ``sum w p`` (3),
    ``sum w q`` (3), ``sum w p q^T`` (3x3) and ``sum w |p|^2``, gathered without copying the
    matched rows. Serial on purpose: the sums are reductions (a fixed summation order keeps
    the result independent of the thread count) and the pass costs well under a millisecond.
    """
    cdef Py_ssize_t n = P.shape[0]
    cdef Py_ssize_t i, a, b, j
    cdef double wi, total = 0.0, p_sq = 0.0
    cdef double ps[3]
    cdef double qs[3]
    cdef double cr[9]
    cdef double pv[3]
    cdef double qv[3]
    for a in range(3):
        ps[a] = 0.0
        qs[a] = 0.0
    for a in range(9):
        cr[a] = 0.0
    with nogil:
        for i in range(n):
            j = idx[i]
            wi = w[i]
            if j < 0 or wi == 0.0:
                continue
            total += wi
            for a in range(3):
                pv[a] = P[i, a]
                qv[a] = Q[j, a]
                ps[a] += wi * pv[a]
                qs[a] += wi * qv[a]
                p_sq += wi * pv[a] * pv[a]
            for a in range(3):
                for b in range(3):
                    cr[3 * a + b] += wi * pv[a] * qv[b]
    p_sum = np.array([ps[0], ps[1], ps[2]])
    q_sum = np.array([qs[0], qs[1], qs[2]])
    cross = np.array([cr[a] for a in range(9)]).reshape(3, 3)
    return total, p_sum, q_sum, cross, p_sq
