"""The transportation-divergence reduction of mixtures of experts (MM on the shared loop)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from scipy.optimize import minimize
from scipy.stats import norm

from mmopt.datasets import make_moe_regression
from mmopt.mm import MixtureOfExperts, MixtureReductionProblem, aggregate_mixtures


@pytest.fixture(scope="module")
def local_models():
    X, y, truth = make_moe_regression(3000, 1, 3, noise=0.3, random_state=4)
    shards = np.array_split(np.arange(3000), 3)
    models = [MixtureOfExperts(3, n_init=1, random_state=0).fit(X[i], y[i]) for i in shards]
    support = np.vstack([X[i][:80] for i in shards])
    return models, support, X, y, truth


def test_single_model_is_returned_unchanged(local_models):
    models, support, X, _, _ = local_models
    res = aggregate_mixtures(models[:1], support, random_state=0)
    assert res.fun == 0.0 and res.status == 0
    local = models[0]
    order = np.argsort(res.model.intercept_)
    ref = np.argsort(local.intercept_)
    assert np.allclose(res.model.coef_[order], local.coef_[ref], atol=1e-12)
    assert np.allclose(res.model.variances_[order], local.variances_[ref], rtol=1e-12)
    assert np.allclose(res.model.predict_proba(X)[:, order], local.predict_proba(X)[:, ref],
                       atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_single_model_divergence_is_exactly_zero(seed):
    # The reduced experts' variances are the local ones exactly (not up to rounding), so
    # the one-model divergence is zero on any data, not only where rounding happens to
    # cancel.
    K = 2 + seed % 3
    X, y, _ = make_moe_regression(1500, 1 + seed % 2, K, noise=0.3, random_state=seed)
    model = MixtureOfExperts(K, n_init=1, random_state=seed).fit(X, y)
    res = aggregate_mixtures([model], X[:150], random_state=seed)
    assert res.fun == 0.0
    np.testing.assert_array_equal(np.sort(res.model.variances_), np.sort(model.variances_))


def test_kl_matches_numerical_integration(local_models):
    models, support, *_ = local_models
    problem = MixtureReductionProblem(models, support[:5], 2, random_state=0)
    x = problem.initial_point()
    kl = problem.kl_divergences(x)
    B, v = problem.unpack(x)
    s, l, k = 3, 4, 1
    mu_l = problem.local_means[s, l]
    sd_l = np.sqrt(problem.local_variances[l])
    mu_k, sd_k = problem.Z[s] @ B[k], np.sqrt(v[k])

    def integrand(t):
        return norm.pdf(t, mu_l, sd_l) * (norm.logpdf(t, mu_l, sd_l) - norm.logpdf(t, mu_k, sd_k))

    reference = quad(integrand, mu_l - 12 * sd_l, mu_l + 12 * sd_l, epsabs=1e-12)[0]
    assert np.isclose(kl[s, l, k], reference, rtol=1e-7, atol=1e-10)


def test_expert_step_minimizes_the_surrogate(local_models):
    models, support, *_ = local_models
    problem = MixtureReductionProblem(models, support, 2, random_state=1)
    x = problem.initial_point()
    assign = problem.assignment(x)
    kl_at = problem.kl_divergences

    def surrogate(z):
        z = np.r_[z[:-2], np.exp(z[-2:])]
        return float(np.sum(problem.mass * np.take_along_axis(
            kl_at(z), assign[:, :, None], 2)[..., 0]))

    step = problem.surrogate_minimizer(x)
    start = np.r_[x[:-2], np.log(x[-2:])]
    generic = minimize(surrogate, start, method="BFGS", options={"gtol": 1e-10})
    closed = np.r_[step[:-2], np.log(step[-2:])]
    assert surrogate(closed) <= generic.fun + 1e-10
    assert np.allclose(closed, generic.x, atol=1e-4)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n_experts=st.integers(1, 4))
def test_divergence_never_increases(local_models, seed, n_experts):
    models, support, *_ = local_models
    problem = MixtureReductionProblem(models, support, n_experts, random_state=seed)
    rng = np.random.default_rng(seed)
    # A poor start: several plan changes before the fixed point.
    x0 = problem.initial_point() + rng.normal(0, 2.0, problem.initial_point().shape)
    x0[-n_experts:] = rng.uniform(0.01, 5.0, n_experts)
    res = problem.solve(anderson=False, stopping="objective", tol=1e-12, max_iter=100, x0=x0)
    fun = res.history["fun"]
    assert np.all(np.diff(fun) <= 1e-12 * np.abs(fun[:-1]))
    assert res.fun <= problem.objective(x0)


def test_reduction_recovers_the_truth(local_models):
    models, support, X, y, truth = local_models
    res = aggregate_mixtures(models, support, weights=[1000] * 3, random_state=0)
    order = np.argsort(res.model.intercept_)
    ref = np.argsort(truth.intercept)
    assert np.abs(res.model.intercept_[order] - truth.intercept[ref]).max() < 0.15
    assert np.abs(res.model.coef_[order] - truth.coef[ref]).max() < 0.15
    assert res.model.score(X, y) > np.mean([m.score(X, y) for m in models]) - 0.02


def test_bad_inputs(fuzz, local_models):
    models, support, *_ = local_models
    fuzz.raises_naming(aggregate_mixtures, "models", [object()], support)
    fuzz.raises_naming(aggregate_mixtures, "models", models[0], support)
    fuzz.raises_naming(aggregate_mixtures, "support", models, support[:, [0, 0]])
    fuzz.raises_naming(aggregate_mixtures, "support", models, fuzz.BAD_ARRAYS["nan"])
    fuzz.raises_naming(aggregate_mixtures, "weights", models, support, [1.0, 2.0])
    fuzz.raises_naming(aggregate_mixtures, "weights", models, support, [1.0, -2.0, 1.0])
    fuzz.raises_naming(aggregate_mixtures, "n_experts", models, support, n_experts=0)
    before = fuzz.snapshot(support)
    aggregate_mixtures(models, support, random_state=0)
    fuzz.assert_unchanged(before, support)


def test_tiny_noise_free_data_at_the_defaults():
    # Every shard fits the same line (to rounding) with all its experts: the estimator checks'
    # 30-sample data used to leave a k-means cluster empty (ZeroDivisionError).
    import warnings

    from mmopt.mm import DistributedMixtureOfExperts

    rng = np.random.default_rng(0)
    X = rng.random((30, 3))
    y = X @ np.array([1.0, 2.0, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor a k-means warning about duplicate points
        fitted = DistributedMixtureOfExperts(random_state=0).fit(X, y)
    assert np.abs(fitted.predict(X) - y).max() < 1e-8


def test_empty_kmeans_cluster_repeats_a_found_one(local_models, monkeypatch):
    # k-means may find fewer clusters than asked (nearly equal experts): every reduced expert
    # then comes from a non-empty cluster, never from an empty average.
    import mmopt.mm.moe_reduction as reduction

    class OneCluster:
        def __init__(self, n_clusters, **kwargs):
            self.n_clusters = n_clusters

        def fit(self, features, sample_weight=None):
            self.labels_ = np.zeros(len(features), dtype=int)
            return self

    models, support, *_ = local_models
    monkeypatch.setattr(reduction, "KMeans", OneCluster)
    problem = MixtureReductionProblem(models, support, n_experts=3, random_state=0)
    B, v = problem.unpack(problem.initial_point())
    assert np.isfinite(B).all() and np.isfinite(v).all()
    assert np.allclose(B, B[0]) and np.allclose(v, v[0])


@pytest.mark.parametrize("seed", [0, 2])
def test_one_sample_shards_at_the_defaults(seed):
    # Two samples, two shards of one sample: each local fit has massless experts with the
    # variance floor; their k-means cluster used to average to a zero variance (NaN
    # divergence at the start).
    from mmopt.mm import DistributedMixtureOfExperts

    rng = np.random.default_rng(seed)
    X, y = rng.random((2, 1)), rng.standard_normal(2)
    fitted = DistributedMixtureOfExperts(random_state=seed).fit(X, y)
    assert fitted.reduction_.status == 0 and np.isfinite(fitted.reduction_.fun)
    assert np.all(fitted.variances_ > 0) and np.all(np.isfinite(fitted.predict(X)))
