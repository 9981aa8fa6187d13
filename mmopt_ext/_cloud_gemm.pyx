"""Online row update of point-cloud Sinkhorn for clouds of higher dimension (d > 3): the
costs of a tile of rows against a block of columns come from one small matrix product,
``|x_i - y_j|^2 = |x_i|^2 + |y_j|^2 - 2 x_i . y_j`` (BLAS ``dgemm`` into a per-thread
buffer of 32 x 256 costs that stays in cache), then the log-sum-exp of the block as in
``_pointcloud.online_softmin`` (a running maximum rescales the partial sums, vectorized
``exp`` from ``_expsum.h``). Costs: kind 0 ``|x - y|^2``, kind 1 ``|x - y|``, kind 2
``|x - y|^p``. The caller centres the clouds (the expansion's rounding is relative to
``|x|^2 + |y|^2``).
"""

from cython.parallel cimport parallel, prange
from libc.math cimport exp, log, pow, sqrt, INFINITY
from libc.stdlib cimport free, malloc
from scipy.linalg.cython_blas cimport dgemm

cdef extern from "_expsum.h" nogil:
    ctypedef double (*mmopt_expsum_fn)(const double*, const double*, double, double, Py_ssize_t)
    mmopt_expsum_fn mmopt_expsum
    int mmopt_expsum_select(int which)

mmopt_expsum_select(-1)

DEF ROWS = 32
DEF COLS = 256


def online_softmin_gemm(
    const double[:, ::1] x,
    const double[:, ::1] y,
    const double[::1] x_sq,
    const double[::1] y_sq,
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
    """Row update ``f_i = reg (log a_i - logsumexp_j((g_j - C_ij) / reg))`` and the row
    sums ``exp((f_old_i + g_j - C_ij) / reg)`` summed over ``j``; ``x_sq``, ``y_sq`` the
    squared norms of the points. Tiles of 32 rows run in parallel."""
    cdef Py_ssize_t n = x.shape[0], m = y.shape[0], d = x.shape[1]
    cdef Py_ssize_t n_tiles = (n + ROWS - 1) // ROWS
    cdef Py_ssize_t tile, i0, rows, r, i, j, j0, width
    cdef double inv_reg = 1.0 / reg, minus_two = -2.0, zero = 0.0
    cdef double s, t, block_best, lse
    cdef double *buf
    cdef double *best
    cdef double *total
    cdef int gm, gn, gk, lda, ldb, ldc
    cdef char tr = b'T', no = b'N'
    if m == 0 or n == 0:
        return
    with nogil, parallel(num_threads=n_threads):
        buf = <double *>malloc((ROWS * COLS + 2 * ROWS) * sizeof(double))
        best = buf + ROWS * COLS
        total = best + ROWS
        for tile in prange(n_tiles, schedule="static"):
            i0 = tile * ROWS
            rows = min(ROWS, n - i0)
            for r in range(rows):
                best[r] = -INFINITY
                total[r] = 0.0
            for j0 in range(0, m, COLS):
                width = min(COLS, m - j0)
                # buf (rows x width, row-major) = -2 X_tile (rows x d) @ Y_block^T.
                gm = <int>width
                gn = <int>rows
                gk = <int>d
                lda = <int>d
                ldb = <int>d
                ldc = <int>width
                dgemm(&tr, &no, &gm, &gn, &gk, &minus_two, &y[j0, 0], &lda, &x[i0, 0], &ldb,
                      &zero, buf, &ldc)
                for r in range(rows):
                    i = i0 + r
                    block_best = -INFINITY
                    for j in range(width):
                        s = x_sq[i] + y_sq[j0 + j] + buf[r * width + j]
                        if s < 0.0:
                            s = 0.0
                        if kind == 1:
                            s = sqrt(s)
                        elif kind == 2:
                            s = pow(s, 0.5 * p)
                        buf[r * width + j] = s
                        t = g[j0 + j] - s
                        if t > block_best:
                            block_best = t
                    if block_best > best[r]:
                        if best[r] > -INFINITY:
                            total[r] = total[r] * exp((best[r] - block_best) * inv_reg)
                        best[r] = block_best
                    if best[r] > -INFINITY:
                        total[r] = total[r] + mmopt_expsum(&buf[r * width], &g[j0], -best[r],
                                                           inv_reg, width)
            for r in range(rows):
                i = i0 + r
                if best[r] == -INFINITY or total[r] <= 0.0:  # an empty row
                    f_new[i] = INFINITY
                    row_mass[i] = 0.0
                else:
                    lse = best[r] * inv_reg + log(total[r])
                    f_new[i] = reg * (log_a[i] - lse)
                    row_mass[i] = exp(f_old[i] * inv_reg + lse)
        free(buf)
