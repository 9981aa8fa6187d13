"""float32 designs stay float32 through the datafits, the compiled coordinate descent and the
estimators; objectives and gaps are still summed in float64."""

import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from mmopt import ConvergenceWarning, bcd


def _data(seed=0, n=200, p=50):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    w = np.zeros(p)
    w[:5] = [1.0, -2.0, 3.0, 0.5, -1.0]
    return X, X @ w + 0.1 * rng.standard_normal(n), (X @ w > 0).astype(int)


@pytest.mark.parametrize("sparse", [False, True])
def test_datafits_keep_float32_and_sum_in_float64(sparse):
    X, y, _ = _data()
    X32 = X.astype(np.float32)
    if sparse:
        X32 = sp.csc_matrix(X32)
    f = bcd.LeastSquares(X32, y)
    assert f.X.dtype == f.y.dtype == f.norms2.dtype == f.lipschitz.dtype == np.float32
    w = np.linspace(-1, 1, X.shape[1]).astype(np.float32)
    aux = f.init_aux(w)
    assert aux.dtype == np.float32
    # The value is summed in float64: it equals the float64 sum of the float32 residuals.
    r = f.y.astype(float) - aux.astype(float)
    assert f.value(w, aux) == pytest.approx(float(r @ r) / (2 * X.shape[0]), rel=1e-15)
    assert bcd.LeastSquares(X.astype(np.int64), y).X.dtype == np.float64


@pytest.mark.parametrize(
    "make, pen",
    [
        (bcd.LeastSquares, bcd.L1(0.05)),
        (bcd.LeastSquares, bcd.ElasticNet(0.05, 0.5)),
        (bcd.Logistic, bcd.L1(0.01)),
        (bcd.Logistic, bcd.L2(0.01)),
    ],
)
def test_cd_float32_agrees_with_float64(make, pen):
    X, y, labels = _data(1)
    target = y if make is bcd.LeastSquares else 2.0 * labels - 1.0
    ref = bcd.CoordinateDescent(tol=1e-12).solve(bcd.BCDProblem(make(X, target), pen))
    problem = bcd.BCDProblem(make(X.astype(np.float32), target), pen)
    res = bcd.CoordinateDescent(tol=1e-6).solve(problem)
    assert res.success and res.x.dtype == np.float32
    np.testing.assert_allclose(res.x, ref.x, atol=2e-5)
    assert res.fun == pytest.approx(ref.fun, rel=1e-6)


@pytest.mark.parametrize(
    "model, target",
    [(bcd.BCDLasso(alpha=0.05), "y"), (bcd.BCDElasticNet(alpha=0.05), "y"),
     (bcd.BCDLogisticRegression(C=1.0, tol=1e-7), "labels"),
     (bcd.BCDLogisticRegression(penalty="l1", tol=1e-7), "labels")],
)
def test_estimators_return_float32_coef_for_float32_X(model, target):
    X, y, labels = _data(2)
    t = y if target == "y" else labels
    ref = type(model)(**{**model.get_params(), "tol": 1e-12}).fit(X, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the float32 tol notice
        fit = model.fit(X.astype(np.float32), t)
    assert fit.coef_.dtype == np.float32
    np.testing.assert_allclose(fit.coef_, ref.coef_, atol=1e-5)
    # The unpenalized intercept is the flattest direction, so a stop on the duality gap leaves it
    # the least settled: float32 runs stop 1.06e-5 off on the L2 logistic case with numpy 2.4.6's
    # float32 kernels (float64 at the same tol: 3.3e-6).
    np.testing.assert_allclose(fit.intercept_, ref.intercept_, atol=2e-5)
    pred = fit.predict(X.astype(np.float32))
    assert pred.shape == (X.shape[0],)


def test_multiclass_logistic_returns_float32_coef():
    X, _, _ = _data(3)
    labels = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    model = bcd.BCDLogisticRegression(tol=1e-8).fit(X.astype(np.float32), labels)
    ref = bcd.BCDLogisticRegression(tol=1e-8).fit(X, labels)
    assert model.coef_.dtype == model.intercept_.dtype == np.float32
    np.testing.assert_allclose(model.coef_, ref.coef_, atol=1e-4)


@pytest.mark.parametrize(
    "make, pen",
    [
        (bcd.LeastSquares, bcd.ElasticNet(0.01, 0.5)),
        (bcd.LeastSquares, bcd.L1(0.01)),
        (bcd.Logistic, bcd.L2(0.01)),
    ],
)
def test_no_float64_copy_of_a_float32_design(make, pen):
    rng = np.random.default_rng(4)
    X = np.asfortranarray(rng.standard_normal((1000, 400)), dtype=np.float32)
    y = np.sign(X[:, :5] @ np.ones(5) + 0.1 * rng.standard_normal(1000))
    problem = bcd.BCDProblem(make(X, y), pen)
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = bcd.CoordinateDescent(tol=1e-5, max_iter=20).solve(problem)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.x.dtype == np.float32
    # A float64 copy of X alone is X.size * 8 bytes; these solves need O(n + p) memory.
    assert peak < 0.25 * X.size * 8


def test_tol_below_float32_resolution_warns_then_stalls_honestly():
    X, y, _ = _data(5)
    problem = bcd.BCDProblem(bcd.LeastSquares(X.astype(np.float32), y), bcd.L1(0.05))
    with pytest.warns(ConvergenceWarning, match="float32"):
        res = bcd.CoordinateDescent(tol=1e-12).solve(problem)
    assert res.status in (0, 5) and np.isfinite(res.x).all()
    assert res.status == 5 or res.gap <= 1e-12


def test_block_coordinate_descent_on_a_float32_design():
    X, y, _ = _data(6, n=100, p=20)
    ref = bcd.BlockCoordinateDescent(tol=1e-10, max_iter=5000).solve(
        bcd.BCDProblem(bcd.LeastSquares(X, y), bcd.L1(0.1)))
    res = bcd.BlockCoordinateDescent(tol=1e-5, max_iter=5000).solve(
        bcd.BCDProblem(bcd.LeastSquares(X.astype(np.float32), y), bcd.L1(0.1)))
    assert res.success
    np.testing.assert_allclose(res.x, ref.x, atol=1e-4)
