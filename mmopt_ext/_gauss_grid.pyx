"""Kernels of the grid Gaussian transform (smooth-regime Sinkhorn for point clouds, d <= 3):
tensor Lagrange spreading of point weights onto a regular grid, Lagrange interpolation of grid
values at points, and the signed, stabilized Gaussian convolution of grid values along one
axis (blocks of matrix products).

Grids are C-ordered 3-D arrays (trailing axes of length 1 when d < 3); point coordinates are
given in grid units (node ``k`` of axis ``a`` sits at coordinate ``k``).
"""

from cython.parallel cimport prange
from libc.math cimport exp, floor, log, INFINITY
from libc.stdlib cimport free, malloc
from scipy.linalg.cython_blas cimport dgemm

cdef extern from "_expsum.h" nogil:
    ctypedef void (*mmopt_exprow_fn)(const double*, const double*, double, double, Py_ssize_t,
                                     double*)
    mmopt_exprow_fn mmopt_exprow
    int mmopt_expsum_select(int which)

mmopt_expsum_select(-1)

# stabilized_convolve: the bound on |2 c u (Y - Xc)| that sets the block size and the most
# outputs per block.
cdef double _MAX_CROSS = 300.0
cdef Py_ssize_t _MAX_BLOCK = 64
# Tiles: at most this many lines, and lines x L x B below OpenBLAS's threading threshold.
cdef Py_ssize_t _MAX_TILE_LINES = 256
cdef Py_ssize_t _GEMM_WORK = 200000


cdef inline Py_ssize_t _weights(double t, int q, double *w) noexcept nogil:
    """Lagrange weights of the ``q`` nodes ``base .. base + q - 1`` around ``t``; returns base."""
    cdef Py_ssize_t base = <Py_ssize_t>floor(t) - (q // 2 - 1)
    cdef double u = t - base
    cdef int k, l
    for k in range(q):
        w[k] = 1.0
        for l in range(q):
            if l != k:
                w[k] *= (u - l) / (k - l)
    return base


def lagrange_spread(
    const double[:, ::1] coords,
    const double[::1] values,
    int q,
    double[:, :, ::1] grid,
):
    """Add ``values[i]`` times the tensor Lagrange weights of order ``q`` (``q`` nodes per
    axis, even) of ``coords[i]`` to ``grid`` (the adjoint of :func:`lagrange_interp`).

    Serial: points may share nodes, and a fixed order keeps the result reproducible (it is
    done once per solve).
    """
    cdef Py_ssize_t n = coords.shape[0]
    cdef int d = coords.shape[1]
    cdef Py_ssize_t i, b0, b1 = 0, b2 = 0
    cdef int k0, k1, k2, q1 = q if d > 1 else 1, q2 = q if d > 2 else 1
    cdef double w0[32]
    cdef double w1[32]
    cdef double w2[32]
    cdef double v01
    w1[0] = 1.0
    w2[0] = 1.0
    with nogil:
        for i in range(n):
            b0 = _weights(coords[i, 0], q, w0)
            if d > 1:
                b1 = _weights(coords[i, 1], q, w1)
            if d > 2:
                b2 = _weights(coords[i, 2], q, w2)
            for k0 in range(q):
                for k1 in range(q1):
                    v01 = values[i] * w0[k0] * w1[k1]
                    for k2 in range(q2):
                        grid[b0 + k0, b1 + k1, b2 + k2] += v01 * w2[k2]


def lagrange_interp(
    const double[:, :, ::1] grid,
    const double[:, ::1] coords,
    int q,
    double[::1] out,
    int n_threads,
):
    """``out[i]``: the tensor Lagrange interpolant of order ``q`` of ``grid`` at ``coords[i]``."""
    cdef Py_ssize_t n = coords.shape[0]
    cdef int d = coords.shape[1]
    cdef Py_ssize_t i, b0, b1, b2
    cdef int k0, k1, k2, q1 = q if d > 1 else 1, q2 = q if d > 2 else 1
    cdef double *w
    cdef double total, part
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            w = <double *>malloc(3 * 32 * sizeof(double))
            w[32] = 1.0
            w[64] = 1.0
            b1 = 0
            b2 = 0
            b0 = _weights(coords[i, 0], q, w)
            if d > 1:
                b1 = _weights(coords[i, 1], q, w + 32)
            if d > 2:
                b2 = _weights(coords[i, 2], q, w + 64)
            total = 0.0
            for k0 in range(q):
                for k1 in range(q1):
                    part = 0.0
                    for k2 in range(q2):
                        part = part + w[64 + k2] * grid[b0 + k0, b1 + k1, b2 + k2]
                    total = total + w[k0] * w[32 + k1] * part
            out[i] = total
            free(w)


def stabilized_convolve(
    const double[:, :, ::1] log_abs,
    const double[:, :, ::1] sign,
    int axis,
    double step_sq_over_reg,
    double[:, :, ::1] out_log_abs,
    double[:, :, ::1] out_sign,
    int n_threads,
):
    """Gaussian convolution of signed values kept as ``sign * exp(log_abs)``, along ``axis``.

    ``out[.., X, ..] = sum_Y sign[.., Y, ..] exp(log_abs[.., Y, ..] - c (X - Y)^2)`` with
    ``c = step_sq_over_reg`` (``h^2 / reg``), returned as ``(log |out|, sign(out))``.

    The outputs of a line are taken in blocks of ``B`` consecutive nodes of centre ``Xc``.
    Writing ``X = Xc + u``,

        ``l_Y - c (X - Y)^2 = [l_Y - c (Xc - Y)^2] - c u^2 + 2 c u (Y - Xc)``,

    the first bracket is shifted by its maximum over the line ``m`` (so its exponential is
    in (0, 1]) and the last term is a fixed ``L x B`` matrix ``exp(2 c u (Y - Xc))`` for all
    lines: the block is one matrix product (BLAS ``dgemm``) of the lines' shifted
    exponentials with that matrix, then ``log |.| + m - c u^2``. ``B`` keeps
    ``c B L <= 300`` (``L`` the line's length), so the matrix stays within ``e^{+-300}``;
    the largest term of each output is then at least ``e^-300`` of the scale, and shifted
    exponentials below ``e^-700`` are replaced by ``e^-700`` (the clamp of ``_expsum.h``'s
    vectorized ``exp``): each such term is below ``e^-100`` times the output's largest term.
    The sum is otherwise exact up to rounding (relative to its largest term, as any signed
    sum).
    """
    cdef Py_ssize_t s0 = log_abs.shape[0], s1 = log_abs.shape[1], s2 = log_abs.shape[2]
    cdef Py_ssize_t L = log_abs.shape[axis]
    cdef Py_ssize_t P = s0 if axis == 1 else (s0 * s1 if axis == 2 else 1)
    cdef Py_ssize_t Q = s1 * s2 if axis == 0 else (s2 if axis == 1 else 1)
    cdef double c = step_sq_over_reg
    cdef Py_ssize_t B = <Py_ssize_t>(_MAX_CROSS / (c * L))
    B = max(1, min(B, L, _MAX_BLOCK))
    # Lines per tile: each tile's products stay below OpenBLAS's threshold for threading
    # (the tiles already run in parallel).
    cdef Py_ssize_t lines = max(1, min(_GEMM_WORK // (L * B), _MAX_TILE_LINES))
    cdef Py_ssize_t per_p = (Q + lines - 1) // lines
    cdef Py_ssize_t n_tiles = P * per_p
    cdef double *la = <double *>&log_abs[0, 0, 0]
    cdef double *sg = <double *>&sign[0, 0, 0]
    cdef double *ol = &out_log_abs[0, 0, 0]
    cdef double *osg = &out_sign[0, 0, 0]
    # Per block (one after the other): the matrix exp(2 c u (Y - Xc)) (L x size, row-major;
    # L x L in all) and the squared distances c (Xc - Y)^2 (L per block). Long lines at small
    # blocks have up to L blocks.
    cdef Py_ssize_t max_blocks = (L + B - 1) // B
    cdef double *M = <double *>malloc(L * (L + max_blocks) * sizeof(double))
    cdef double *D
    cdef Py_ssize_t start, size, n_blocks = 0, block, tile, p, q0, n_lines, j, Y, k, index
    cdef double xc, u, value, best
    cdef double *T
    cdef double *Z
    cdef double *W
    cdef double *S
    cdef double *top
    cdef double *Mb
    cdef int gm, gn, gk, lda, ldb, ldc
    cdef double one = 1.0, zero = 0.0
    cdef char no = b'N'
    if M == NULL:
        raise MemoryError("stabilized_convolve: work buffer")
    D = M + L * L
    start = 0
    while start < L:
        size = min(B, L - start)
        xc = start + 0.5 * (size - 1)
        for Y in range(L):
            D[n_blocks * L + Y] = c * (xc - Y) * (xc - Y)
            for k in range(size):
                M[start * L + Y * size + k] = exp(2.0 * c * (Y - xc) * (start + k - xc))
        start += size
        n_blocks += 1
    try:
        with nogil:
            for tile in prange(n_tiles, schedule="dynamic", num_threads=n_threads):
                # The tile: lines q0 .. q0 + n_lines - 1 of slab p; node Y of line j is at
                # (p L + Y) Q + q0 + j. Gathered row by row (n_lines x L), log |.| of zeros
                # set to -inf.
                p = tile // per_p
                q0 = (tile % per_p) * lines
                n_lines = min(lines, Q - q0)
                T = <double *>malloc((3 * L + B + 1) * n_lines * sizeof(double))
                Z = T + L * n_lines
                W = Z + L * n_lines
                S = W + L * n_lines
                top = S + B * n_lines
                for Y in range(L):
                    for j in range(n_lines):
                        index = (p * L + Y) * Q + q0 + j
                        Z[j * L + Y] = sg[index]
                        T[j * L + Y] = la[index] if sg[index] != 0.0 else -INFINITY
                start = 0
                for block in range(n_blocks):
                    size = min(B, L - start)
                    xc = start + 0.5 * (size - 1)
                    Mb = M + start * L
                    for j in range(n_lines):
                        best = -INFINITY
                        for Y in range(L):
                            value = T[j * L + Y] - D[block * L + Y]
                            if value > best:
                                best = value
                        top[j] = best
                        if best == -INFINITY:
                            for Y in range(L):
                                W[j * L + Y] = 0.0
                        else:
                            # exp(T - D - best), clamped below at e^-700 (zero signs: zero).
                            mmopt_exprow(&D[block * L], &T[j * L], -best, 1.0, L, &W[j * L])
                            for Y in range(L):
                                W[j * L + Y] = W[j * L + Y] * Z[j * L + Y]
                    # S (n_lines x size) = W (n_lines x L) @ Mb (L x size), row-major.
                    gm = <int>size
                    gn = <int>n_lines
                    gk = <int>L
                    lda = <int>size
                    ldb = <int>L
                    ldc = <int>size
                    dgemm(&no, &no, &gm, &gn, &gk, &one, Mb, &lda, W, &ldb, &zero, S, &ldc)
                    for k in range(size):
                        u = start + k - xc
                        for j in range(n_lines):
                            index = (p * L + start + k) * Q + q0 + j
                            value = S[j * size + k]
                            if value > 0.0:
                                ol[index] = top[j] - c * u * u + log(value)
                                osg[index] = 1.0
                            elif value < 0.0:
                                ol[index] = top[j] - c * u * u + log(-value)
                                osg[index] = -1.0
                            else:
                                ol[index] = -INFINITY
                                osg[index] = 0.0
                    start = start + size
                free(T)
    finally:
        free(M)
