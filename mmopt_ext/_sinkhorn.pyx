"""Sinkhorn kernels: the log-domain half-step (one log-sum-exp per row, rows in parallel), the
fused scaling-domain iteration, the plan and its marginals, the sparsified plan.

The sums of exponentials run through ``_expsum.h`` (glibc's SIMD ``exp`` where available).
"""

import os
import warnings

import numpy as np

from cython.parallel cimport prange
from libc.math cimport exp, fabs, log, INFINITY
from libc.string cimport memset
from libc.stdlib cimport free, malloc, realloc

cdef extern from "_expsum.h" nogil:
    ctypedef double (*mmopt_expsum_fn)(const double*, const double*, double, double, Py_ssize_t)
    mmopt_expsum_fn mmopt_expsum
    double MMOPT_EXPSUM_TINY
    double MMOPT_EXPSUM_HUGE
    const char *mmopt_expsum_names[4]
    int mmopt_expsum_path
    int mmopt_expsum_available(int which)
    int mmopt_expsum_select(int which)
    ctypedef void (*mmopt_exprow_fn)(
        const double*, const double*, double, double, Py_ssize_t, double*
    )
    mmopt_exprow_fn mmopt_exprow
    int mmopt_binary_exponent(double x)
    ctypedef double (*mmopt_scaling_fn)(
        const double*, Py_ssize_t, Py_ssize_t, const double*, const double*, double*, double*,
        double
    )
    mmopt_scaling_fn mmopt_scaling_rows
    ctypedef double (*mmopt_scaling_f32_fn)(
        const float*, Py_ssize_t, Py_ssize_t, const double*, const double*, double*, double*,
        double
    )
    mmopt_scaling_f32_fn mmopt_scaling_rows_f32
    ctypedef double (*mmopt_plan_fn)(
        double*, const double*, Py_ssize_t, Py_ssize_t, const double*, const double*, double*,
        double*
    )
    mmopt_plan_fn mmopt_plan_rows
    void mmopt_to_single(const double *x, float *y, Py_ssize_t m)
    ctypedef void (*mmopt_scaling2_fn)(
        const double*, Py_ssize_t, Py_ssize_t, const double*, const double*, const double*,
        double*, double*, double*, double*, double, double, double*, double*
    )
    mmopt_scaling2_fn mmopt_scaling_rows2
    double mmopt_relaxed(double old, double target, double omega)

_PATHS = tuple(mmopt_expsum_names[i].decode() for i in range(4))


def requested_exp_path():
    """The index of the ``exp`` path the environment variable ``MMOPT_EXP_PATH`` names
    (``scalar``, ``sse2``, ``avx2`` or ``avx512``; read when the kernels are imported), -1
    (the fastest available) when it is unset or names a path this build and CPU cannot run
    (with a ``RuntimeWarning``).

    It lets a benchmark or a test run the AVX2 path on an AVX-512 CPU, for example.
    """
    name = os.environ.get("MMOPT_EXP_PATH", "").strip().lower()
    if not name:
        return -1
    if name in _PATHS and mmopt_expsum_available(_PATHS.index(name)):
        return _PATHS.index(name)
    available = tuple(p for i, p in enumerate(_PATHS) if mmopt_expsum_available(i))
    warnings.warn(
        f"MMOPT_EXP_PATH={name!r} is not an exp path this build and CPU can run (available: "
        f"{available}); using the fastest.",
        RuntimeWarning,
    )
    return -1


mmopt_expsum_select(requested_exp_path())


def exp_paths():
    """The names of the ``exp`` paths this build and CPU can run, slowest first."""
    return tuple(name for i, name in enumerate(_PATHS) if mmopt_expsum_available(i))


def exp_path():
    """The name of the ``exp`` path in use."""
    return _PATHS[mmopt_expsum_path]


def select_exp_path(name=None):
    """Use the ``exp`` path ``name`` (None: the fastest available); returns the name in use.

    Meant for tests and benchmarks: every path computes the same sums up to rounding. It
    changes this module's kernels only; the environment variable ``MMOPT_EXP_PATH`` (read
    at import) sets the path of every kernel (``_sinkhorn`` and ``_pointcloud``).
    """
    which = -1 if name is None else (_PATHS.index(name) if name in _PATHS else 99)
    if mmopt_expsum_select(which) < 0:
        raise ValueError(f"exp path {name!r} is not available here; available: {exp_paths()}")
    return exp_path()


def log_half_step(
    const double[:, ::1] C,
    const double[::1] g,
    const double[::1] f_old,
    const double[::1] log_a,
    double reg,
    double[::1] f_new,
    double[::1] row_mass,
    int n_threads,
):
    """Update the row potentials of entropic OT with the column potentials fixed.

    For each row ``i``, with ``t_ij = (g_j - C_ij) / reg``::

        f_new_i = reg * (log_a_i - logsumexp_j t_ij)
        row_mass_i = sum_j exp(f_old_i / reg + t_ij)     # row sum of the plan at (f_old, g)

    One pass per row: the previous potential ``f_old_i`` shifts the exponents, so the sum of
    exponentials is the current plan's row sum, which sets both outputs (``f_new_i = f_old_i
    + reg * (log_a_i - log row_mass_i)``). Exponents are clamped to [-700, 700]; a row whose
    sum falls outside [1e-250, 1e250] (far from balanced: early iterations, small ``reg``)
    is redone exactly with its largest exponent as the shift. Calling it with ``C.T``
    (C-contiguous) and the roles of ``f``/``g`` swapped gives the column update. Rows are
    independent: the result does not depend on the number of threads.
    """
    cdef Py_ssize_t n = C.shape[0]
    cdef Py_ssize_t m = C.shape[1]
    cdef Py_ssize_t i, j
    cdef double inv_reg = 1.0 / reg
    cdef double t, largest, total, lse
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            total = mmopt_expsum(&C[i, 0], &g[0], f_old[i], inv_reg, m)
            if MMOPT_EXPSUM_TINY <= total <= MMOPT_EXPSUM_HUGE:
                f_new[i] = f_old[i] + reg * (log_a[i] - log(total))
                row_mass[i] = total
            else:
                largest = -INFINITY
                for j in range(m):
                    t = (g[j] - C[i, j]) * inv_reg
                    if t > largest:
                        largest = t
                total = mmopt_expsum(&C[i, 0], &g[0], -largest * reg, inv_reg, m)
                lse = largest + log(total)
                f_new[i] = reg * (log_a[i] - lse)
                row_mass[i] = exp(f_old[i] * inv_reg + lse)


cdef inline double _row_sum(
    const double *c, const double *g, double shift, double inv_reg, Py_ssize_t m
) noexcept nogil:
    """sum_j exp((shift + g_j - c_j) * inv_reg), exact at any magnitude (inf on overflow)."""
    cdef double total = mmopt_expsum(c, g, shift, inv_reg, m)
    cdef double largest = -INFINITY
    cdef double t
    cdef Py_ssize_t j
    if MMOPT_EXPSUM_TINY <= total <= MMOPT_EXPSUM_HUGE:
        return total
    for j in range(m):
        t = (shift + g[j] - c[j]) * inv_reg
        if t > largest:
            largest = t
    if largest == -INFINITY:
        return 0.0
    # exp((shift + g_j - c_j) / reg - largest) through the same routine: shift' = shift - largest reg.
    total = mmopt_expsum(c, g, shift - largest / inv_reg, inv_reg, m)
    return exp(largest + log(total))


def plan_row_sums(
    const double[:, ::1] C,
    const double[::1] f,
    const double[::1] g,
    double reg,
    double[::1] out,
    int n_threads,
):
    """Row sums of the plan ``exp((f_i + g_j - C_ij) / reg)`` without forming it.

    Exact at any magnitude: 0 where every entry underflows, ``inf`` where the sum overflows.
    Pass ``C.T`` (C-contiguous) with ``f``, ``g`` swapped for the column sums.
    """
    cdef Py_ssize_t n = C.shape[0]
    cdef Py_ssize_t m = C.shape[1]
    cdef Py_ssize_t i
    cdef double inv_reg = 1.0 / reg
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            out[i] = _row_sum(&C[i, 0], &g[0], f[i], inv_reg, m)


# Magnitude bins of the sparsification: bin b of a line holds its entries of binary exponent
# b below that of the line's sum (factor-2 bins). The last bin gathers everything from
# 2**-(_N_BINS - 1) of the line's sum down and is always dropped (its entries' total is at
# most m * 2**-62 of the line's mass).
cdef enum:
    _N_BINS = 64


cdef inline int _bin(int top, double value) noexcept nogil:
    cdef int b = top - mmopt_binary_exponent(value)
    if b < 0:
        return 0
    if b > _N_BINS - 1:
        return _N_BINS - 1
    return b


cdef inline int _cutoff(const double *mass, double budget) noexcept nogil:
    """First bin to keep: bins are dropped from the smallest up while their total fits."""
    cdef int b = _N_BINS - 1
    cdef double dropped = 0.0
    while b > 0 and dropped + mass[b - 1] <= budget:
        dropped += mass[b - 1]
        b -= 1
    return b


cdef int _line_top(double total) noexcept nogil:
    """Binary exponent of a line's sum; -1 for a line with (numerically) no mass, whose
    entries its own rule never keeps (they are clamped exponentials, not its mass)."""
    if not total > 1e-290:
        return -1
    return mmopt_binary_exponent(total)


def sparsify_plan(
    const double[:, ::1] C,
    const double[::1] f,
    const double[::1] g,
    double reg,
    const double[::1] row_sums,
    const double[::1] col_sums,
    double row_budget,
    double col_budget,
):
    """The sparsified plan of Sinkhorn-Newton-Sparse, in CSR arrays ``(indptr, indices, data)``.

    Entries ``P_ij = exp((f_i + g_j - C_ij) / reg)`` are binned per row (per column) by
    their binary exponent below that of the row's (column's) sum; whole bins are dropped
    from the smallest up while their cumulative mass stays within ``row_budget``
    (``col_budget``); an entry is kept when its row or its column keeps it. Entries below
    ``2**-62`` of both their row's and their column's sum are always dropped.
    ``row_sums``/``col_sums`` are the plan's marginals (from :func:`plan_row_sums`).

    Two passes over the rows, each computing the row's exponentials at once (SIMD ``exp``):
    the first bins the masses of every row and every column, the second collects the kept
    entries. Serial: the column bins are shared by all rows.
    """
    cdef Py_ssize_t n = C.shape[0]
    cdef Py_ssize_t m = C.shape[1]
    cdef Py_ssize_t i, j, nnz = 0, capacity = 4 * (n + m)
    cdef double inv_reg = 1.0 / reg
    cdef double value
    cdef int top, b
    cdef double row_mass[_N_BINS]
    row_cut_arr = np.zeros(n, dtype=np.int32)
    col_cut_arr = np.zeros(m, dtype=np.int32)
    row_top_arr = np.array([_line_top(x) for x in row_sums], dtype=np.int32)
    col_top_arr = np.array([_line_top(x) for x in col_sums], dtype=np.int32)
    col_mass_arr = np.zeros((m, _N_BINS))
    values_arr = np.empty(m)
    indptr_arr = np.zeros(n + 1, dtype=np.int64)
    cdef int[::1] row_cut = row_cut_arr
    cdef int[::1] col_cut = col_cut_arr
    cdef int[::1] row_top = row_top_arr
    cdef int[::1] col_top = col_top_arr
    cdef double[:, ::1] col_mass = col_mass_arr
    cdef double[::1] values = values_arr
    cdef long long[::1] indptr = indptr_arr
    cdef int *indices = NULL
    cdef double *data = NULL
    cdef void *grown
    cdef bint out_of_memory = False
    with nogil:
        for i in range(n):
            mmopt_exprow(&C[i, 0], &g[0], f[i], inv_reg, m, &values[0])
            for j in range(_N_BINS):
                row_mass[j] = 0.0
            top = row_top[i]
            for j in range(m):
                value = values[j]
                # The last bin is always dropped: its mass is never needed (skipping it
                # spares most entries' scattered writes into the column bins).
                if top >= 0:
                    b = _bin(top, value)
                    if b < _N_BINS - 1:
                        row_mass[b] += value
                if col_top[j] >= 0:
                    b = _bin(col_top[j], value)
                    if b < _N_BINS - 1:
                        col_mass[j, b] += value
            if top >= 0:
                row_cut[i] = _cutoff(row_mass, row_budget)
        for j in range(m):
            if col_top[j] >= 0:
                col_cut[j] = _cutoff(&col_mass[j, 0], col_budget)
        indices = <int *>malloc(capacity * sizeof(int))
        data = <double *>malloc(capacity * sizeof(double))
        out_of_memory = indices == NULL or data == NULL
        for i in range(n):
            if out_of_memory:
                break
            mmopt_exprow(&C[i, 0], &g[0], f[i], inv_reg, m, &values[0])
            top = row_top[i]
            for j in range(m):
                value = values[j]
                if (top >= 0 and _bin(top, value) < row_cut[i]) or (
                    col_top[j] >= 0 and _bin(col_top[j], value) < col_cut[j]
                ):
                    if nnz == capacity:
                        capacity = 2 * capacity
                        grown = realloc(indices, capacity * sizeof(int))
                        if grown == NULL:
                            out_of_memory = True
                            break
                        indices = <int *>grown
                        grown = realloc(data, capacity * sizeof(double))
                        if grown == NULL:
                            out_of_memory = True
                            break
                        data = <double *>grown
                    indices[nnz] = <int>j
                    data[nnz] = value
                    nnz += 1
            indptr[i + 1] = nnz
    try:
        if out_of_memory:
            raise MemoryError("sparsify_plan: out of memory for the sparsified plan")
        indices_arr = np.empty(nnz, dtype=np.int32)
        data_arr = np.empty(nnz)
        if nnz:
            indices_arr[:] = <int[:nnz]>indices
            data_arr[:] = <double[:nnz]>data
    finally:
        free(indices)
        free(data)
    return indptr_arr, indices_arr, data_arr


def dense_plan(
    const double[:, ::1] C,
    const double[::1] f,
    const double[::1] g,
    double reg,
    double[:, ::1] out,
    int n_threads,
    double floor=-700.0,
    float[:, ::1] single=None,
):
    """Write the plan ``exp((f_i + g_j - C_ij) / reg)`` into ``out`` (SIMD ``exp``).

    Entries whose exponent is at most ``floor`` (at least -700) are set to 0 and from 700 on to
    ``inf``, both up to 1e-9 (the SIMD routine clamps there; ``exp`` itself is below 1e-304 and above 1e304
    there). With ``single``, also a float32 copy there, its entries below float32's smallest
    normal number set to 0 (subnormal operands can take a slow path).
    """
    cdef Py_ssize_t n = C.shape[0]
    cdef Py_ssize_t m = C.shape[1]
    cdef Py_ssize_t i, j
    cdef double inv_reg = 1.0 / reg
    # exp is increasing and the SIMD routine clamps its argument to [-700, 700], so the
    # exponent's range is read off the value: one compare per entry on the row just written
    # (branch-free, so the compiler vectorizes it), not a second exponent per entry. The
    # margins of 1e-9 (relative) cover the SIMD exp's rounding at the clamps.
    cdef double low = exp(max(floor, -700.0)) * (1.0 + 1e-9)
    cdef double high = exp(700.0) * (1.0 - 1e-9)
    cdef double *row
    cdef double value
    cdef bint copy = single is not None
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            row = &out[i, 0]
            mmopt_exprow(&C[i, 0], &g[0], f[i], inv_reg, m, row)
            for j in range(m):
                value = row[j]
                row[j] = 0.0 if value <= low else (INFINITY if value >= high else value)
            if copy:  # the row is still in cache
                mmopt_to_single(row, &single[i, 0], m)


def scaled_plan(
    double[:, ::1] K,
    const double[:, ::1] C,
    const double[::1] u,
    const double[::1] v,
    int n_threads,
):
    """Overwrite ``K`` with the plan ``diag(u) K diag(v)`` and return its row sums, column
    sums and ``<C, P>``, in one pass over ``K`` and ``C``.

    The rows are split into blocks (one per thread), each with its own partial column
    sums, added in block order: the result does not depend on the number of threads.
    """
    cdef Py_ssize_t n = K.shape[0]
    cdef Py_ssize_t m = K.shape[1]
    cdef Py_ssize_t blocks = max(1, min(n_threads, n))
    cdef Py_ssize_t t, j, start, stop
    rows_arr = np.empty(n)
    partial_arr = np.zeros((blocks, m))
    costs_arr = np.zeros(blocks)
    cdef double[::1] rows = rows_arr
    cdef double[:, ::1] partial = partial_arr
    cdef double[::1] costs = costs_arr
    with nogil:
        for t in prange(blocks, schedule="static", num_threads=n_threads):
            start = t * n // blocks
            stop = (t + 1) * n // blocks
            if stop > start:
                costs[t] = mmopt_plan_rows(
                    &K[start, 0], &C[start, 0], m, stop - start, &u[start], &v[0],
                    &rows[start], &partial[t, 0],
                )
    return rows_arr, partial_arr.sum(axis=0), float(costs_arr.sum())


ctypedef fused kernel_t:
    float
    double


def scaling_iteration(
    const kernel_t[:, ::1] K,
    const double[::1] a,
    const double[::1] b,
    double[::1] u,
    double[::1] v,
    double[:, ::1] acc,
    double bound,
    int n_threads,
    double omega=1.0,
):
    """One scaling-domain Sinkhorn iteration in place: ``u = a / (K v)``, then ``v = b / (K^T u)``.

    With ``omega != 1`` both updates are over-relaxed: ``u = u^(1 - omega) (a / K v)^omega``
    and likewise ``v``. Returns ``(row_error, within, column_error, mass)``: ``row_error``
    is the L1 row-marginal error of the plan ``diag(u) K diag(v)`` at the incoming
    ``(u, v)``; ``within`` whether every new entry of ``u`` and ``v`` lies in
    ``[1 / bound, bound]`` (False on NaN or infinity as well); ``column_error`` and
    ``mass`` are the L1 column-marginal error and the total mass of the plan at the new
    ``(u, v)`` (0 and ``sum(b)`` up to rounding when ``omega == 1``).

    ``K`` is float64, or a float32 copy of the kernel (half the memory traffic; products
    and sums in float64, so the iteration is the one of the rounded kernel).

    ``K v`` and ``K^T u`` take one pass over ``K``: each row's dot product with ``v`` sets
    ``u_i``, and the row, still in cache, is added to ``K^T u`` right away. The rows are
    split into ``acc.shape[0]`` blocks, one partial ``K^T u`` per row of ``acc``, processed
    in parallel and summed in a fixed order (the result does not depend on the number of
    threads, only on ``acc.shape[0]``).
    """
    cdef Py_ssize_t n = K.shape[0]
    cdef Py_ssize_t m = K.shape[1]
    cdef Py_ssize_t blocks = acc.shape[0]
    cdef Py_ssize_t t, j, start, stop
    cdef double error = 0.0, column_error = 0.0, mass = 0.0
    cdef double total, low = 1.0 / bound
    cdef bint within = True
    with nogil:
        for t in prange(blocks, schedule="static", num_threads=n_threads):
            # Block boundaries on multiples of 4 rows (the SIMD path's row blocks).
            start = (t * n // blocks) // 4 * 4
            stop = n if t == blocks - 1 else ((t + 1) * n // blocks) // 4 * 4
            memset(&acc[t, 0], 0, m * sizeof(double))
            if stop > start:
                if kernel_t is double:
                    error += mmopt_scaling_rows(
                        &K[start, 0], m, stop - start, &v[0], &a[start], &u[start],
                        &acc[t, 0], omega,
                    )
                else:
                    error += mmopt_scaling_rows_f32(
                        &K[start, 0], m, stop - start, &v[0], &a[start], &u[start],
                        &acc[t, 0], omega,
                    )
        for j in range(m):
            total = acc[0, j]
            for t in range(1, blocks):
                total = total + acc[t, j]
            v[j] = mmopt_relaxed(v[j], b[j] / total, omega)
            column_error += fabs(v[j] * total - b[j])
            mass += v[j] * total
            if not (low <= v[j] <= bound):
                within = False
        for j in range(n):
            if not (low <= u[j] <= bound):
                within = False
    return error, within, column_error, mass


# Rows per sub-block of the multi-problem sweep: the block of K (16 rows of m entries)
# stays in cache while each problem's sweep reads it (a multiple of 4: the SIMD row blocks).
DEF SHARED_ROWS = 16


def scaling_iterations(
    const double[:, ::1] K,
    const double[::1] a,
    const double[:, ::1] B,
    double[:, ::1] U,
    double[:, ::1] V,
    double[:, :, ::1] acc,
    const double[::1] omega,
    double bound,
    int n_threads,
):
    """:func:`scaling_iteration` for the c problems ``(U[p], V[p], B[p], omega[p])``
    sharing ``K``, with one pass over ``K`` for all of them: each block of a few rows is
    read once from memory and swept by the problems while it is in cache, two at a time
    (each load of ``K`` serving both; each problem's results bit-identical to its own
    sweep's).

    ``acc`` has shape (c, blocks, m) (``acc[p]`` is the single iteration's ``acc``).
    Returns arrays ``(row_error, within, column_error, mass)`` of length c, each entry
    what :func:`scaling_iteration` returns for that problem (``u``, ``v`` equal to its;
    the row errors summed in another order).
    """
    cdef Py_ssize_t c = U.shape[0]
    cdef Py_ssize_t n = K.shape[0]
    cdef Py_ssize_t m = K.shape[1]
    cdef Py_ssize_t blocks = acc.shape[1]
    cdef Py_ssize_t t, j, p, start, stop, first, last
    cdef double total, low = 1.0 / bound
    cdef double e0, e1
    errors_arr = np.zeros((blocks, c))
    row_error_arr = np.zeros(c)
    column_error_arr = np.zeros(c)
    mass_arr = np.zeros(c)
    within_arr = np.ones(c, dtype=bool)
    cdef double[:, ::1] errors = errors_arr
    cdef double[::1] row_error = row_error_arr
    cdef double[::1] column_error = column_error_arr
    cdef double[::1] mass = mass_arr
    cdef unsigned char[::1] within = within_arr.view(np.uint8)
    with nogil:
        for t in prange(blocks, schedule="static", num_threads=n_threads):
            start = (t * n // blocks) // 4 * 4
            stop = n if t == blocks - 1 else ((t + 1) * n // blocks) // 4 * 4
            for p in range(c):
                memset(&acc[p, t, 0], 0, m * sizeof(double))
            first = start
            while first < stop:
                last = min(first + SHARED_ROWS, stop)
                # Problems in pairs, each pair sharing the block's loads (bit-identical to
                # one sweep each); an odd one alone.
                p = 0
                while p + 2 <= c:
                    # Assigned here so that Cython makes them thread-private: written only
                    # through their addresses, they would be shared by the prange's threads.
                    e0 = 0.0
                    e1 = 0.0
                    mmopt_scaling_rows2(
                        &K[first, 0], m, last - first, &V[p, 0], &V[p + 1, 0], &a[first],
                        &U[p, first], &U[p + 1, first], &acc[p, t, 0], &acc[p + 1, t, 0],
                        omega[p], omega[p + 1], &e0, &e1,
                    )
                    errors[t, p] += e0
                    errors[t, p + 1] += e1
                    p = p + 2
                if p < c:
                    errors[t, p] += mmopt_scaling_rows(
                        &K[first, 0], m, last - first, &V[p, 0], &a[first], &U[p, first],
                        &acc[p, t, 0], omega[p],
                    )
                first = last
        for p in range(c):
            for t in range(blocks):
                row_error[p] += errors[t, p]
            for j in range(m):
                total = acc[p, 0, j]
                for t in range(1, blocks):
                    total = total + acc[p, t, j]
                V[p, j] = mmopt_relaxed(V[p, j], B[p, j] / total, omega[p])
                column_error[p] += fabs(V[p, j] * total - B[p, j])
                mass[p] += V[p, j] * total
                if not (low <= V[p, j] <= bound):
                    within[p] = 0
            for j in range(n):
                if not (low <= U[p, j] <= bound):
                    within[p] = 0
    return row_error_arr, within_arr, column_error_arr, mass_arr
