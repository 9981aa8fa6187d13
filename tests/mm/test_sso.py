"""Target-based surrogates (TargetSurrogateProblem, the SSO solver and its estimators)."""

import warnings

import numpy as np
import pytest
from scipy.optimize import approx_fprime, minimize
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from mmopt import ConvergenceWarning
from mmopt.mm import (
    SSO,
    LinearTargetModel,
    SSOClassifier,
    SSORegressor,
    TargetModel,
    TargetSurrogateProblem,
)


def _standardized(loader):
    X, y = loader(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def _regression(n=60, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) + 2.0  # off-center: the intercept matters
    y = X @ rng.standard_normal(d) - 1.0 + 0.3 * rng.standard_normal(n)
    return X, y


def _tanh_network(n_hidden=3, n_features=2, seed=0):
    """z = tanh(X A) b: a small nonlinear model with a hand-written VJP."""
    shape = (n_features, n_hidden)
    size = n_features * n_hidden

    def predict(theta, X):
        return np.tanh(X @ theta[:size].reshape(shape)) @ theta[size:]

    def vjp(theta, X, V):
        A, b = theta[:size].reshape(shape), theta[size:]
        H = np.tanh(X @ A)
        v = V[:, 0]
        grad_A = X.T @ ((1.0 - H**2) * np.outer(v, b))
        return np.concatenate([grad_A.ravel(), H.T @ v])

    theta0 = 0.5 * np.random.default_rng(seed).standard_normal(size + n_hidden)
    return TargetModel(predict, vjp, theta0)


def _monotone(history_fun):
    steps = np.diff(history_fun)
    # Rounding: the line searches accept a change below 1e-15 of the values.
    return bool(np.all(steps <= 1e-12 * np.abs(history_fun).max()))


# ----------------------------------------------------------------------- full-batch MM


def test_least_squares_with_an_exact_inner_solve_is_ols_after_one_step():
    X, y = _regression()
    problem = TargetSurrogateProblem(LinearTargetModel(), "squared", X, y)
    res = SSO(anderson=False).solve(problem)
    ols = np.linalg.lstsq(np.column_stack([X, np.ones(len(y))]), y, rcond=None)[0]
    assert res.success and res.nit == 1
    assert np.allclose(res.x, ols, rtol=0, atol=1e-10)
    assert res.n_target_gradients == 2 * len(y)  # the step, and the check at its end


def test_ridge_regressor_matches_sklearn_ridge():
    X, y = _regression()
    alpha = 0.05
    fitted = SSORegressor(alpha=alpha).fit(X, y)
    # sklearn's Ridge: ||y - X w - b||^2 + alpha' ||w||^2, alpha' = n alpha.
    ref = Ridge(alpha=alpha * len(y)).fit(X, y)
    assert fitted.n_iter_ == 1
    assert np.allclose(fitted.coef_, ref.coef_, atol=1e-10)
    assert abs(fitted.intercept_ - ref.intercept_) < 1e-10


def test_logistic_regression_converges_monotonically_to_sklearns():
    X, y = _standardized(load_breast_cancer)
    n = len(y)
    ref = LogisticRegression(C=1.0, solver="newton-cholesky", tol=1e-14, max_iter=1000)
    ref.fit(X, y)
    fitted = SSOClassifier(alpha=1.0 / n, tol=1e-10).fit(X, y)
    assert fitted.result_.success
    assert np.abs(fitted.coef_ - ref.coef_).max() < 1e-6
    assert np.abs(fitted.intercept_ - ref.intercept_).max() < 1e-6
    assert _monotone(fitted.result_.history["fun"])
    assert fitted.n_target_gradients_ == n * fitted.result_.n_evaluations


def test_softmax_regression_converges_monotonically_to_sklearns():
    X, y = _standardized(load_wine)
    n = len(y)
    ref = LogisticRegression(C=1.0, solver="newton-cg", tol=1e-14, max_iter=1000).fit(X, y)
    fitted = SSOClassifier(alpha=1.0 / n, tol=1e-10).fit(X, y)
    assert fitted.coef_.shape == (3, X.shape[1])
    assert np.abs(fitted.coef_ - ref.coef_).max() < 1e-6
    # The intercepts are unique up to a common shift (softmax is shift invariant).
    shift = fitted.intercept_ - ref.intercept_
    assert np.ptp(shift) < 1e-6
    assert _monotone(fitted.result_.history["fun"])
    assert np.allclose(fitted.predict_proba(X), ref.predict_proba(X), atol=1e-6)


@pytest.mark.parametrize("loss", ["logistic", "softmax"])
def test_the_surrogate_majorizes_the_loss_and_touches_it(loss):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 3))
    y = rng.integers(0, 2 if loss == "logistic" else 3, 40).astype(float)
    problem = TargetSurrogateProblem(LinearTargetModel(), loss, X, y, alpha=0.1)
    theta_t = rng.standard_normal(problem.x0.size)
    surrogate = problem.surrogate(theta_t)
    loss_at_t = problem.loss.value(surrogate.Z)
    assert np.isclose(loss_at_t + surrogate.value(theta_t), problem.objective(theta_t))
    for _ in range(50):
        theta = theta_t + rng.standard_normal(theta_t.size) * rng.uniform(0.01, 3.0)
        assert problem.objective(theta) <= loss_at_t + surrogate.value(theta) + 1e-12


# ------------------------------------------------------------- models given by a VJP


def test_vjp_surrogate_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 2))
    y = np.sin(X[:, 0]) + 0.1 * rng.standard_normal(30)
    model = _tanh_network()
    problem = TargetSurrogateProblem(model, "squared", X, y, alpha=0.01)
    theta_t = model.theta0
    surrogate = problem.surrogate(theta_t)
    theta = theta_t + 0.3 * rng.standard_normal(theta_t.size)
    gap = surrogate.value_and_outputs(theta)[1]
    numeric = approx_fprime(theta, surrogate.value, 1e-7)
    assert np.allclose(surrogate.gradient(theta, gap), numeric, atol=1e-5)


def test_vjp_path_converges_to_a_stationary_point_of_the_loss():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 2))
    y = np.tanh(X @ [1.0, -0.5]) * 1.5 + 0.05 * rng.standard_normal(40)
    model = _tanh_network()
    problem = TargetSurrogateProblem(model, "squared", X, y, alpha=1e-3, n_inner=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = SSO(tol=1e-9, max_iter=3000).solve(problem)
    assert _monotone(res.history["fun"])

    def objective_and_gradient(theta):
        z = model.predict(theta, X)[:, 0]
        grad = model.vjp(theta, X, (z - y)[:, None] / len(y)) + 1e-3 * theta
        return problem.objective(theta), grad

    ref = minimize(objective_and_gradient, res.x, jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-12, "ftol": 1e-15})
    assert res.fun - ref.fun < 1e-7
    assert np.linalg.norm(objective_and_gradient(res.x)[1]) < 1e-4


def test_gradient_inner_solve_on_a_linear_model_agrees_with_the_exact_one():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((80, 4))
    y = (X @ [1.0, -1.0, 0.5, 0.0] + rng.standard_normal(80) > 0).astype(float)
    exact = TargetSurrogateProblem(LinearTargetModel(), "logistic", X, y, alpha=0.01)
    gd = TargetSurrogateProblem(LinearTargetModel(), "logistic", X, y, alpha=0.01,
                                inner="gd", n_inner=20)
    a = SSO(tol=1e-10).solve(exact)
    b = SSO(tol=1e-9, max_iter=3000).solve(gd)
    assert b.success
    assert np.abs(a.x - b.x).max() < 1e-6


# ------------------------------------------------------------------- stochastic SSO


def _explicit_stochastic_surrogate(X, y, theta_t, rows, eta, alpha):
    """The stochastic logistic surrogate of the paper written out with NumPy (linear model,
    intercept last): ``<g_S, A_S theta - z_S> / b + ||A (theta - theta_t)||^2 / (2 eta n)
    + alpha / 2 ||w||^2`` and its gradient."""
    A = np.column_stack([X, np.ones(len(X))])
    z = A @ theta_t
    g = 1.0 / (1.0 + np.exp(-z[rows])) - y[rows]
    w_mask = np.r_[np.ones(X.shape[1]), 0.0]

    def fun(theta):
        gap = A @ (theta - theta_t)
        value = g @ gap[rows] / len(rows) + gap @ gap / (2 * eta * len(X))
        grad = A[rows].T @ g / len(rows) + A.T @ gap / (eta * len(X))
        return (value + 0.5 * alpha * np.sum((w_mask * theta) ** 2),
                grad + alpha * w_mask * theta)

    return fun


@pytest.mark.parametrize("inner", ["exact", "gd"])
def test_minibatch_step_minimizes_the_papers_stochastic_surrogate(inner):
    X, y = _standardized(load_breast_cancer)
    rng = np.random.default_rng(0)
    theta_t = 0.1 * rng.standard_normal(X.shape[1] + 1)
    rows = np.sort(rng.choice(len(y), 32, replace=False))
    problem = TargetSurrogateProblem(LinearTargetModel(), "logistic", X, y, alpha=1e-2,
                                     inner=inner, n_inner=3000)
    theta, fun = problem.surrogate_step(theta_t, rows, 2.0)
    reference = minimize(_explicit_stochastic_surrogate(X, y, theta_t, rows, 2.0, 1e-2),
                         theta_t, jac=True, method="BFGS", options={"gtol": 1e-12})
    assert np.abs(theta - reference.x).max() < (1e-6 if inner == "exact" else 1e-4)
    z = X[rows] @ theta_t[:-1] + theta_t[-1]
    assert fun == pytest.approx(np.mean(np.logaddexp(0, z) - y[rows] * z)
                                + 0.5e-2 * theta_t[:-1] @ theta_t[:-1], rel=1e-12)


def test_stochastic_surrogates_average_to_the_full_batch_surrogate():
    X, y = _standardized(load_breast_cancer)
    X, y = X[:544], y[:544]
    rng = np.random.default_rng(1)
    theta_t, theta = 0.1 * rng.standard_normal((2, X.shape[1] + 1))
    problem = TargetSurrogateProblem(LinearTargetModel(), "logistic", X, y, alpha=1e-2)
    batches = rng.permutation(len(y)).reshape(17, 32)
    for projection in ("full", "batch"):
        mean = np.mean([problem.surrogate(theta_t, np.sort(b), None, projection).value(theta)
                        for b in batches])
        assert mean == pytest.approx(problem.surrogate(theta_t).value(theta), rel=1e-12)


def test_minibatch_sso_approaches_the_minimum_and_counts_gradients():
    X, y = _standardized(load_breast_cancer)
    n = len(y)
    problem = TargetSurrogateProblem(LinearTargetModel(), "logistic", X, y, alpha=1e-2,
                                     n_inner=1)
    best = SSO(tol=1e-10).solve(problem).fun
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = SSO(batch_size=32, max_iter=10, random_state=0).solve(problem)
        # The minibatch's own surrogate, one Armijo step each (more fit it too closely).
        batch = SSO(batch_size=32, max_iter=10, random_state=0, projection="batch")
        res_batch = batch.solve(problem)
    assert res.n_target_gradients == 10 * n
    assert np.array_equal(res.history["n_target_gradients"], n * np.arange(1, 11))
    assert res.fun - best < 5e-2 * best and res.history["fun"][0] > res.fun
    assert res_batch.fun - best < 1e-2 * best
    again = SSO(batch_size=32, max_iter=10, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert np.array_equal(again.solve(problem).x, res.x)  # seeded: reproducible


def test_partial_fit_streams_minibatches():
    X, y = _standardized(load_breast_cancer)
    classes = np.array([0, 1])
    clf = SSOClassifier(alpha=1e-2)
    for _ in range(5):
        for chunk in np.array_split(np.arange(len(y)), 10):
            clf.partial_fit(X[chunk], y[chunk], classes=classes)
    full = SSOClassifier(alpha=1e-2, tol=1e-10).fit(X, y)
    assert clf.n_target_gradients_ == 5 * len(y)
    assert clf.score(X, y) > full.score(X, y) - 0.02
    Xr, yr = _regression()
    reg = SSORegressor(alpha=0.0)
    for _ in range(30):
        for chunk in np.array_split(np.arange(len(yr)), 3):
            reg.partial_fit(Xr[chunk], yr[chunk])
    ols = SSORegressor(alpha=0.0).fit(Xr, yr)
    assert reg.score(Xr, yr) > ols.score(Xr, yr) - 0.05


# ------------------------------------------------------------------------ bad input


def test_bad_inputs_name_the_argument(fuzz):
    X, y = _regression()
    linear = LinearTargetModel()
    fuzz.raises_naming(TargetSurrogateProblem, "model", object(), "squared", X, y)
    fuzz.raises_naming(TargetSurrogateProblem, "loss", linear, "hinge", X, y)
    fuzz.raises_naming(TargetSurrogateProblem, "X", linear, "squared", X[:, 0], y)
    fuzz.raises_naming(TargetSurrogateProblem, "X", linear, "squared",
                       fuzz.BAD_ARRAYS["nan"], y)
    fuzz.raises_naming(TargetSurrogateProblem, "y", linear, "squared", X, y[:-1])
    fuzz.raises_naming(TargetSurrogateProblem, "y", linear, "logistic", X, y)
    fuzz.raises_naming(TargetSurrogateProblem, "eta", linear, "squared", X, y, eta=0.0)
    fuzz.raises_naming(TargetSurrogateProblem, "alpha", linear, "squared", X, y, alpha=-1.0)
    fuzz.raises_naming(TargetSurrogateProblem, "n_inner", linear, "squared", X, y, n_inner=0)
    fuzz.raises_naming(TargetSurrogateProblem, "inner", _tanh_network(2, 4), "squared", X, y,
                       inner="exact")
    fuzz.raises_naming(SSOClassifier().partial_fit, "classes", X, y > 0)
    fuzz.raises_naming(SSO(batch_size=0).solve, "batch_size",
                       TargetSurrogateProblem(linear, "squared", X, y))
    fuzz.raises_naming(SSO(batch_size=8, projection="rows").solve, "projection",
                       TargetSurrogateProblem(linear, "squared", X, y))
    fuzz.raises_naming(TargetSurrogateProblem(linear, "squared", X, y).surrogate_step,
                       "projection", np.zeros(5), np.arange(4), None, "rows")
    before = fuzz.snapshot(X, y)
    SSORegressor().fit(X, y)
    for projection in ("full", "batch"):
        SSO(batch_size=7, max_iter=2, projection=projection).solve(
            TargetSurrogateProblem(linear, "squared", X, y))
    fuzz.assert_unchanged(before, X, y)
