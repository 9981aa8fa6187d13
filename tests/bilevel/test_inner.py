"""Lower-level solvers (mmopt/bilevel/inner.py) against closed forms and scipy."""

import numpy as np
import pytest
import scipy.optimize
from scipy.special import expit

from mmopt._core.result import InnerSolveResult
from mmopt.bilevel import LowerLevel
from mmopt.bilevel.inner import fista, newton_cg


def _logistic_ridge(seed=0, n=40, d=6, lipschitz=True, hessian=False):
    """Phi(x, theta) = sum log(1 + exp(-y a.x)) + exp(theta) |x|^2 / 2, with a counted hvp."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    y = np.sign(rng.standard_normal(n))
    calls = {"hvp": 0}

    def value(x, t):
        return float(np.sum(np.logaddexp(0, -y * (A @ x))) + 0.5 * np.exp(t[0]) * x @ x)

    def grad(x, t):
        s = -y * expit(-y * (A @ x))
        return A.T @ s + np.exp(t[0]) * x

    def weights(x):
        p = expit(A @ x)
        return p * (1 - p)

    def hvp(x, t, v):
        calls["hvp"] += 1
        return A.T @ (weights(x) * (A @ v)) + np.exp(t[0]) * v

    extra = {}
    if lipschitz:
        extra["lipschitz"] = lambda t: 0.25 * np.linalg.norm(A, 2) ** 2 + np.exp(t[0])
    lower = LowerLevel(value, grad, hvp, lambda x, t, q: np.zeros(1),
                       lambda t: np.exp(t[0]), np.zeros(d), **extra)
    if hessian:
        lower.hessian = lambda x, t: A.T @ (weights(x)[:, None] * A) + np.exp(t[0]) * np.eye(d)
    return lower, value, grad, calls


def _reference(value, grad, theta, d):
    res = scipy.optimize.minimize(value, np.zeros(d), args=(theta,), jac=grad,
                                  method="BFGS", options={"gtol": 1e-12})
    return res.x


@pytest.mark.parametrize("lipschitz", [True, False])
def test_fista_reaches_the_requested_gradient_norm(lipschitz):
    lower, value, grad, _ = _logistic_ridge(lipschitz=lipschitz)
    theta = np.array([-1.0])
    out = fista(lower, lower.x0, theta, 1e-9)
    assert isinstance(out, InnerSolveResult)
    assert out.converged and out.n_matvec == 0
    assert out.residual == pytest.approx(np.linalg.norm(grad(out.x, theta)))
    assert out.residual <= 1e-9
    np.testing.assert_allclose(out.x, _reference(value, grad, theta, 6), atol=1e-7)


def test_fista_reports_non_convergence_at_max_iter():
    lower, *_ = _logistic_ridge(lipschitz=False)
    out = fista(lower, lower.x0, np.array([-3.0]), 1e-14, max_iter=5)
    assert not out.converged and out.nit == 5


@pytest.mark.parametrize("hessian", [False, True])
def test_newton_cg_matches_a_reference_and_counts_products(hessian):
    lower, value, grad, calls = _logistic_ridge(hessian=hessian)
    theta = np.array([-2.0])
    x0 = np.full(6, 3.0)  # far from the minimizer: the Armijo search has work to do
    out = newton_cg(lower, x0, theta, 1e-10)
    assert out.converged and out.residual <= 1e-10
    np.testing.assert_allclose(out.x, _reference(value, grad, theta, 6), atol=1e-8)
    # Each Hessian-vector product is counted; the dense path spends none.
    assert out.n_matvec == calls["hvp"]
    assert (out.n_matvec == 0) == hessian


def test_newton_cg_line_search_keeps_the_values_decreasing():
    lower, value, _, _ = _logistic_ridge()
    theta = np.array([-4.0])
    values = [value(newton_cg(lower, np.full(6, 5.0), theta, 0.0, max_iter=k).x, theta)
              for k in range(6)]
    assert all(b <= a for a, b in zip(values, values[1:]))
