"""The BCD family's Cython kernels against plain NumPy references, in float64 and float32.

The references run in float64 on the kernel's (possibly float32) data: float32 kernels match
them to float32 round-off.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from mmopt.bcd._kernels import (
    _storage,
    add_columns,
    cd_least_squares,
    cd_logistic,
    cd_quadratic_model,
    column_dots,
    gram_columns,
)
from mmopt.bcd.datafits import check_design

DTYPES = [np.float64, np.float32]
# Tolerances (rtol = atol) against the float64 references, by the kernel's precision.
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def _design(rng, n, p, sparse, dtype=np.float64):
    """The design in the kernel's storage and dtype, and the same numbers as float64 array."""
    X = rng.standard_normal((n, p)).astype(dtype)
    if sparse:
        X[rng.random((n, p)) < 0.6] = 0.0
        X[:, 0] = 0.0  # an empty column must be skipped, not divided by
        Xk = check_design(sp.csc_matrix(X)).astype(dtype)  # (check_design gives float64)
        Xk.indices, Xk.indptr = Xk.indices.astype(np.int32), Xk.indptr.astype(np.int32)
    else:
        Xk = np.asfortranarray(X)
    return Xk, X.astype(np.float64)


def _close(actual, desired, dtype, scale=1.0):
    assert actual.dtype == dtype  # float32 data runs in float32: no float64 result
    tol = TOL[dtype] * scale
    np.testing.assert_allclose(actual, desired, rtol=tol, atol=tol)


def _soft(v, t, positive):
    if positive:
        return max(v - t, 0.0)
    return np.sign(v) * max(abs(v) - t, 0.0)


def _ls_reference(X, w, R, ws, l1, l2, positive, n_epochs):
    """Exact coordinate minimization, one coordinate at a time, in plain NumPy."""
    norms2 = (X**2).sum(axis=0)
    for _ in range(n_epochs):
        for j in ws:
            if norms2[j] + l2 == 0:
                continue
            old = w[j]
            new = _soft(X[:, j] @ R + norms2[j] * old, l1, positive) / (norms2[j] + l2)
            R -= X[:, j] * (new - old)
            w[j] = new


def _logistic_reference(X, y, w, z, ws, l1, l2, positive, n_epochs):
    lips = (X**2).sum(axis=0) / 4
    for _ in range(n_epochs):
        for j in ws:
            if lips[j] + l2 == 0:
                continue
            grad = -(X[:, j] * y / (1 + np.exp(y * z))).sum()
            new = _soft(lips[j] * w[j] - grad, l1, positive) / (lips[j] + l2)
            z += X[:, j] * (new - w[j])
            w[j] = new


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    "l1, l2, positive",
    [(0.0, 0.0, False), (3.0, 0.0, False), (2.0, 1.5, False), (1.0, 0.0, True), (0.0, 2.0, False)],
)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cd_least_squares_matches_numpy(sparse, l1, l2, positive, seed, dtype):
    rng = np.random.default_rng(seed)
    Xk, X = _design(rng, 15, 8, sparse, dtype)
    y = rng.standard_normal(15).astype(dtype).astype(float)
    w0 = rng.standard_normal(8).astype(dtype).astype(float)
    if positive:
        w0 = np.abs(w0)
    ws = rng.permutation(8)[:6]
    w, R = w0.astype(dtype), (y - X @ w0).astype(dtype)
    w_ref, R_ref = w0.copy(), y - X @ w0
    cd_least_squares(Xk, w, R, (X**2).sum(0), ws, l1, l2, positive, n_epochs=3)
    _ls_reference(X, w_ref, R_ref, ws, l1, l2, positive, 3)
    _close(w, w_ref, dtype)
    _close(R, R_ref, dtype)
    # The residual stays exact.
    _close(R, y - X @ w, dtype)
    # Coordinates outside the working set never move.
    outside = np.setdiff1d(np.arange(8), ws)
    np.testing.assert_array_equal(w[outside], w0[outside])


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    "l1, l2, positive", [(0.0, 1.0, False), (0.5, 0.0, False), (0.5, 0.0, True), (0.3, 0.2, False)]
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cd_logistic_matches_numpy(sparse, l1, l2, positive, dtype):
    rng = np.random.default_rng(3)
    Xk, X = _design(rng, 20, 7, sparse, dtype)
    y = np.where(rng.random(20) < 0.5, -1.0, 1.0)
    w0 = (0.1 * np.abs(rng.standard_normal(7))).astype(dtype).astype(float)
    ws = np.arange(7)[::-1]
    w, z = w0.astype(dtype), (X @ w0).astype(dtype)
    w_ref, z_ref = w0.copy(), X @ w0
    cd_logistic(Xk, y, w, z, (X**2).sum(0) / 4, ws, l1, l2, positive, n_epochs=4)
    _logistic_reference(X, y, w_ref, z_ref, ws, l1, l2, positive, 4)
    _close(w, w_ref, dtype)
    _close(z, X @ w, dtype)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_column_dots_and_add_columns(sparse, dtype):
    rng = np.random.default_rng(5)
    Xk, X = _design(rng, 12, 9, sparse, dtype)
    v = rng.standard_normal(12).astype(dtype)
    ws = np.array([7, 2, 2, 0, 8])
    _close(column_dots(Xk, v, ws), X[:, ws].T @ v, dtype)
    coef = rng.standard_normal(ws.size).astype(dtype)
    coef[1] = 0.0
    out = v.copy()
    add_columns(Xk, ws, coef, out)
    _close(out, v + X[:, ws] @ coef.astype(float), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_columns_in_both_precisions(dtype):
    rng = np.random.default_rng(6)
    Xk, X = _design(rng, 14, 7, True, dtype)
    cols = np.array([3, 0, 6])
    G = gram_columns(Xk, Xk.tocsr(), cols)
    assert G.flags.f_contiguous
    _close(G, X.T @ X[:, cols], dtype, scale=10.0)


@pytest.mark.parametrize("sparse", [False, True])
def test_float32_design_is_not_copied(sparse):
    """The kernels read a float32 design where it is: no float64 (or any) copy."""
    Xk, _ = _design(np.random.default_rng(8), 10, 4, sparse, np.float32)
    (data, indices, indptr), spec = _storage(Xk)
    assert spec == "float" and data.dtype == np.float32
    if sparse:
        assert data is Xk.data and indices is Xk.indices and indptr is Xk.indptr
    else:
        assert np.shares_memory(data, Xk) and indices is None


@pytest.mark.parametrize("sparse", [False, True])
def test_kernels_name_bad_arguments(sparse):
    Xk, X = _design(np.random.default_rng(2), 6, 4, sparse, np.float32)
    w32, R32 = np.zeros(4, np.float32), np.ones(6, np.float32)
    norms2 = (X**2).sum(0)
    # In-place vectors must have the design's dtype (a silent cast would not update them).
    with pytest.raises(TypeError, match="w must"):
        cd_least_squares(Xk, np.zeros(4), R32, norms2, [0, 1], 0.1, 0.0)
    with pytest.raises(TypeError, match="z must"):
        cd_logistic(Xk, np.ones(6), w32, np.zeros(6), norms2 / 4, [0], 0.0, 1.0)
    with pytest.raises(ValueError, match="R must have shape"):
        cd_least_squares(Xk, w32, np.ones(5, np.float32), norms2, [0, 1], 0.1, 0.0)
    with pytest.raises(ValueError, match="norms2 must have shape"):
        cd_least_squares(Xk, w32, R32, norms2[:3], [0, 1], 0.1, 0.0)
    # Working-set indices must name columns: the kernels do no bounds checks.
    for bad in ([0, 4], [-1]):
        with pytest.raises(ValueError, match="ws must hold column indices"):
            cd_least_squares(Xk, w32, R32, norms2, bad, 0.1, 0.0)
        with pytest.raises(ValueError, match="ws must hold column indices"):
            column_dots(Xk, R32, bad)
    with pytest.raises(ValueError, match="w must be a writable"):
        cd_least_squares(Xk, np.zeros(4, np.float32)[::-1], R32, norms2, [0], 0.1, 0.0)
    with pytest.raises(TypeError, match="out must"):
        add_columns(Xk, [0], [1.0], np.zeros(6))
    frozen = np.zeros(4, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="hdiag must be a writable"):
        cd_quadratic_model(
            Xk, np.ones(6), frozen, w32, R32, R32.copy(), [0], 0.0, 1.0, compute_h=True
        )
    with pytest.raises(TypeError, match="X must have dtype"):
        column_dots(Xk.astype(np.float16) if not sparse else Xk.astype(np.int64), R32, [0])
    np.testing.assert_array_equal(w32, 0.0)  # nothing ran


def test_dense_design_must_be_fortran_ordered():
    X = np.ascontiguousarray(np.random.default_rng(0).standard_normal((5, 3)))
    with pytest.raises(ValueError, match="X must be a 2-dimensional Fortran-ordered"):
        column_dots(X, np.ones(5), [0])


def test_kernels_do_not_touch_read_only_design():
    rng = np.random.default_rng(0)
    X = check_design(rng.standard_normal((5, 3)))
    assert not X.flags.writeable
    w, R = np.zeros(3), rng.standard_normal(5)
    cd_least_squares(X, w, R, (X**2).sum(0), [0, 1, 2], 0.1, 0.0)
    assert np.all(np.isfinite(w))


def _model_reference(X, curv, w, r, q, ws, l1, l2, positive, n_epochs):
    """CD on sum_i r0_i q_i + curv_i / 2 q_i^2 + penalty, r = r0 + curv * q, in NumPy."""
    h = (curv[:, None] * X**2).sum(axis=0)
    for _ in range(n_epochs):
        for j in ws:
            if h[j] + l2 == 0:
                continue
            a = X[:, j] @ r
            new = _soft(h[j] * w[j] - a, l1, positive) / (h[j] + l2)
            delta = new - w[j]
            r += delta * curv * X[:, j]
            q += delta * X[:, j]
            w[j] = new
    return h


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    "l1, l2, positive", [(0.0, 1.0, False), (0.7, 0.0, False), (0.5, 0.1, True)]
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cd_quadratic_model_matches_numpy(sparse, l1, l2, positive, dtype):
    rng = np.random.default_rng(9)
    Xk, X = _design(rng, 18, 6, sparse, dtype)
    curv = (rng.random(18) * 0.25).astype(dtype).astype(float)
    r0 = rng.standard_normal(18).astype(dtype).astype(float)
    w0 = np.abs(rng.standard_normal(6)).astype(dtype).astype(float)
    ws = np.array([5, 1, 3, 0])
    w, r, q, h = (a.astype(dtype) for a in (w0, r0, np.zeros(18), np.zeros(6)))
    cd_quadratic_model(Xk, curv, h, w, r, q, ws, l1, l2, positive, n_epochs=3, compute_h=True)
    w_ref, r_ref, q_ref = w0.copy(), r0.copy(), np.zeros(18)
    h_ref = _model_reference(X, curv, w_ref, r_ref, q_ref, ws, l1, l2, positive, 3)
    _close(w, w_ref, dtype)
    _close(r, r_ref, dtype)
    _close(q, X @ (w - w0), dtype)
    _close(h[ws], h_ref[ws], dtype)
    # At convergence the model's optimality conditions hold on the working set.
    cd_quadratic_model(Xk, curv, h, w, r, q, ws, l1, l2, positive, n_epochs=500)
    grad = X[:, ws].T @ r + l2 * w[ws]
    # (An empty column with l2 = 0 has no curvature: the kernel leaves it where it is.)
    on = (w[ws] != 0) & (h[ws] + l2 > 0)
    tol = 1e-9 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(grad[on], -l1 * np.sign(w[ws][on]), atol=tol)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_forest_solve_matches_numpy(seed):
    import scipy.sparse.csgraph as csgraph

    from mmopt.bcd._kernels import greedy_forest_solve

    rng = np.random.default_rng(seed)
    n = 40
    W = sp.random(n, n, density=0.15, random_state=seed)
    W = ((W + W.T) > 0).astype(float).tocsr()
    W.setdiag(0)
    W.eliminate_zeros()
    A = sp.diags(np.asarray(W.sum(1)).ravel() + 1.0) - W
    grad = rng.standard_normal(n)
    order = rng.permutation(n)
    block, delta = greedy_forest_solve(A, A.diagonal(), order, grad)
    sub = W[block][:, block]
    # A forest: edges = nodes - connected components.
    n_comp = csgraph.connected_components(sub, directed=False)[0]
    assert sub.nnz // 2 == block.size - n_comp
    # Maximal in the visiting order: every node left out would close a cycle.
    taken = np.zeros(n, dtype=bool)
    taken[block] = True
    for v in np.flatnonzero(~taken):
        both = np.r_[block, v]
        bigger = W[both][:, both]
        assert (
            bigger.nnz // 2 > both.size - csgraph.connected_components(bigger, directed=False)[0]
        )
    # The move solves the block's system exactly.
    A_bb = A.tocsr()[block][:, block].toarray()
    np.testing.assert_allclose(delta, np.linalg.solve(A_bb, -grad[block]), rtol=1e-10, atol=1e-12)
    # With a size cap, the first nodes of the order that fit are taken.
    small, _ = greedy_forest_solve(A, A.diagonal(), order, grad, max_size=3)
    assert small.size == 3
