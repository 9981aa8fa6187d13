"""CoordinateDescent (compiled, working sets, screening) against scikit-learn."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import ElasticNet as SkElasticNet
from sklearn.linear_model import Lasso, LogisticRegression

import mmopt
from mmopt.bcd import (
    L1,
    L2,
    BCDProblem,
    CoordinateDescent,
    ElasticNet,
    L1Positive,
    LeastSquares,
    Logistic,
    NoPenalty,
)


def _correlated(n, p, seed, rho=0.6):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, p))
    X = np.empty((n, p))
    X[:, 0] = Z[:, 0]
    for j in range(1, p):
        X[:, j] = rho * X[:, j - 1] + np.sqrt(1 - rho**2) * Z[:, j]
    w = np.where(rng.random(p) < 0.2, rng.standard_normal(p), 0.0)
    return X, X @ w + 0.3 * rng.standard_normal(n)


@pytest.fixture(scope="module")
def data():
    return _correlated(100, 250, 0)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    "working_set, screening, extrapolation",
    [(True, True, True), (False, False, False), (True, False, True), (False, True, False)],
)
def test_lasso_equals_sklearn(data, sparse, working_set, screening, extrapolation):
    X, y = data
    n = X.shape[0]
    alpha = np.abs(X.T @ y).max() / n / 20
    ref = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=200_000).fit(X, y).coef_
    design = sp.csc_matrix(X) if sparse else X
    res = CoordinateDescent(
        tol=1e-12, working_set=working_set, screening=screening, extrapolation=extrapolation,
        max_iter=1000
    ).solve(BCDProblem(LeastSquares(design, y), L1(alpha)))
    assert res.success and res.gap <= 1e-12
    np.testing.assert_allclose(res.x, ref, atol=1e-6)
    if screening:
        assert res.n_screened > 0


@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("l1_ratio", [0.3, 1.0])
def test_elastic_net_and_positive_equal_sklearn(data, positive, l1_ratio):
    X, y = data
    n = X.shape[0]
    alpha = np.abs(X.T @ y).max() / n / 10
    ref = (
        SkElasticNet(
            alpha=alpha,
            l1_ratio=l1_ratio,
            positive=positive,
            fit_intercept=False,
            tol=1e-14,
            max_iter=200_000,
        )
        .fit(X, y)
        .coef_
    )
    pen = ElasticNet(alpha, l1_ratio, positive=positive)
    res = CoordinateDescent(tol=1e-12, max_iter=1000).solve(BCDProblem(LeastSquares(X, y), pen))
    np.testing.assert_allclose(res.x, ref, atol=1e-6)
    if positive:
        assert np.all(res.x >= 0)
        pos = CoordinateDescent(tol=1e-12).solve(BCDProblem(LeastSquares(X, y), L1Positive(alpha)))
        if l1_ratio == 1.0:
            np.testing.assert_allclose(pos.x, ref, atol=1e-6)


def test_intercept_on_sparse_design_equals_centered_dense(data):
    X, y = data
    y = y + 4.0
    n = X.shape[0]
    alpha = np.abs(X.T @ (y - y.mean())).max() / n / 10
    ref = Lasso(alpha=alpha, tol=1e-14, max_iter=200_000).fit(X, y)
    res = CoordinateDescent(tol=1e-12, fit_intercept=True, max_iter=1000).solve(
        BCDProblem(LeastSquares(sp.csc_matrix(X), y), L1(alpha))
    )
    np.testing.assert_allclose(res.x, ref.coef_, atol=1e-6)
    assert res.intercept == pytest.approx(ref.intercept_, abs=1e-6)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("penalty", ["l1", "l2"])
@pytest.mark.parametrize("fit_intercept", [False, True])
def test_logistic_equals_sklearn(sparse, penalty, fit_intercept):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((120, 30))
    y = np.where(X[:, :3].sum(1) + 0.5 + rng.standard_normal(120) > 0, 1.0, -1.0)
    n = X.shape[0]
    C = 0.5
    pen = L1(1 / (C * n)) if penalty == "l1" else L2(1 / (C * n))
    design = sp.csc_matrix(X) if sparse else X
    if penalty == "l1" and fit_intercept:
        # liblinear penalizes its intercept: check the optimality conditions instead.
        res = CoordinateDescent(tol=1e-11, fit_intercept=True, max_iter=1000).solve(
            BCDProblem(Logistic(design, y), pen)
        )
        z = X @ res.x + res.intercept
        raw = -y / (1 + np.exp(y * z)) / n
        assert abs(raw.sum()) <= 1e-9
        grad = X.T @ raw
        on = res.x != 0
        np.testing.assert_allclose(grad[on], -pen.l1 * np.sign(res.x[on]), atol=1e-6)
        assert np.all(np.abs(grad[~on]) <= pen.l1 + 1e-8)
        return
    ref = LogisticRegression(
        penalty=penalty,
        C=C,
        solver="liblinear" if penalty == "l1" else "lbfgs",
        fit_intercept=fit_intercept,
        tol=1e-12,
        max_iter=100_000,
    ).fit(X, y)
    res = CoordinateDescent(tol=1e-11, fit_intercept=fit_intercept, max_iter=1000).solve(
        BCDProblem(Logistic(design, y), pen)
    )
    assert res.success
    np.testing.assert_allclose(res.x, ref.coef_[0], atol=2e-4 if penalty == "l1" else 1e-6)
    if fit_intercept:
        assert res.intercept == pytest.approx(
            ref.intercept_[0], abs=2e-4 if penalty == "l1" else 1e-6
        )


def _scaled_logistic_data(seed, n=300, p=40):
    """Columns on very different scales (the preconditioner's job), one all-zero column and
    a dense signal."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) * np.logspace(-1, 1, p)
    X[:, 2] = 0.0
    w = rng.standard_normal(p) / np.logspace(-1, 1, p)
    y = np.where(X @ w / np.sqrt(p) + 0.3 + rng.standard_normal(n) > 0, 1.0, -1.0)
    return X, y


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_newton_cg_equals_sklearn(sparse, fit_intercept, C):
    X, y = _scaled_logistic_data(3)
    n = X.shape[0]
    ref = LogisticRegression(
        C=C, fit_intercept=fit_intercept, solver="newton-cholesky", tol=1e-14, max_iter=1000
    ).fit(X, y)
    design = sp.csc_matrix(X) if sparse else X
    problem = BCDProblem(Logistic(design, y), L2(1 / (C * n)))
    res = CoordinateDescent(
        newton_solver="cg", tol=1e-12, fit_intercept=fit_intercept, max_iter=200
    ).solve(problem)
    assert res.success
    scale = max(1.0, float(np.abs(ref.coef_).max()))
    np.testing.assert_allclose(res.x, ref.coef_[0], atol=1e-8 * scale, rtol=0)
    if fit_intercept:
        assert res.intercept == pytest.approx(ref.intercept_[0], abs=1e-8 * scale)
    # Optimality from first principles: the penalized gradient vanishes.
    z = X @ res.x + res.intercept
    raw = -y / (1 + np.exp(y * z)) / n
    assert float(np.abs(X.T @ raw + res.x / (C * n)).max()) <= 1e-12
    # Coordinate-descent directions reach the same point.
    cd = CoordinateDescent(
        newton_solver="cd", tol=1e-12, fit_intercept=fit_intercept, max_iter=1000
    ).solve(problem)
    np.testing.assert_allclose(res.x, cd.x, atol=1e-8 * scale, rtol=0)


def test_newton_cg_is_the_default_for_l2_and_converges_superlinearly():
    X, y = _scaled_logistic_data(4, n=500, p=60)
    problem = BCDProblem(Logistic(X, y), L2(1e-3))
    auto = CoordinateDescent(tol=1e-12, max_iter=100).solve(problem)
    cg = CoordinateDescent(newton_solver="cg", tol=1e-12, max_iter=100).solve(problem)
    # Same iterates: "auto" picked conjugate gradients for the smooth penalty.
    np.testing.assert_array_equal(auto.x, cg.x)
    assert auto.n_epochs == cg.n_epochs
    # One Newton step per outer iteration, the forcing term tightening near the optimum:
    # the stopping quantity falls superlinearly, from 1e-4 to 1e-11 in at most three steps
    # (the coordinate-descent directions, stopped on a stall, take about twice as many).
    res = cg.history["residual"]
    assert cg.nit <= 15
    assert res[-1] <= 1e-12
    start, end = np.argmax(res <= 1e-4), np.argmax(res <= 1e-11)
    assert res[start] <= 1e-4 and end - start <= 3


def test_newton_cg_without_penalty_equals_sklearn():
    X, y = _scaled_logistic_data(5)
    X = np.delete(X, 2, axis=1)  # a zero column leaves the unpenalized optimum non-unique
    y[:60] *= -1  # not separable: the unpenalized optimum exists
    ref = LogisticRegression(
        C=np.inf, fit_intercept=False, solver="newton-cholesky", tol=1e-14, max_iter=1000
    ).fit(X, y)
    res = CoordinateDescent(newton_solver="cg", tol=1e-12, max_iter=200).solve(
        BCDProblem(Logistic(X, y), NoPenalty())
    )
    assert res.success
    np.testing.assert_allclose(res.x, ref.coef_[0], rtol=1e-7, atol=1e-9)
    raw = -y / (1 + np.exp(y * (X @ res.x))) / X.shape[0]
    assert float(np.abs(X.T @ raw).max()) <= 1e-12


def test_newton_solver_validation():
    X, y = _scaled_logistic_data(6, n=50, p=5)
    with pytest.raises(ValueError, match="newton_solver"):
        CoordinateDescent(newton_solver="cg").solve(BCDProblem(Logistic(X, y), L1(0.01)))
    with pytest.raises(ValueError, match="newton_solver"):
        CoordinateDescent(newton_solver="lbfgs").solve(BCDProblem(Logistic(X, y), L2(0.01)))
    # L1 problems keep the coordinate-descent directions under "auto".
    res = CoordinateDescent(tol=1e-10).solve(BCDProblem(Logistic(X, y), L1(0.01)))
    assert res.success


def test_logistic_l1_reaches_a_tiny_gap_and_kkt():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((100, 50))
    y = np.where(X[:, 0] - X[:, 1] + rng.standard_normal(100) > 0, 1.0, -1.0)
    lam = 0.02
    datafit = Logistic(X, y)
    res = CoordinateDescent(tol=1e-12, max_iter=1000).solve(BCDProblem(datafit, L1(lam)))
    assert res.gap <= 1e-12
    grad = res.gradient
    on = res.x != 0
    np.testing.assert_allclose(grad[on], -lam * np.sign(res.x[on]), atol=1e-5)
    assert np.all(np.abs(grad[~on]) <= lam + 1e-6)


def test_rejects_other_datafits():
    from mmopt.bcd import Multinomial

    with pytest.raises(TypeError, match="solver='bcd'"):
        CoordinateDescent().solve(BCDProblem(Multinomial(np.eye(3), [0, 1, 2])))


def test_does_not_modify_inputs(data):
    X, y = data
    Xc, yc = X.copy(), y.copy()
    CoordinateDescent().solve(BCDProblem(LeastSquares(X, y), L1(0.1)))
    np.testing.assert_array_equal(X, Xc)
    np.testing.assert_array_equal(y, yc)


@pytest.mark.parametrize("sparse", [False, True])
def test_pure_ridge_and_ols_stop_on_optimality(data, sparse):
    """Without an L1 part the KKT violation stops the solve; the gap is reported: exact for
    ridge (it vanishes at the optimum), the objective itself without a penalty."""
    X, y = data
    X, y = X[:, :40], y
    n = X.shape[0]
    design = sp.csc_matrix(X) if sparse else X
    for alpha in (0.5, 0.0):
        res = CoordinateDescent(tol=1e-10, max_iter=200).solve(
            BCDProblem(LeastSquares(design, y), L2(alpha))
        )
        expected = np.linalg.solve(X.T @ X / n + alpha * np.eye(40), X.T @ y / n)
        assert res.success
        np.testing.assert_allclose(res.x, expected, atol=1e-7)
        if alpha > 0:
            assert 0.0 <= res.gap <= 1e-12
        else:
            assert res.gap == pytest.approx(res.fun, rel=1e-12)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    ratio=st.floats(0.02, 0.9),
    positive=st.booleans(),
    sparse=st.booleans(),
)
def test_lasso_kkt_property(seed, ratio, positive, sparse):
    """Any small Lasso: the result satisfies the KKT conditions that the gap certifies."""
    rng = np.random.default_rng(seed)
    n, p = 20, 35
    X = rng.standard_normal((n, p))
    if sparse:
        X[rng.random((n, p)) < 0.5] = 0.0
    y = rng.standard_normal(n)
    alpha = ratio * np.abs(X.T @ y).max() / n
    pen = L1Positive(alpha) if positive else L1(alpha)
    design = sp.csc_matrix(X) if sparse else X
    res = CoordinateDescent(tol=1e-12, max_iter=1000).solve(
        BCDProblem(LeastSquares(design, y), pen)
    )
    grad = X.T @ (X @ res.x - y) / n
    on = res.x != 0
    np.testing.assert_allclose(grad[on], -alpha * np.sign(res.x[on]), atol=1e-5)
    if positive:
        assert np.all(res.x >= 0) and np.all(grad[~on] >= -alpha - 1e-6)
    else:
        assert np.all(np.abs(grad[~on]) <= alpha + 1e-6)


@pytest.mark.parametrize("positive", [False, True])
def test_logistic_screening_is_safe(positive):
    rng = np.random.default_rng(11)
    X = rng.standard_normal((150, 300))
    y = np.where(X[:, :4].sum(1) + 0.3 * rng.standard_normal(150) > 0, 1.0, -1.0)
    lam = 0.2 * np.abs(X.T @ y).max() / (2 * 150)
    pen = L1Positive(lam) if positive else L1(lam)
    problem = BCDProblem(Logistic(X, y), pen)
    screened = CoordinateDescent(tol=1e-10, screening=True).solve(problem)
    plain = CoordinateDescent(tol=1e-10, screening=False).solve(problem)
    assert screened.n_screened > 100 and plain.n_screened == 0
    np.testing.assert_allclose(screened.x, plain.x, atol=1e-6)
    assert screened.gap <= 1e-10


def test_extrapolation_is_not_called_anderson(data):
    # One word, one meaning: ``anderson=`` is the AndersonAcceleration option of the MM-type
    # solvers; coordinate descent's own scheme is ``extrapolation``, and the old spelling is
    # refused with the valid options listed.
    X, y = data
    problem = BCDProblem(LeastSquares(X, y), L1(0.1))
    with pytest.raises(TypeError, match="unknown option 'anderson'.*extrapolation"):
        mmopt.solve(problem, solver="cd", anderson=False)
    plain = mmopt.solve(problem, solver="cd", extrapolation=False, tol=1e-10)
    extrapolated = mmopt.solve(problem, solver="cd", tol=1e-10)
    np.testing.assert_allclose(plain.x, extrapolated.x, atol=1e-6)


def test_extrapolation_saves_epochs_on_a_lasso():
    # Extrapolating every 5 epochs (the documented period): on diabetes at alpha_max / 100
    # it reached a gap of 1e-10 in 30 epochs, against 155 without (and 160 with a period
    # of 10), with the same solution.
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    problem = BCDProblem(LeastSquares(X, y), L1(np.abs(X.T @ y).max() / len(y) / 100))
    fast = CoordinateDescent(tol=1e-10).solve(problem)
    plain = CoordinateDescent(tol=1e-10, extrapolation=False).solve(problem)
    assert fast.success and plain.success
    assert fast.n_epochs * 2 <= plain.n_epochs
    np.testing.assert_allclose(fast.x, plain.x, atol=1e-6)
