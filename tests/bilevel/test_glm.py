"""Built-in ridge and logistic problems: derivatives by finite differences, solutions against
scikit-learn, and the estimators."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
from sklearn.preprocessing import StandardScaler

from mmopt import ConvergenceWarning
from mmopt.bilevel import (
    BilevelLogisticRegression,
    BilevelRidge,
    LogisticLowerLevel,
    LogLossUpperLevel,
    RidgeLowerLevel,
    SquaredLossUpperLevel,
)
from mmopt.bilevel.inner import newton_cg


def _data(kind, rng):
    X = rng.standard_normal((40, 4))
    if kind == "ridge":
        return X, X @ [1.0, -2.0, 0.5, 0.0] + rng.standard_normal(40)
    if kind == "binary":
        return X, (X[:, 0] + rng.standard_normal(40) > 0).astype(float)
    codes = rng.integers(0, 3, 40)
    return X + codes[:, None] * 0.5, np.eye(3)[codes]


def _lowers():
    rng = np.random.default_rng(0)
    out = {}
    X, y = _data("ridge", rng)
    for penalty in ("shared", "per_feature"):
        for fi in (True, False):
            out[f"ridge-{penalty}-{fi}"] = RidgeLowerLevel(X, y, penalty=penalty,
                                                           fit_intercept=fi)
    for kind in ("binary", "multinomial"):
        X, Y = _data(kind, rng)
        for penalty in ("shared", "per_feature", "per_weight"):
            for fi in (True, False):
                out[f"{kind}-{penalty}-{fi}"] = LogisticLowerLevel(
                    X, Y, penalty=penalty, fit_intercept=fi
                )
    return out


LOWERS = _lowers()


def _central(f, x, h=1e-6):
    out = []
    for j in range(x.size):
        e = np.zeros_like(x)
        e[j] = h
        out.append((f(x + e) - f(x - e)) / (2 * h))
    return np.array(out).T


@pytest.mark.parametrize("name", list(LOWERS))
def test_lower_level_derivatives_by_finite_differences(name):
    lower = LOWERS[name]
    rng = np.random.default_rng(1)
    x = 0.3 * rng.standard_normal(lower.x0.size)
    theta = 0.5 * rng.standard_normal(lower.n_theta)
    v = rng.standard_normal(x.size)
    q = rng.standard_normal(x.size)
    grad = lower.grad_x(x, theta)
    np.testing.assert_allclose(grad, _central(lambda u: lower.value(u, theta), x), atol=1e-7)
    # Hessian-vector product: the derivative of the gradient along v.
    hv = (lower.grad_x(x + 1e-6 * v, theta) - lower.grad_x(x - 1e-6 * v, theta)) / 2e-6
    np.testing.assert_allclose(lower.hvp_xx(x, theta, v), hv, rtol=1e-6, atol=1e-8)
    if callable(getattr(lower, "hessian", None)):
        np.testing.assert_allclose(lower.hessian(x, theta) @ v, hv, rtol=1e-6, atol=1e-8)
    # Mixed derivative: B^T q = d/dtheta (grad_x . q).
    bq = _central(lambda th: lower.grad_x(x, th) @ q, theta)
    np.testing.assert_allclose(lower.vjp_theta(x, theta, q), bq, rtol=1e-6, atol=1e-9)
    # The norm bound holds for B's action on random directions of theta.
    jac = _central(lambda th: lower.grad_x(x, th), theta).reshape(x.size, theta.size)
    assert np.linalg.norm(jac, 2) <= lower.cross_norm(x, theta) * (1 + 1e-6) + 1e-9
    # mu is at most the smallest Hessian eigenvalue in the penalized directions.
    H = _central(lambda u: lower.grad_x(u, theta), x)
    assert lower.mu(theta) <= np.linalg.eigvalsh(0.5 * (H + H.T)).max()


@pytest.mark.parametrize("kind", ["ridge", "binary", "multinomial"])
def test_upper_level_gradients_by_finite_differences(kind):
    rng = np.random.default_rng(2)
    X, y = _data(kind, rng)
    if kind == "ridge":
        upper = SquaredLossUpperLevel(X, y, x_mean=X.mean(0), y_mean=y.mean())
        x = rng.standard_normal(4)
    else:
        upper = LogLossUpperLevel(X, y)
        x = rng.standard_normal(5 * (1 if kind == "binary" else 3))
    np.testing.assert_allclose(upper.grad(x), _central(upper.value, x), atol=1e-7)
    # L_g bounds the curvature along random directions.
    for _ in range(5):
        d = rng.standard_normal(x.size)
        d /= np.linalg.norm(d)
        curv = (upper.grad(x + 1e-5 * d) - upper.grad(x - 1e-5 * d)) / 2e-5
        assert np.linalg.norm(curv) <= upper.L_g * (1 + 1e-6)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_lower_solutions_match_sklearn(fit_intercept):
    rng = np.random.default_rng(3)
    X, y = _data("ridge", rng)
    lower = RidgeLowerLevel(X, y, fit_intercept=fit_intercept)
    w, _ = lower.custom_solver(None, np.log([3.0]), 0.0)
    ref = Ridge(alpha=3.0, fit_intercept=fit_intercept).fit(X, y)
    np.testing.assert_allclose(w, ref.coef_, atol=1e-10)
    assert lower.intercept(w) == pytest.approx(ref.intercept_, abs=1e-10)
    Xb, yb = _data("binary", rng)
    lower = LogisticLowerLevel(Xb, yb, fit_intercept=fit_intercept)
    x = newton_cg(lower, lower.x0, np.log([1 / 0.7]), 1e-12).x
    ref = LogisticRegression(C=0.7, tol=1e-12, fit_intercept=fit_intercept).fit(Xb, yb)
    coef, intercept = lower.coef_intercept(x)
    np.testing.assert_allclose(coef, ref.coef_, atol=1e-6)
    np.testing.assert_allclose(intercept, ref.intercept_ if fit_intercept else [0.0], atol=1e-6)
    Xm, Ym = _data("multinomial", rng)
    lower = LogisticLowerLevel(Xm, Ym, fit_intercept=fit_intercept)
    x = newton_cg(lower, lower.x0, np.log([1 / 0.7]), 1e-12).x
    ref = LogisticRegression(C=0.7, tol=1e-12, fit_intercept=fit_intercept).fit(
        Xm, Ym.argmax(1)
    )
    coef, intercept = lower.coef_intercept(x)
    # The multinomial intercepts are defined up to a common shift (not penalized).
    np.testing.assert_allclose(coef, ref.coef_, atol=1e-5)
    if fit_intercept:
        np.testing.assert_allclose(intercept - intercept.mean(),
                                   ref.intercept_ - ref.intercept_.mean(), atol=1e-5)


def _cv_mse(X, y, alpha, cv):
    return -cross_val_score(Ridge(alpha=alpha), X, y, cv=cv,
                            scoring="neg_mean_squared_error").mean()


def test_bilevel_ridge_beats_the_grid_and_refits():
    X, y = load_diabetes(return_X_y=True)
    model = BilevelRidge(tol=1e-4).fit(X, y)
    grid = np.logspace(-6, 2, 41)
    best = min(_cv_mse(X, y, a, KFold(5)) for a in grid)
    ours = _cv_mse(X, y, model.alpha_, KFold(5))
    assert ours <= best + 1e-9
    assert model.best_score_ == pytest.approx(-ours, rel=1e-8)
    ref = Ridge(alpha=model.alpha_).fit(X, y)
    np.testing.assert_allclose(model.coef_, ref.coef_, rtol=1e-8)
    assert model.intercept_ == pytest.approx(ref.intercept_)


def _cv_logloss(X, y, C, cv):
    est = LogisticRegression(C=C, tol=1e-10, max_iter=10_000)
    return -cross_val_score(est, X, y, cv=cv, scoring="neg_log_loss").mean()


def test_bilevel_logistic_beats_the_grid_and_refits():
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    model = BilevelLogisticRegression().fit(X, y)
    grid = np.logspace(-4, 4, 41)
    best = min(_cv_logloss(X, y, C, StratifiedKFold(5)) for C in grid)
    ours = _cv_logloss(X, y, model.C_, StratifiedKFold(5))
    assert ours <= best
    assert -model.best_score_ == pytest.approx(ours, rel=1e-6)
    ref = LogisticRegression(C=model.C_, tol=1e-12).fit(X, y)
    np.testing.assert_allclose(model.coef_, ref.coef_, atol=1e-5)
    np.testing.assert_allclose(model.predict_proba(X), ref.predict_proba(X), atol=1e-6)


def test_bilevel_logistic_multinomial_and_per_feature():
    X, y = load_iris(return_X_y=True)
    model = BilevelLogisticRegression(penalty="per_feature", C_bounds=(1e-3, 1e3),
                                      max_iter=30, tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    assert model.coef_.shape == (3, 4) and model.intercept_.shape == (3,)
    assert model.C_.shape == (4,) and np.all((model.C_ >= 1e-3 * (1 - 1e-12))
                                             & (model.C_ <= 1e3 * (1 + 1e-12)))
    assert model.score(X, y) > 0.9
    np.testing.assert_allclose(model.predict_proba(X).sum(1), 1.0)
    shared = BilevelLogisticRegression(max_iter=30, tol=1e-4).fit(X, y)
    # Per-feature penalties fit the CV objective at least as well as one shared penalty.
    assert model.best_score_ >= shared.best_score_ - 1e-6


def test_single_validation_split_and_bad_parameters():
    X, y = load_diabetes(return_X_y=True)
    split = [(np.arange(300), np.arange(300, 442))]
    model = BilevelRidge(cv=split).fit(X, y)
    assert model.result_.x_lower.__len__() == 1
    with pytest.raises(ValueError, match="penalty"):
        BilevelRidge(penalty="per_weight").fit(X, y)
    with pytest.raises(ValueError, match="alpha_bounds"):
        BilevelRidge(alpha_bounds=(1.0, 0.1)).fit(X, y)
    with pytest.raises(ValueError, match="class"):
        BilevelLogisticRegression().fit(X[:20], np.zeros(20))


def _dense_hessian(lower, x, theta):
    dim = x.size
    H = np.column_stack([lower.hvp_xx(x, theta, e) for e in np.eye(dim)])
    return 0.5 * (H + H.T)


def _gauge(lower):
    """Unit vectors of the directions along which Phi is constant (multinomial intercepts)."""
    if not (lower.fit_intercept and not lower.binary):
        return np.zeros((lower.x0.size, 0))
    g = np.zeros(lower.shape)
    g[lower.p] = 1.0
    return (g / np.linalg.norm(g)).reshape(-1, 1)


INTERCEPT_LOWERS = [name for name in LOWERS
                    if not name.startswith("ridge") and name.endswith("True")]


@pytest.mark.parametrize("name", INTERCEPT_LOWERS + ["binary-shared-False"])
@pytest.mark.parametrize("radius", [0.0, 1e-3, 0.1, 1.0])
def test_local_mu_bounds_the_hessian_on_the_ball(name, radius):
    # The smallest eigenvalue of the dense Hessian (off the flat directions) at points of
    # the ball never falls below local_mu.
    lower = LOWERS[name]
    rng = np.random.default_rng(5)
    theta = 0.5 * rng.standard_normal(lower.n_theta)
    x = 0.5 * rng.standard_normal(lower.x0.size)
    bound = lower.local_mu(x, theta, radius)
    assert bound > 0
    gauge = _gauge(lower)
    basis = np.linalg.svd(np.eye(x.size) - gauge @ gauge.T)[0][:, : x.size - gauge.shape[1]]
    for _ in range(6):
        d = rng.standard_normal(x.size)
        y = x + radius * rng.uniform() ** (1 / x.size) * d / np.linalg.norm(d)
        H = basis.T @ _dense_hessian(lower, y, theta) @ basis
        assert np.linalg.eigvalsh(H)[0] >= bound * (1 - 1e-10)


@pytest.mark.parametrize("name", INTERCEPT_LOWERS + ["binary-shared-False",
                                                     "multinomial-per_weight-False"])
@pytest.mark.parametrize("radius", [1e-4, 1e-2, 0.5])
def test_hessian_change_bounds_the_change_on_the_ball(name, radius):
    lower = LOWERS[name]
    rng = np.random.default_rng(6)
    theta = 0.5 * rng.standard_normal(lower.n_theta)
    x = 0.5 * rng.standard_normal(lower.x0.size)
    v = rng.standard_normal(x.size)
    bound = lower.hessian_change(x, theta, v, radius)
    base = lower.hvp_xx(x, theta, v)
    worst = 0.0
    for _ in range(20):
        d = rng.standard_normal(x.size)
        y = x + radius * d / np.linalg.norm(d)
        worst = max(worst, np.linalg.norm(lower.hvp_xx(y, theta, v) - base))
    assert worst <= bound
    # Sharper than the global Lipschitz constant of the Hessian.
    assert bound <= lower.hessian_lipschitz(theta) * radius * np.linalg.norm(v) * (1 + 1e-12)


@pytest.mark.parametrize("name", INTERCEPT_LOWERS)
def test_local_mu_certifies_the_distance_to_the_solution(name):
    # ||grad|| <= m R with m = local_mu(x, theta, R) puts x* (the nearest solution, off the
    # flat directions) within ||grad|| / m of x.
    lower = LOWERS[name]
    rng = np.random.default_rng(7)
    theta = 0.3 * rng.standard_normal(lower.n_theta)
    x_star = newton_cg(lower, lower.x0, theta, 1e-13).x
    gauge = _gauge(lower)
    certified = 0
    for scale in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6):
        x = x_star + scale * rng.standard_normal(x_star.size)
        g = np.linalg.norm(lower.grad_x(x, theta))
        radius = 2 * g / lower.mu(theta)
        for _ in range(10):
            m = lower.local_mu(x, theta, radius)
            if g <= m * radius:
                break
            radius *= 4
        else:
            assert scale >= 1e-2  # far points need not be certified; near ones must be
            continue
        certified += 1
        diff = x - x_star
        diff -= gauge @ (gauge.T @ diff)
        assert np.linalg.norm(diff) <= g / m
    assert certified >= 3


def _exact_hypergradient_dense(problem, theta):
    """x* by a tight Newton solve, q* = A^+ grad g with the dense Hessian, z = -B^T q*."""
    z = np.zeros_like(theta)
    for lower, upper in zip(problem.lowers, problem.uppers):
        x = newton_cg(lower, lower.x0, theta, 1e-14).x
        q = np.linalg.pinv(_dense_hessian(lower, x, theta), rcond=1e-10) @ upper.grad(x)
        z -= lower.vjp_theta(x, theta, q)
    return z / len(problem.lowers)


@pytest.mark.parametrize("multinomial", [False, True])
@pytest.mark.parametrize("penalty", ["shared", "per_feature"])
@pytest.mark.parametrize("eps", [1e-1, 1e-3, 1e-6])
def test_error_bound_with_an_intercept_is_certified_and_holds(multinomial, penalty, eps):
    # The unpenalized intercept is certified through local_mu; with FISTA the lower level is
    # really inexact, and the bound covers the error of the hypergradient.
    from mmopt.bilevel import MAID, logistic_cv_problem

    if multinomial:
        X, y = load_iris(return_X_y=True)
        X = StandardScaler().fit_transform(X)
    else:
        X, y = load_breast_cancer(return_X_y=True)
        X = StandardScaler().fit_transform(X)[:150, :5]
        y = y[:150]
    problem = logistic_cv_problem(X, y, cv=3, penalty=penalty)
    theta = np.linspace(-1, 1, problem.theta0.size)
    exact = _exact_hypergradient_dense(problem, theta)
    solver = MAID(inner_solver="fista" if eps > 1e-4 else "newton-cg")
    z, bound, _, _, certified = solver.hypergradient(problem, theta, eps=eps, delta=eps)
    assert certified
    assert np.linalg.norm(z - exact) <= bound
    if eps <= 1e-6:
        assert np.linalg.norm(z - exact) <= 1e-4 * np.linalg.norm(exact)


@pytest.mark.parametrize("penalty", ["shared", "per_feature", "per_weight"])
@pytest.mark.parametrize("kind", ["binary", "multinomial"])
def test_logistic_jvp_theta_by_finite_differences_and_adjointness(penalty, kind):
    rng = np.random.default_rng(7)
    X, Y = _data(kind, rng)
    lower = LogisticLowerLevel(X, Y, penalty=penalty)
    theta = rng.uniform(-1, 1, lower.n_theta)
    x = rng.standard_normal(lower.x0.size)
    d = rng.standard_normal(lower.n_theta)
    h = 1e-6
    fd = (lower.grad_x(x, theta + h * d) - lower.grad_x(x, theta - h * d)) / (2 * h)
    np.testing.assert_allclose(lower.jvp_theta(x, theta, d), fd, rtol=1e-6, atol=1e-10)
    q = rng.standard_normal(x.size)
    assert q @ lower.jvp_theta(x, theta, d) == pytest.approx(d @ lower.vjp_theta(x, theta, q))
