"""Kernels of robust ICP: weighted moments of matched pairs (point-to-point), and the
kernel-weighted local planes of the smoothed target surface (the surface refinement)."""

import numpy as np

from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY, exp, fabs, sqrt
from libc.stdlib cimport abort, free, malloc


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


cdef inline void _smallest_eigenvector(double a[3][3], double *out) noexcept nogil:
    """Unit eigenvector of the smallest eigenvalue of the symmetric 3x3 ``a`` (overwritten):
    cyclic Jacobi rotations until the off-diagonal part vanishes at double precision."""
    cdef double v[3][3]
    cdef double theta, t, c, s, akp, akq, scale, off
    cdef int sweep, p, q, k, pair, best
    for p in range(3):
        for q in range(3):
            v[p][q] = 1.0 if p == q else 0.0
    scale = a[0][0] * a[0][0] + a[1][1] * a[1][1] + a[2][2] * a[2][2]
    for sweep in range(50):
        off = a[0][1] * a[0][1] + a[0][2] * a[0][2] + a[1][2] * a[1][2]
        if off <= 1e-32 * scale or off == 0.0:
            break
        for pair in range(3):
            p = 0 if pair < 2 else 1
            q = 1 if pair == 0 else 2
            if a[p][q] == 0.0:
                continue
            # The rotation in the (p, q) plane that zeroes a[p][q] (the smaller angle).
            theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q])
            t = 1.0 / (fabs(theta) + sqrt(theta * theta + 1.0))
            if theta < 0.0:
                t = -t
            c = 1.0 / sqrt(t * t + 1.0)
            s = t * c
            for k in range(3):  # a <- a J
                akp = a[k][p]
                akq = a[k][q]
                a[k][p] = c * akp - s * akq
                a[k][q] = s * akp + c * akq
            for k in range(3):  # a <- J^T a
                akp = a[p][k]
                akq = a[q][k]
                a[p][k] = c * akp - s * akq
                a[q][k] = s * akp + c * akq
            for k in range(3):  # v <- v J
                akp = v[k][p]
                akq = v[k][q]
                v[k][p] = c * akp - s * akq
                v[k][q] = s * akp + c * akq
    best = 0
    for k in range(1, 3):
        if a[k][k] < a[best][best]:
            best = k
    for k in range(3):
        out[k] = v[k][best]


cdef inline void _fit_row(
    const double[:, ::1] X, const double[:, ::1] Q, const Py_ssize_t[:, ::1] idx,
    Py_ssize_t i, double inv_two_h2, bint taper, double* weights, double[::1] residuals,
    double[::1] closest, Py_ssize_t[::1] nearest, double[:, ::1] centres,
    double[:, ::1] normals,
) noexcept nogil:
    # weights: room for idx.shape[1] doubles (the squared distances, then the weights).
    cdef Py_ssize_t k = idx.shape[1]
    cdef Py_ssize_t j, m, first = 0
    cdef double d2, d_min = 0.0, d_max = 0.0, floor = 0.0, wj, total = 0.0
    cdef double diff[3]
    cdef double centre[3]
    cdef double cov[3][3]
    cdef double normal[3]
    cdef int a, b, tapered
    for j in range(k):
        m = idx[i, j]
        d2 = 0.0
        for a in range(3):
            diff[a] = Q[m, a] - X[i, a]
            d2 = d2 + diff[a] * diff[a]
        weights[j] = d2
        if j == 0 or d2 < d_min:
            d_min = d2
            first = j
        if j == 0 or d2 > d_max:
            d_max = d2
    closest[i] = sqrt(d_min)
    nearest[i] = idx[i, first]
    # Gaussian weights relative to the nearest point (no underflow far away); tapered, each
    # minus the farthest member's, so that a point entering or leaving the neighbourhood
    # does so at weight 0 (the planes move continuously with the pose).
    for j in range(k):
        weights[j] = exp((d_min - weights[j]) * inv_two_h2)
    if taper:
        floor = exp((d_min - d_max) * inv_two_h2)
    for tapered in range(2):
        total = 0.0
        for a in range(3):
            centre[a] = 0.0
        for j in range(k):
            m = idx[i, j]
            wj = weights[j] - floor
            total = total + wj
            for a in range(3):
                centre[a] = centre[a] + wj * Q[m, a]
        if total > 0.0:
            break
        floor = 0.0  # all members equidistant: the plain weights
    for a in range(3):
        centre[a] = centre[a] / total
        for b in range(3):
            cov[a][b] = 0.0
    for j in range(k):
        m = idx[i, j]
        wj = (weights[j] - floor) / total
        for a in range(3):
            diff[a] = Q[m, a] - centre[a]
        for a in range(3):
            for b in range(a, 3):
                cov[a][b] = cov[a][b] + wj * diff[a] * diff[b]
    for a in range(3):
        for b in range(a):
            cov[a][b] = cov[b][a]
    _smallest_eigenvector(cov, normal)
    residuals[i] = 0.0
    for a in range(3):
        centres[i, a] = centre[a]
        normals[i, a] = normal[a]
        residuals[i] = residuals[i] + normal[a] * (X[i, a] - centre[a])


def surface_planes(
    const double[:, ::1] X,
    const double[:, ::1] Q,
    const Py_ssize_t[:, ::1] idx,
    double bandwidth,
    bint taper,
    int n_threads,
):
    """Kernel-weighted local plane of each row's neighbourhood ``Q[idx[i]]``.

    Returns ``(residuals, closest, nearest, centres, normals)``: per row of ``X``, the
    offset ``n_i . (x_i - c_i)`` from the plane through the weighted mean ``c_i`` with the
    normal ``n_i`` of the smallest principal axis of the weighted covariance, the distance
    to and the index of the nearest neighbour. Weights ``exp((d_min^2 - d_j^2) / (2 h^2))``,
    each lowered by the farthest member's when ``taper``. Rows in parallel (each row's
    result does not depend on the thread count).
    """
    cdef Py_ssize_t n = X.shape[0]
    cdef Py_ssize_t i
    cdef double inv_two_h2 = 1.0 / (2.0 * bandwidth * bandwidth)
    residuals = np.empty(n)
    closest = np.empty(n)
    nearest = np.empty(n, dtype=np.intp)
    centres = np.empty((n, 3))
    normals = np.empty((n, 3))
    cdef double[::1] r_view = residuals
    cdef double[::1] c_view = closest
    cdef Py_ssize_t[::1] n_view = nearest
    cdef double[:, ::1] ce_view = centres
    cdef double[:, ::1] no_view = normals
    cdef double* weights
    if idx.shape[1] == 0:
        raise ValueError("idx must hold at least one neighbour per row.")
    with nogil, parallel(num_threads=n_threads):
        weights = <double*> malloc(idx.shape[1] * sizeof(double))
        if weights == NULL:
            abort()
        for i in prange(n, schedule="static"):
            _fit_row(X, Q, idx, i, inv_two_h2, taper, weights, r_view, c_view, n_view,
                     ce_view, no_view)
        free(weights)
    return residuals, closest, nearest, centres, normals


def nearest_candidates(
    const double[:, ::1] X,
    const double[:, ::1] Q,
    const Py_ssize_t[:, ::1] candidates,
    Py_ssize_t k,
    int n_threads,
):
    """The ``k`` nearest of each row's candidate points ``Q[candidates[i]]``.

    Returns the indices (n, k), nearest first; equidistant candidates keep their order in
    ``candidates``. Per row, the squared distances to the candidates are insertion-sorted
    (candidates that were sorted at a nearby position are nearly sorted: few moves). Rows in
    parallel (each row's result does not depend on the thread count).
    """
    cdef Py_ssize_t n = X.shape[0]
    cdef Py_ssize_t n_cand = candidates.shape[1]
    cdef Py_ssize_t i, j, s, m
    cdef double d2, dd
    cdef double* dist
    cdef Py_ssize_t* order
    cdef int a
    if k < 1 or k > n_cand:
        raise ValueError(f"k must be in [1, {n_cand}], got {k}.")
    out = np.empty((n, k), dtype=np.intp)
    cdef Py_ssize_t[:, ::1] o_view = out
    with nogil, parallel(num_threads=n_threads):
        dist = <double*> malloc(n_cand * sizeof(double))
        order = <Py_ssize_t*> malloc(n_cand * sizeof(Py_ssize_t))
        if dist == NULL or order == NULL:
            abort()
        for i in prange(n, schedule="static"):
            for j in range(n_cand):
                m = candidates[i, j]
                d2 = 0.0
                for a in range(3):
                    dd = Q[m, a] - X[i, a]
                    d2 = d2 + dd * dd
                # Insert (d2, m) into the sorted prefix [0, j) (stable: after equals).
                s = j
                while s > 0 and dist[s - 1] > d2:
                    dist[s] = dist[s - 1]
                    order[s] = order[s - 1]
                    s = s - 1
                dist[s] = d2
                order[s] = m
            for j in range(k):
                o_view[i, j] = order[j]
        free(dist)
        free(order)
    return out


def cached_nearest(
    const double[:, ::1] X,
    const double[:, ::1] origin,
    const double[:, ::1] Q,
    const Py_ssize_t[:, ::1] candidates,
    const double[::1] near,
    const double[::1] reach,
    double bound,
):
    """The nearest target point within ``bound`` of each row of ``X``, from its candidates.

    Row ``i`` was last searched at ``origin[i]``: ``candidates[i]`` holds every point of
    ``Q`` closer to it than ``reach[i]`` (-1: no more), the nearest at ``near[i]`` (inf if
    none). If the row has moved by ``delta`` with ``near + 2 delta < reach`` (its nearest
    point now lies within ``near + 2 delta`` of the origin) or ``bound + delta < reach``
    (so do all points within ``bound`` of it), its answer is among the candidates;
    otherwise, or when its distance is within rounding of ``bound``, the row is stale.

    Returns ``(dist, idx, stale)``: the distance (inf beyond ``bound``, as a KD-tree's
    bounded search; the same sum of squares and square root, so the same bits) and index
    (-1) of each row, and the indices of the stale rows (their ``dist`` and ``idx`` unset).
    Serial: it costs a fraction of a search and would sit between BLAS calls.
    """
    cdef Py_ssize_t n = X.shape[0]
    cdef Py_ssize_t n_cand = candidates.shape[1]
    cdef Py_ssize_t i, j, m, best, n_stale = 0
    cdef double d2, dd, best_d2, delta, d
    cdef int a
    # Relative slack on the tests: the distances carry rounding errors of ~1e-16.
    cdef double slack = 1.0 + 1e-12
    cdef bint bounded = bound < INFINITY
    dist = np.empty(n, dtype=np.float64)
    idx = np.empty(n, dtype=np.intp)
    stale = np.empty(n, dtype=np.intp)
    cdef double[::1] d_view = dist
    cdef Py_ssize_t[::1] i_view = idx
    cdef Py_ssize_t[::1] s_view = stale
    with nogil:
        for i in range(n):
            d2 = 0.0
            for a in range(3):
                dd = X[i, a] - origin[i, a]
                d2 = d2 + dd * dd
            delta = sqrt(d2)
            if not ((near[i] + 2.0 * delta) * slack < reach[i]
                    or (bound + delta) * slack < reach[i]):
                s_view[n_stale] = i
                n_stale = n_stale + 1
                continue
            best = -1
            best_d2 = INFINITY
            for j in range(n_cand):
                m = candidates[i, j]
                if m < 0:
                    break
                # The KD-trees' sum of squares, in their order: the same distance bits.
                d2 = 0.0
                for a in range(3):
                    dd = Q[m, a] - X[i, a]
                    d2 = d2 + dd * dd
                if d2 < best_d2:
                    best_d2 = d2
                    best = m
            d = sqrt(best_d2)
            if bounded and fabs(d - bound) <= 1e-12 * bound:
                # Within rounding of the bound: the tree decides (d < bound keeps a match).
                s_view[n_stale] = i
                n_stale = n_stale + 1
            elif best >= 0 and d < bound:
                d_view[i] = d
                i_view[i] = best
            else:
                d_view[i] = INFINITY
                i_view[i] = -1
    return dist, idx, stale[:n_stale]
