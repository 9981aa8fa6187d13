"""Kernels of the grid Gaussian transform (smooth-regime Sinkhorn for point clouds, d <= 3):
tensor Lagrange spreading of point weights onto a regular grid, Lagrange interpolation of grid
values at points, and the signed log-domain Gaussian convolution of grid values along one axis.

Grids are C-ordered 3-D arrays (trailing axes of length 1 when d < 3); point coordinates are
given in grid units (node ``k`` of axis ``a`` sits at coordinate ``k``).
"""

from cython.parallel cimport prange
from libc.math cimport exp, floor, log, INFINITY
from libc.stdlib cimport free, malloc

# Terms more than this below a sum's largest term (in log) are skipped: exp(-40) * grid
# length stays below double rounding for any grid this module accepts.
cdef double _SKIP = 40.0


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


def signed_lse_convolve(
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
    ``c = step_sq_over_reg`` (``h^2 / reg``), returned as ``(log |out|, sign(out))``. Each
    output takes two passes over its line: the largest term, then the shifted sum (terms 40
    below the largest skipped). Lines run in parallel.
    """
    cdef Py_ssize_t s0 = log_abs.shape[0], s1 = log_abs.shape[1], s2 = log_abs.shape[2]
    cdef Py_ssize_t length = log_abs.shape[axis]
    cdef Py_ssize_t n_lines = (s0 * s1 * s2) // length
    cdef Py_ssize_t line, X, Y, i0, i1, i2, t
    cdef Py_ssize_t o0, o1, o2  # strides (in elements) of the line and the other two axes
    cdef double *buf
    cdef double *sg
    cdef double *kern
    cdef double top, term, total
    kern = <double *>malloc(length * sizeof(double))
    for t in range(length):
        kern[t] = -step_sq_over_reg * t * t
    try:
        with nogil:
            for line in prange(n_lines, schedule="static", num_threads=n_threads):
                buf = <double *>malloc(2 * length * sizeof(double))
                sg = buf + length
                # The line's position in the other two axes.
                if axis == 0:
                    i1 = line // s2
                    i2 = line % s2
                elif axis == 1:
                    i0 = line // s2
                    i2 = line % s2
                else:
                    i0 = line // s1
                    i1 = line % s1
                for Y in range(length):
                    if axis == 0:
                        buf[Y] = log_abs[Y, i1, i2]
                        sg[Y] = sign[Y, i1, i2]
                    elif axis == 1:
                        buf[Y] = log_abs[i0, Y, i2]
                        sg[Y] = sign[i0, Y, i2]
                    else:
                        buf[Y] = log_abs[i0, i1, Y]
                        sg[Y] = sign[i0, i1, Y]
                    if sg[Y] == 0.0:
                        buf[Y] = -INFINITY
                for X in range(length):
                    top = -INFINITY
                    for Y in range(length):
                        term = buf[Y] + kern[X - Y if X >= Y else Y - X]
                        if term > top:
                            top = term
                    total = 0.0
                    if top > -INFINITY:
                        for Y in range(length):
                            term = buf[Y] + kern[X - Y if X >= Y else Y - X] - top
                            if term > -_SKIP:
                                total = total + sg[Y] * exp(term)
                    if axis == 0:
                        o0, o1, o2 = X, i1, i2
                    elif axis == 1:
                        o0, o1, o2 = i0, X, i2
                    else:
                        o0, o1, o2 = i0, i1, X
                    if total > 0.0:
                        out_log_abs[o0, o1, o2] = top + log(total)
                        out_sign[o0, o1, o2] = 1.0
                    elif total < 0.0:
                        out_log_abs[o0, o1, o2] = top + log(-total)
                        out_sign[o0, o1, o2] = -1.0
                    else:
                        out_log_abs[o0, o1, o2] = -INFINITY
                        out_sign[o0, o1, o2] = 0.0
                free(buf)
    finally:
        free(kern)
