"""The online row update of point-cloud Sinkhorn for clouds of dimension above 3: costs from
small matrix products into a cache-sized buffer (``mmopt_ext._cloud_gemm``)."""

from __future__ import annotations

import numpy as np

from mmopt_ext._cloud_gemm import online_softmin_gemm as _online_softmin_gemm

__all__ = ["online_softmin_gemm"]


def online_softmin_gemm(x, y, g, f_old, log_a, reg, kind, p, n_threads):
    """Row update ``f_i = reg (log a_i - logsumexp_j((g_j - C_ij) / reg))``, ``C_ij =
    cost(x_i, y_j)``, and the plan's row sums at ``(f_old, g)``: ``(f_new, row_mass)``, as
    :func:`mmopt.ot._cloud_kernels.online_softmin` (same arguments), the costs of 32 rows
    by 256 columns at a time from ``|x_i|^2 + |y_j|^2 - 2 x_i . y_j`` (one BLAS product).

    The clouds are centred on their common mean first, so the expansion's rounding,
    relative to ``|x_i|^2 + |y_j|^2``, is relative to the clouds' extent.

    Examples
    --------
    >>> x = np.zeros((2, 5))
    >>> y = np.eye(5)[:2]
    >>> f, mass = online_softmin_gemm(x, y, np.zeros(2), np.zeros(2), np.log([0.5, 0.5]),
    ...                               1.0, 0, 2.0, 1)
    >>> bool(np.allclose(np.exp(f) * 2 * np.exp(-1.0), 0.5))
    True
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    f_new, row_mass = np.empty(n), np.empty(n)
    if n == 0 or len(y) == 0:
        f_new.fill(np.inf)
        row_mass.fill(0.0)
        return f_new, row_mass
    center = (x.sum(axis=0) + y.sum(axis=0)) / (n + len(y))
    x = np.ascontiguousarray(x - center)
    y = np.ascontiguousarray(y - center)
    _online_softmin_gemm(
        x, y, np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y),
        np.ascontiguousarray(g, dtype=np.float64), np.ascontiguousarray(f_old, dtype=np.float64),
        np.ascontiguousarray(log_a, dtype=np.float64), float(reg), int(kind), float(p),
        f_new, row_mass, int(n_threads),
    )
    return f_new, row_mass
