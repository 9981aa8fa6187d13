"""Python wrappers of the BCD family's compiled kernels (``mmopt_ext._bcd``).

Each wrapper takes a design that :func:`mmopt.bcd.datafits.check_design` produced (dense
Fortran-ordered, or CSC with int32 indices) and dispatches to the dense or sparse kernel.
Vectors that the kernels update (``w``, ``R``, ``z``) are modified in place.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mmopt_ext import _bcd


def _ws(ws) -> np.ndarray:
    return np.ascontiguousarray(ws, dtype=np.int32)


def _csc(X):
    return X.data, X.indices, X.indptr


def cd_least_squares(X, w, R, norms2, ws, l1, l2, positive=False, n_epochs=1) -> float:
    """Epochs of exact coordinate minimization of ``1/2||R||^2 + l1|w|_1 + l2/2 |w|^2``.

    ``R = y - X w`` is kept exact. Returns the largest coordinate change of the last epoch.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.asfortranarray(np.eye(2)); y = np.array([3.0, -0.5])
    >>> w = np.zeros(2); R = y.copy()
    >>> _ = cd_least_squares(X, w, R, np.ones(2), [0, 1], l1=1.0, l2=0.0)
    >>> w
    array([2., 0.])
    """
    args = (
        w,
        R,
        np.ascontiguousarray(norms2, dtype=float),
        _ws(ws),
        float(l1),
        float(l2),
        bool(positive),
        int(n_epochs),
    )
    if sp.issparse(X):
        return _bcd.cd_ls_sparse(*_csc(X), *args)
    return _bcd.cd_ls_dense(X, *args)


def cd_logistic(X, y, w, z, lipschitz, ws, l1, l2, positive=False, n_epochs=1) -> float:
    """Epochs of proximal coordinate-gradient steps on the (unscaled) penalized logistic loss.

    ``z = X w`` is kept exact; ``lipschitz[j] = ||X_j||^2 / 4``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.asfortranarray(np.eye(2)); y = np.array([1.0, -1.0])
    >>> w = np.zeros(2); z = np.zeros(2)
    >>> _ = cd_logistic(X, y, w, z, np.full(2, 0.25), [0, 1], l1=0.0, l2=1.0)
    >>> np.round(w, 3)
    array([ 0.4, -0.4])
    """
    args = (
        np.ascontiguousarray(y, dtype=float),
        w,
        z,
        np.ascontiguousarray(lipschitz, dtype=float),
        _ws(ws),
        float(l1),
        float(l2),
        bool(positive),
        int(n_epochs),
    )
    if sp.issparse(X):
        return _bcd.cd_logistic_sparse(*_csc(X), *args)
    return _bcd.cd_logistic_dense(X, *args)


def column_dots(X, v, ws) -> np.ndarray:
    """``X[:, ws].T @ v`` without copying the columns.

    Examples
    --------
    >>> import numpy as np
    >>> column_dots(np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.ones(2), [2, 0])
    array([7., 3.])
    """
    ws = _ws(ws)
    out = np.empty(ws.shape[0])
    v = np.ascontiguousarray(v, dtype=float)
    if sp.issparse(X):
        _bcd.column_dots_sparse(*_csc(X), v, ws, out)
    else:
        _bcd.column_dots_dense(X, v, ws, out)
    return out


def add_columns(X, ws, coef, out) -> None:
    """``out += X[:, ws] @ coef`` in place.

    Examples
    --------
    >>> import numpy as np
    >>> out = np.zeros(2)
    >>> add_columns(np.asfortranarray(np.arange(6.0).reshape(2, 3)), [2], np.array([1.0]), out)
    >>> out
    array([2., 5.])
    """
    coef = np.ascontiguousarray(coef, dtype=float)
    if sp.issparse(X):
        _bcd.add_columns_sparse(*_csc(X), _ws(ws), coef, out)
    else:
        _bcd.add_columns_dense(X, _ws(ws), coef, out)


def gram_columns(X, X_csr, cols) -> np.ndarray:
    """``X.T @ X[:, cols]`` as a dense Fortran array, for a CSC ``X`` and its CSR copy.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> X = sp.csc_matrix(np.array([[1.0, 0, 2], [0, 3, 1]]))
    >>> gram_columns(X, X.tocsr(), [2])
    array([[2.],
           [3.],
           [5.]])
    """
    out = np.zeros((X.shape[1], len(cols)), order="F")
    _bcd.gram_columns_sparse(*_csc(X), *_csr(X_csr), _ws(cols), out)
    return out


def _csr(X):
    return (
        np.ascontiguousarray(X.data, dtype=float),
        X.indices.astype(np.int32, copy=False),
        X.indptr.astype(np.int32, copy=False),
    )


def cd_quadratic_model(
    X, curvature, hdiag, w, r, q, ws, l1, l2, positive=False, n_epochs=1, compute_h=False
):
    """Epochs of coordinate descent on a GLM loss's quadratic model (proximal Newton).

    ``r = l' + l'' * q`` and ``q = X (w - w_start)`` are kept exact; with ``compute_h`` the
    first epoch also fills ``hdiag[j] = sum_i l''_i X_ij^2``. See ``mmopt_ext._bcd``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.asfortranarray(np.eye(2))
    >>> w, r, q, h = np.zeros(2), np.array([-1.0, 2.0]), np.zeros(2), np.zeros(2)
    >>> _ = cd_quadratic_model(X, np.ones(2), h, w, r, q, [0, 1], 0.0, 0.0, compute_h=True)
    >>> w, q, h
    (array([ 1., -2.]), array([ 1., -2.]), array([1., 1.]))
    """
    args = (
        np.ascontiguousarray(curvature, dtype=float),
        hdiag,
        w,
        r,
        q,
        _ws(ws),
        float(l1),
        float(l2),
        bool(positive),
        int(n_epochs),
        bool(compute_h),
    )
    if sp.issparse(X):
        return _bcd.cd_quadratic_model_sparse(*_csc(X), *args)
    return _bcd.cd_quadratic_model_dense(X, *args)


def greedy_forest_solve(A, diag, order, grad, max_size=None):
    """Greedy forest of a graph quadratic's Hessian ``A``, solved exactly by message passing.

    Returns ``(block, delta)``: the nodes taken (visited in ``order``, kept while the induced
    subgraph stays a forest, at most ``max_size``) and the exact minimizing move
    ``A_bb^{-1} (-grad_b)`` on them.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> A = sp.csr_matrix(np.array([[2.0, -1, -1], [-1, 2, -1], [-1, -1, 2]]))  # a triangle
    >>> block, delta = greedy_forest_solve(A, A.diagonal(), np.array([0, 1, 2]), np.ones(3))
    >>> block.tolist(), np.round(delta, 6).tolist()  # node 2 would close a cycle
    ([0, 1], [-1.0, -1.0])
    """
    A = sp.csr_matrix(A)
    n = A.shape[0]
    block = np.empty(n, dtype=np.intp)
    delta = np.empty(n)
    size = _bcd.greedy_forest_solve(
        A.indptr.astype(np.int32, copy=False),
        A.indices.astype(np.int32, copy=False),
        np.ascontiguousarray(A.data, dtype=float),
        np.ascontiguousarray(diag, dtype=float),
        np.ascontiguousarray(order, dtype=np.intp),
        np.ascontiguousarray(grad, dtype=float),
        n if max_size is None else int(max_size),
        block,
        delta,
    )
    return block[:size], delta[:size]
