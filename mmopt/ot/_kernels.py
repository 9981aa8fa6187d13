"""Python wrappers of the OT family's kernels (``mmopt_ext._sinkhorn``, ``._sparse_ot``)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mmopt._core.threads import effective_n_threads
from mmopt_ext._sinkhorn import dense_plan as _dense_plan
from mmopt_ext._sinkhorn import log_half_step as _log_half_step
from mmopt_ext._sinkhorn import plan_row_sums as _plan_row_sums
from mmopt_ext._sinkhorn import sparsify_plan as _sparsify_plan
from mmopt_ext._sparse_ot import dual_columns as _dual_columns
from mmopt_ext._sparse_ot import semi_dual_columns as _semi_dual_columns


def log_half_step(C, g, f_old, log_a, reg, *, n_threads=None):
    """Row update of log-domain Sinkhorn; returns ``(f_new, row_mass)``.

    ``f_new_i = reg * (log a_i - logsumexp_j((g_j - C_ij) / reg))`` and ``row_mass`` are the
    row sums of the plan at ``(f_old, g)``. Pass ``C.T`` (C-contiguous) to update columns.

    Examples
    --------
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


def dense_plan(C, f, g, reg, *, n_threads=None):
    """The plan ``exp((f_i + g_j - C_ij) / reg)`` as a dense array (SIMD ``exp``).

    Examples
    --------
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> bool(np.allclose(dense_plan(C, np.zeros(2), np.zeros(2), 1.0), np.exp(-C)))
    True
    """
    C = np.ascontiguousarray(C, dtype=np.float64)
    out = np.empty(C.shape)
    _dense_plan(
        C, np.ascontiguousarray(f, dtype=np.float64), np.ascontiguousarray(g, dtype=np.float64),
        float(reg), out, effective_n_threads(n_threads),
    )
    return out


def plan_row_sums(C, f, g, reg, *, n_threads=None):
    """Row sums of the plan ``exp((f_i + g_j - C_ij) / reg)`` without forming it.

    Examples
    --------
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> bool(np.allclose(plan_row_sums(C, np.zeros(2), np.zeros(2), 1.0), 1 + np.exp(-1.0)))
    True
    """
    f = np.ascontiguousarray(f, dtype=np.float64)
    rows = np.empty(f.size)
    _plan_row_sums(
        np.ascontiguousarray(C, dtype=np.float64), f,
        np.ascontiguousarray(g, dtype=np.float64), float(reg), rows,
        effective_n_threads(n_threads),
    )
    return rows


def plan_marginals(C, Ct, f, g, reg, *, n_threads=None):
    """Row and column sums of the plan ``exp((f_i + g_j - C_ij) / reg)`` without forming it.

    ``Ct`` is ``C.T`` in C order. Exact at any magnitude (0 where every entry underflows,
    ``inf`` where a sum overflows).

    Examples
    --------
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> rows, cols = plan_marginals(C, C.T.copy(), np.zeros(2), np.zeros(2), 1.0)
    >>> bool(np.allclose(rows, 1 + np.exp(-1.0))), bool(np.allclose(cols, rows))
    (True, True)
    """
    threads = effective_n_threads(n_threads)
    f = np.ascontiguousarray(f, dtype=np.float64)
    g = np.ascontiguousarray(g, dtype=np.float64)
    rows, cols = np.empty(f.size), np.empty(g.size)
    _plan_row_sums(C, f, g, float(reg), rows, threads)
    _plan_row_sums(Ct, g, f, float(reg), cols, threads)
    return rows, cols


def sparsify_plan(C, f, g, reg, row_sums, col_sums, row_budget, col_budget):
    """The plan ``exp((f_i + g_j - C_ij) / reg)`` without its smallest entries, as CSR.

    Per row (column), entries are binned by their binary exponent below that of the row's
    (column's) sum (bins a factor 2 wide), and whole bins are dropped from the smallest up
    while their total stays within ``row_budget`` (``col_budget``); an entry is kept when
    its row or its column keeps it. The selection is O(nm) (no sort) and drops a subset of
    what the exact sorted rule would drop (up to part of one bin), plus the entries below
    ``2**-62`` of both their row's and column's sums. ``row_sums``/``col_sums`` are the
    plan's marginals (:func:`plan_marginals`).

    Examples
    --------
    >>> plan = np.array([[0.5, 1e-6], [1e-6, 0.5]])
    >>> C = -np.log(plan)
    >>> S = sparsify_plan(C, np.zeros(2), np.zeros(2), 1.0, plan.sum(1), plan.sum(0),
    ...                   1e-3, 1e-3)
    >>> S.toarray()
    array([[0.5, 0. ],
           [0. , 0.5]])
    """
    indptr, indices, data = _sparsify_plan(
        np.ascontiguousarray(C, dtype=np.float64),
        np.ascontiguousarray(f, dtype=np.float64),
        np.ascontiguousarray(g, dtype=np.float64),
        float(reg),
        np.ascontiguousarray(row_sums, dtype=np.float64),
        np.ascontiguousarray(col_sums, dtype=np.float64),
        float(row_budget), float(col_budget),
    )
    return sp.csr_matrix((data, indices, indptr), shape=(len(f), len(g)))


def sparse_columns(formulation, alpha, beta, Ct, b, reg, k, *, n_threads=None):
    """The k-sparse plan columns of the semi-dual or dual at the given potentials.

    Returns ``(rows, values, nnz, phi, row_sums, col_sums)``: column ``j`` of the plan has
    entries ``values[j, :nnz[j]]`` at rows ``rows[j, :nnz[j]]`` (the slots after them hold
    row -1 and value 0), ``phi[j]`` is its conjugate
    value, and the last two are the plan's row and column sums. ``Ct`` is the transposed
    cost, shape (m, n). ``beta`` is ignored by the semi-dual, ``b`` by the dual.

    Examples
    --------
    >>> Ct = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    >>> out = sparse_columns("semi_dual", np.zeros(3), None, Ct, np.array([0.5, 0.5]), 1.0, 1)
    >>> out[1][:, 0], out[1][:, 0].sum(), out[0][:, 0]
    (array([0.5, 0.5]), np.float64(1.0), array([0, 2], dtype=int32))
    """
    Ct = np.ascontiguousarray(Ct, dtype=np.float64)
    m, n = Ct.shape
    width = max(1, min(int(k), n))
    # Slots past nnz[j] are not written by the kernels: give them defined values (row -1,
    # value 0) so the output never depends on what the memory held.
    rows = np.full((m, width), -1, dtype=np.int32)
    values = np.zeros((m, width))
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
