import numpy as np
import pytest

import mmopt
from mmopt.ot import OTProblem, SinkhornNewtonSparse, sinkhorn, sinkhorn_newton_sparse
from mmopt.ot._newton import next_damping


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


def test_bad_options():
    problem = OTProblem([], [], np.ones((3, 3)) - np.eye(3), 1e-3)
    for option, value in (("newton", "sometimes"), ("drop_budget", 2.0), ("cg_tol", 0.0),
                          ("max_cg", 0), ("linear_solver", "qr")):
        with pytest.raises((ValueError, TypeError), match=option):
            SinkhornNewtonSparse(**{option: value}).solve(problem)


def test_epsilon_scaling_reaches_the_same_plan_with_fewer_sinkhorn_iterations():
    a, b, C = _clouds(5, n=80, m=70)
    reg = 2e-4
    scaled = sinkhorn_newton_sparse(a, b, C, reg, tol=1e-10, max_iter=50_000)
    plain = sinkhorn_newton_sparse(a, b, C, reg, tol=1e-10, max_iter=50_000, reg_scaling=None)
    assert scaled.success and plain.success
    np.testing.assert_allclose(scaled.plan, plain.plan, atol=1e-8)
    assert scaled.n_sinkhorn < plain.n_sinkhorn
    levels = scaled.history["reg"]
    intermediate = scaled.history["intermediate"] == 1.0
    # The levels decrease from spread / 100 to reg; the iterates at reg come after them.
    assert levels[0] == pytest.approx((C.max() - C.min()) / 100)
    assert np.all(np.diff(levels) <= 0) and levels[-1] == reg
    assert intermediate[0] and not intermediate[-1]
    assert np.all(levels[intermediate] > reg) and np.all(levels[~intermediate] == reg)
    assert (plain.history["reg"] == reg).all() and not plain.history["intermediate"].any()


def test_stopped_during_epsilon_scaling_reports_the_problems_own_value():
    a, b, C = _clouds(6)
    reg = 1e-4
    with pytest.warns(mmopt.ConvergenceWarning):
        res = sinkhorn_newton_sparse(a, b, C, reg, max_iter=3)
    assert res.status == 1 and res.history["intermediate"][-1] == 1.0
    # Independently: the dual at reg of the returned potentials and their marginal error.
    with np.errstate(under="ignore"):
        plan = np.exp((res.f[:, None] + res.g[None, :] - C) / reg)
    assert res.fun == pytest.approx(a @ res.f + b @ res.g - reg * plan.sum(), rel=1e-12)
    error = np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum()
    assert res.residual == pytest.approx(error, rel=1e-9)
    np.testing.assert_allclose(res.plan, plan, atol=1e-15)


def test_levels_that_converge_at_once_do_not_stop_the_solve():
    # On a 2x2 problem every epsilon-scaling level converges in an iteration or two; the
    # solve must still end at reg, with the plan of reg.
    C = np.array([[0.0, 1.0], [1.0, 0.0]])
    a, b = np.array([0.3, 0.7]), np.array([0.6, 0.4])
    reg = 1e-3
    res = sinkhorn_newton_sparse(a, b, C, reg, newton="always", tol=1e-12)
    ref = sinkhorn(a, b, C, reg, method="log", tol=1e-13)
    assert res.success and res.history["reg"][-1] == reg
    np.testing.assert_allclose(res.plan, ref.plan, atol=1e-10)


def test_a_solver_instance_solves_several_problems():
    # Cached per-problem arrays (the transposed cost) must follow the problem.
    solver = SinkhornNewtonSparse(newton="always", method="scaling", tol=1e-10,
                                  max_iter=20_000)
    for seed, (n, m) in ((7, (20, 30)), (8, (25, 15))):
        a, b, C = _clouds(seed, n=n, m=m)
        res = solver.solve(OTProblem(a, b, C, 5e-2))
        ref = sinkhorn(a, b, C, 5e-2, method="log", tol=1e-12)
        assert res.success
        np.testing.assert_allclose(res.plan, ref.plan, atol=1e-9)


def _small_hard_problem(kind, n, seed):
    rng = np.random.default_rng(seed)
    if kind == "random":
        C = rng.random((n, n))
    else:
        x, y = rng.random((n, 2)), rng.random((n, 2))
        C = ((x[:, None] - y[None]) ** 2).sum(-1)
        C /= C.max()
    return np.full(n, 1.0 / n), C


@pytest.mark.parametrize("kind", ["random", "geometric"])
@pytest.mark.parametrize("n", [20, 50, 120])
def test_small_hard_problems_converge_in_few_iterations(kind, n):
    # Uniform weights, reg 1e-3 ... 1e-2: plain Sinkhorn needs thousands of iterations on
    # some of these (10,000 at 5e-3 on a 50 x 50 random cost); the switch on the observed
    # rate hands over to Newton instead.
    for seed, reg in enumerate((1e-2, 7e-3, 5e-3, 3e-3, 1e-3)):
        a, C = _small_hard_problem(kind, n, seed)
        res = sinkhorn_newton_sparse(a, a, C, reg, tol=1e-9, n_threads=1)
        assert res.success and res.marginal_error <= 1e-9, (reg, res.message)
        assert np.isfinite(res.plan).all()
        assert res.n_sinkhorn <= 300 and res.n_newton <= 30, (reg, res.n_sinkhorn, res.n_newton)


def test_issue_case_takes_newton_steps_where_sinkhorn_crawls():
    # 50 x 50 uniform random cost at reg 5e-3: Sinkhorn alone stops at its 10,000-iteration
    # cap; the rate rule switches to Newton after a few dozen iterations.
    a, C = _small_hard_problem("random", 50, 0)
    res = sinkhorn_newton_sparse(a, a, C, 5e-3, tol=1e-9, n_threads=1)
    assert res.success and res.n_newton > 0 and res.n_sinkhorn < 200
    ref = sinkhorn(a, a, C, 5e-3, tol=1e-12, max_iter=200_000)
    assert ref.nit > 20 * res.n_sinkhorn
    np.testing.assert_allclose(res.plan, ref.plan, atol=1e-9)


def test_the_sparsification_budget_is_drop_budget_not_nu():
    # ``nu`` is the robust-loss scale of the registration solvers; here the option that means
    # something else has its own name, and the old one is refused with the valid options listed.
    problem = OTProblem([], [], np.ones((3, 3)) - np.eye(3), 1e-2)
    with pytest.raises(TypeError, match="'nu'.*drop_budget"):
        mmopt.solve(problem, "sns", nu=1e-3)
    assert mmopt.solve(problem, "sns", drop_budget=1e-3).success


def test_next_damping_rule():
    """The shared Newton damping rule: /4 after a full step (0 below 1e-6), x4 (at least
    1e-3) after a short one, x16 (at least 1e-2) after a failed line search."""
    assert next_damping(1.0, 1.0) == 0.25
    assert next_damping(2e-6, 1.0) == 0.0
    assert next_damping(1.0, 0.5) == 4.0
    assert next_damping(0.0, 0.5) == 1e-3
    assert next_damping(1.0, None) == 16.0
    assert next_damping(0.0, None) == 1e-2
