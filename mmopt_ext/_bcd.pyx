"""Coordinate-descent epochs for L1/L2-penalized least squares and logistic regression.

Every kernel sweeps the coordinates listed in ``ws`` (a working set) ``n_epochs`` times and
keeps the linear predictor (``R = y - X w`` for least squares, ``z = X w`` for logistic)
exact after each coordinate move, so one coordinate costs one pass over its column. The
objectives are unscaled (the caller multiplies the penalties by ``n_samples``)::

    least squares:  1/2 ||y - X w||^2          + l1 ||w||_1 + l2 / 2 ||w||^2
    logistic:       sum_i log(1 + exp(-y_i z_i)) + l1 ||w||_1 + l2 / 2 ||w||^2

with ``w >= 0`` when ``positive``. Dense designs are Fortran-ordered (columns contiguous),
sparse ones CSC (``data, indices, indptr``). Each kernel returns the largest absolute
coordinate change of its last epoch.
"""

from libc.math cimport exp, fabs, fmax
from scipy.linalg.cython_blas cimport daxpy, ddot


cdef inline double _soft(double v, double t, bint positive) noexcept nogil:
    """argmin_u 1/2 (u - v)^2 + t |u| (and u >= 0 when positive)."""
    if positive:
        return v - t if v > t else 0.0
    if v > t:
        return v - t
    if v < -t:
        return v + t
    return 0.0


def cd_ls_dense(
    const double[::1, :] X,
    double[::1] w,
    double[::1] R,
    const double[::1] norms2,
    const int[::1] ws,
    double l1,
    double l2,
    bint positive,
    int n_epochs,
):
    """Exact coordinate minimization of penalized least squares, dense design."""
    cdef int n = X.shape[0]
    cdef int one = 1
    cdef Py_ssize_t e, k, j
    cdef double old, new, tmp, delta, max_change = 0.0
    with nogil:
        for e in range(n_epochs):
            max_change = 0.0
            for k in range(ws.shape[0]):
                j = ws[k]
                if norms2[j] + l2 == 0.0:
                    continue
                old = w[j]
                tmp = ddot(&n, <double*> &X[0, j], &one, &R[0], &one) + norms2[j] * old
                new = _soft(tmp, l1, positive) / (norms2[j] + l2)
                if new != old:
                    delta = old - new
                    daxpy(&n, &delta, <double*> &X[0, j], &one, &R[0], &one)
                    w[j] = new
                    max_change = fmax(max_change, fabs(delta))
    return max_change


def cd_ls_sparse(
    const double[::1] data,
    const int[::1] indices,
    const int[::1] indptr,
    double[::1] w,
    double[::1] R,
    const double[::1] norms2,
    const int[::1] ws,
    double l1,
    double l2,
    bint positive,
    int n_epochs,
):
    """Exact coordinate minimization of penalized least squares, CSC design."""
    cdef Py_ssize_t e, k, j, s
    cdef double old, new, tmp, delta, max_change = 0.0
    with nogil:
        for e in range(n_epochs):
            max_change = 0.0
            for k in range(ws.shape[0]):
                j = ws[k]
                if norms2[j] + l2 == 0.0:
                    continue
                old = w[j]
                tmp = 0.0
                for s in range(indptr[j], indptr[j + 1]):
                    tmp = tmp + data[s] * R[indices[s]]
                tmp = tmp + norms2[j] * old
                new = _soft(tmp, l1, positive) / (norms2[j] + l2)
                if new != old:
                    delta = old - new
                    for s in range(indptr[j], indptr[j + 1]):
                        R[indices[s]] += delta * data[s]
                    w[j] = new
                    max_change = fmax(max_change, fabs(delta))
    return max_change


def cd_logistic_dense(
    const double[::1, :] X,
    const double[::1] y,
    double[::1] w,
    double[::1] z,
    const double[::1] lipschitz,
    const int[::1] ws,
    double l1,
    double l2,
    bint positive,
    int n_epochs,
):
    """Proximal coordinate-gradient steps on penalized logistic loss, dense design.

    ``y`` holds -1/+1 labels and ``lipschitz[j] = ||X_j||^2 / 4`` bounds the loss's curvature
    along coordinate ``j``, so every step decreases the objective.
    """
    cdef Py_ssize_t n = X.shape[0]
    cdef Py_ssize_t e, k, j, i
    cdef double old, new, grad, delta, lj, max_change = 0.0
    with nogil:
        for e in range(n_epochs):
            max_change = 0.0
            for k in range(ws.shape[0]):
                j = ws[k]
                lj = lipschitz[j]
                if lj + l2 == 0.0:
                    continue
                old = w[j]
                grad = 0.0
                for i in range(n):
                    grad = grad - X[i, j] * y[i] / (1.0 + exp(y[i] * z[i]))
                new = _soft(lj * old - grad, l1, positive) / (lj + l2)
                if new != old:
                    delta = new - old
                    for i in range(n):
                        z[i] += delta * X[i, j]
                    w[j] = new
                    max_change = fmax(max_change, fabs(delta))
    return max_change


def cd_logistic_sparse(
    const double[::1] data,
    const int[::1] indices,
    const int[::1] indptr,
    const double[::1] y,
    double[::1] w,
    double[::1] z,
    const double[::1] lipschitz,
    const int[::1] ws,
    double l1,
    double l2,
    bint positive,
    int n_epochs,
):
    """Proximal coordinate-gradient steps on penalized logistic loss, CSC design."""
    cdef Py_ssize_t e, k, j, s, i
    cdef double old, new, grad, delta, lj, max_change = 0.0
    with nogil:
        for e in range(n_epochs):
            max_change = 0.0
            for k in range(ws.shape[0]):
                j = ws[k]
                lj = lipschitz[j]
                if lj + l2 == 0.0:
                    continue
                old = w[j]
                grad = 0.0
                for s in range(indptr[j], indptr[j + 1]):
                    i = indices[s]
                    grad = grad - data[s] * y[i] / (1.0 + exp(y[i] * z[i]))
                new = _soft(lj * old - grad, l1, positive) / (lj + l2)
                if new != old:
                    delta = new - old
                    for s in range(indptr[j], indptr[j + 1]):
                        z[indices[s]] += delta * data[s]
                    w[j] = new
                    max_change = fmax(max_change, fabs(delta))
    return max_change


def column_dots_dense(const double[::1, :] X, const double[::1] v, const int[::1] ws, double[::1] out):
    """``out[k] = X[:, ws[k]] . v`` for every ``k``: the gradient on a working set only."""
    cdef int n = X.shape[0]
    cdef int one = 1
    cdef Py_ssize_t k
    with nogil:
        for k in range(ws.shape[0]):
            out[k] = ddot(&n, <double*> &X[0, ws[k]], &one, <double*> &v[0], &one)


def column_dots_sparse(
    const double[::1] data, const int[::1] indices, const int[::1] indptr,
    const double[::1] v, const int[::1] ws, double[::1] out,
):
    """CSC version of :func:`column_dots_dense`."""
    cdef Py_ssize_t k, j, s
    cdef double acc
    with nogil:
        for k in range(ws.shape[0]):
            j = ws[k]
            acc = 0.0
            for s in range(indptr[j], indptr[j + 1]):
                acc = acc + data[s] * v[indices[s]]
            out[k] = acc


def add_columns_dense(const double[::1, :] X, const int[::1] ws, const double[::1] coef, double[::1] out):
    """``out += X[:, ws] @ coef`` (columns with a zero coefficient cost nothing)."""
    cdef int n = X.shape[0]
    cdef int one = 1
    cdef Py_ssize_t k
    cdef double c
    with nogil:
        for k in range(ws.shape[0]):
            c = coef[k]
            if c != 0.0:
                daxpy(&n, &c, <double*> &X[0, ws[k]], &one, &out[0], &one)


def add_columns_sparse(
    const double[::1] data, const int[::1] indices, const int[::1] indptr,
    const int[::1] ws, const double[::1] coef, double[::1] out,
):
    """CSC version of :func:`add_columns_dense`."""
    cdef Py_ssize_t k, j, s
    cdef double c
    with nogil:
        for k in range(ws.shape[0]):
            c = coef[k]
            if c != 0.0:
                j = ws[k]
                for s in range(indptr[j], indptr[j + 1]):
                    out[indices[s]] += c * data[s]


def cd_quadratic_model_dense(
    const double[::1, :] X,
    const double[::1] curvature,
    double[::1] hdiag,
    double[::1] w,
    double[::1] r,
    double[::1] q,
    const int[::1] ws,
    double l1,
    double l2,
    bint positive,
    int n_epochs,
    bint compute_h,
):
    """Coordinate descent on the quadratic model of a GLM loss (a proximal-Newton direction).

    The model of ``sum_i loss(z_i)`` around ``z`` is
    ``sum_i l'_i q_i + l''_i / 2 q_i^2`` with ``q = X (w - w_start)`` (start it at 0);
    ``r = l' + l'' q`` is its derivative with respect to ``q`` (start it at ``l'``),
    ``curvature = l''`` and ``hdiag[j] = sum_i l''_i X_ij^2`` (computed during the first
    epoch when ``compute_h``, in the same pass over the column). Minimizes the model plus
    ``l1 |w|_1 + l2 / 2 |w|^2`` over ``w[ws]``, updating ``w``, ``r`` and ``q`` in place:
    one pass over a column per coordinate, with the column in cache for the updates.
    """
    cdef Py_ssize_t n = X.shape[0]
    cdef int n_int = X.shape[0]
    cdef int one = 1
    cdef Py_ssize_t e, k, j, i
    cdef double old, new, a, h, delta, xij, max_change = 0.0
    with nogil:
        for e in range(n_epochs):
            max_change = 0.0
            for k in range(ws.shape[0]):
                j = ws[k]
                # BLAS for the dot product: a plain C reduction is not vectorized without
                # -ffast-math, and costs three times as much here.
                a = ddot(&n_int, <double*> &X[0, j], &one, &r[0], &one)
                if compute_h and e == 0:
                    h = 0.0
                    for i in range(n):
                        xij = X[i, j]
                        h = h + curvature[i] * xij * xij
                    hdiag[j] = h
                else:
                    h = hdiag[j]
                if h + l2 == 0.0:
                    continue
                old = w[j]
                new = _soft(h * old - a, l1, positive) / (h + l2)
                if new != old:
                    delta = new - old
                    for i in range(n):
                        xij = delta * X[i, j]
                        r[i] += curvature[i] * xij
                        q[i] += xij
                    w[j] = new
                    max_change = fmax(max_change, fabs(delta))
    return max_change


def cd_quadratic_model_sparse(
    const double[::1] data,
    const int[::1] indices,
    const int[::1] indptr,
    const double[::1] curvature,
    double[::1] hdiag,
    double[::1] w,
    double[::1] r,
    double[::1] q,
    const int[::1] ws,
    double l1,
    double l2,
    bint positive,
    int n_epochs,
    bint compute_h,
):
    """CSC version of :func:`cd_quadratic_model_dense`."""
    cdef Py_ssize_t e, k, j, s, i
    cdef double old, new, a, h, delta, xij, max_change = 0.0
    with nogil:
        for e in range(n_epochs):
            max_change = 0.0
            for k in range(ws.shape[0]):
                j = ws[k]
                a = 0.0
                if compute_h and e == 0:
                    h = 0.0
                    for s in range(indptr[j], indptr[j + 1]):
                        i = indices[s]
                        a = a + data[s] * r[i]
                        h = h + curvature[i] * data[s] * data[s]
                    hdiag[j] = h
                else:
                    h = hdiag[j]
                    for s in range(indptr[j], indptr[j + 1]):
                        a = a + data[s] * r[indices[s]]
                if h + l2 == 0.0:
                    continue
                old = w[j]
                new = _soft(h * old - a, l1, positive) / (h + l2)
                if new != old:
                    delta = new - old
                    for s in range(indptr[j], indptr[j + 1]):
                        i = indices[s]
                        xij = delta * data[s]
                        r[i] += curvature[i] * xij
                        q[i] += xij
                    w[j] = new
                    max_change = fmax(max_change, fabs(delta))
    return max_change
