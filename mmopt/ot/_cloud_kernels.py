"""Python wrappers of the point-cloud kernels (``mmopt_ext._pointcloud``)."""

from __future__ import annotations

import numpy as np

from mmopt_ext._pointcloud import online_softmin as _online_softmin
from mmopt_ext._pointcloud import pair_costs as _pair_costs
from mmopt_ext._pointcloud import sparse_softmin as _sparse_softmin


def _floats(value):
    return np.ascontiguousarray(value, dtype=np.float64)


def online_softmin(x, y, g, f_old, log_a, reg, kind, p, n_threads):
    """Row update ``f_i = reg (log a_i - logsumexp_j((g_j - C_ij) / reg))`` with
    ``C_ij = cost(x_i, y_j)`` computed inside the kernel; returns ``(f_new, row_mass)``,
    ``row_mass`` the plan's row sums at ``(f_old, g)``.

    ``kind`` is 0 (``|x - y|^2``), 1 (``|x - y|``) or 2 (``|x - y|^p``). Swap the clouds
    and the potentials for the column update.

    Examples
    --------
    >>> x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [1.0]])
    >>> f, mass = online_softmin(x, y, np.zeros(2), np.zeros(2), np.log([0.5, 0.5]), 1.0,
    ...                          0, 2.0, 1)
    >>> bool(np.allclose(np.exp(f[0]) * (1 + np.exp(-1.0)), 0.5))
    True
    """
    n = len(x)
    f_new, row_mass = np.empty(n), np.empty(n)
    _online_softmin(_floats(x), _floats(y), _floats(g), _floats(f_old), _floats(log_a),
                    float(reg), int(kind), float(p), f_new, row_mass, int(n_threads))
    return f_new, row_mass


def sparse_softmin(indptr, indices, cost, g, f_old, log_a, reg, n_threads, points=None):
    """The same row update over the kept pairs of a CSR pattern (``cost`` on its entries,
    or, when ``cost`` is None, the squared distances computed from ``points = (x, y)``);
    a row without pairs gets ``f_new = inf`` and ``row_mass = 0``.

    Examples
    --------
    >>> f, mass = sparse_softmin([0, 1, 2], [0, 1], [0.0, 0.0], np.zeros(2), np.zeros(2),
    ...                          np.log([0.5, 0.5]), 1.0, 1)
    >>> f.round(4), mass
    (array([-0.6931, -0.6931]), array([1., 1.]))
    >>> x = np.array([[0.0], [1.0]])
    >>> f, mass = sparse_softmin([0, 1, 2], [0, 1], None, np.zeros(2), np.zeros(2),
    ...                          np.log([0.5, 0.5]), 1.0, 1, points=(x, x))
    >>> f.round(4)
    array([-0.6931, -0.6931])
    """
    n = len(indptr) - 1
    f_new, row_mass = np.empty(n), np.empty(n)
    if cost is None:
        if points is None:
            raise ValueError("sparse_softmin needs points=(x, y) when cost is None.")
        x, y = (_floats(cloud) for cloud in points)
    else:
        cost, x, y = _floats(cost), None, None
    _sparse_softmin(np.ascontiguousarray(indptr, dtype=np.int64),
                    np.ascontiguousarray(indices, dtype=np.int32), cost, x, y, _floats(g),
                    _floats(f_old), _floats(log_a), float(reg), f_new, row_mass,
                    int(n_threads))
    return f_new, row_mass


def pair_costs(x, y, indptr, indices, kind, p, n_threads):
    """``cost(x_i, y_j)`` on every kept pair of a CSR pattern, in its order.

    Examples
    --------
    >>> pair_costs(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]]), [0, 1], [0], 1, 1.0, 1)
    array([5.])
    """
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    out = np.empty(int(indptr[-1]))
    _pair_costs(_floats(x), _floats(y), indptr, np.ascontiguousarray(indices, dtype=np.int32),
                int(kind), float(p), out, int(n_threads))
    return out
