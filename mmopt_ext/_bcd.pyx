"""Coordinate-descent epochs for L1/L2-penalized GLM datafits, in float32 or float64.

One epoch skeleton (:func:`cd_epochs`), compiled once per datafit and precision, sweeps the
coordinates listed in ``ws`` (a working set) ``n_epochs`` times. For coordinate ``j`` the datafit supplies the curvature ``h_j`` and
the gradient ``g_j`` of its smooth part along ``j``; the move minimizes
``g_j d + h_j / 2 d^2 + l1 |w_j + d| + l2 / 2 (w_j + d)^2`` (``w_j + d >= 0`` when
``positive``), and the datafit then updates its linear predictors so that each coordinate
costs one pass over its column. The datafits (objectives unscaled: the caller multiplies the
penalties by ``n_samples``) are

- ``LEAST_SQUARES``: ``1/2 ||R||^2`` with ``R = y - X w`` kept exact, ``h_j = ||X_j||^2``
  (exact coordinate minimization);
- ``LOGISTIC``: ``sum_i log(1 + exp(-y_i z_i))`` with ``z = X w`` kept exact and
  ``h_j = ||X_j||^2 / 4`` bounding its curvature (proximal coordinate-gradient steps, each
  one decreasing the objective);
- ``QUADRATIC_MODEL``: the quadratic model ``sum_i l'_i q_i + l''_i / 2 q_i^2`` of a GLM loss
  (a proximal-Newton direction) with ``q = X (w - w_start)`` and ``r = l' + l'' q`` kept
  exact, ``h_j = sum_i l''_i X_ij^2``.

A design is given by its storage: CSC (``data, indices, indptr``) or dense Fortran-ordered
(``data`` its columns one after the other, ``indices`` and ``indptr`` None). All floating
arrays of one call share one precision (the fused type ``floating``): float32 data runs in
float32, with BLAS ``sdot``/``saxpy``, and float64 data with ``ddot``/``daxpy``.
"""

from cython cimport floating
from libc.math cimport exp, expf, fabs
from scipy.linalg.cython_blas cimport daxpy, ddot, saxpy, sdot

import numpy as np


cpdef enum Datafit:
    LEAST_SQUARES = 0
    LOGISTIC = 1
    QUADRATIC_MODEL = 2


# One empty type per datafit: the skeleton and its helpers take a (NULL) pointer to one, so
# that each datafit gets its own compiled epoch, with no per-coordinate dispatch and only its
# own arrays live in the loop.
cdef struct _LeastSquares:
    char unused
cdef struct _Logistic:
    char unused
cdef struct _QuadraticModel:
    char unused
ctypedef fused Fit:
    _LeastSquares
    _Logistic
    _QuadraticModel


# ---- one column of a dense or CSC design ------------------------------------------------


cdef inline int _column(
    const int* indices, const int* indptr, Py_ssize_t n_rows, Py_ssize_t j,
    Py_ssize_t* start, const int** rows,
) noexcept nogil:
    """Locate column ``j``: its values start at ``data + start[0]``; returns its length.

    ``rows[0]`` receives the column's row indices, or NULL for a dense column (all rows, in
    order), which the helpers below hand to BLAS.
    """
    if indptr == NULL:
        start[0] = j * n_rows
        rows[0] = NULL
        return <int> n_rows
    start[0] = indptr[j]
    rows[0] = indices + indptr[j]
    return indptr[j + 1] - indptr[j]


cdef Py_ssize_t _n_cols(Py_ssize_t n_data, const int[::1] indptr, Py_ssize_t n_rows):
    return n_data // max(n_rows, 1) if indptr is None else indptr.shape[0] - 1


cdef int _check_columns(Py_ssize_t n_cols, const int[::1] ws, str name) except -1:
    """Check that ``ws`` indexes columns of the design (the kernels do no bounds checks)."""
    cdef Py_ssize_t k
    for k in range(ws.shape[0]):
        if ws[k] < 0 or ws[k] >= n_cols:
            raise ValueError(f"{name} must hold column indices in [0, {n_cols}), got {ws[k]}.")
    return 0


cdef int _check_length(Py_ssize_t got, Py_ssize_t want, str name) except -1:
    if got != want:
        raise ValueError(f"{name} must have shape ({want},), got ({got},).")
    return 0


cdef inline floating _dot(const floating* x, const int* rows, int m, const floating* v) noexcept nogil:
    """``sum_s x[s] v[rows[s]]`` (``x . v`` when ``rows`` is NULL)."""
    cdef int one = 1
    cdef Py_ssize_t s
    cdef floating acc = 0
    if rows == NULL:
        # BLAS: a plain C reduction is not vectorized without -ffast-math.
        if floating is float:
            return sdot(&m, <float*> x, &one, <float*> v, &one)
        else:
            return ddot(&m, <double*> x, &one, <double*> v, &one)
    for s in range(m):
        acc = acc + x[s] * v[rows[s]]
    return acc


cdef inline void _axpy(floating a, const floating* x, const int* rows, int m, floating* out) noexcept nogil:
    """``out[rows[s]] += a x[s]`` (``out += a x`` when ``rows`` is NULL)."""
    cdef int one = 1
    cdef Py_ssize_t s
    # BLAS gets the address of a copy: were it ``a``'s, the compiler would reload ``a`` from
    # memory after every store in the loop below.
    cdef floating alpha = a
    if rows == NULL:
        if floating is float:
            saxpy(&m, &alpha, <float*> x, &one, out, &one)
        else:
            daxpy(&m, &alpha, <double*> x, &one, out, &one)
        return
    for s in range(m):
        out[rows[s]] += a * x[s]


cdef inline floating _exp(floating v) noexcept nogil:
    if floating is float:
        return expf(v)
    else:
        return exp(v)


cdef inline floating _soft(floating v, floating t, bint positive) noexcept nogil:
    """argmin_u 1/2 (u - v)^2 + t |u| (and u >= 0 when positive)."""
    if positive:
        return v - t if v > t else 0
    if v > t:
        return v - t
    if v < -t:
        return v + t
    return 0


# ---- what each datafit contributes to a coordinate move ---------------------------------


cdef inline floating _curvature(
    const floating* x, const int* rows, int m, const floating* weights
) noexcept nogil:
    """``sum_s weights[i] x[s]^2`` over the column's rows ``i`` (the model's ``h_j``)."""
    cdef int s
    cdef Py_ssize_t i
    cdef floating acc = 0
    for s in range(m):
        i = s if rows == NULL else rows[s]
        acc = acc + weights[i] * x[s] * x[s]
    return acc


cdef inline floating _gradient(
    Fit* fit, const floating* x, const int* rows, int m, const floating* aux, const floating* u
) noexcept nogil:
    """The smooth part's derivative along the column ``x``."""
    cdef int s
    cdef Py_ssize_t i
    cdef floating acc = 0
    if Fit is _LeastSquares:  # u = R = y - X w
        return -_dot(x, rows, m, u)
    elif Fit is _QuadraticModel:  # u = r = l' + l'' q
        return _dot(x, rows, m, u)
    else:  # logistic, aux = y, u = z: l'(z_i) = -y_i / (1 + exp(y_i z_i))
        if rows == NULL:
            for s in range(m):
                acc = acc - x[s] * aux[s] / (1 + _exp(aux[s] * u[s]))
            return acc
        for s in range(m):
            i = rows[s]
            acc = acc - x[s] * aux[i] / (1 + _exp(aux[i] * u[i]))
        return acc


cdef inline void _move(
    Fit* fit, floating delta, const floating* x, const int* rows, int m,
    const floating* aux, floating* u, floating* v,
) noexcept nogil:
    """Keep the datafit's linear predictors exact after ``w_j += delta``."""
    cdef int s
    cdef Py_ssize_t i
    cdef floating d
    if Fit is _LeastSquares:  # R -= delta X_j
        _axpy(-delta, x, rows, m, u)
    elif Fit is _Logistic:  # z += delta X_j
        _axpy(delta, x, rows, m, u)
    elif rows == NULL:  # model: q += delta X_j and r += l'' delta X_j, in one pass
        # Separate dense loop: with unit stride and raw pointers the compiler vectorizes it.
        for s in range(m):
            d = delta * x[s]
            u[s] += aux[s] * d
            v[s] += d
    else:
        for s in range(m):
            i = rows[s]
            d = delta * x[s]
            u[i] += aux[i] * d
            v[i] += d


# ---- the epoch skeleton -----------------------------------------------------------------


cdef floating _epochs(
    Fit* fit,
    const floating* data, const int* indices, const int* indptr, Py_ssize_t n_rows,
    const floating* aux, floating* coef, floating* w, floating* u, floating* v,
    const int* ws, Py_ssize_t n_ws,
    floating l1, floating l2, bint positive, int n_epochs, bint compute_h,
) noexcept nogil:
    cdef Py_ssize_t e, k, j, start
    cdef int m
    cdef const int* rows
    cdef const floating* x
    cdef floating h, old, new, delta, max_change = 0
    for e in range(n_epochs):
        max_change = 0
        for k in range(n_ws):
            j = ws[k]
            m = _column(indices, indptr, n_rows, j, &start, &rows)
            x = data + start
            if Fit is _QuadraticModel:
                if compute_h and e == 0:
                    coef[j] = _curvature(x, rows, m, aux)
            h = coef[j]
            if h + l2 == 0:
                continue
            old = w[j]
            new = _soft(h * old - _gradient(fit, x, rows, m, aux, u), l1, positive) / (h + l2)
            if new != old:
                delta = new - old
                _move(fit, delta, x, rows, m, aux, u, v)
                w[j] = new
                if fabs(delta) > max_change:
                    max_change = fabs(delta)
    return max_change


def cd_epochs(
    int fit,
    const floating[::1] data,
    const int[::1] indices,
    const int[::1] indptr,
    Py_ssize_t n_rows,
    const floating[::1] aux,
    const floating[::1] coef,
    floating[::1] w,
    floating[::1] u,
    floating[::1] v,
    const int[::1] ws,
    double l1,
    double l2,
    bint positive,
    int n_epochs,
    bint compute_h,
    tuple names=("aux", "coef", "u", "v"),
):
    """Run ``n_epochs`` coordinate-descent epochs of the datafit ``fit`` over ``ws``.

    The datafit's arrays (see the module docstring): ``aux`` is ``y`` (logistic) or ``l''``
    (model), ``coef`` holds the curvatures ``h`` (``||X_j||^2``, ``||X_j||^2 / 4`` or the
    model's ``h_j``, which the first epoch computes and writes into ``coef`` when
    ``compute_h``: ``coef`` must then be writable), ``u`` is ``R``, ``z`` or ``r`` and ``v``
    is the model's ``q``; unused ones are None. ``w``, ``u`` and ``v`` are updated in
    place. Returns the largest absolute coordinate change of the last epoch.

    Checks the working set's indices and the vectors' lengths (error messages call ``aux``,
    ``coef``, ``u`` and ``v`` by ``names``).
    """
    cdef floating change
    cdef const floating* data_p = &data[0] if data.shape[0] else <const floating*> NULL
    cdef const int* indices_p = <const int*> NULL if indices is None else &indices[0]
    cdef const int* indptr_p = <const int*> NULL if indptr is None else &indptr[0]
    cdef const floating* aux_p = <const floating*> NULL if aux is None else &aux[0]
    # Written only with compute_h, when the caller passes a writable array.
    cdef floating* coef_p = <floating*> &coef[0] if coef.shape[0] else NULL
    cdef floating* u_p = &u[0] if u.shape[0] else NULL
    cdef floating* v_p = NULL if v is None else &v[0]
    cdef const int* ws_p = &ws[0] if ws.shape[0] else <const int*> NULL
    if fit != LEAST_SQUARES and fit != LOGISTIC and fit != QUADRATIC_MODEL:
        raise ValueError(f"fit must be a Datafit, got {fit}.")
    if aux_p == NULL and fit != LEAST_SQUARES or v_p == NULL and fit == QUADRATIC_MODEL:
        raise ValueError("aux (and v for the quadratic model) must be given for this datafit.")
    if compute_h and fit != QUADRATIC_MODEL:
        raise ValueError("compute_h is for the quadratic model only.")
    cdef Py_ssize_t n_cols = _n_cols(data.shape[0], indptr, n_rows)
    _check_columns(n_cols, ws, "ws")
    _check_length(w.shape[0], n_cols, "w")
    _check_length(coef.shape[0], n_cols, names[1])
    _check_length(u.shape[0], n_rows, names[2])
    if aux is not None:
        _check_length(aux.shape[0], n_rows, names[0])
    if v is not None:
        _check_length(v.shape[0], n_rows, names[3])
    cdef floating* w_p = &w[0]
    cdef Py_ssize_t n_ws = ws.shape[0]
    cdef floating l1_ = l1, l2_ = l2
    with nogil:
        if fit == LEAST_SQUARES:
            change = _epochs(<_LeastSquares*> NULL, data_p, indices_p, indptr_p, n_rows, aux_p,
                             coef_p, w_p, u_p, v_p, ws_p, n_ws, l1_, l2_, positive, n_epochs, 0)
        elif fit == LOGISTIC:
            change = _epochs(<_Logistic*> NULL, data_p, indices_p, indptr_p, n_rows, aux_p,
                             coef_p, w_p, u_p, v_p, ws_p, n_ws, l1_, l2_, positive, n_epochs, 0)
        else:
            change = _epochs(<_QuadraticModel*> NULL, data_p, indices_p, indptr_p, n_rows, aux_p,
                             coef_p, w_p, u_p, v_p, ws_p, n_ws, l1_, l2_, positive, n_epochs,
                             compute_h)
    return float(change)


def ws_matvec(
    const floating[::1] data, const int[::1] indices, const int[::1] indptr, Py_ssize_t n_rows,
    const int[::1] ws, const floating[::1] vec, floating[::1] out, bint transpose,
    str vec_name="vec",
):
    """Products with the working set's columns ``X[:, ws]``, which are not copied.

    ``transpose``: ``out[k] = X[:, ws[k]] . vec`` (the gradient on a working set only);
    otherwise ``out += X[:, ws] @ vec``, where columns with a zero coefficient cost nothing.
    """
    cdef Py_ssize_t k, start
    cdef int m
    cdef const int* rows
    cdef const int* indices_p = <const int*> NULL if indices is None else &indices[0]
    cdef const int* indptr_p = <const int*> NULL if indptr is None else &indptr[0]
    _check_columns(_n_cols(data.shape[0], indptr, n_rows), ws, "ws")
    _check_length(vec.shape[0], n_rows if transpose else ws.shape[0], vec_name)
    _check_length(out.shape[0], ws.shape[0] if transpose else n_rows, "out")
    with nogil:
        if transpose:
            for k in range(ws.shape[0]):
                m = _column(indices_p, indptr_p, n_rows, ws[k], &start, &rows)
                out[k] = _dot(&data[start], rows, m, &vec[0])
        else:
            for k in range(ws.shape[0]):
                if vec[k] != 0:
                    m = _column(indices_p, indptr_p, n_rows, ws[k], &start, &rows)
                    _axpy(vec[k], &data[start], rows, m, &out[0])


def gram_columns_sparse(
    const floating[::1] data, const int[::1] indices, const int[::1] indptr,
    const floating[::1] rdata, const int[::1] rindices, const int[::1] rindptr,
    const int[::1] cols, floating[::1, :] out,
):
    """``out[:, k] += X^T X[:, cols[k]]`` for ``X`` given both as CSC and as CSR (``r*``).

    Column ``j`` of the Gram matrix is the sum of the rows of ``X`` that column ``j`` touches,
    weighted by its entries: the cost is those rows' non-zeros, not ``nnz(X)``.
    """
    cdef Py_ssize_t k, s, t, i
    cdef floating c
    _check_columns(indptr.shape[0] - 1, cols, "cols")
    with nogil:
        for k in range(cols.shape[0]):
            for s in range(indptr[cols[k]], indptr[cols[k] + 1]):
                i = indices[s]
                c = data[s]
                for t in range(rindptr[i], rindptr[i + 1]):
                    out[rindices[t], k] += c * rdata[t]


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
