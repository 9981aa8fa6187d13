"""Python wrappers of the MM family's compiled kernels (``mmopt_ext._nmf``)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mmopt._core.threads import effective_n_threads
from mmopt_ext._nmf import multiplicative_update as _multiplicative_update
from mmopt_ext._nmf import sparse_ratio_and_kl as _sparse_ratio_and_kl

# Zero denominators of the multiplicative updates are replaced by this (float32 machine
# epsilon, as scikit-learn's MU does), so that an entry whose numerator is also zero stays put.
EPSILON = float(np.finfo(np.float32).eps)


def sparse_ratio_and_kl(X, W, H, *, eps: float, n_threads: int | None = None):
    """Return ``(R, kl_data)``: ``R = X / max(WH, eps)`` on the stored entries of ``X`` (CSR,
    same pattern) and ``sum X * log(X / max(WH, eps))`` over them.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> X = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 2.0]]))
    >>> R, kl = sparse_ratio_and_kl(X, np.ones((2, 1)), np.ones((1, 2)), eps=1e-12)
    >>> R.toarray(), round(kl, 6)
    (array([[1., 0.],
           [0., 2.]]), 1.386294)
    """
    X = sp.csr_matrix(X)
    data = np.ascontiguousarray(X.data, dtype=np.float64)
    indices = np.ascontiguousarray(X.indices, dtype=np.int32)
    indptr = np.ascontiguousarray(X.indptr, dtype=np.int32)
    ratio = np.empty_like(data)
    total = _sparse_ratio_and_kl(
        data,
        indices,
        indptr,
        np.ascontiguousarray(W, dtype=np.float64),
        np.ascontiguousarray(np.asarray(H).T, dtype=np.float64),
        ratio,
        float(eps),
        effective_n_threads(n_threads),
    )
    return sp.csr_matrix((ratio, indices, indptr), shape=X.shape), float(total)


def multiplicative_update(factor, numerator, denominator, out):
    """``out = factor * numerator / denominator`` (zero denominators read as float32 eps).

    Returns ``(<numerator, factor>, <denominator, factor>, ||out - factor||^2,
    ||factor||^2)``, computed in the same pass. ``out`` must be a C-contiguous float64
    array of the factor's shape; the other inputs are made so if needed.

    Examples
    --------
    >>> out = np.empty((1, 2))
    >>> sums = multiplicative_update(np.ones((1, 2)), np.array([[2.0, 3.0]]),
    ...                              np.array([[1.0, 3.0]]), out)
    >>> out, sums
    (array([[2., 1.]]), (5.0, 4.0, 1.0, 2.0))
    """
    return _multiplicative_update(
        np.ascontiguousarray(factor, dtype=np.float64),
        np.ascontiguousarray(numerator, dtype=np.float64),
        np.ascontiguousarray(denominator, dtype=np.float64),
        out,
        EPSILON,
    )
