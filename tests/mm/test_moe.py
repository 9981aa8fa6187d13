"""Mixtures of experts: the simulator, EM (monotone, parameter recovery) and the estimator."""

import warnings

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression

from mmopt.datasets import make_moe_regression
from mmopt.mm import MixtureOfExperts
from mmopt.mm.moe import _design, fit_gates


def match_experts(coef, intercept, true_coef, true_intercept):
    """Permutation of the fitted experts closest to the true ones (Hungarian matching)."""
    fitted = np.column_stack([intercept, coef])
    truth = np.column_stack([true_intercept, true_coef])
    cost = ((fitted[:, None, :] - truth[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    order = np.empty_like(cols)
    order[cols] = rows
    return order


def true_gates(X, truth):
    logits = X @ truth.gate_coef.T + truth.gate_intercept
    P = np.exp(logits - logits.max(axis=1, keepdims=True))
    return P / P.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    return make_moe_regression(3000, 2, 3, noise=0.3, random_state=1)


@pytest.fixture(scope="module")
def fitted(data):
    X, y, _ = data
    return MixtureOfExperts(3, n_init=2, random_state=0).fit(X, y)


def test_simulator_follows_its_parameters():
    X, y, truth = make_moe_regression(20000, 2, 3, noise=0.5, random_state=0)
    # Labels follow the gates: their frequencies match the mean gate probabilities.
    freq = np.bincount(truth.labels, minlength=3) / len(y)
    assert np.allclose(freq, true_gates(X, truth).mean(axis=0), atol=0.015)
    for k in range(3):
        mask = truth.labels == k
        beta = np.linalg.lstsq(_design(X[mask]), y[mask], rcond=None)[0]
        assert np.allclose(beta, np.r_[truth.intercept[k], truth.coef[k]], atol=0.05)
        residual = y[mask] - _design(X[mask]) @ beta
        assert abs(residual.std() / truth.sigma[k] - 1) < 0.05
    assert np.all(truth.gate_coef[-1] == 0) and truth.gate_intercept[-1] == 0


def test_simulator_rejects_bad_arguments(fuzz):
    fuzz.raises_naming(make_moe_regression, "n_experts", 10, 1, 0)
    fuzz.raises_naming(make_moe_regression, "noise", 10, 1, 2, noise=-1.0)
    fuzz.raises_naming(make_moe_regression, "random_state", 10, random_state="x")


def test_log_likelihood_matches_scipy_reference(data, fitted):
    X, y, _ = data
    gates = fitted.predict_proba(X)
    means = fitted.intercept_ + X @ fitted.coef_.T
    density = (gates * norm.pdf(y[:, None], means, np.sqrt(fitted.variances_))).sum(axis=1)
    assert np.isclose(fitted.score(X, y), np.mean(np.log(density)), rtol=1e-10)
    assert np.isclose(fitted.log_likelihood_, np.mean(np.log(density)), rtol=1e-10)
    assert np.allclose(fitted.predict(X), (gates * means).sum(axis=1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_log_likelihood_never_decreases(seed):
    X, y, _ = make_moe_regression(400, 1, 3, noise=0.5, random_state=seed)
    moe = MixtureOfExperts(3, n_init=1, random_state=seed, tol=1e-10, max_iter=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        moe.fit(X, y)
    negative_ll = moe.result_.history["fun"]
    assert len(negative_ll) > 3
    assert np.all(np.diff(negative_ll) <= 1e-12 * np.abs(negative_ll[1:]))


def test_recovers_the_simulated_parameters(data, fitted):
    X, y, truth = data
    order = match_experts(fitted.coef_, fitted.intercept_, truth.coef, truth.intercept)
    assert np.abs(fitted.coef_[order] - truth.coef).max() < 0.1
    assert np.abs(fitted.intercept_[order] - truth.intercept).max() < 0.1
    assert np.allclose(np.sqrt(fitted.variances_[order]), truth.sigma, rtol=0.1)
    gates = fitted.predict_proba(X)[:, order]
    assert np.abs(gates - true_gates(X, truth)).mean() < 0.03
    # Better than the truth on its own training data (it is the maximum likelihood).
    true_density = (true_gates(X, truth) * norm.pdf(
        y[:, None], truth.intercept + X @ truth.coef.T, truth.sigma)).sum(axis=1)
    assert fitted.log_likelihood_ >= np.mean(np.log(true_density)) - 1e-9


def test_gate_fit_matches_scikit_learn_multinomial_logistic_regression():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 2))
    labels = np.argmax(X @ rng.standard_normal((2, 3)) + rng.gumbel(size=(300, 3)), axis=1)
    R = np.eye(3)[labels]
    W = fit_gates(_design(X), R, np.zeros((3, 3)), tol=1e-12)
    reference = LogisticRegression(penalty=None, tol=1e-12, max_iter=10000).fit(X, labels)
    ref = np.column_stack([reference.intercept_, reference.coef_])
    assert np.allclose(W, ref - ref[-1], atol=1e-5)


def test_soft_weights_gate_fit_has_zero_gradient():
    rng = np.random.default_rng(1)
    Z = _design(rng.standard_normal((200, 2)))
    R = rng.random((200, 4))
    W = fit_gates(Z, R, np.zeros((4, 3)), tol=1e-12)
    logits = Z @ W.T
    P = np.exp(logits - logits.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    gradient = (R - R.sum(axis=1, keepdims=True) * P).T @ Z
    assert np.abs(gradient).max() < 1e-6 * R.sum()


def test_gate_fit_stops_at_rounding_level_without_line_searches(monkeypatch):
    # From the optimum and with tol=0 only rounding is left to lower: Newton's predicted
    # decrease stops the fit at once, where the line search would spend all its trials on
    # every M-step (what made one start of a 5x10^5-row shard 4x slower).
    import mmopt.mm.moe as moe

    rng = np.random.default_rng(2)
    Z = _design(rng.standard_normal((5000, 3)))
    R = rng.random((5000, 3))
    W = fit_gates(Z, R, np.zeros((3, 4)), tol=1e-12)
    calls = []
    original = moe._gate_objective
    monkeypatch.setattr(moe, "_gate_objective",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    again = fit_gates(Z, R, W, tol=0.0)
    assert len(calls) <= 3
    np.testing.assert_allclose(again, W, atol=1e-9)


def test_bad_options_and_inputs(fuzz, data):
    X, y, _ = data
    for option, value in [("n_experts", 0), ("tol", -1.0), ("n_init", 0), ("max_iter", 0)]:
        fuzz.raises_naming(MixtureOfExperts(**{option: value}).fit, option, X, y)
    for name in ("nan", "string", "none"):
        bad = fuzz.BAD_ARRAYS[name]
        fuzz.raises_naming(MixtureOfExperts(2).fit, "X", bad, y[:2])
    before = fuzz.snapshot(X, y)
    MixtureOfExperts(2, n_init=1, max_iter=5, random_state=0).fit(X, y)
    fuzz.assert_unchanged(before, X, y)


def test_solver_state_not_kept_and_refit_is_deterministic(data):
    X, y, _ = data
    moe = MixtureOfExperts(2, n_init=2, max_iter=30, random_state=3)
    params = moe.get_params()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = moe.fit(X, y).coef_.copy()
        second = moe.fit(X, y).coef_
    assert moe.get_params() == params
    assert np.array_equal(first, second)


@pytest.mark.parametrize("seed", range(6))
def test_distinct_rows_matches_unique(seed):
    # Data whose first rows repeat one row (the short check cannot decide) and data with
    # enough distinct rows at the start, against np.unique's count.
    from mmopt.mm.moe import _distinct_rows

    rng = np.random.default_rng(seed)
    n = 2000
    data = np.repeat(rng.integers(0, 3, (n // 50, 2)).astype(float), 50, axis=0)
    if seed % 2:
        data = data[rng.permutation(n)]
    for at_most in (1, 2, 3, 5, 20):
        expected = min(at_most, len(np.unique(data, axis=0)))
        assert _distinct_rows(data, at_most) == expected
    assert _distinct_rows(np.ones((500, 3)), 4) == 1


def test_initial_responsibilities_are_normalized_hard_labels():
    from mmopt.mm.moe import _initial_responsibilities

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-5, 1, (300, 2)), rng.normal(5, 1, (300, 2))])
    y = X.sum(axis=1)
    R = _initial_responsibilities(X, y, 3, np.random.RandomState(0))
    np.testing.assert_allclose(R.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    top = R.max(axis=1)
    np.testing.assert_allclose(top, 1.0 / 1.002)
    np.testing.assert_allclose(np.sort(R, axis=1)[:, :2], 1e-3 / 1.002)
    assert set(np.argmax(R[:300], axis=1)).isdisjoint(np.argmax(R[300:], axis=1))
