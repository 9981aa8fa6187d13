"""Column-wise conjugates of sparsity-constrained optimal transport, columns in parallel.

For each column ``j`` of the plan, the kernels build ``s_i = alpha_i (+ beta_j) - C_ij``, keep
its ``k`` largest entries with a bounded min-heap (O(n log k), no sort of the column), and
turn them into that column of the plan. Ties between equal values keep the smaller row
index, so the selection, and the result, do not depend on the number of threads.

The outputs are the plan in compressed-column form: ``rows[j, :nnz[j]]`` and
``values[j, :nnz[j]]`` hold column ``j``'s row indices and plan entries, and ``phi[j]`` its
conjugate value. ``row_sums`` and ``col_sums`` (the plan's marginals) are reduced serially
after the parallel part, in a fixed order.
"""

from cython.parallel cimport prange


cdef inline bint _worse(double v1, int r1, double v2, int r2) noexcept nogil:
    # The order of the heap: a smaller value, or an equal value at a larger row, is worse
    # (evicted first), so that ties keep the smaller rows.
    return v1 < v2 or (v1 == v2 and r1 > r2)


cdef inline void _sift_down(double* val, int* idx, Py_ssize_t size, Py_ssize_t pos) noexcept nogil:
    # Min-heap in the order of _worse; the root holds the worst kept entry.
    cdef Py_ssize_t child
    cdef double v = val[pos]
    cdef int r = idx[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _worse(val[child + 1], idx[child + 1], val[child], idx[child]):
            child += 1
        if not _worse(val[child], idx[child], v, r):
            break
        val[pos] = val[child]
        idx[pos] = idx[child]
        pos = child
    val[pos] = v
    idx[pos] = r


cdef inline void _sift_up(double* val, int* idx, Py_ssize_t pos) noexcept nogil:
    cdef Py_ssize_t parent
    cdef double v = val[pos]
    cdef int r = idx[pos]
    while pos > 0:
        parent = (pos - 1) // 2
        if not _worse(v, r, val[parent], idx[parent]):
            break
        val[pos] = val[parent]
        idx[pos] = idx[parent]
        pos = parent
    val[pos] = v
    idx[pos] = r


cdef inline Py_ssize_t _top_k(
    const double* alpha, const double* cost, double shift, Py_ssize_t n, Py_ssize_t k,
    bint positive_only, double* val, int* idx,
) noexcept nogil:
    """Keep the k largest ``alpha_i + shift - cost_i`` (only positive ones if asked).

    Rows come in increasing order, so a new row ties with the root only at a larger index:
    replacing the root only on a strictly larger value, with the heap ordered by (value,
    then smaller row first), keeps the smallest rows among equal values. Returns how many
    were kept.
    """
    cdef Py_ssize_t i, size = 0
    cdef double s
    if k >= n and not positive_only:
        # No selection to make: every row is kept.
        for i in range(n):
            val[i] = alpha[i] + shift - cost[i]
            idx[i] = <int>i
        return n
    for i in range(n):
        s = alpha[i] + shift - cost[i]
        if positive_only and s <= 0.0:
            continue
        if size < k:
            val[size] = s
            idx[size] = <int>i
            size += 1
            _sift_up(val, idx, size - 1)
        elif s > val[0]:
            val[0] = s
            idx[0] = <int>i
            _sift_down(val, idx, size, 0)
    return size


cdef inline double _simplex_threshold(const double* y, Py_ssize_t size) noexcept nogil:
    """The tau with ``sum_e max(y_e - tau, 0) = 1``, by Newton steps from below.

    ``h(tau) = sum_e max(y_e - tau, 0) - 1`` is convex, piecewise linear and decreasing;
    starting at ``max(y) - 1`` (where h >= 0) each step ``tau += h(tau) / #{y_e > tau}``
    lands on the next breakpoint region or the root, so tau rises monotonically and the
    loop ends after a few passes (at most ``size``) without sorting. Entries below the
    start never count, which makes the first pass the only one over most of a long column.
    """
    cdef Py_ssize_t e, active, passes, previous = -1
    cdef double total, tau
    cdef double largest = y[0]
    for e in range(1, size):
        if y[e] > largest:
            largest = y[e]
    tau = largest - 1.0
    # The pass bound only matters for non-finite input (then the caller sees NaN or inf).
    for passes in range(size + 1):
        total = 0.0
        active = 0
        for e in range(size):
            if y[e] > tau:
                total += y[e]
                active += 1
        if active == previous or active == 0:
            break
        previous = active
        tau = (total - 1.0) / active
    return tau


def semi_dual_columns(
    const double[::1] alpha,
    const double[:, ::1] Ct,
    const double[::1] b,
    double reg,
    int[:, ::1] rows,
    double[:, ::1] values,
    int[::1] nnz,
    double[::1] phi,
    double[::1] row_sums,
    double[::1] col_sums,
    int n_threads,
):
    """Semi-dual columns: ``phi_j = max_p <s, p> - (reg b_j / 2) ||p||^2`` over the k-sparse simplex.

    ``Ct`` is the transposed cost (m, n), C-contiguous; ``rows``/``values`` have shape
    (m, k) with ``k = min(k, n)`` (the user's k). The maximizer keeps the top-k entries of
    ``s = alpha - C[:, j]`` and projects ``s / (reg b_j)`` on the simplex there; the plan
    column is ``b_j p`` (only its positive entries are stored). Columns with ``b_j = 0``
    are empty with ``phi_j = 0``.
    """
    cdef Py_ssize_t m = Ct.shape[0]
    cdef Py_ssize_t n = Ct.shape[1]
    cdef Py_ssize_t k = rows.shape[1]
    cdef Py_ssize_t j, e, size, kept
    cdef double scale, tau, p, value, square
    cdef double* val
    cdef int* idx
    with nogil:
        for j in prange(m, schedule="static", num_threads=n_threads):
            if b[j] <= 0.0:
                nnz[j] = 0
                phi[j] = 0.0
                continue
            val = &values[j, 0]
            idx = &rows[j, 0]
            size = _top_k(&alpha[0], &Ct[j, 0], 0.0, n, k, False, val, idx)
            scale = reg * b[j]
            # The projection works on s / (reg b_j); val still holds s.
            for e in range(size):
                val[e] = val[e] / scale
            tau = _simplex_threshold(val, size)
            value = 0.0
            square = 0.0
            kept = 0
            for e in range(size):
                p = val[e] - tau
                if p > 0.0:
                    # <s, p> with s = scale * y.
                    value = value + scale * val[e] * p
                    square = square + p * p
                    values[j, kept] = b[j] * p
                    rows[j, kept] = idx[e]
                    kept = kept + 1
            nnz[j] = <int>kept
            phi[j] = value - 0.5 * scale * square
        _reduce(rows, values, nnz, row_sums, col_sums)


def dual_columns(
    const double[::1] alpha,
    const double[::1] beta,
    const double[:, ::1] Ct,
    double reg,
    int[:, ::1] rows,
    double[:, ::1] values,
    int[::1] nnz,
    double[::1] phi,
    double[::1] row_sums,
    double[::1] col_sums,
    int n_threads,
):
    """Dual columns: ``phi_j = (1 / (2 reg)) * (sum of squares of the top-k positive s_i)``.

    ``s = alpha + beta_j - C[:, j]``; the plan column is ``[s]_+ / reg`` on those entries.
    Shapes as in :func:`semi_dual_columns`.
    """
    cdef Py_ssize_t m = Ct.shape[0]
    cdef Py_ssize_t n = Ct.shape[1]
    cdef Py_ssize_t k = rows.shape[1]
    cdef Py_ssize_t j, e, size
    cdef double inv_reg = 1.0 / reg
    cdef double square
    cdef double* val
    cdef int* idx
    with nogil:
        for j in prange(m, schedule="static", num_threads=n_threads):
            val = &values[j, 0]
            idx = &rows[j, 0]
            size = _top_k(&alpha[0], &Ct[j, 0], beta[j], n, k, True, val, idx)
            square = 0.0
            for e in range(size):
                square = square + val[e] * val[e]
                val[e] = val[e] * inv_reg
            nnz[j] = <int>size
            phi[j] = 0.5 * inv_reg * square
        _reduce(rows, values, nnz, row_sums, col_sums)


cdef void _reduce(
    int[:, ::1] rows, double[:, ::1] values, int[::1] nnz, double[::1] row_sums,
    double[::1] col_sums,
) noexcept nogil:
    cdef Py_ssize_t j, e
    cdef double total
    for e in range(row_sums.shape[0]):
        row_sums[e] = 0.0
    for j in range(nnz.shape[0]):
        total = 0.0
        for e in range(nnz[j]):
            row_sums[rows[j, e]] += values[j, e]
            total = total + values[j, e]
        col_sums[j] = total
