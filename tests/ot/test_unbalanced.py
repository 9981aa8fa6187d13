import math
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize

import mmopt
from mmopt import ConvergenceWarning
from mmopt.ot import UnbalancedOTProblem, UnbalancedSinkhorn, unbalanced_sinkhorn


def _measures(seed, n=20, m=25, mass_b=1.4):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 2)), rng.standard_normal((m, 2)) + 0.5
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    a = rng.dirichlet(np.ones(n))
    b = mass_b * rng.dirichlet(np.ones(m))
    return a, b, C / C.max()


RELAXATIONS = [1.0, (0.3, 2.0), (np.inf, 0.5), (0.5, np.inf)]


@pytest.mark.parametrize("reg_type", ["kl", "entropy"])
@pytest.mark.parametrize("reg", [0.2, 0.05, 0.02])
@pytest.mark.parametrize("reg_m", RELAXATIONS)
@pytest.mark.parametrize("method", ["log", "scaling", "stabilized"])
def test_plan_matches_pot(reg_type, reg, reg_m, method):
    ot = pytest.importorskip("ot")
    a, b, C = _measures(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, log = ot.unbalanced.sinkhorn_unbalanced(
            a, b, C, reg, reg_m, reg_type=reg_type, stopThr=1e-15, numItermax=100_000,
            log=True,
        )
    assert log["err"][-1] < 1e-13  # POT converged
    res = unbalanced_sinkhorn(
        a, b, C, reg, reg_m, reg_type=reg_type, method=method, tol=1e-13, max_iter=100_000
    )
    assert res.success
    np.testing.assert_allclose(res.plan, reference, rtol=0, atol=1e-8)
    # Strong duality: the dual value equals the primal objective at the optimum.
    assert res.fun == pytest.approx(res.objective, rel=1e-9, abs=1e-11)


def _first_order_residual(plan, a, b, C, reg, reg_m, reg_type):
    """Gradient of the primal objective at ``plan``, minus a row and a column constant for a
    hard marginal (its multiplier); zero at the optimum. Uses only the plan."""
    rho_a, rho_b = reg_m
    c = np.outer(a, b) if reg_type == "kl" else np.ones_like(C)
    grad = C + reg * np.log(plan / c)
    if not math.isinf(rho_a):
        grad = grad + rho_a * np.log(plan.sum(1) / a)[:, None]
    if not math.isinf(rho_b):
        grad = grad + rho_b * np.log(plan.sum(0) / b)[None, :]
    if math.isinf(rho_a):
        grad = grad - grad.mean(axis=1, keepdims=True)
    if math.isinf(rho_b):
        grad = grad - grad.mean(axis=0, keepdims=True)
    return np.abs(grad).max()


@pytest.mark.parametrize("reg_type", ["kl", "entropy"])
@pytest.mark.parametrize("reg_m", RELAXATIONS)
def test_first_order_conditions(reg_type, reg_m):
    a, b, C = _measures(1, n=15, m=12)
    reg = 0.05
    res = unbalanced_sinkhorn(a, b, C, reg, reg_m, reg_type=reg_type, tol=1e-13)
    rho = reg_m if isinstance(reg_m, tuple) else (reg_m, reg_m)
    assert _first_order_residual(res.plan, a, b, C, reg, rho, reg_type) < 1e-8
    if math.isinf(rho[0]):
        np.testing.assert_allclose(res.row_marginal, a, atol=1e-12)
    if math.isinf(rho[1]):
        np.testing.assert_allclose(res.col_marginal, b, atol=1e-12)


def test_dual_solved_by_scipy_lbfgs():
    # The dual written out independently and maximized by L-BFGS.
    a, b, C = _measures(2, n=4, m=5, mass_b=2.0)
    reg, rho_a, rho_b = 0.1, 0.7, 1.5

    def negative_dual(z):
        f, g = z[:4], z[4:]
        plan = np.outer(a, b) * np.exp((f[:, None] + g[None, :] - C) / reg)
        value = (-rho_a * a @ (np.exp(-f / rho_a) - 1) - rho_b * b @ (np.exp(-g / rho_b) - 1)
                 - reg * (plan.sum() - a.sum() * b.sum()))
        grad_f = a * np.exp(-f / rho_a) - plan.sum(1)
        grad_g = b * np.exp(-g / rho_b) - plan.sum(0)
        return -value, -np.concatenate([grad_f, grad_g])

    opt = minimize(negative_dual, np.zeros(9), jac=True, method="L-BFGS-B",
                   options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000})
    res = unbalanced_sinkhorn(a, b, C, reg, (rho_a, rho_b), tol=1e-14)
    np.testing.assert_allclose(res.x, opt.x, atol=1e-6)
    assert res.fun == pytest.approx(-opt.fun, rel=1e-10)


def test_translation_steps_cut_iterations_and_agree():
    a, b, C = _measures(3, n=40, m=50)
    plain = unbalanced_sinkhorn(a, b, C, 0.01, 1.0, translation_invariant=False, tol=1e-11)
    fast = unbalanced_sinkhorn(a, b, C, 0.01, 1.0, tol=1e-11)
    assert plain.success and fast.success
    assert fast.nit < plain.nit / 2
    np.testing.assert_allclose(fast.plan, plain.plan, atol=1e-10)


def test_dual_increases_monotonically():
    a, b, C = _measures(4)
    res = unbalanced_sinkhorn(a, b, C, 0.01, (0.5, 2.0), tol=1e-12)
    fun = res.history["fun"]
    assert np.all(np.diff(fun) >= -1e-12 * np.abs(fun[1:]))


def test_small_reg_converges():
    # reg 1e-4 on a cost in [0, 1]: kernel entries down to exp(-1e4) (POT's scaling
    # iteration underflows here); stabilized scaling reaches the tolerance.
    a, b, C = _measures(5, n=60, m=50)
    res = unbalanced_sinkhorn(a, b, C, 1e-4, 1.0, tol=1e-10, max_iter=50_000)
    assert res.success and res.method == "stabilized"
    assert np.nansum(res.history["newton"]) >= 1  # the Newton stage finished the solve
    assert res.optimality_error < 1e-8
    assert np.all(np.isfinite(res.plan)) and res.transported_mass > 0.5
    # The gradient of the dual recomputed from the potentials with scipy's logsumexp.
    from scipy.special import logsumexp

    log_plan = (res.f[:, None] + res.g[None, :] - C) / 1e-4 + np.log(np.outer(a, b))
    rows, cols = np.exp(logsumexp(log_plan, axis=1)), np.exp(logsumexp(log_plan, axis=0))
    assert np.abs(rows - a * np.exp(-res.f)).sum() < 1e-9
    assert np.abs(cols - b * np.exp(-res.g)).sum() < 1e-9
    # Plain scaling is far slower here.
    with pytest.warns(ConvergenceWarning):
        plain = unbalanced_sinkhorn(a, b, C, 1e-4, 1.0, tol=1e-10, newton=False,
                                    max_iter=max(2 * res.nit, 500))
    assert plain.residual > 1e-9


@pytest.mark.parametrize("reg_type", ["kl", "entropy"])
def test_zero_mass_entries_get_zero_plan(reg_type):
    a, b, C = _measures(6, n=8, m=9)
    a = a.copy()
    a[[1, 4]] = 0.0
    res = unbalanced_sinkhorn(a, b, C, 0.05, 1.0, reg_type=reg_type, tol=1e-13)
    assert res.success
    assert np.all(res.plan[[1, 4]] == 0) and np.all(np.isneginf(res.f[[1, 4]]))
    ot = pytest.importorskip("ot")
    # POT's "kl" path divides 0 by 0 on such rows: compare on the rows of positive mass.
    keep = a > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = ot.unbalanced.sinkhorn_unbalanced(
            a[keep], b, C[keep], 0.05, 1.0, reg_type=reg_type, stopThr=1e-15,
            numItermax=100_000,
        )
    np.testing.assert_allclose(res.plan[keep], reference, atol=1e-8)


def test_result_fields_are_consistent():
    a, b, C = _measures(7)
    res = unbalanced_sinkhorn(a, b, C, 0.05, (0.5, 1.0), tol=1e-12)
    plan = res.plan
    assert res.transported_mass == pytest.approx(plan.sum())
    np.testing.assert_allclose(res.row_marginal, plan.sum(1))
    kl_a = np.sum(plan.sum(1) * np.log(plan.sum(1) / a)) - plan.sum() + a.sum()
    assert res.marginal_kl[0] == pytest.approx(kl_a, rel=1e-10)
    assert res.marginal_l1[1] == pytest.approx(np.abs(plan.sum(0) - b).sum())
    assert res.transport_cost == pytest.approx(np.sum(plan * C))
    assert res.optimality_error < 1e-10
    # Row sums follow the optimality condition P 1 = a exp(-f / rho_1).
    np.testing.assert_allclose(res.row_marginal, a * np.exp(-res.f / 0.5), atol=1e-11)


def test_warm_start_needs_fewer_iterations():
    a, b, C = _measures(8)
    cold = unbalanced_sinkhorn(a, b, C, 0.02, 1.0, tol=1e-11)
    warm = unbalanced_sinkhorn(a, b, C, 0.02, 1.0, tol=1e-11, x0=cold.x)
    assert warm.nit <= 2 and np.allclose(warm.plan, cold.plan, atol=1e-10)


def test_max_iter_warns():
    a, b, C = _measures(9)
    with pytest.warns(ConvergenceWarning):
        res = unbalanced_sinkhorn(a, b, C, 0.01, 1.0, max_iter=3)
    assert res.status == 1 and np.all(np.isfinite(res.plan))


def test_inputs_are_not_mutated(fuzz):
    a, b, C = _measures(10)
    before = fuzz.snapshot(a, b, C)
    unbalanced_sinkhorn(a, b, C, 0.05, 1.0)
    fuzz.assert_unchanged(before, a, b, C)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"reg_m": -1.0}, "reg_m"),
        ({"reg_m": np.nan}, "reg_m"),
        ({"reg_m": (1.0, 2.0, 3.0)}, "reg_m"),
        ({"reg_m": "big"}, "reg_m"),
        ({"reg_m": None}, "reg_m"),
        ({"reg": 0.0}, "reg"),
        ({"reg": "x"}, "reg"),
        ({"reg_type": "l2"}, "reg_type"),
        ({"a": np.ones(3)}, "a"),
        ({"b": -np.ones(5)}, "b"),
        ({"C": np.ones(4)}, "C"),
        ({"reg_m": np.inf, "b": np.full(5, 1.0)}, "mass"),
    ],
)
def test_bad_inputs_name_the_argument(fuzz, kwargs, name):
    args = {"a": np.full(4, 0.25), "b": np.full(5, 0.2), "C": np.ones((4, 5)), "reg": 0.1,
            "reg_m": 1.0}
    args.update(kwargs)
    fuzz.raises_naming(unbalanced_sinkhorn, name, **args)


@pytest.mark.parametrize(
    "bad", ["ragged", "string", "object", "complex", "nan", "inf", "empty", "none"]
)
@pytest.mark.parametrize("which", ["a", "C"])
def test_bad_arrays(fuzz, bad, which):
    args = {"a": np.full(3, 1 / 3), "b": [], "C": np.ones((3, 4)), "reg": 0.1, "reg_m": 1.0}
    args[which] = fuzz.BAD_ARRAYS[bad]
    if which == "a" and bad in ("empty", "none"):
        return  # empty (or None) a means uniform, as in POT
    fuzz.raises_naming(unbalanced_sinkhorn, which, **args)


def test_solve_front_door_and_repr():
    a, b, C = _measures(11, n=5, m=6)
    problem = UnbalancedOTProblem(a, b, C, 0.1, (1.0, np.inf))
    res = mmopt.solve(problem, tol=1e-12)
    assert res.solver == "unbalanced_sinkhorn" and res.success
    assert "reg_m=(1, inf)" in repr(problem)
    assert UnbalancedSinkhorn(method="log").solve(problem).success
