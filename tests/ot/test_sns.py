import numpy as np
import pytest

from mmopt.ot import OTProblem, SinkhornNewtonSparse, sinkhorn, sinkhorn_newton_sparse
from mmopt.ot.sns import _sparsify


def _clouds(seed, n=60, m=50):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 2)), rng.standard_normal((m, 2))
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    return rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m)), C / C.max()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("reg", [2e-3, 1e-3])
def test_plan_equals_converged_sinkhorn(seed, reg):
    a, b, C = _clouds(seed, n=40, m=35)
    sns = sinkhorn_newton_sparse(a, b, C, reg, tol=1e-11, max_iter=50_000)
    ref = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=200_000, method="log")
    assert sns.success and sns.n_newton > 0
    np.testing.assert_allclose(sns.plan, ref.plan, atol=1e-8)
    assert sns.marginal_error <= 1e-10
    # Newton steps need far fewer iterations than Sinkhorn for the same accuracy.
    assert sns.nit < ref.nit / 3


@pytest.mark.parametrize("linear_solver", ["cg", "direct"])
def test_history_records_the_newton_stage(linear_solver):
    a, b, C = _clouds(2)
    res = sinkhorn_newton_sparse(a, b, C, 1e-3, tol=1e-10, max_iter=50_000,
                                 linear_solver=linear_solver)
    newton = res.history["newton"] == 1.0
    assert res.n_newton >= 1
    assert newton.sum() == res.n_newton and (~newton).sum() == res.n_sinkhorn
    if linear_solver == "cg":
        assert (res.history["cg_iterations"][newton] >= 1).all()
    else:
        assert (res.history["cg_iterations"][newton] == 0).all()
    density = res.history["hessian_density"][newton]
    assert ((density > 0) & (density <= 1)).all()
    # Each Newton step is an ascent step of the dual.
    fun = res.history["fun"]
    assert np.all(np.diff(fun[np.flatnonzero(newton)[0] - 1 :]) >= -1e-12)


def test_auto_keeps_sinkhorn_at_large_reg():
    a, b, C = _clouds(3)
    res = sinkhorn_newton_sparse(a, b, C, 5e-2)
    assert res.n_newton == 0 and res.success
    forced = sinkhorn_newton_sparse(a, b, C, 5e-2, newton="always", tol=1e-10)
    assert forced.n_newton > 0
    np.testing.assert_allclose(forced.plan, res.plan, atol=1e-8)


def test_sparsify_drops_at_most_the_budget_per_row_and_column():
    rng = np.random.default_rng(4)
    plan = rng.random((20, 30)) ** 4
    budget = 0.05
    S = _sparsify(plan, budget, budget).toarray()
    dropped = plan - S
    assert (dropped >= 0).all()
    # An entry is dropped only when both its row and its column drop it, so each row's and
    # each column's dropped mass stays within the budget.
    assert (dropped.sum(axis=1) <= budget + 1e-12).all()
    assert (dropped.sum(axis=0) <= budget + 1e-12).all()
    # The largest entry of every row survives.
    assert (S[np.arange(20), plan.argmax(axis=1)] > 0).all()


def test_bad_options():
    problem = OTProblem([], [], np.ones((3, 3)) - np.eye(3), 1e-3)
    for option, value in (("newton", "sometimes"), ("nu", 2.0), ("cg_tol", 0.0), ("max_cg", 0),
                          ("linear_solver", "qr")):
        with pytest.raises((ValueError, TypeError), match=option):
            SinkhornNewtonSparse(**{option: value}).solve(problem)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparsify_keeps_what_the_sorted_rule_keeps(seed):
    # The binned O(nm) selection drops a subset of what the exact rule (sort each row and
    # column, drop the smallest entries while their total stays within the budget) drops.
    rng = np.random.default_rng(seed)
    plan = np.exp(5 * rng.normal(size=(40, 50)))
    plan /= plan.sum()
    budget = 0.02 / 40
    exact_keep = np.zeros(plan.shape, dtype=bool)
    for axis in (1, 0):
        values = plan if axis == 1 else plan.T
        order = np.argsort(values, axis=1)
        cumulative = np.cumsum(np.take_along_axis(values, order, axis=1), axis=1)
        kept = np.zeros(values.shape, dtype=bool)
        np.put_along_axis(kept, order, cumulative > budget, axis=1)
        exact_keep |= kept if axis == 1 else kept.T
    ours = _sparsify(plan, budget, budget).toarray() > 0
    assert np.all(ours[exact_keep])
    assert ours.sum() < plan.size  # it does drop something
