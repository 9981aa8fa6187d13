"""MAID against closed forms, finite differences and the exact hypergradient."""

import warnings

import numpy as np
import pytest
from _helpers import distance_upper_level, shrinkage_lower_level
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.preprocessing import StandardScaler

import mmopt
from mmopt import ConvergenceWarning
from mmopt.bilevel import (
    MAID,
    BilevelProblem,
    LowerLevel,
    SpreadPenalty,
    UpperLevel,
    logistic_cv_problem,
    ridge_cv_problem,
)


def _toy(c, t, *, with_constants=True, solver=None):
    """Phi = 1/2 ||x - c||^2 + e^theta/2 ||x||^2, g = 1/2 ||x - t||^2.

    x*(theta) = c / (1 + e^theta), so the best shrinkage is e^theta* = c.c / c.t - 1.
    """
    extra = {}
    if with_constants:
        extra = dict(
            hessian_lipschitz=lambda th: 0.0,
            cross_norm=lambda x, th: np.exp(th[0]) * np.linalg.norm(x),
            cross_lipschitz=lambda th: np.exp(th[0]),
        )
    return shrinkage_lower_level(c, solver=solver, **extra), distance_upper_level(t)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("accuracy", ["adaptive", "geometric", "cubic"])
def test_quadratic_toy_closed_form(seed, accuracy):
    rng = np.random.default_rng(seed)
    c = rng.uniform(1.0, 3.0, 5)
    t = c / rng.uniform(1.2, 4.0)  # a shrinkage of c, plus noise
    t = t + 0.05 * rng.standard_normal(5)
    alpha_star = c @ c / (c @ t) - 1.0
    assert alpha_star > 0
    lower, upper = _toy(c, t)
    res = BilevelProblem(lower, upper, theta0=0.0).solve(
        tol=1e-6, accuracy=accuracy, max_iter=2000
    )
    assert res.success, res.message
    assert abs(np.exp(res.theta[0]) - alpha_star) <= 1e-4 * alpha_star
    assert res.bound_certified
    # The returned lower-level solution is the closed form at the returned theta.
    np.testing.assert_allclose(res.x_lower[0], c / (1 + np.exp(res.theta[0])), atol=1e-5)


def test_adaptive_fista_without_lipschitz_and_fields():
    c, t = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.8, 1.6])
    lower, upper = _toy(c, t)
    thetas = []
    res = MAID(tol=1e-6, inner_solver="fista", callback=lambda r: thetas.append(r.x[0])).solve(
        BilevelProblem(lower, upper, 0.0)
    )
    assert res.success
    for key in ("n_lower_iter", "n_hvp", "n_cg_iter", "n_lower_solves", "cost"):
        assert res[key] > 0
        assert np.all(np.diff(res.history[key]) >= 0)  # cumulative
    for key in ("eps", "delta", "step", "bound", "z_norm", "fun", "accepted"):
        assert res.history[key].shape == (res.nit,)
    # The true objective never goes up (certified decrease), though the computed one may
    # when a re-solve at the same theta is more accurate.
    true = [0.5 * np.sum((c / (1 + np.exp(th)) - t) ** 2) for th in [0.0, *thetas]]
    assert np.all(np.diff(true) <= 1e-15) and true[-1] < true[0]
    assert res.cost == res.n_lower_iter + res.n_cg_iter


def _fd_objective(problem, theta):
    _, _, fun, _, _ = MAID().hypergradient(problem, theta, eps=1e-13, delta=1e-13)
    return fun


def _hypergradient_problems():
    Xd, yd = load_diabetes(return_X_y=True)
    Xb, yb = load_breast_cancer(return_X_y=True)
    Xb = StandardScaler().fit_transform(Xb)[:200, :6]
    yb = yb[:200]
    Xi, yi = load_iris(return_X_y=True)
    return {
        "ridge-shared": (ridge_cv_problem(Xd, yd, cv=3), np.log([0.1])),
        "ridge-per-feature": (
            ridge_cv_problem(Xd, yd, cv=3, penalty="per_feature"),
            np.linspace(-3, 1, Xd.shape[1]),
        ),
        "logistic-shared": (logistic_cv_problem(Xb, yb, cv=3), np.log([2.0])),
        "logistic-per-feature": (
            logistic_cv_problem(Xb, yb, cv=3, penalty="per_feature"),
            np.linspace(-1, 2, 6),
        ),
        "multinomial-per-weight": (
            logistic_cv_problem(Xi, yi, cv=3, penalty="per_weight"),
            np.linspace(-1, 1, 12),
        ),
    }


@pytest.mark.parametrize("name", list(_hypergradient_problems()))
def test_hypergradient_matches_central_differences(name):
    problem, theta = _hypergradient_problems()[name]
    z, bound, *_ = MAID().hypergradient(problem, theta, eps=1e-12, delta=1e-12)
    h = 1e-4
    fd = np.empty_like(theta)
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = h
        fd[j] = (_fd_objective(problem, theta + e) - _fd_objective(problem, theta - e)) / (2 * h)
    assert np.linalg.norm(z - fd) <= 1e-5 * np.linalg.norm(fd)


def _exact_hypergradient_ridge(problem, theta):
    """Closed form: x* by a linear solve, q* = A^-1 grad g, z = -B^T q (no shared code)."""
    z = np.zeros_like(theta)
    for lower, upper in zip(problem.lowers, problem.uppers):
        alpha = np.exp(theta) if lower.penalty == "per_feature" else np.exp(theta[0])
        A = (lower.Xc.T @ lower.Xc + np.diag(np.broadcast_to(alpha, lower.x0.shape))) / lower.n
        x = np.linalg.solve(A, lower.Xc.T @ lower.yc / lower.n)
        grad = 2 * upper.Xc.T @ (upper.Xc @ x - upper.yc) / upper.n
        q = np.linalg.solve(A, grad)
        m = alpha * x * q / lower.n
        z -= m if lower.penalty == "per_feature" else m.sum()
    return z / len(problem.lowers)


@pytest.mark.parametrize("penalty", ["shared", "per_feature"])
@pytest.mark.parametrize("eps", [1e-1, 1e-3, 1e-5])
@pytest.mark.parametrize("delta", [1e-1, 1e-4])
def test_error_bound_is_never_below_the_true_error_ridge(penalty, eps, delta):
    X, y = load_diabetes(return_X_y=True)
    problem = ridge_cv_problem(X, y, cv=3, penalty=penalty)
    theta = np.full(problem.theta0.shape, np.log(0.05))
    exact = _exact_hypergradient_ridge(problem, theta)
    # FISTA instead of the exact Cholesky solve, so that the lower level is really inexact.
    solver = MAID(inner_solver="fista")
    before = dict(vars(solver))
    z, bound, _, _, certified = solver.hypergradient(problem, theta, eps=eps, delta=delta)
    assert certified and vars(solver) == before
    assert np.linalg.norm(z - exact) <= bound


@pytest.mark.parametrize("eps", [1e-1, 1e-2, 1e-4])
def test_error_bound_is_never_below_the_true_error_logistic(eps):
    # Without an intercept mu is a valid strong-convexity bound: the bound is certified.
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)[:150, :5]
    problem = logistic_cv_problem(X, y[:150], cv=3, fit_intercept=False, penalty="per_feature")
    theta = np.linspace(-1, 1, 5)
    exact, *_ = MAID().hypergradient(problem, theta, eps=1e-13, delta=1e-13)
    solver = MAID(inner_solver="fista")
    z, bound, _, _, certified = solver.hypergradient(problem, theta, eps=eps, delta=eps)
    assert certified
    assert np.linalg.norm(z - exact) <= bound


def test_toy_bound_covers_error_along_a_run():
    c, t = np.array([1.0, 2.0]), np.array([0.4, 0.9])
    lower, upper = _toy(c, t)
    seen = []

    def exact_grad(theta):
        a = np.exp(theta[0])
        x = c / (1 + a)
        q = (x - t) / (1 + a)
        return np.array([-a * x @ q])

    def callback(res):
        seen.append(res.nit)

    problem = BilevelProblem(lower, upper, theta0=0.0)
    res = MAID(tol=1e-7, callback=callback, inner_solver="fista").solve(problem)
    assert res.success and seen
    assert np.linalg.norm(res.hypergradient - exact_grad(res.theta)) <= res.bound + 1e-15


def test_uncertified_when_constants_missing():
    c, t = np.array([1.0, 2.0]), np.array([0.4, 0.9])
    lower, upper = _toy(c, t, with_constants=False)
    res = BilevelProblem(lower, upper, theta0=0.0).solve(tol=1e-6)
    assert res.success and not res.bound_certified
    assert abs(np.exp(res.theta[0]) - (c @ c / (c @ t) - 1)) < 1e-3


def test_custom_and_pluggable_inner_solvers():
    c, t = np.array([1.0, 2.0]), np.array([0.4, 0.9])
    calls = []

    def exact(x0, theta, gtol):
        calls.append(gtol)
        return c / (1 + np.exp(theta[0])), 1

    lower, upper = _toy(c, t, solver=exact)
    res = BilevelProblem(lower, upper, theta0=0.0).solve(tol=1e-7)
    assert res.success and calls
    # Any callable (lower, x0, theta, gtol) -> (x, nit), e.g. scipy's L-BFGS.
    from scipy.optimize import minimize

    def lbfgs(lower, x0, theta, gtol):
        out = minimize(lower.value, x0, args=(theta,), jac=lower.grad_x, method="L-BFGS-B",
                       options={"gtol": gtol / 10, "ftol": 0})
        return out.x, out.nit

    lower, upper = _toy(c, t)
    res = MAID(tol=1e-6, inner_solver=lbfgs).solve(BilevelProblem(lower, upper, 0.0))
    assert res.success
    assert abs(np.exp(res.theta[0]) - (c @ c / (c @ t) - 1)) < 1e-4


def test_bounds_are_respected():
    c, t = np.array([1.0, 2.0]), np.array([0.4, 0.9])  # optimum e^theta ~ 1.27
    lower, upper = _toy(c, t)
    res = BilevelProblem(lower, upper, theta0=-1.0, bounds=(-2.0, -0.5)).solve(tol=1e-8)
    assert res.success and res.theta[0] == pytest.approx(-0.5)


def test_spread_penalty_pulls_per_feature_penalties_together():
    X, y = load_diabetes(return_X_y=True)
    free = ridge_cv_problem(X, y, cv=3, penalty="per_feature", bounds=(-8, 8))
    tied = ridge_cv_problem(X, y, cv=3, penalty="per_feature", bounds=(-8, 8),
                            theta_penalty=SpreadPenalty(1e4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = MAID(tol=1e-3, max_iter=100).solve(free)
        b = MAID(tol=1e-3, max_iter=100).solve(tied)
    assert np.std(b.theta) < 0.5 * np.std(a.theta)


def test_budget_stop_warns_with_status_1():
    c, t = np.array([1.0, 2.0]), np.array([0.4, 0.9])
    lower, upper = _toy(c, t)
    with pytest.warns(ConvergenceWarning, match="budget"):
        res = MAID(tol=1e-12, max_cost=30, inner_solver="fista").solve(
            BilevelProblem(lower, upper, 0.0)
        )
    assert res.status == 1 and not res.success and res.cost >= 30


def test_solve_front_door_and_hoag_schedules_decrease():
    X, y = load_diabetes(return_X_y=True)
    problem = ridge_cv_problem(X, y, cv=3)
    start = _fd_objective(problem, problem.theta0)
    for accuracy in ("adaptive", "geometric", "quadratic", "cubic", "fixed"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = mmopt.solve(problem, accuracy=accuracy, max_iter=30, tol=1e-3)
        assert res.solver == "maid" and res.fun < start


# ------------------------------------------------------------------------------ bad input
def test_bad_input_errors():
    c, t = np.array([1.0, 2.0]), np.array([0.4, 0.9])
    lower, upper = _toy(c, t)
    with pytest.raises(ValueError, match="theta0"):
        BilevelProblem(lower, upper, theta0=np.nan)
    with pytest.raises(ValueError, match="theta0"):
        BilevelProblem(lower, upper, theta0=[0.0, np.inf])
    with pytest.raises(ValueError, match="lo <= hi"):
        BilevelProblem(lower, upper, theta0=0.0, bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="bounds"):
        BilevelProblem(lower, upper, theta0=0.0, bounds=([0.0, 1.0], 2.0))
    with pytest.raises(ValueError, match="same length"):
        BilevelProblem([lower, lower], [upper], theta0=0.0)
    # theta of the wrong size for vjp_theta
    with pytest.raises(ValueError, match="vjp_theta"):
        BilevelProblem(lower, upper, theta0=[0.0, 0.0])
    # x0 that does not match the gradient
    bad = LowerLevel(lower.value, lambda x, th: np.zeros(3), lower.hvp_xx, lower.vjp_theta,
                     lower.mu, np.zeros(2))
    with pytest.raises(ValueError, match="grad_x"):
        BilevelProblem(bad, upper, theta0=0.0)
    for mu in (0.0, -1.0, np.nan):
        flat = LowerLevel(lower.value, lower.grad_x, lower.hvp_xx, lower.vjp_theta,
                          lambda th, mu=mu: mu, np.zeros(2))
        with pytest.raises(ValueError, match="mu"):
            BilevelProblem(flat, upper, theta0=0.0)
    with pytest.raises(TypeError, match="grad_x"):
        LowerLevel(lower.value, None, lower.hvp_xx, lower.vjp_theta, lower.mu, np.zeros(2))
    with pytest.raises(TypeError, match="lower"):
        BilevelProblem(object(), upper, theta0=0.0)
    with pytest.raises(ValueError, match="L_g"):
        UpperLevel(lambda x: 0.0, lambda x: x, L_g=-1.0)
    problem = BilevelProblem(lower, upper, theta0=0.0)
    for option, value, error in [
        ("accuracy", "bogus", ValueError), ("eta", 1.5, ValueError), ("tau", 0.0, ValueError),
        ("accuracy_growth", 0.5, ValueError), ("step0", -1.0, ValueError),
        ("max_cost", 0, ValueError),
        ("inner_solver", "bogus", ValueError), ("eps0", np.inf, ValueError),
    ]:
        with pytest.raises(error, match=option):
            problem.solve(**{option: value})
    with pytest.raises(ValueError, match="x0"):
        problem.solve(x0=[0.0, 1.0])


def test_mu_becoming_non_positive_during_the_solve_is_an_error():
    c, t = np.array([1.0, 2.0]), np.array([0.4, 0.9])
    lower, upper = _toy(c, t)
    # A modulus that is valid at theta0 = 0 but not for theta > 0.5.
    broken = LowerLevel(lower.value, lower.grad_x, lower.hvp_xx, lower.vjp_theta,
                        lambda th: 1.0 - 2 * th[0], np.zeros(2))
    with pytest.raises(ValueError, match="mu"):
        BilevelProblem(broken, upper, theta0=0.0).solve(step0=10.0)


def test_inputs_are_not_modified():
    X, y = load_diabetes(return_X_y=True)
    X0, y0 = X.copy(), y.copy()
    theta0 = np.array([0.0])
    problem = ridge_cv_problem(X, y, cv=3)
    MAID(tol=1e-3).solve(problem, x0=theta0)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(theta0, [0.0])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    theta=st.floats(-3.0, 3.0),
    log_eps=st.floats(-8.0, 0.0),
    log_delta=st.floats(-8.0, 0.0),
)
def test_bound_covers_the_true_error_property(seed, theta, log_eps, log_delta):
    rng = np.random.default_rng(seed)
    c, t = rng.uniform(-2, 2, 4), rng.uniform(-2, 2, 4)
    lower, upper = _toy(c, t)
    problem = BilevelProblem(lower, upper, theta0=theta)
    a = np.exp(theta)
    x = c / (1 + a)
    exact = -a * x @ ((x - t) / (1 + a))
    solver = MAID(inner_solver="fista")
    z, bound, _, _, certified = solver.hypergradient(
        problem, np.array([theta]), eps=10.0**log_eps, delta=10.0**log_delta)
    assert certified
    assert abs(z[0] - exact) <= bound + 1e-14


def test_xtol_stops_on_the_secant_distance_estimate():
    # On the toy the secant estimate of the distance to theta* is accurate near it, so
    # stopping on xtol lands within about xtol of the closed form, sooner than on tol.
    c = np.array([1.0, 2.0, 1.5])
    t = c / 2.5 + np.array([0.03, -0.02, 0.01])
    theta_star = np.log(c @ c / (c @ t) - 1.0)
    lower, upper = _toy(c, t)
    problem = BilevelProblem(lower, upper, theta0=2.0)
    tight = MAID(tol=1e-10, step_rule="bb").solve(problem)
    loose = MAID(tol=1e-10, xtol=1e-2, step_rule="bb").solve(problem)
    assert tight.success and loose.success
    assert "xtol" in loose.message and "xtol" not in tight.message
    assert loose.nit < tight.nit and loose.cost < tight.cost
    assert abs(loose.theta[0] - theta_star) <= 2e-2
    assert abs(tight.theta[0] - theta_star) <= 1e-6
    with pytest.raises(ValueError, match="xtol"):
        problem.solve(xtol=-1.0)


def test_softmax_hessian_kernel_matches_numpy():
    from mmopt_ext._softmax_hvp import softmax_hessian_rows

    rng = np.random.default_rng(3)
    for n, k in [(1, 2), (7, 3), (50, 10)]:
        Z = rng.standard_normal((n, k))
        P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
        U = rng.standard_normal((n, k))
        expected = np.stack([(np.diag(p) - np.outer(p, p)) @ u for p, u in zip(P, U)])
        out = U.copy()
        softmax_hessian_rows(P, out)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["binary", "multinomial"])
@pytest.mark.parametrize("eps", [1e-1, 1e-2, 1e-4])
def test_tangent_bound_is_valid_and_sharper(kind, eps, monkeypatch):
    # One shared penalty with an intercept: MAID bounds |B^T (q* - q)| through the tangent
    # A^-1 B (||A*^-1 B|| <= ||t|| + (||s|| + c(t)) / m) instead of ||B|| / m.
    if kind == "binary":
        X, y = load_breast_cancer(return_X_y=True)
        X, y = StandardScaler().fit_transform(X)[:150, :5], y[:150]
    else:
        X, y = load_iris(return_X_y=True)
    problem = logistic_cv_problem(X, y, cv=3)
    theta = np.array([0.3])
    exact, *_ = MAID().hypergradient(problem, theta, eps=1e-13, delta=1e-13)
    solver = MAID(inner_solver="fista")
    z, bound, _, _, certified = solver.hypergradient(problem, theta, eps=eps, delta=eps)
    assert certified
    assert np.linalg.norm(z - exact) <= bound
    # Without jvp_theta the bound falls back to ||B|| / m: valid, and looser.
    from mmopt.bilevel import LogisticLowerLevel

    monkeypatch.setattr(LogisticLowerLevel, "jvp_theta", lambda self, x, theta, d: None)
    plain = MAID(inner_solver="fista")
    z_plain, bound_plain, *_ = plain.hypergradient(problem, theta, eps=eps, delta=eps)
    np.testing.assert_allclose(z_plain, z, rtol=1e-12, atol=1e-15)
    assert np.linalg.norm(z_plain - exact) <= bound_plain
    assert bound <= bound_plain
    if eps <= 1e-4:  # far from x* the change of A along t can make T the larger one
        assert bound < 0.8 * bound_plain
