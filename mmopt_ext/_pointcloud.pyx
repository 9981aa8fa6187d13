"""Log-domain Sinkhorn kernels for point clouds: the cost is computed inside the loop.

``online_softmin`` is the row update of :func:`mmopt_ext._sinkhorn.log_half_step` with
``C_ij = cost(x_i, y_j)`` computed block by block into a small per-thread buffer (never an
n x m array: memory O(n + m)); ``sparse_softmin`` is the same update restricted to kept
pairs given in compressed-row form with their costs. Both return, per row::

    f_new_i  = reg * (log_a_i - logsumexp_j((g_j - C_ij) / reg))
    row_mass_i = sum_j exp((f_old_i + g_j - C_ij) / reg)      # the plan's row sum at f_old

exactly at any magnitude (a running maximum shifts the exponentials), rows in parallel.
Costs: kind 0 ``|x - y|^2``, kind 1 ``|x - y|``, kind 2 ``|x - y|^p``.
"""

from cython.parallel cimport parallel, prange
from libc.math cimport exp, log, pow, sqrt, INFINITY
from libc.stdlib cimport free, malloc

cdef extern from "_expsum.h" nogil:
    ctypedef double (*mmopt_expsum_fn)(const double*, const double*, double, double, Py_ssize_t)
    mmopt_expsum_fn mmopt_expsum
    int mmopt_expsum_select(int which)
    int mmopt_expsum_path

from mmopt_ext._sinkhorn import _PATHS, requested_exp_path

# The path MMOPT_EXP_PATH names (same indices as _sinkhorn's), else the fastest.
mmopt_expsum_select(requested_exp_path())


def exp_path():
    """The name of the ``exp`` path these kernels use."""
    return _PATHS[mmopt_expsum_path]

# Columns per block of the online kernel: 3 blocks of 512 doubles stay in L1.
DEF BLOCK = 512


cdef inline double _cost(
    const double* xi, const double* yj, Py_ssize_t d, int kind, double p
) noexcept nogil:
    cdef double s = 0.0, t
    cdef Py_ssize_t k
    if d == 2:
        t = xi[0] - yj[0]
        s = t * t
        t = xi[1] - yj[1]
        s = s + t * t
    elif d == 3:
        t = xi[0] - yj[0]
        s = t * t
        t = xi[1] - yj[1]
        s = s + t * t
        t = xi[2] - yj[2]
        s = s + t * t
    else:
        for k in range(d):
            t = xi[k] - yj[k]
            s = s + t * t
    if kind == 0:
        return s
    if kind == 1:
        return sqrt(s)
    return pow(s, 0.5 * p)


cdef inline void _finish_row(
    double best, double total, double reg, double inv_reg, double f_old, double log_a,
    double* f_new, double* row_mass,
) noexcept nogil:
    """Outputs of one row from its largest ``g_j - C_ij`` and the shifted sum."""
    cdef double lse
    if best == -INFINITY or total <= 0.0:  # an empty row: no finite potential
        f_new[0] = INFINITY
        row_mass[0] = 0.0
        return
    lse = best * inv_reg + log(total)
    f_new[0] = reg * (log_a - lse)
    row_mass[0] = exp(f_old * inv_reg + lse)


def online_softmin(
    const double[:, ::1] x,
    const double[:, ::1] y,
    const double[::1] g,
    const double[::1] f_old,
    const double[::1] log_a,
    double reg,
    int kind,
    double p,
    double[::1] f_new,
    double[::1] row_mass,
    int n_threads,
):
    """Row update with ``C_ij = cost(x_i, y_j)`` computed online (see the module docstring).

    ``x`` (n, d) and ``y`` (m, d) are C-contiguous; pass them swapped (and ``f``, ``g``
    swapped) for the column update. Each thread keeps one block of 512 costs; the running
    maximum of ``g_j - C_ij`` rescales the partial sum when a block raises it.
    """
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t m = y.shape[0]
    cdef Py_ssize_t d = x.shape[1]
    cdef Py_ssize_t i, j, j0, width
    cdef double inv_reg = 1.0 / reg
    cdef double best, block_best, total, t
    cdef double* buffer
    if m == 0 or n == 0:
        return
    with nogil, parallel(num_threads=n_threads):
        buffer = <double*>malloc(BLOCK * sizeof(double))
        for i in prange(n, schedule="static"):
            best = -INFINITY
            total = 0.0
            for j0 in range(0, m, BLOCK):
                width = min(BLOCK, m - j0)
                block_best = -INFINITY
                for j in range(width):
                    buffer[j] = _cost(&x[i, 0], &y[j0 + j, 0], d, kind, p)
                    t = g[j0 + j] - buffer[j]
                    if t > block_best:
                        block_best = t
                if block_best > best:
                    if best > -INFINITY:
                        total = total * exp((best - block_best) * inv_reg)
                    best = block_best
                if best > -INFINITY:
                    # sum_j exp((g_j - C_ij - best) / reg), every exponent <= 0.
                    total = total + mmopt_expsum(buffer, &g[j0], -best, inv_reg, width)
            _finish_row(best, total, reg, inv_reg, f_old[i], log_a[i], &f_new[i], &row_mass[i])
        free(buffer)


def sparse_softmin(
    const long long[::1] indptr,
    const int[::1] indices,
    const double[::1] cost,
    const double[::1] g,
    const double[::1] f_old,
    const double[::1] log_a,
    double reg,
    double[::1] f_new,
    double[::1] row_mass,
    int n_threads,
):
    """Row update over the kept pairs of a compressed-row pattern with costs ``cost``.

    Row ``i`` keeps columns ``indices[indptr[i]:indptr[i + 1]]`` with costs ``cost`` at the
    same positions; a row with no pair gets ``f_new = inf`` and ``row_mass = 0``. Pass the
    transposed pattern (compressed columns) for the column update.
    """
    cdef Py_ssize_t n = indptr.shape[0] - 1
    cdef Py_ssize_t i, e, start, width, widest = 0
    cdef double inv_reg = 1.0 / reg
    cdef double best, total, t
    cdef double* gathered
    for i in range(n):
        widest = max(widest, <Py_ssize_t>(indptr[i + 1] - indptr[i]))
    with nogil, parallel(num_threads=n_threads):
        gathered = <double*>malloc((widest + 1) * sizeof(double))
        for i in prange(n, schedule="guided"):
            start = indptr[i]
            width = indptr[i + 1] - start
            best = -INFINITY
            for e in range(width):
                gathered[e] = g[indices[start + e]]
                t = gathered[e] - cost[start + e]
                if t > best:
                    best = t
            total = 0.0
            if best > -INFINITY:
                total = mmopt_expsum(&cost[start], gathered, -best, inv_reg, width)
            _finish_row(best, total, reg, inv_reg, f_old[i], log_a[i], &f_new[i], &row_mass[i])
        free(gathered)


def pair_costs(
    const double[:, ::1] x,
    const double[:, ::1] y,
    const long long[::1] indptr,
    const int[::1] indices,
    int kind,
    double p,
    double[::1] out,
    int n_threads,
):
    """``out[e] = cost(x_i, y_indices[e])`` for every kept pair ``e`` of row ``i``."""
    cdef Py_ssize_t n = indptr.shape[0] - 1
    cdef Py_ssize_t d = x.shape[1]
    cdef Py_ssize_t i, e
    with nogil:
        for i in prange(n, schedule="guided", num_threads=n_threads):
            for e in range(indptr[i], indptr[i + 1]):
                out[e] = _cost(&x[i, 0], &y[indices[e], 0], d, kind, p)


# Depth bound of the DFS stacks of the tree searches (a tree over < 2^60 points).
DEF STACK = 128


cdef inline double _box_distance2(
    const double* xi, const double* lo, const double* hi, Py_ssize_t d
) noexcept nogil:
    """Squared distance from ``xi`` to the box ``[lo, hi]``."""
    cdef double s = 0.0, t
    cdef Py_ssize_t k
    for k in range(d):
        t = lo[k] - xi[k]
        if t > 0.0:
            s = s + t * t
        else:
            t = xi[k] - hi[k]
            if t > 0.0:
                s = s + t * t
    return s


cdef double _best_reduced(
    const double* xi, const double[:, ::1] points, const double[::1] psi,
    const double[:, ::1] lo, const double[:, ::1] hi, const long long[::1] start,
    const double[::1] node_max, Py_ssize_t first_leaf, Py_ssize_t d, long long* stack,
) noexcept nogil:
    """``min_j |x_i - y_j|^2 - psi_j`` by branch and bound over the tree."""
    cdef double best = INFINITY, bound, value
    cdef Py_ssize_t top = 1, node, e, left
    stack[0] = 0
    while top > 0:
        top = top - 1
        node = stack[top]
        bound = _box_distance2(xi, &lo[node, 0], &hi[node, 0], d) - node_max[node]
        if bound >= best:
            continue
        if node >= first_leaf:
            for e in range(start[node], start[node + 1]):
                value = _cost(xi, &points[e, 0], d, 0, 2.0) - psi[e]
                if value < best:
                    best = value
            continue
        left = 2 * node + 1
        # The nearer child last, so that it is searched first.
        if (_box_distance2(xi, &lo[left, 0], &hi[left, 0], d) - node_max[left]
                <= _box_distance2(xi, &lo[left + 1, 0], &hi[left + 1, 0], d)
                - node_max[left + 1]):
            stack[top] = left + 1
            stack[top + 1] = left
        else:
            stack[top] = left
            stack[top + 1] = left + 1
        top = top + 2
    return best


cdef Py_ssize_t _ball(
    const double* xi, double radius, const double[:, ::1] points, const double[::1] psi,
    const double[:, ::1] lo, const double[:, ::1] hi, const long long[::1] start,
    const double[::1] node_max, Py_ssize_t first_leaf, Py_ssize_t d, long long* stack,
    const long long[::1] order, int* out_index, double* out_cost,
) noexcept nogil:
    """The points with ``|x_i - y_j|^2 - psi_j <= radius``: counted, and written to
    ``out_index`` (original indices) and ``out_cost`` (``|x_i - y_j|^2``) unless NULL."""
    cdef Py_ssize_t top = 1, node, e, count = 0
    cdef double c
    stack[0] = 0
    while top > 0:
        top = top - 1
        node = stack[top]
        if _box_distance2(xi, &lo[node, 0], &hi[node, 0], d) - node_max[node] > radius:
            continue
        if node >= first_leaf:
            for e in range(start[node], start[node + 1]):
                c = _cost(xi, &points[e, 0], d, 0, 2.0)
                if c - psi[e] <= radius:
                    if out_index != NULL:
                        out_index[count] = <int>order[e]
                        out_cost[count] = c
                    count = count + 1
            continue
        stack[top] = 2 * node + 1
        stack[top + 1] = 2 * node + 2
        top = top + 2
    return count


def tree_ball_pairs(
    const double[:, ::1] x,
    const double[::1] phi,
    const double[:, ::1] points,
    const double[::1] psi,
    const long long[::1] order,
    const double[:, ::1] lo,
    const double[:, ::1] hi,
    const long long[::1] start,
    const double[::1] node_max,
    Py_ssize_t first_leaf,
    double threshold,
    long long[::1] counts,
    double[::1] phi_eff,
    int[::1] indices,
    double[::1] cost,
    const long long[::1] indptr,
    int fill,
    int n_threads,
):
    """Per row ``i`` of ``x``, the tree's points ``j`` with
    ``|x_i - y_j|^2 - psi_j <= max(phi_i, min_l |x_i - y_l|^2 - psi_l) + threshold``.

    The tree is an implicit complete binary tree (children ``2k + 1``, ``2k + 2``; leaves
    from ``first_leaf`` on, leaf ``k`` holding the points ``start[k]:start[k + 1]`` of
    ``points``, which are ``y[order]``, and ``psi`` in that order) with boxes ``lo``, ``hi``
    and ``node_max`` the largest ``psi`` below each node. With ``fill = 0`` it writes
    ``counts`` and ``phi_eff`` (the max above); with ``fill = 1`` it writes the pairs'
    original indices and squared distances into ``indices[indptr[i]:]`` and ``cost``.
    """
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t d = x.shape[1]
    cdef Py_ssize_t i
    cdef long long* stack
    if n == 0:
        return
    with nogil, parallel(num_threads=n_threads):
        stack = <long long*>malloc(STACK * sizeof(long long))
        for i in prange(n, schedule="guided"):
            if fill == 0:
                phi_eff[i] = max(phi[i], _best_reduced(
                    &x[i, 0], points, psi, lo, hi, start, node_max, first_leaf, d, stack))
                counts[i] = _ball(&x[i, 0], phi_eff[i] + threshold, points, psi, lo, hi,
                                  start, node_max, first_leaf, d, stack, order, NULL, NULL)
            else:
                _ball(&x[i, 0], phi_eff[i] + threshold, points, psi, lo, hi, start,
                      node_max, first_leaf, d, stack, order, &indices[indptr[i]],
                      &cost[indptr[i]])
        free(stack)
