"""Python wrappers of the MM family's compiled kernels (``mmopt_ext._nmf``)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from mmopt_ext._nmf import sparse_ratio_and_kl as _sparse_ratio_and_kl

from mmopt._core.threads import effective_n_threads


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
