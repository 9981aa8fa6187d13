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

import numpy as np


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


def gram_columns_sparse(
    const double[::1] data, const int[::1] indices, const int[::1] indptr,
    const double[::1] rdata, const int[::1] rindices, const int[::1] rindptr,
    const int[::1] cols, double[::1, :] out,
):
    """``out[:, k] += X^T X[:, cols[k]]`` for ``X`` given both as CSC and as CSR (``r*``).

    Column ``j`` of the Gram matrix is the sum of the rows of ``X`` that column ``j`` touches,
    weighted by its entries: the cost is those rows' non-zeros, not ``nnz(X)``.
    """
    cdef Py_ssize_t k, s, t, i
    cdef double v
    with nogil:
        for k in range(cols.shape[0]):
            for s in range(indptr[cols[k]], indptr[cols[k] + 1]):
                i = indices[s]
                v = data[s]
                for t in range(rindptr[i], rindptr[i + 1]):
                    out[rindices[t], k] += v * rdata[t]


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
    cdef const double* xp
    cdef double* rp = &r[0]
    cdef double* qp = &q[0]
    cdef const double* cp = &curvature[0]
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
                    # Raw pointers: the compiler vectorizes this loop (with memoryview
                    # indexing it did not).
                    xp = &X[0, j]
                    for i in range(n):
                        xij = delta * xp[i]
                        rp[i] += cp[i] * xij
                        qp[i] += xij
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


cdef Py_ssize_t _find(Py_ssize_t[::1] parent, Py_ssize_t v) noexcept nogil:
    """Union-find root with path halving."""
    while parent[v] != v:
        parent[v] = parent[parent[v]]
        v = parent[v]
    return v


def greedy_forest_solve(
    const int[::1] indptr,
    const int[::1] indices,
    const double[::1] data,
    const double[::1] diag,
    const Py_ssize_t[::1] order,
    const double[::1] grad,
    Py_ssize_t max_size,
    Py_ssize_t[::1] block,
    double[::1] delta,
):
    """Grow a forest greedily and minimize a graph quadratic exactly on it.

    ``A`` (CSR, symmetric, ``diag`` its diagonal) is the Hessian of a quadratic whose gradient
    is ``grad``. Nodes are visited in ``order`` (best score first) and added when the
    subgraph of ``A`` they induce with the nodes already taken stays a forest (their taken
    neighbours lie in different trees), up to ``max_size`` nodes. The block problem
    ``A_bb d = -grad_b`` is then solved exactly by Gaussian elimination from the leaves to
    the roots and back (message passing on the trees): O(sum of the block's degrees).

    Writes the block's nodes to ``block`` and their moves to ``delta`` (in BFS order of the
    trees) and returns the block size.
    """
    cdef Py_ssize_t n = diag.shape[0]
    cdef Py_ssize_t k, v, u, s, root_u, size = 0, head, tail, p
    cdef bint ok
    cdef Py_ssize_t[::1] uf = np.arange(n, dtype=np.intp)
    cdef Py_ssize_t[::1] taken_at = np.full(n, -1, dtype=np.intp)
    cdef Py_ssize_t[::1] roots_seen = np.empty(n, dtype=np.intp)
    cdef Py_ssize_t n_roots
    cdef Py_ssize_t[::1] bfs_parent = np.full(n, -1, dtype=np.intp)
    cdef double[::1] edge = np.zeros(n)
    cdef double[::1] D = np.empty(n)
    cdef double[::1] rhs = np.empty(n)
    cdef Py_ssize_t[::1] visited_pos = np.full(n, -1, dtype=np.intp)
    cdef Py_ssize_t[::1] bfs = np.empty(n, dtype=np.intp)
    cdef Py_ssize_t i, j, c
    with nogil:
        for k in range(order.shape[0]):
            if size >= max_size:
                break
            v = order[k]
            ok = True
            n_roots = 0
            for s in range(indptr[v], indptr[v + 1]):
                u = indices[s]
                if u == v or taken_at[u] < 0 or data[s] == 0.0:
                    continue
                root_u = _find(uf, u)
                for i in range(n_roots):
                    if roots_seen[i] == root_u:
                        ok = False
                        break
                if not ok:
                    break
                roots_seen[n_roots] = root_u
                n_roots = n_roots + 1
            if not ok:
                continue
            taken_at[v] = size
            block[size] = v
            size = size + 1
            for i in range(n_roots):
                uf[roots_seen[i]] = v
        # Breadth-first order of each tree of the forest: parents before children.
        tail = 0
        for k in range(size):
            v = block[k]
            if visited_pos[v] >= 0:
                continue
            visited_pos[v] = tail
            bfs[tail] = v
            tail = tail + 1
            head = tail - 1
            while head < tail:
                p = bfs[head]
                head = head + 1
                for s in range(indptr[p], indptr[p + 1]):
                    c = indices[s]
                    if c == p or taken_at[c] < 0 or visited_pos[c] >= 0 or data[s] == 0.0:
                        continue
                    visited_pos[c] = tail
                    bfs[tail] = c
                    bfs_parent[c] = p
                    edge[c] = data[s]
                    tail = tail + 1
        for k in range(size):
            v = bfs[k]
            D[v] = diag[v]
            rhs[v] = -grad[v]
        # Leaves to roots: eliminate each node into its parent.
        for k in range(size - 1, -1, -1):
            v = bfs[k]
            p = bfs_parent[v]
            if p >= 0:
                D[p] -= edge[v] * edge[v] / D[v]
                rhs[p] -= edge[v] * rhs[v] / D[v]
        # Roots to leaves: back substitution.
        for k in range(size):
            v = bfs[k]
            p = bfs_parent[v]
            if p >= 0:
                delta[k] = (rhs[v] - edge[v] * delta[visited_pos[p]]) / D[v]
            else:
                delta[k] = rhs[v] / D[v]
            block[k] = v
    return size
