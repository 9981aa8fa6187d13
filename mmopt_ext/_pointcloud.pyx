"""Log-domain Sinkhorn kernels for point clouds: the cost is computed inside the loop.

``online_softmin`` is the row update of :func:`mmopt_ext._sinkhorn.log_half_step` with
``C_ij = cost(x_i, y_j)`` computed block by block into a small per-thread buffer (never an
n x m array: memory O(n + m)); ``sparse_softmin`` is the same update restricted to kept
pairs given in compressed-row form, with their costs or computing the squared distances
from the points. Both return, per row::

    f_new_i  = reg * (log_a_i - logsumexp_j((g_j - C_ij) / reg))
    row_mass_i = sum_j exp((f_old_i + g_j - C_ij) / reg)      # the plan's row sum at f_old

exactly at any magnitude (a running maximum shifts the exponentials), rows in parallel.
Costs: kind 0 ``|x - y|^2``, kind 1 ``|x - y|``, kind 2 ``|x - y|^p``.
"""

from cython cimport view
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport exp, fabs, log, pow, sqrt, INFINITY
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy

import numpy as np

cdef extern from "_expsum.h" nogil:
    ctypedef double (*mmopt_expsum_fn)(const double*, const double*, double, double, Py_ssize_t)
    mmopt_expsum_fn mmopt_expsum
    ctypedef void (*mmopt_exprow_fn)(
        const double*, const double*, double, double, Py_ssize_t, double*
    )
    mmopt_exprow_fn mmopt_exprow
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


cdef inline double _gather_row(
    const int* columns, Py_ssize_t width, const double* stored, const double* xi,
    const double* y, Py_ssize_t d, const double* g, double* costs, double* gathered,
) noexcept nogil:
    """A kept row's costs (``stored``, or the squared distances from ``xi`` to the rows of
    ``y`` when NULL) and partners' ``g`` into ``costs`` and ``gathered``; returns the
    row's largest ``g_j - C_ij``."""
    cdef double best = -INFINITY, t
    cdef Py_ssize_t e, j
    for e in range(width):
        j = columns[e]
        if stored == NULL:
            costs[e] = _cost(xi, &y[j * d], d, 0, 2.0)
        else:
            costs[e] = stored[e]
        gathered[e] = g[j]
        t = gathered[e] - costs[e]
        if t > best:
            best = t
    return best


cdef tuple _pair_sources(const long long[::1] indptr, const double[::1] cost,
                         const double[:, ::1] x, const double[:, ::1] y, str name):
    """``(stored, x, y, d, widest)`` for the row kernels: the costs' address (0 when they
    are computed from ``x`` and ``y``), the clouds' (0 when unused), their dimension and
    the widest row."""
    cdef Py_ssize_t i, widest = 0, d = 0
    cdef size_t stored = 0, xp = 0, yp = 0
    if cost is None:
        if x is None or y is None or x.shape[1] != y.shape[1]:
            raise ValueError(f"{name}: without cost, x and y (same dimension) are needed")
        d = x.shape[1]
        if x.shape[0] and y.shape[0]:
            xp, yp = <size_t>&x[0, 0], <size_t>&y[0, 0]
    elif cost.shape[0]:
        stored = <size_t>&cost[0]
    for i in range(indptr.shape[0] - 1):
        widest = max(widest, <Py_ssize_t>(indptr[i + 1] - indptr[i]))
    return stored, xp, yp, d, widest


def sparse_softmin(
    const long long[::1] indptr,
    const int[::1] indices,
    const double[::1] cost,
    const double[:, ::1] x,
    const double[:, ::1] y,
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
    same positions, or, when ``cost`` is None, ``|x_i - y_j|^2`` computed here (not stored:
    the pattern then needs 4 bytes per pair, not 12); a row with no pair gets ``f_new =
    inf`` and ``row_mass = 0``. Pass the transposed pattern (compressed columns, ``x`` and
    ``y`` swapped) for the column update.
    """
    cdef Py_ssize_t n = indptr.shape[0] - 1
    cdef Py_ssize_t i, start, width, widest, d
    cdef double inv_reg = 1.0 / reg
    cdef double best, total
    cdef double* gathered
    cdef double* costs
    cdef size_t stored_at, x_at, y_at
    stored_at, x_at, y_at, d, widest = _pair_sources(indptr, cost, x, y, "sparse_softmin")
    cdef const double* stored = <const double*>stored_at
    cdef const double* xp = <const double*>x_at
    cdef const double* yp = <const double*>y_at
    cdef const double* gp = &g[0] if g.shape[0] else NULL
    with nogil, parallel(num_threads=n_threads):
        gathered = <double*>malloc((2 * widest + 1) * sizeof(double))
        costs = gathered + widest
        for i in prange(n, schedule="guided"):
            start = indptr[i]
            width = indptr[i + 1] - start
            best = _gather_row(&indices[start] if width else NULL, width,
                               stored + start if stored != NULL else NULL,
                               xp + i * d if xp != NULL else NULL, yp, d, gp, costs,
                               gathered)
            total = 0.0
            if best > -INFINITY:
                total = mmopt_expsum(costs, gathered, -best, inv_reg, width)
            _finish_row(best, total, reg, inv_reg, f_old[i], log_a[i], &f_new[i], &row_mass[i])
        free(gathered)


def significant_pairs(
    const long long[::1] indptr,
    const int[::1] indices,
    const double[:, ::1] x,
    const double[:, ::1] y,
    const double[::1] f,
    const double[::1] g,
    const double[::1] log_row,
    const double[::1] log_col,
    double reg,
    double log_ratio,
    int n_threads,
):
    """The plan entries ``exp((f_i + g_j - |x_i - y_j|^2) / reg)`` of a compressed-row
    pattern that are at least ``exp(log_ratio)`` times the smaller of their row's and their
    column's sums (``log_row``, ``log_col``, in logs): ``(indptr, indices, data)`` of a
    compressed-row matrix (columns in the pattern's order), by a counting pass over the
    rows in parallel that marks the entries kept (a byte per pair), then a filling pass
    that visits only those; the test is on the exponent, so only the kept entries take an
    ``exp``."""
    cdef Py_ssize_t n = indptr.shape[0] - 1
    cdef Py_ssize_t d = x.shape[1]
    cdef Py_ssize_t i, e, j, c, out
    cdef double inv_reg = 1.0 / reg
    cdef double t
    counts_array = np.zeros(n + 1, dtype=np.int64)
    cdef long long[::1] counts = counts_array
    marks_array = np.empty(indices.shape[0], dtype=np.uint8)
    cdef unsigned char[::1] marks = marks_array
    with nogil:
        for i in prange(n, schedule="guided", num_threads=n_threads):
            c = 0
            for e in range(indptr[i], indptr[i + 1]):
                j = indices[e]
                t = (f[i] + g[j] - _cost(&x[i, 0], &y[j, 0], d, 0, 2.0)) * inv_reg
                marks[e] = t >= log_ratio + min(log_row[i], log_col[j])
                c = c + marks[e]
            counts[i + 1] = c
    np.cumsum(counts_array, out=counts_array)
    total = int(counts_array[n])
    out_indices_array = np.empty(total, dtype=np.int32)
    data_array = np.empty(total)
    cdef int[::1] out_indices = out_indices_array
    cdef double[::1] data = data_array
    with nogil:
        for i in prange(n, schedule="guided", num_threads=n_threads):
            out = counts[i]
            for e in range(indptr[i], indptr[i + 1]):
                if marks[e]:
                    j = indices[e]
                    t = (f[i] + g[j] - _cost(&x[i, 0], &y[j, 0], d, 0, 2.0)) * inv_reg
                    out_indices[out] = <int>j
                    data[out] = exp(t)
                    out = out + 1
    return counts_array, out_indices_array, data_array


def _row_ranges(indptr, parts):
    """Bounds of ``parts`` contiguous ranges of rows of about equal pairs (``parts + 1``
    ascending row indices from 0 to the number of rows)."""
    indptr = np.asarray(indptr)
    inner = np.searchsorted(indptr, np.linspace(0, indptr[len(indptr) - 1], parts + 1)[1:parts])
    return np.concatenate([[0], inner, [len(indptr) - 1]]).astype(np.int64)


def csr_transpose(
    const long long[::1] indptr,
    const int[::1] indices,
    Py_ssize_t m,
    const double[::1] values=None,
    int n_threads=1,
):
    """The compressed-column pattern ``(t_indptr, t_indices, t_values)`` of a compressed-row
    pattern with ``m`` columns (rows ascending within each column) and its ``values`` in
    that order (None without ``values``), by a counting sort with no temporary beyond its
    outputs and, with ``n_threads > 1``, one count per column and thread (SciPy's transpose
    of a pattern carries values and, from int64 ``indptr``, int64 copies of the indices).

    In parallel each thread takes a contiguous range of rows of about equal pairs, counts
    their columns, and fills its rows after those of the threads before it in every column:
    the output is the sequential one whatever ``n_threads``.
    """
    cdef Py_ssize_t n = indptr.shape[0] - 1
    cdef Py_ssize_t nnz = indices.shape[0]
    cdef Py_ssize_t i, e, j, t, parts
    cdef long long running, here
    cdef bint with_values = values is not None
    t_indptr_array = np.zeros(m + 1, dtype=np.int64)
    t_indices_array = np.empty(nnz, dtype=np.int32)
    t_values_array = np.empty(nnz if with_values else 0)
    cdef long long[::1] t_indptr = t_indptr_array
    cdef int[::1] t_indices = t_indices_array
    cdef double[::1] t_values = t_values_array
    parts = max(1, min(<Py_ssize_t>n_threads, n))
    # Row ranges of about nnz / parts pairs each; fill[t, j]: thread t's next slot in j.
    cdef long long[::1] cuts = _row_ranges(indptr, parts)
    fill_array = np.zeros((parts, m), dtype=np.int64)
    cdef long long[:, ::1] fill = fill_array
    with nogil:
        for t in prange(parts, schedule="static", chunksize=1, num_threads=parts):
            for e in range(indptr[cuts[t]], indptr[cuts[t + 1]]):
                fill[t, indices[e]] += 1
        for j in range(m):
            running = t_indptr[j]
            for t in range(parts):
                here = fill[t, j]
                fill[t, j] = running
                running = running + here
            t_indptr[j + 1] = running
        for t in prange(parts, schedule="static", chunksize=1, num_threads=parts):
            for i in range(cuts[t], cuts[t + 1]):
                for e in range(indptr[i], indptr[i + 1]):
                    j = indices[e]
                    t_indices[fill[t, j]] = <int>i
                    if with_values:
                        t_values[fill[t, j]] = values[e]
                    fill[t, j] += 1
    return t_indptr_array, t_indices_array, (t_values_array if with_values else None)


def pair_marginals(
    const long long[::1] indptr,
    const int[::1] indices,
    const double[::1] cost,
    const double[:, ::1] x,
    const double[:, ::1] y,
    const double[::1] f,
    const double[::1] g,
    double reg,
    double[::1] row_mass,
    double[::1] col_mass,
    int n_threads,
):
    """The row and the column sums of the plan ``exp((f_i + g_j - C_ij) / reg)`` over the
    kept pairs of a compressed-row pattern, in one pass (two passes of
    :func:`sparse_softmin`, rows then columns on the transposed pattern, read every pair
    and gather both its points twice).

    ``C_ij`` is ``cost`` at the pair's position, or ``|x_i - y_j|^2`` when ``cost`` is
    None. ``row_mass`` is :func:`sparse_softmin`'s, to the bit (the same shifted sum of
    each row); each entry ``exp((g_j - C_ij - best_i) / reg) exp((f_i + best_i) / reg)``,
    ``best_i`` the row's largest ``g_j - C_ij``, is added to its column's sum, in row order.
    With ``n_threads > 1`` each thread takes a contiguous range of rows of about equal
    pairs with a column array of its own, added in thread order at the end: the same sums
    at a given ``n_threads`` run to run.
    """
    cdef Py_ssize_t n = indptr.shape[0] - 1
    cdef Py_ssize_t m = col_mass.shape[0]
    cdef Py_ssize_t i, j, e, t, start, width, widest, parts, d
    cdef double inv_reg = 1.0 / reg
    cdef double best, total, scale, lse
    cdef double* gathered
    cdef double* costs
    cdef double* entries
    cdef double* column
    cdef size_t stored_at, x_at, y_at
    stored_at, x_at, y_at, d, widest = _pair_sources(indptr, cost, x, y, "pair_marginals")
    cdef const double* stored = <const double*>stored_at
    cdef const double* xp = <const double*>x_at
    cdef const double* yp = <const double*>y_at
    cdef const double* gp = &g[0] if g.shape[0] else NULL
    parts = max(1, min(<Py_ssize_t>n_threads, n))
    cdef long long[::1] cuts = _row_ranges(indptr, parts)
    # Thread 0 adds into col_mass itself, the others into their own rows of extra.
    extra_array = np.zeros((parts - 1, m))
    cdef double[:, ::1] extra = extra_array
    col_mass[:] = 0.0
    if n == 0 or m == 0:
        row_mass[:] = 0.0
        return
    with nogil:
        for t in prange(parts, schedule="static", chunksize=1, num_threads=parts):
            gathered = <double*>malloc((3 * widest + 1) * sizeof(double))
            costs = gathered + widest
            entries = costs + widest
            column = &col_mass[0] if t == 0 else &extra[t - 1, 0]
            for i in range(cuts[t], cuts[t + 1]):
                start = indptr[i]
                width = indptr[i + 1] - start
                best = _gather_row(&indices[start] if width else NULL, width,
                                   stored + start if stored != NULL else NULL,
                                   xp + i * d if xp != NULL else NULL, yp, d, gp, costs,
                                   gathered)
                total = 0.0
                if best > -INFINITY:
                    total = mmopt_expsum(costs, gathered, -best, inv_reg, width)
                if best == -INFINITY or total <= 0.0:
                    row_mass[i] = 0.0
                    continue
                lse = best * inv_reg + log(total)
                row_mass[i] = exp(f[i] * inv_reg + lse)
                scale = exp((f[i] + best) * inv_reg)
                mmopt_exprow(costs, gathered, -best, inv_reg, width, entries)
                for e in range(width):
                    column[indices[start + e]] += entries[e] * scale
            free(gathered)
        for t in range(1, parts):
            for j in prange(m, schedule="static", num_threads=parts):
                col_mass[j] += extra[t - 1, j]


def bipartite_matvec(
    const long long[::1] indptr,
    const int[::1] indices,
    const double[::1] data,
    const double[::1] diagonal,
    double scale,
    const double[::1] v,
    double[::1] out,
    double[::1] work,
):
    """``out = [[diag(diagonal[:n]), s S], [s S^T, diag(diagonal[n:])]] v`` for a
    compressed-row ``S`` of shape ``(n, m)``, in one pass over ``S`` (SciPy's ``S @ v`` and
    ``S.T @ v`` read it twice). ``work`` (``m`` entries) receives ``S^T v[:n]``. The
    products and sums are SciPy's, in its order: the same vector to the bit. One thread:
    it runs between a Krylov solver's BLAS calls.
    """
    cdef Py_ssize_t n = indptr.shape[0] - 1
    cdef Py_ssize_t m = work.shape[0]
    cdef Py_ssize_t i, j, e
    cdef double acc, vi
    with nogil:
        for j in range(m):
            work[j] = 0.0
        for i in range(n):
            acc = 0.0
            vi = v[i]
            for e in range(indptr[i], indptr[i + 1]):
                j = indices[e]
                acc = acc + data[e] * v[n + j]
                work[j] += data[e] * vi
            out[i] = diagonal[i] * vi + scale * acc
        for j in range(m):
            out[n + j] = diagonal[n + j] * v[n + j] + scale * work[j]


def coarse_operator(
    const long long[::1] indptr,
    const int[::1] indices,
    const double[::1] data,
    Py_ssize_t offset,
    const long long[::1] t_indptr,
    const int[::1] t_indices,
    const double[::1] t_data,
    const long long[::1] labels,
    Py_ssize_t count,
    double weight,
    const double[::1] diagonal=None,
):
    """The Galerkin operator ``P^T A P`` of unsmoothed aggregation, ``P`` the 0/1 matrix of
    ``labels`` (``count`` aggregates), as a compressed-row matrix ``(indptr, indices,
    data)`` (columns in first-met order within a row), by a sparse accumulator per
    aggregate (Gustavson's product) instead of two sparse products and a transpose.

    ``A`` is given by its rows: the first ``n`` (``indptr``, ``indices``, ``data``) have
    their columns shifted by ``offset``, the next ``t_indptr.shape[0] - 1`` (``t_indptr``,
    ...) have theirs as they are, every entry times ``weight``; ``diagonal``, when given,
    is added to the aggregates' diagonal entries. The multigrid Newton solve's first level:
    ``S`` and ``S^T`` (offset ``n``), ``weight = -1 / reg``, the aggregated diagonal; its
    coarse levels: their CSR matrix, an empty second part, ``weight = 1``.
    """
    cdef Py_ssize_t n = indptr.shape[0] - 1
    cdef Py_ssize_t size = n + t_indptr.shape[0] - 1
    cdef Py_ssize_t a, k, v, e, b, filled, total
    cdef bint with_diagonal = diagonal is not None
    if labels.shape[0] != size:
        raise ValueError("coarse_operator: labels must have one entry per row")
    # The rows of each aggregate, by a counting sort of labels.
    member_ptr_array = np.zeros(count + 1, dtype=np.int64)
    # Per variable and per aggregate, int32 (both counts below 2^31 in a Newton system):
    # half the memory of int64 for the accumulator's randomly accessed marker.
    members_array = np.empty(size, dtype=np.int32)
    cdef long long[::1] member_ptr = member_ptr_array
    cdef int[::1] members = members_array
    next_array = np.empty(count, dtype=np.int32)
    cdef int[::1] next_slot = next_array
    out_ptr_array = np.zeros(count + 1, dtype=np.int64)
    cdef long long[::1] out_ptr = out_ptr_array
    marker_array = np.full(count, -1, dtype=np.int32)
    cdef int[::1] marker = marker_array
    with nogil:
        for v in range(size):
            member_ptr[labels[v] + 1] += 1
        for a in range(count):
            member_ptr[a + 1] += member_ptr[a]
            next_slot[a] = <int>member_ptr[a]
        for v in range(size):
            members[next_slot[labels[v]]] = <int>v
            next_slot[labels[v]] += 1
        # Symbolic pass: the number of distinct aggregates each aggregate's rows reach.
        total = 0
        for a in range(count):
            filled = 0
            if with_diagonal:
                marker[a] = <int>a
                filled = 1
            for k in range(member_ptr[a], member_ptr[a + 1]):
                v = members[k]
                if v < n:
                    for e in range(indptr[v], indptr[v + 1]):
                        b = labels[indices[e] + offset]
                        if marker[b] != a:
                            marker[b] = <int>a
                            filled = filled + 1
                else:
                    for e in range(t_indptr[v - n], t_indptr[v - n + 1]):
                        b = labels[t_indices[e]]
                        if marker[b] != a:
                            marker[b] = <int>a
                            filled = filled + 1
            total = total + filled
            out_ptr[a + 1] = total
    out_indices_array = np.empty(total, dtype=np.int32)
    out_data_array = np.zeros(total)
    cdef int[::1] out_indices = out_indices_array
    cdef double[::1] out_data = out_data_array
    position_array = np.empty(count, dtype=np.int64)  # an aggregate's slot in the row
    cdef long long[::1] position = position_array
    with nogil:
        for a in range(count):
            marker[a] = -1
        for a in range(count):
            filled = out_ptr[a]
            if with_diagonal:
                marker[a] = <int>a
                position[a] = filled
                out_indices[filled] = <int>a
                filled = filled + 1
            for k in range(member_ptr[a], member_ptr[a + 1]):
                v = members[k]
                if v < n:
                    for e in range(indptr[v], indptr[v + 1]):
                        b = labels[indices[e] + offset]
                        if marker[b] != a:
                            marker[b] = <int>a
                            position[b] = filled
                            out_indices[filled] = <int>b
                            filled = filled + 1
                        out_data[position[b]] += weight * data[e]
                else:
                    for e in range(t_indptr[v - n], t_indptr[v - n + 1]):
                        b = labels[t_indices[e]]
                        if marker[b] != a:
                            marker[b] = <int>a
                            position[b] = filled
                            out_indices[filled] = <int>b
                            filled = filled + 1
                        out_data[position[b]] += weight * t_data[e]
            if with_diagonal:
                out_data[position[a]] += diagonal[a]
    return out_ptr_array, out_indices_array, out_data_array


def strongest_couplings(
    const long long[::1] indptr,
    const int[::1] indices,
    const double[::1] data,
    Py_ssize_t m,
):
    """For each row and each of the ``m`` columns of a compressed-row matrix, the column
    (row) of its largest positive entry, -1 where none is positive; ties go to the first
    (one pass over the entries, no transpose: the aggregation of the multigrid Newton
    solve)."""
    cdef Py_ssize_t n = indptr.shape[0] - 1
    cdef Py_ssize_t i, e, j
    cdef double top, value
    row_best_array = np.full(n, -1, dtype=np.int64)
    col_best_array = np.full(m, -1, dtype=np.int64)
    col_top_array = np.zeros(m)
    cdef long long[::1] row_best = row_best_array
    cdef long long[::1] col_best = col_best_array
    cdef double[::1] col_top = col_top_array
    with nogil:
        for i in range(n):
            top = 0.0
            for e in range(indptr[i], indptr[i + 1]):
                value = data[e]
                j = indices[e]
                if value > top:
                    top = value
                    row_best[i] = j
                if value > col_top[j]:
                    col_top[j] = value
                    col_best[j] = i
    return row_best_array, col_best_array


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
# Rows per work unit of tree_ball_pairs. Each unit's pairs go to a buffer of its own; the
# thread that finishes a unit appends, under a lock, every finished unit that is next in
# row order to the output and frees its buffer, so that the search holds only the units
# finished out of order beyond its output (instead of every pair twice: per-unit buffers,
# then their gathered copy). The output grows by realloc (for large arrays an mremap on
# Linux: no copy). One parallel region: no barrier per batch of rows, where idle threads
# would spin.
DEF CHUNK = 64


cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    typedef omp_lock_t mmopt_lock;
    static void mmopt_lock_init(mmopt_lock *lock) { omp_init_lock(lock); }
    static void mmopt_lock_destroy(mmopt_lock *lock) { omp_destroy_lock(lock); }
    static void mmopt_lock_set(mmopt_lock *lock) { omp_set_lock(lock); }
    static void mmopt_lock_unset(mmopt_lock *lock) { omp_unset_lock(lock); }
    #else
    typedef int mmopt_lock;
    static void mmopt_lock_init(mmopt_lock *lock) { (void)lock; }
    static void mmopt_lock_destroy(mmopt_lock *lock) { (void)lock; }
    static void mmopt_lock_set(mmopt_lock *lock) { (void)lock; }
    static void mmopt_lock_unset(mmopt_lock *lock) { (void)lock; }
    #endif
    """
    ctypedef struct mmopt_lock:
        pass
    void mmopt_lock_init(mmopt_lock* lock) noexcept nogil
    void mmopt_lock_destroy(mmopt_lock* lock) noexcept nogil
    void mmopt_lock_set(mmopt_lock* lock) noexcept nogil
    void mmopt_lock_unset(mmopt_lock* lock) noexcept nogil


# Below this exponent exp() is exactly 0 in double precision (it underflows past
# -745.13): such terms of the dropped-mass sums are skipped (same sums, no exp calls and
# no underflow slow path).
DEF EXP_ZERO = -746.0
# Skipped nodes' terms of a row's dropped-mass sum per call of the vector exp.
DEF NODE_BATCH = 32


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


cdef inline double _node_bound(
    const double* xi, Py_ssize_t node, const double[:, ::1] shift,
    const double[::1] offset, const double[:, ::1] lo, const double[:, ::1] hi,
    Py_ssize_t d, double* moved,
) noexcept nogil:
    """A lower bound of ``|x_i - y_j|^2 - psi_j`` over the points below ``node``, whose
    potentials satisfy ``psi_j <= 2 s.y_j + offset - |s|^2`` (``s = shift[node]``):
    ``|x - y|^2 - 2 s.y = |y - (x + s)|^2 - 2 s.x - |s|^2``, so the bound is the squared
    distance from ``x_i + s`` to the node's box minus ``2 s.x_i + offset``, less a
    relative rounding slack (a smaller bound only visits more)."""
    cdef double dot = 0.0, dist2, value
    cdef Py_ssize_t k
    for k in range(d):
        moved[k] = xi[k] + shift[node, k]
        dot = dot + xi[k] * shift[node, k]
    dist2 = _box_distance2(moved, &lo[node, 0], &hi[node, 0], d)
    value = dist2 - 2.0 * dot - offset[node]
    return value - 1e-12 * (dist2 + 2.0 * fabs(dot) + fabs(offset[node]))


cdef double _best_reduced(
    const double* xi, const double[:, ::1] points, const double[::1] psi,
    const double[:, ::1] lo, const double[:, ::1] hi, const long long[::1] start,
    const double[:, ::1] shift, const double[::1] offset, Py_ssize_t first_leaf,
    Py_ssize_t d, long long* stack, double* bounds, double* moved,
) noexcept nogil:
    """``min_j |x_i - y_j|^2 - psi_j`` by branch and bound over the tree (depth first, the
    child of smaller bound first; ``bounds`` holds the pushed nodes' bounds)."""
    cdef double best = INFINITY, value, left_bound, right_bound
    cdef Py_ssize_t top = 1, node, e, left
    stack[0] = 0
    bounds[0] = _node_bound(xi, 0, shift, offset, lo, hi, d, moved)
    while top > 0:
        top = top - 1
        node = stack[top]
        if bounds[top] >= best:
            continue
        if node >= first_leaf:
            for e in range(start[node], start[node + 1]):
                value = _cost(xi, &points[e, 0], d, 0, 2.0) - psi[e]
                if value < best:
                    best = value
            continue
        left = 2 * node + 1
        left_bound = _node_bound(xi, left, shift, offset, lo, hi, d, moved)
        right_bound = _node_bound(xi, left + 1, shift, offset, lo, hi, d, moved)
        # The child of smaller bound last, so that it is searched first.
        if left_bound <= right_bound:
            stack[top], bounds[top] = left + 1, right_bound
            stack[top + 1], bounds[top + 1] = left, left_bound
        else:
            stack[top], bounds[top] = left, left_bound
            stack[top + 1], bounds[top + 1] = left + 1, right_bound
        top = top + 2
    return best


cdef struct _Buffer:
    int* index
    double* cost
    Py_ssize_t size
    Py_ssize_t capacity
    int failed
    int with_cost  # 0: the costs are not kept (cost stays NULL)


cdef inline void _push(_Buffer* out, int index, double cost) noexcept nogil:
    """Append a pair, doubling the buffer when full (``failed`` set if memory runs out)."""
    cdef Py_ssize_t capacity
    cdef int* grown_index
    cdef double* grown_cost
    if out.size == out.capacity:
        if out.failed:
            return
        capacity = 2 * out.capacity + 1024
        grown_index = <int*>realloc(out.index, capacity * sizeof(int))
        if grown_index == NULL:
            out.failed = 1
            return
        out.index = grown_index
        if out.with_cost:
            grown_cost = <double*>realloc(out.cost, capacity * sizeof(double))
            if grown_cost == NULL:
                out.failed = 1
                return
            out.cost = grown_cost
        out.capacity = capacity
    out.index[out.size] = index
    if out.with_cost:
        out.cost[out.size] = cost
    out.size = out.size + 1


cdef double _ball(
    const double* xi, double radius, const double[:, ::1] points, const double[::1] psi,
    const double[:, ::1] lo, const double[:, ::1] hi, const long long[::1] start,
    const double[:, ::1] shift, const double[::1] offset, Py_ssize_t first_leaf,
    Py_ssize_t d, long long* stack, double* moved, const long long[::1] order,
    _Buffer* out, const double[::1] lifted, const double[::1] node_lifted, double phi_ref,
    double inv_reg, double* dropped, double* scratch,
) noexcept nogil:
    """Append the points with ``|x_i - y_j|^2 - psi_j <= radius`` to ``out`` (original
    indices, ``|x_i - y_j|^2``); returns the smallest such value (inf if none). Unless
    ``dropped`` is NULL, sets it to an upper bound of ``sum_j w_j exp(-(|x_i - y_j|^2 -
    psi_j - phi_ref) / reg)`` over the points left out: a skipped node's weight times the
    exponential of its bound, a leaf's points exactly, both by the vector exp of
    ``_expsum.h`` (``lifted_j = psi_j + reg log w_j``, ``node_lifted = reg log`` of the
    nodes' weights; its ~1e-13 relative error covered by a factor ``1 + 1e-12``, its clamp
    at ``e^-700`` only raising a term). ``scratch``: room for ``2 NODE_BATCH`` values and
    three times a leaf's points."""
    cdef Py_ssize_t top = 1, node, e, first, size, left_out, skipped = 0
    cdef double c, value, bound, smallest = INFINITY, total = 0.0
    cdef double* node_bounds = scratch
    cdef double* node_terms = scratch + NODE_BATCH
    cdef double* costs = scratch + 2 * NODE_BATCH
    cdef double* far_costs
    cdef double* far_lifted
    stack[0] = 0
    while top > 0:
        top = top - 1
        node = stack[top]
        bound = _node_bound(xi, node, shift, offset, lo, hi, d, moved)
        if bound > radius:
            if dropped != NULL and (phi_ref - bound) * inv_reg > EXP_ZERO:
                if skipped == NODE_BATCH:
                    total = total + mmopt_expsum(node_bounds, node_terms, phi_ref, inv_reg,
                                                 skipped)
                    skipped = 0
                node_bounds[skipped] = bound
                node_terms[skipped] = node_lifted[node]
                skipped = skipped + 1
            continue
        if node >= first_leaf:
            first = start[node]
            size = start[node + 1] - first
            far_costs = costs + size
            far_lifted = far_costs + size
            for e in range(size):
                costs[e] = _cost(xi, &points[first + e, 0], d, 0, 2.0)
            left_out = 0
            for e in range(size):
                c = costs[e]
                value = c - psi[first + e]
                if value <= radius:
                    _push(out, <int>order[first + e], c)
                    if value < smallest:
                        smallest = value
                else:
                    far_costs[left_out] = c
                    far_lifted[left_out] = lifted[first + e]
                    left_out = left_out + 1
            if left_out > 0 and dropped != NULL:
                total = total + mmopt_expsum(far_costs, far_lifted, phi_ref, inv_reg,
                                             left_out)
            continue
        stack[top] = 2 * node + 1
        stack[top + 1] = 2 * node + 2
        top = top + 2
    if dropped != NULL:
        if skipped > 0:
            total = total + mmopt_expsum(node_bounds, node_terms, phi_ref, inv_reg, skipped)
        dropped[0] = total * (1.0 + 1e-12)
    return smallest


cdef void _chunk_rows(
    Py_ssize_t begin, Py_ssize_t end, const double[:, ::1] x, const double[::1] phi,
    const double[:, ::1] points, const double[::1] psi, const long long[::1] order,
    const double[:, ::1] lo, const double[:, ::1] hi, const long long[::1] start,
    const double[:, ::1] shift, const double[::1] offset, Py_ssize_t first_leaf,
    double threshold, long long[::1] counts, double[::1] phi_eff, _Buffer* out,
    long long* stack, double* bounds, double* moved, const double[::1] lifted,
    const double[::1] node_lifted, double inv_reg, double[::1] dropped, double* scratch,
    bint with_dropped,
) noexcept nogil:
    """The rows ``begin:end`` of :func:`tree_ball_pairs` into ``out``."""
    cdef Py_ssize_t i, d = x.shape[1], before
    cdef double smallest, best
    cdef double* row_dropped = NULL
    for i in range(begin, end):
        if with_dropped:
            row_dropped = &dropped[i]
        before = out.size
        best = INFINITY
        if phi[i] > -INFINITY:
            # One search at phi_i + threshold: enough when it meets a pair at or below
            # phi_i (the row's best is then at most phi_i, so phi_eff_i = phi_i).
            smallest = _ball(&x[i, 0], phi[i] + threshold, points, psi, lo, hi, start,
                             shift, offset, first_leaf, d, stack, moved, order, out,
                             lifted, node_lifted, phi[i], inv_reg, row_dropped, scratch)
            if smallest <= phi[i]:
                phi_eff[i] = phi[i]
                counts[i] = out.size - before
                continue
            # Otherwise the best lies above phi_i: the smallest value met if any (every
            # point within phi_i + threshold was met), else a search for it.
            out.size = before
            best = smallest
        if best == INFINITY:
            best = _best_reduced(&x[i, 0], points, psi, lo, hi, start, shift, offset,
                                 first_leaf, d, stack, bounds, moved)
        phi_eff[i] = max(phi[i], best)
        _ball(&x[i, 0], phi_eff[i] + threshold, points, psi, lo, hi, start, shift, offset,
              first_leaf, d, stack, moved, order, out, lifted, node_lifted, phi_eff[i],
              inv_reg, row_dropped, scratch)
        counts[i] = out.size - before


cdef struct _Output:
    int* index
    double* cost
    unsigned char* met  # met[j] = 1 once a pair of column j is appended
    Py_ssize_t size
    Py_ssize_t capacity
    Py_ssize_t next_unit  # the first unit not yet appended
    int failed
    int with_cost


cdef void _append_finished(_Buffer* units, int* finished, Py_ssize_t n_units,
                           _Output* out) noexcept nogil:
    """Append the finished units from ``out.next_unit`` on, in order, to ``out`` (growing
    it by half when full) and free their buffers; under the caller's lock."""
    cdef _Buffer* unit
    cdef Py_ssize_t e, grown
    cdef void* pointer
    while out.next_unit < n_units and finished[out.next_unit]:
        unit = &units[out.next_unit]
        out.failed = out.failed or unit.failed
        if not out.failed and out.size + unit.size > out.capacity:
            grown = max(out.size + unit.size, out.capacity + out.capacity // 2)
            pointer = realloc(out.index, grown * sizeof(int))
            if pointer == NULL:
                out.failed = 1
            else:
                out.index = <int*>pointer
                if out.with_cost:
                    pointer = realloc(out.cost, grown * sizeof(double))
                    if pointer == NULL:
                        out.failed = 1
                    else:
                        out.cost = <double*>pointer
                if not out.failed:
                    out.capacity = grown
        if not out.failed and unit.size > 0:
            memcpy(&out.index[out.size], unit.index, unit.size * sizeof(int))
            if out.with_cost:
                memcpy(&out.cost[out.size], unit.cost, unit.size * sizeof(double))
            for e in range(unit.size):
                out.met[unit.index[e]] = 1
            out.size = out.size + unit.size
        free(unit.index)
        free(unit.cost)
        unit.index, unit.cost = NULL, NULL
        out.next_unit = out.next_unit + 1


def tree_ball_pairs(
    const double[:, ::1] x,
    const double[::1] phi,
    const double[:, ::1] points,
    const double[::1] psi,
    const long long[::1] order,
    const double[:, ::1] lo,
    const double[:, ::1] hi,
    const long long[::1] start,
    const double[:, ::1] shift,
    const double[::1] offset,
    const double[::1] weight,
    const double[::1] node_weight,
    Py_ssize_t first_leaf,
    double threshold,
    double reg,
    int n_threads,
    bint with_cost=True,
):
    """Per row ``i`` of ``x``, the tree's points ``j`` with
    ``|x_i - y_j|^2 - psi_j <= max(phi_i, min_l |x_i - y_l|^2 - psi_l) + threshold``:
    ``(indptr, indices, cost, phi_eff, dropped, met)``, the pairs in compressed rows
    (original indices, squared distances; unsorted within a row), ``phi_eff`` the max
    above, ``met[j]`` 1 where some row keeps the point ``j`` (0 elsewhere) and
    ``dropped[i]`` an upper bound of ``sum_j w_j exp(-(|x_i - y_j|^2 - psi_j - phi_eff_i) /
    reg)`` over the row's points left out (``weight``: the points' ``w`` in tree order,
    ``node_weight``: their sums below each node).

    The tree is an implicit complete binary tree (children ``2k + 1``, ``2k + 2``; leaves
    from ``first_leaf`` on, leaf ``k`` holding the points ``start[k]:start[k + 1]`` of
    ``points``, which are ``y[order]``, and ``psi`` in that order) with boxes ``lo``,
    ``hi``; below node ``k``, ``psi_j <= 2 shift[k].y_j + offset[k] - |shift[k]|^2`` (an
    affine bound of the potentials, see ``_node_bound``). One search per row when
    ``phi_i`` is at least the row's best value (found in that search), two or three
    otherwise; rows in parallel by units of 64 (see ``CHUNK``).
    ``with_cost=False``: ``cost`` is None (the pairs' costs are not kept, 4 bytes per pair
    instead of 12). ``dropped`` is 0 where every weight is (no exponentials computed).
    """
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t d = x.shape[1]
    cdef Py_ssize_t n_units = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t u
    cdef long long* stack
    cdef double* bounds
    cdef double* moved
    cdef double* scratch
    cdef _Buffer* units
    cdef int* finished
    cdef _Output out
    cdef mmopt_lock lock
    cdef Py_ssize_t max_leaf = max(1, int(np.diff(np.asarray(start)[first_leaf:]).max()))
    cdef bint with_dropped = bool((np.asarray(weight) > 0.0).any())
    with np.errstate(divide="ignore"):
        lifted_array = np.asarray(psi) + reg * np.log(np.asarray(weight))
        node_lifted_array = reg * np.log(np.asarray(node_weight))
    cdef const double[::1] lifted = lifted_array
    cdef const double[::1] node_lifted = node_lifted_array
    counts_array = np.zeros(n, dtype=np.int64)
    phi_eff_array = np.empty(n)
    dropped_array = np.zeros(n)
    met_array = np.zeros(max(points.shape[0], 1), dtype=np.uint8)
    cdef unsigned char[::1] met = met_array
    cdef long long[::1] counts = counts_array
    cdef double[::1] phi_eff = phi_eff_array
    cdef double[::1] dropped = dropped_array
    cdef double inv_reg = 1.0 / reg
    units = <_Buffer*>calloc(max(n_units, 1), sizeof(_Buffer))
    finished = <int*>calloc(max(n_units, 1), sizeof(int))
    # Grown by half when full: untouched capacity is not resident, and the final realloc
    # gives it back.
    out.capacity = max(1024, 8 * n)
    out.index = <int*>malloc(out.capacity * sizeof(int))
    out.cost = <double*>malloc(out.capacity * sizeof(double)) if with_cost else NULL
    out.met, out.size, out.next_unit, out.failed = &met[0], 0, 0, 0
    out.with_cost = with_cost
    mmopt_lock_init(&lock)
    try:
        if (units == NULL or finished == NULL or out.index == NULL
                or (with_cost and out.cost == NULL)):
            raise MemoryError("tree_ball_pairs: no memory for the kept pairs")
        for u in range(n_units):
            units[u].with_cost = with_cost
        with nogil, parallel(num_threads=max(1, n_threads)):
            stack = <long long*>malloc(STACK * sizeof(long long))
            bounds = <double*>malloc(STACK * sizeof(double))
            moved = <double*>malloc((d + 1) * sizeof(double))
            scratch = <double*>malloc((2 * NODE_BATCH + 3 * max_leaf) * sizeof(double))
            for u in prange(n_units, schedule="dynamic"):
                _chunk_rows(u * CHUNK, min(n, (u + 1) * CHUNK), x, phi, points, psi,
                            order, lo, hi, start, shift, offset, first_leaf, threshold,
                            counts, phi_eff, &units[u], stack, bounds, moved, lifted,
                            node_lifted, inv_reg, dropped, scratch, with_dropped)
                mmopt_lock_set(&lock)
                finished[u] = 1
                _append_finished(units, finished, n_units, &out)
                mmopt_lock_unset(&lock)
            free(stack)
            free(bounds)
            free(moved)
            free(scratch)
        if out.failed:
            raise MemoryError("tree_ball_pairs: no memory for the kept pairs")
        indices_array = _owned(<void**>&out.index, out.size, sizeof(int), "i")
        cost_array = (_owned(<void**>&out.cost, out.size, sizeof(double), "d")
                      if with_cost else None)
    finally:
        mmopt_lock_destroy(&lock)
        free(out.index)
        free(out.cost)
        if units != NULL:
            for u in range(n_units):
                free(units[u].index)
                free(units[u].cost)
        free(units)
        free(finished)
    indptr_array = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts_array, out=indptr_array[1:])
    return (indptr_array, indices_array, cost_array, phi_eff_array, dropped_array,
            met_array[:points.shape[0]])


cdef object _owned(void** data, Py_ssize_t size, Py_ssize_t itemsize, str kind):
    """A NumPy array of ``size`` items over ``data[0]`` (shrunk to fit by realloc), which it
    then owns and frees; ``data[0]`` is set to NULL."""
    cdef view.array out
    cdef void* fitted = realloc(data[0], max(size, 1) * itemsize)
    if fitted != NULL:
        data[0] = fitted
    out = view.array(shape=(max(size, 1),), itemsize=itemsize, format=kind, mode="c",
                     allocate_buffer=False)
    out.data = <char*>data[0]
    out.callback_free_data = free
    data[0] = NULL
    return np.asarray(out)[:size]


def tree_affine_bounds(
    const double[:, ::1] points,
    const double[::1] psi,
    const long long[::1] start,
    Py_ssize_t first_leaf,
    double[:, ::1] shift,
    double[::1] offset,
):
    """Per node ``k`` of an implicit complete binary tree (children ``2k + 1``, ``2k + 2``;
    leaf ``k >= first_leaf`` holding ``points[start[k]:start[k + 1]]`` and their ``psi``),
    an affine upper bound ``psi_j <= 2 shift[k].y_j + offset[k] - |shift[k]|^2`` of the
    values below it, into ``shift`` and ``offset``.

    ``shift`` is half the least-squares slope of ``psi`` over the node's points (centred
    moments per leaf, merged upwards by Chan et al.'s pairwise update, then a d x d solve
    with a relative ridge of 1e-10 of the trace); ``offset`` is then the exact largest
    residual ``psi_j - 2 shift.y_j`` plus ``|shift|^2``, so the bound holds whatever the
    slope's rounding.
    """
    cdef Py_ssize_t nodes = 2 * first_leaf + 1
    cdef Py_ssize_t d = points.shape[1]
    cdef Py_ssize_t k, e, p, q, r, left, right, low, high, pivot
    cdef double count, delta_psi, share, ridge, top, value, t
    count_array = np.zeros(nodes)
    mean_array = np.zeros((nodes, d))
    psi_mean_array = np.zeros(nodes)
    moments_array = np.zeros((nodes, d, d))
    cross_array = np.zeros((nodes, d))
    system_array = np.empty((d, d + 1))
    delta_array = np.empty(d)
    cdef double[::1] counts = count_array
    cdef double[:, ::1] mean = mean_array
    cdef double[::1] psi_mean = psi_mean_array
    cdef double[:, :, ::1] moments = moments_array
    cdef double[:, ::1] cross = cross_array
    cdef double[:, ::1] system = system_array
    cdef double[::1] delta = delta_array
    with nogil:
        # Leaves: means, then moments about them.
        for k in range(first_leaf, nodes):
            count = <double>(start[k + 1] - start[k])
            counts[k] = count
            if count == 0.0:
                continue
            for e in range(start[k], start[k + 1]):
                psi_mean[k] = psi_mean[k] + psi[e]
                for p in range(d):
                    mean[k, p] = mean[k, p] + points[e, p]
            psi_mean[k] = psi_mean[k] / count
            for p in range(d):
                mean[k, p] = mean[k, p] / count
            for e in range(start[k], start[k + 1]):
                value = psi[e] - psi_mean[k]
                for p in range(d):
                    t = points[e, p] - mean[k, p]
                    cross[k, p] = cross[k, p] + t * value
                    for q in range(p + 1):
                        moments[k, p, q] = moments[k, p, q] + t * (points[e, q] - mean[k, q])
        # Internal nodes: the children's moments merged (exact in exact arithmetic).
        for k in range(first_leaf - 1, -1, -1):
            left, right = 2 * k + 1, 2 * k + 2
            count = counts[left] + counts[right]
            counts[k] = count
            if counts[left] == 0.0 or counts[right] == 0.0:
                r = right if counts[left] == 0.0 else left
                psi_mean[k] = psi_mean[r]
                for p in range(d):
                    mean[k, p] = mean[r, p]
                    cross[k, p] = cross[r, p]
                    for q in range(p + 1):
                        moments[k, p, q] = moments[r, p, q]
                continue
            share = counts[left] * counts[right] / count
            delta_psi = psi_mean[right] - psi_mean[left]
            psi_mean[k] = psi_mean[left] + delta_psi * (counts[right] / count)
            for p in range(d):
                delta[p] = mean[right, p] - mean[left, p]
                mean[k, p] = mean[left, p] + delta[p] * (counts[right] / count)
                cross[k, p] = cross[left, p] + cross[right, p] + share * delta[p] * delta_psi
                for q in range(p + 1):
                    moments[k, p, q] = (moments[left, p, q] + moments[right, p, q]
                                        + share * delta[p] * delta[q])
        for k in range(nodes):
            # slope = (moments + ridge I)^-1 cross, by Gaussian elimination with partial
            # pivoting on [moments + ridge I | cross].
            ridge = 0.0
            for p in range(d):
                ridge = ridge + moments[k, p, p]
            ridge = 1e-10 * ridge + 1e-300
            for p in range(d):
                for q in range(d):
                    system[p, q] = moments[k, p, q] if q <= p else moments[k, q, p]
                system[p, p] = system[p, p] + ridge
                system[p, d] = cross[k, p]
            for p in range(d):
                pivot = p
                for q in range(p + 1, d):
                    if fabs(system[q, p]) > fabs(system[pivot, p]):
                        pivot = q
                if pivot != p:
                    for q in range(d + 1):
                        system[p, q], system[pivot, q] = system[pivot, q], system[p, q]
                for q in range(p + 1, d):
                    t = system[q, p] / system[p, p]
                    for r in range(p, d + 1):
                        system[q, r] = system[q, r] - t * system[p, r]
            for p in range(d - 1, -1, -1):
                t = system[p, d]
                for q in range(p + 1, d):
                    t = t - system[p, q] * delta[q]
                delta[p] = t / system[p, p]
            for p in range(d):
                shift[k, p] = 0.5 * delta[p]
            # The exact largest residual over the node's points (leaves low .. high).
            low, high = k, k
            while low < first_leaf:
                low, high = 2 * low + 1, 2 * high + 2
            top = -INFINITY
            for e in range(start[low], start[high + 1]):
                value = psi[e]
                for p in range(d):
                    value = value - 2.0 * shift[k, p] * points[e, p]
                if value > top:
                    top = value
            value = 0.0
            for p in range(d):
                value = value + shift[k, p] * shift[k, p]
            offset[k] = top + value
