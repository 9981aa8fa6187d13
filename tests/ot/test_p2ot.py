import math

import numpy as np
import pytest

import mmopt
from mmopt.ot import P2OTProblem, ProgressivePartialOT, progressive_partial_ot, rho_schedule


def _cost(seed, n=120, k=5, scale=2.0):
    rng = np.random.default_rng(seed)
    logits = scale * rng.normal(size=(n, k))
    logits[:, 0] += 1.0  # an imbalanced prediction
    return -(logits - np.log(np.exp(logits).sum(1, keepdims=True)))


def _stationarity(res, C, rho, gamma, reg, prior):
    """Spread of the Lagrangian's gradient over the support, from the plan alone.

    At the optimum C_ij + reg log Q_ij + gamma log(q_j / (rho pi_j)) - reg log xi_i is the
    same constant for every (i, j) (the virtual column's multiplier); with gamma = inf the
    column term is a free multiplier, so the constant holds per column.
    """
    Q = res.plan
    n = Q.shape[0]
    xi = 1.0 / n - Q.sum(1)
    q = Q.sum(0)
    M = C + reg * np.log(Q) - reg * np.log(xi)[:, None]
    if not math.isinf(gamma):
        M = M + gamma * np.log(q / (rho * prior))[None, :]
    # Entries the check can resolve: xi = 1/n - Q 1 loses its digits to cancellation when
    # a sample is almost fully transported, and log Q its own when Q is denormal.
    ok = (Q > 1e-250) & (xi > 1e-6 / n)[:, None]
    if math.isinf(gamma):
        M = np.where(ok, M, np.nan)
        M = M - np.nanmean(M, axis=0, keepdims=True)
    return float(np.nanmax(np.where(ok, M, np.nan)) - np.nanmin(np.where(ok, M, np.nan)))


@pytest.mark.parametrize("rho", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("gamma", [1.0, 0.1, np.inf])
@pytest.mark.parametrize("prior", [None, "skewed"])
def test_constraints_and_kkt(rho, gamma, prior):
    C = _cost(0)
    n, k = C.shape
    pi = np.full(k, 1 / k) if prior is None else np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    reg = 0.1
    res = progressive_partial_ot(C, rho, gamma, reg, prior=None if prior is None else pi,
                                 tol=1e-13)
    assert res.success
    Q = res.plan
    assert np.all(Q >= 0)
    assert np.all(Q.sum(1) <= 1.0 / n + 1e-15)
    assert Q.sum() == pytest.approx(rho, abs=1e-12)
    np.testing.assert_allclose(Q.sum(1) + res.slack, 1.0 / n, atol=1e-13)
    assert _stationarity(res, C, rho, gamma, reg, pi) < 1e-8
    if math.isinf(gamma):
        np.testing.assert_allclose(Q.sum(0), rho * pi, atol=1e-12)
    # Strong duality.
    assert res.fun == pytest.approx(res.objective, abs=1e-10)


def test_matches_a_materialized_virtual_column():
    # The papers' algorithm written out with the virtual column as an extra column of the
    # kernel (scaling domain, plain NumPy): shares no code with the solver.
    C = _cost(1, n=40, k=4, scale=1.0)
    n, k = C.shape
    rho, gamma, reg = 0.4, 1.0, 0.2
    K = np.exp(-np.hstack([C, np.zeros((n, 1))]) / reg)
    a = np.full(n, 1 / n)
    b = np.concatenate([np.full(k, rho / k), [1 - rho]])
    power = np.concatenate([np.full(k, gamma / (gamma + reg)), [1.0]])
    u, v = np.ones(n), np.ones(k + 1)
    for _ in range(5000):
        u = a / (K @ v)
        v = (b / (K.T @ u)) ** power
    reference = (u[:, None] * K * v[None, :])[:, :k]
    # Columns-last order converges to the same fixed point; compare plans and masses.
    res = progressive_partial_ot(C, rho, gamma, reg, tol=1e-14)
    np.testing.assert_allclose(res.plan, reference, atol=1e-12)


def test_small_reg_is_stable():
    C = _cost(2, scale=5.0)
    res = progressive_partial_ot(C, 0.3, 1.0, 1e-3, tol=1e-10, max_iter=50_000)
    assert res.success and np.all(np.isfinite(res.plan))
    assert res.transported_mass == pytest.approx(0.3, abs=1e-10)
    assert np.all(res.plan.sum(1) <= 1 / C.shape[0] + 1e-15)


def test_confident_samples_are_transported_first():
    C = _cost(3)
    res = progressive_partial_ot(C, 0.2, 1.0, 0.1, tol=1e-12)
    confidence = (-C).max(axis=1)  # log of the largest softmax probability
    top = np.argsort(-res.transported)[:20]
    bottom = np.argsort(res.transported)[:20]
    assert confidence[top].mean() > confidence[bottom].mean()


def test_rho_one_transports_everything():
    C = _cost(4, n=30)
    res = progressive_partial_ot(C, 1.0, 1.0, 0.1, tol=1e-12)
    np.testing.assert_allclose(res.plan.sum(1), 1 / 30, atol=1e-12)
    assert np.all(res.slack == 0)


def test_zero_prior_cluster_gets_no_mass():
    C = _cost(5)
    prior = np.array([0.5, 0.5, 0.0, 0.0, 0.0])
    res = progressive_partial_ot(C, 0.5, 1.0, 0.1, prior=prior, tol=1e-12)
    assert res.success and np.all(res.plan[:, 2:] == 0)


def test_rho_schedule():
    t = np.arange(0, 101)
    rho = rho_schedule(t, 100, rho0=0.1)
    assert np.all(np.diff(rho) > 0) and rho[-1] == 1.0
    assert rho[0] == pytest.approx(0.1 + 0.9 * np.exp(-5.0))
    with pytest.raises(ValueError, match="t must"):
        rho_schedule(101, 100)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"rho": 0.0}, "rho"), ({"rho": 1.5}, "rho"), ({"gamma": -1.0}, "gamma"),
     ({"gamma": "a"}, "gamma"), ({"reg": 0.0}, "reg"), ({"prior": np.ones(3)}, "prior"),
     ({"prior": -np.ones(5)}, "prior"), ({"C": np.ones(5)}, "C")],
)
def test_bad_inputs(fuzz, kwargs, name):
    args = {"C": _cost(6, n=10), "rho": 0.5, "gamma": 1.0, "reg": 0.1}
    args.update(kwargs)
    fuzz.raises_naming(progressive_partial_ot, name, **args)


def test_inputs_unchanged_and_front_door(fuzz):
    C = _cost(7, n=20)
    before = fuzz.snapshot(C)
    res = mmopt.solve(P2OTProblem(C, 0.5), tol=1e-10)
    fuzz.assert_unchanged(before, C)
    assert res.solver == "p2ot" and res.success
    warm = ProgressivePartialOT(tol=1e-10).solve(P2OTProblem(C, 0.5), x0=res.x)
    assert warm.nit <= 2
