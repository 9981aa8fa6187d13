"""Python wrappers of the OT family's kernels (``mmopt_ext._sinkhorn``, ``._sparse_ot``)."""

from __future__ import annotations

import numpy as np

from mmopt._core.threads import effective_n_threads
from mmopt_ext._sinkhorn import log_half_step as _log_half_step
from mmopt_ext._sparse_ot import dual_columns as _dual_columns
from mmopt_ext._sparse_ot import semi_dual_columns as _semi_dual_columns


def log_half_step(C, g, f_old, log_a, reg, *, n_threads=None):
    """Row update of log-domain Sinkhorn; returns ``(f_new, row_mass)``.

    ``f_new_i = reg * (log a_i - logsumexp_j((g_j - C_ij) / reg))`` and ``row_mass`` are the
    row sums of the plan at ``(f_old, g)``. Pass ``C.T`` (C-contiguous) to update columns.

    Examples
    --------
    >>> import numpy as np
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> f, mass = log_half_step(C, np.zeros(2), np.zeros(2), np.log([0.5, 0.5]), 1.0)
    >>> bool(np.allclose(np.exp(f[0]) * (1 + np.exp(-1.0)), 0.5)), mass.round(4)
    (True, array([1.3679, 1.3679]))
    """
    C = np.ascontiguousarray(C, dtype=np.float64)
    f_new = np.empty(C.shape[0])
    row_mass = np.empty(C.shape[0])
    _log_half_step(
        C,
        np.ascontiguousarray(g, dtype=np.float64),
        np.ascontiguousarray(f_old, dtype=np.float64),
        np.ascontiguousarray(log_a, dtype=np.float64),
        float(reg),
        f_new,
        row_mass,
        effective_n_threads(n_threads),
    )
    return f_new, row_mass


def sparse_columns(formulation, alpha, beta, Ct, b, reg, k, *, n_threads=None):
    """The k-sparse plan columns of the semi-dual or dual at the given potentials.

    Returns ``(rows, values, nnz, phi, row_sums, col_sums)``: column ``j`` of the plan has
    entries ``values[j, :nnz[j]]`` at rows ``rows[j, :nnz[j]]``, ``phi[j]`` is its conjugate
    value, and the last two are the plan's row and column sums. ``Ct`` is the transposed
    cost, shape (m, n). ``beta`` is ignored by the semi-dual, ``b`` by the dual.

    Examples
    --------
    >>> import numpy as np
    >>> Ct = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    >>> out = sparse_columns("semi_dual", np.zeros(3), None, Ct, np.array([0.5, 0.5]), 1.0, 1)
    >>> out[1][:, 0], out[1][:, 0].sum(), out[0][:, 0]
    (array([0.5, 0.5]), np.float64(1.0), array([0, 2], dtype=int32))
    """
    Ct = np.ascontiguousarray(Ct, dtype=np.float64)
    m, n = Ct.shape
    width = max(1, min(int(k), n))
    rows = np.empty((m, width), dtype=np.int32)
    values = np.empty((m, width))
    nnz = np.empty(m, dtype=np.int32)
    phi = np.empty(m)
    row_sums = np.empty(n)
    col_sums = np.empty(m)
    alpha = np.ascontiguousarray(alpha, dtype=np.float64)
    threads = effective_n_threads(n_threads)
    if formulation == "semi_dual":
        _semi_dual_columns(
            alpha, Ct, np.ascontiguousarray(b, dtype=np.float64), float(reg),
            rows, values, nnz, phi, row_sums, col_sums, threads,
        )
    else:
        _dual_columns(
            alpha, np.ascontiguousarray(beta, dtype=np.float64), Ct, float(reg),
            rows, values, nnz, phi, row_sums, col_sums, threads,
        )
    return rows, values, nnz, phi, row_sums, col_sums
