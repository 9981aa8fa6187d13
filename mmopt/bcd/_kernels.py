"""Python wrappers of the BCD family's compiled kernels (``mmopt_ext._bcd``).

Each wrapper takes a design that :func:`mmopt.bcd.datafits.check_design` produced (dense
Fortran-ordered, or CSC with int32 indices), in float32 or float64: the kernels run in the
design's precision. Vectors that the kernels update (``w``, ``R``, ``z``, ...) are modified in
place and must already have the design's dtype; the read-only ones are converted to it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mmopt_ext import _bcd

# The compiled kernels' specializations, by the design's dtype (indexing the fused function
# skips its per-call signature matching).
_SPECIALIZATION = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_LEAST_SQUARES, _LOGISTIC, _QUADRATIC_MODEL = (
    int(_bcd.Datafit.LEAST_SQUARES),
    int(_bcd.Datafit.LOGISTIC),
    int(_bcd.Datafit.QUADRATIC_MODEL),
)


def _ws(ws) -> np.ndarray:
    # (The kernels check that the indices name columns of the design.)
    return np.ascontiguousarray(ws, dtype=np.int32)


def _storage(X):
    """``(data, indices, indptr)`` of a dense Fortran or CSC design, and its specialization.

    A dense design's ``data`` is a view of its columns one after the other (indices: None).
    """
    dtype = getattr(X, "dtype", None)
    spec = _SPECIALIZATION.get(dtype)
    if spec is None:
        raise TypeError(f"X must have dtype float32 or float64, got {dtype}.")
    # (isinstance first: scipy's issparse costs more than the rest of the call.)
    if isinstance(X, np.ndarray):
        if X.ndim != 2 or not X.flags.f_contiguous:
            raise ValueError("X must be a 2-dimensional Fortran-ordered array (see check_design).")
        return (X.ravel(order="F"), None, None), spec
    if not sp.issparse(X) or X.format != "csc":
        raise TypeError(f"X must be a Fortran-ordered array or a CSC matrix, got {type(X)}.")
    indices = X.indices.astype(np.int32, copy=False)
    return (X.data, indices, X.indptr.astype(np.int32, copy=False)), spec


def _name_bad_buffer(error: Exception, dtype, **updated) -> None:
    """Re-raise a kernel's buffer error naming the vector it updates that caused it."""
    for name, a in updated.items():
        if a is None:
            continue
        if not isinstance(a, np.ndarray) or a.dtype != dtype:
            got = getattr(a, "dtype", type(a).__name__)
            raise TypeError(
                f"{name} must be a numpy array of dtype {dtype} (the design's: the kernel "
                f"updates it in place), got {got}."
            ) from error
        if a.ndim != 1 or not (a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"{name} must be a writable contiguous 1-D array.") from error


def _cd_epochs(fit, names, X, aux, coef, w, u, v, ws, l1, l2, positive, n_epochs, hdiag=False):
    """Run the compiled epoch skeleton; ``names`` name ``aux, coef, u, v`` in messages.

    With ``hdiag`` the kernel computes the curvatures and writes them into ``coef``.
    """
    storage, spec = _storage(X)
    dtype = storage[0].dtype
    # The lengths are checked by the kernel, the in-place vectors' dtypes by its buffers.
    if aux is not None:
        aux = np.ascontiguousarray(aux, dtype=dtype)
    if not hdiag:
        coef = np.ascontiguousarray(coef, dtype=dtype)
    elif not (isinstance(coef, np.ndarray) and coef.flags.writeable):
        raise ValueError(f"{names[1]} must be a writable array: the kernel computes it.")
    try:
        return _bcd.cd_epochs[spec](
            fit,
            *storage,
            X.shape[0],
            aux,
            coef,
            w,
            u,
            v,
            _ws(ws),
            float(l1),
            float(l2),
            bool(positive),
            int(n_epochs),
            bool(hdiag),
            names,
        )
    except (TypeError, ValueError) as error:
        updated = {"w": w, names[1]: coef if hdiag else None, names[2]: u, names[3]: v}
        _name_bad_buffer(error, dtype, **updated)
        raise


def cd_least_squares(X, w, R, norms2, ws, l1, l2, positive=False, n_epochs=1) -> float:
    """Epochs of exact coordinate minimization of ``1/2||R||^2 + l1|w|_1 + l2/2 |w|^2``.

    ``R = y - X w`` is kept exact. Returns the largest coordinate change of the last epoch.

    Examples
    --------
    >>> X = np.asfortranarray(np.eye(2)); y = np.array([3.0, -0.5])
    >>> w = np.zeros(2); R = y.copy()
    >>> _ = cd_least_squares(X, w, R, np.ones(2), [0, 1], l1=1.0, l2=0.0)
    >>> w
    array([2., 0.])
    """
    names = ("y", "norms2", "R", "q")
    return _cd_epochs(
        _LEAST_SQUARES, names, X, None, norms2, w, R, None, ws, l1, l2, positive, n_epochs
    )


def cd_logistic(X, y, w, z, lipschitz, ws, l1, l2, positive=False, n_epochs=1) -> float:
    """Epochs of proximal coordinate-gradient steps on the (unscaled) penalized logistic loss.

    ``z = X w`` is kept exact; ``lipschitz[j] = ||X_j||^2 / 4``.

    Examples
    --------
    >>> X = np.asfortranarray(np.eye(2)); y = np.array([1.0, -1.0])
    >>> w = np.zeros(2); z = np.zeros(2)
    >>> _ = cd_logistic(X, y, w, z, np.full(2, 0.25), [0, 1], l1=0.0, l2=1.0)
    >>> np.round(w, 3)
    array([ 0.4, -0.4])
    """
    names = ("y", "lipschitz", "z", "q")
    return _cd_epochs(
        _LOGISTIC, names, X, y, lipschitz, w, z, None, ws, l1, l2, positive, n_epochs
    )


def cd_quadratic_model(
    X, curvature, hdiag, w, r, q, ws, l1, l2, positive=False, n_epochs=1, compute_h=False
):
    """Epochs of coordinate descent on a GLM loss's quadratic model (proximal Newton).

    ``r = l' + l'' * q`` and ``q = X (w - w_start)`` are kept exact; with ``compute_h`` the
    first epoch also fills ``hdiag[j] = sum_i l''_i X_ij^2`` (``hdiag`` is then updated in
    place). See ``mmopt_ext._bcd``.

    Examples
    --------
    >>> X = np.asfortranarray(np.eye(2))
    >>> w, r, q, h = np.zeros(2), np.array([-1.0, 2.0]), np.zeros(2), np.zeros(2)
    >>> _ = cd_quadratic_model(X, np.ones(2), h, w, r, q, [0, 1], 0.0, 0.0, compute_h=True)
    >>> w, q, h
    (array([ 1., -2.]), array([ 1., -2.]), array([1., 1.]))
    """
    names = ("curvature", "hdiag", "r", "q")
    return _cd_epochs(
        _QUADRATIC_MODEL,
        names,
        X,
        curvature,
        hdiag,
        w,
        r,
        q,
        ws,
        l1,
        l2,
        positive,
        n_epochs,
        compute_h,
    )


def column_dots(X, v, ws) -> np.ndarray:
    """``X[:, ws].T @ v`` without copying the columns (in the design's dtype).

    Examples
    --------
    >>> column_dots(np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.ones(2), [2, 0])
    array([7., 3.])
    """
    storage, spec = _storage(X)
    ws = _ws(ws)
    out = np.empty(ws.shape[0], dtype=storage[0].dtype)
    v = np.ascontiguousarray(v, dtype=out.dtype)
    _bcd.ws_matvec[spec](*storage, X.shape[0], ws, v, out, True, "v")
    return out


def add_columns(X, ws, coef, out) -> None:
    """``out += X[:, ws] @ coef`` in place.

    Examples
    --------
    >>> out = np.zeros(2)
    >>> add_columns(np.asfortranarray(np.arange(6.0).reshape(2, 3)), [2], np.array([1.0]), out)
    >>> out
    array([2., 5.])
    """
    storage, spec = _storage(X)
    coef = np.ascontiguousarray(coef, dtype=storage[0].dtype)
    try:
        _bcd.ws_matvec[spec](*storage, X.shape[0], _ws(ws), coef, out, False, "coef")
    except (TypeError, ValueError) as error:
        _name_bad_buffer(error, coef.dtype, out=out)
        raise


def gram_columns(X, X_csr, cols) -> np.ndarray:
    """``X.T @ X[:, cols]`` as a dense Fortran array, for a CSC ``X`` and its CSR copy.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> X = sp.csc_matrix(np.array([[1.0, 0, 2], [0, 3, 1]]))
    >>> gram_columns(X, X.tocsr(), [2])
    array([[2.],
           [3.],
           [5.]])
    """
    storage, spec = _storage(X)
    dtype = storage[0].dtype
    cols = _ws(cols)
    out = np.zeros((X.shape[1], cols.shape[0]), dtype=dtype, order="F")
    csr = (
        np.ascontiguousarray(X_csr.data, dtype=dtype),
        X_csr.indices.astype(np.int32, copy=False),
        X_csr.indptr.astype(np.int32, copy=False),
    )
    _bcd.gram_columns_sparse[spec](*storage, *csr, cols, out)
    return out


def greedy_forest_solve(A, diag, order, grad, max_size=None):
    """Greedy forest of a graph quadratic's Hessian ``A``, solved exactly by message passing.

    Returns ``(block, delta)``: the nodes taken (visited in ``order``, kept while the induced
    subgraph stays a forest, at most ``max_size``) and the exact minimizing move
    ``A_bb^{-1} (-grad_b)`` on them.

    Examples
    --------
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
