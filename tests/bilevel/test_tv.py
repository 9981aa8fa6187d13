"""Smoothed-TV denoising: derivatives by finite differences, valid constants, robustness."""

import warnings

import numpy as np
import pytest

from mmopt import ConvergenceWarning
from mmopt.bilevel import MAID
from mmopt.bilevel.tv import make_tv_denoising_data, tv_denoising_problem


@pytest.fixture(scope="module")
def problem():
    noisy, clean = make_tv_denoising_data(size=16, n_images=2)
    return tv_denoising_problem(noisy, clean, strength=0.005, smoothing=0.2)


def test_derivatives_by_finite_differences(problem):
    lower = problem.lowers[0]
    rng = np.random.default_rng(0)
    x = lower.y + 0.1 * rng.standard_normal(lower.y.size)
    theta = np.log([0.08, 0.03])
    v = rng.standard_normal(x.size)
    h = 1e-6
    fd = (lower.value(x + h * v, theta) - lower.value(x - h * v, theta)) / (2 * h)
    assert lower.grad_x(x, theta) @ v == pytest.approx(fd, rel=1e-6)
    fd = (lower.grad_x(x + h * v, theta) - lower.grad_x(x - h * v, theta)) / (2 * h)
    np.testing.assert_allclose(lower.hvp_xx(x, theta, v), fd, rtol=1e-5, atol=1e-7)
    for j in range(2):
        e = np.zeros(2)
        e[j] = h
        fd = (lower.grad_x(x, theta + e) - lower.grad_x(x, theta - e)) @ v / (2 * h)
        assert lower.vjp_theta(x, theta, v)[j] == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_constants_are_valid(problem):
    lower = problem.lowers[0]
    rng = np.random.default_rng(1)
    theta = np.log([0.08, 0.03])
    x = lower.y.copy()
    for _ in range(5):
        d = rng.standard_normal(x.size)
        d *= 1e-3 / np.linalg.norm(d)
        v = rng.standard_normal(x.size)
        v /= np.linalg.norm(v)
        change = np.linalg.norm(lower.hvp_xx(x + d, theta, v) - lower.hvp_xx(x, theta, v))
        assert change <= lower.hessian_lipschitz(theta) * np.linalg.norm(d)
        grads = lower.grad_x(x + d, theta) - lower.grad_x(x, theta)
        assert np.linalg.norm(grads) <= lower.lipschitz(theta) * np.linalg.norm(d) * (1 + 1e-9)
    # ||B|| bounds B's action on unit theta directions (B columns by finite differences).
    h = 1e-6
    cols = [(lower.grad_x(x, theta + h * e) - lower.grad_x(x, theta - h * e)) / (2 * h)
            for e in np.eye(2)]
    assert np.linalg.norm(np.column_stack(cols), 2) <= lower.cross_norm(x, theta) * (1 + 1e-5)


@pytest.mark.parametrize("radius", [1e-4, 1e-2, 0.3])
def test_per_pixel_change_bounds_hold_on_the_ball(problem, radius):
    # hessian_change and cross_change bound the change of A v and B^T q at points of the
    # ball (B^T q from vjp_theta, A v from hvp_xx), and are sharper than the global
    # Lipschitz constants for small radii.
    lower = problem.lowers[0]
    rng = np.random.default_rng(2)
    theta = np.log([0.06, 0.04])
    x = lower.y + 0.02 * rng.standard_normal(lower.y.size)
    v = rng.standard_normal(x.size)
    h_bound = lower.hessian_change(x, theta, v, radius)
    c_bound = lower.cross_change(x, theta, v, radius)
    base_h, base_c = lower.hvp_xx(x, theta, v), lower.vjp_theta(x, theta, v)
    for _ in range(20):
        d = rng.standard_normal(x.size)
        y = x + radius * d / np.linalg.norm(d)
        assert np.linalg.norm(lower.hvp_xx(y, theta, v) - base_h) <= h_bound
        assert np.linalg.norm(lower.vjp_theta(y, theta, v) - base_c) <= c_bound
    norm_v = np.linalg.norm(v)
    assert h_bound <= lower.hessian_lipschitz(theta) * radius * norm_v
    assert c_bound <= lower.cross_lipschitz(theta) * radius * norm_v
    if radius <= 1e-2:
        assert h_bound < 0.2 * lower.hessian_lipschitz(theta) * radius * norm_v


def test_learning_improves_on_the_start_and_is_robust_to_eps0(problem):
    _, _, start, *_ = MAID().hypergradient(problem, problem.theta0, eps=1e-10, delta=1e-10)
    finals = []
    for eps0 in (1e-5, 1e-2, 1e1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = MAID(eps0=eps0, delta0=eps0, max_iter=60, tol=1e-6).solve(problem)
        assert res.bound_certified
        _, _, final, *_ = MAID().hypergradient(problem, res.theta, eps=1e-10, delta=1e-10)
        finals.append(final)
    assert max(finals) < 0.9 * start
    assert (max(finals) - min(finals)) <= 0.01 * min(finals)


def test_mismatched_images_are_rejected():
    noisy, clean = make_tv_denoising_data(size=8, n_images=2)
    with pytest.raises(ValueError, match="as many"):
        tv_denoising_problem(noisy, clean[:1])
    with pytest.raises(ValueError, match="same shape"):
        tv_denoising_problem(noisy, [clean[0][:4], clean[1]])


@pytest.mark.parametrize("radius", [1e-5, 1e-3, 3e-2, 0.5])
@pytest.mark.parametrize("where", ["noisy", "flat", "smooth"])
def test_hessian_change_holds_for_concentrated_moves(problem, radius, where):
    # The worst moves for a per-pixel bound put the whole radius on one pixel (flat regions,
    # where psi's Hessian is largest, and edges); every single-pixel move of the ball and
    # random ones, at a noisy image, a flat one (D x = 0) and a smooth one (|D x| ~ gam).
    lower = problem.lowers[0]
    rng = np.random.default_rng(5)
    theta = np.log([0.05, 0.02])
    shape = lower.image_shape
    if where == "noisy":
        x = lower.y + 0.02 * rng.standard_normal(lower.y.size)
    elif where == "flat":
        x = np.full(lower.y.size, 0.4)
    else:
        x = (0.02 * np.add.outer(np.arange(shape[0]), np.arange(shape[1]))).ravel()
    for v in (rng.standard_normal(x.size), np.eye(x.size)[x.size // 2 + 3]):
        bound = lower.hessian_change(x, theta, v, radius)
        base = lower.hvp_xx(x, theta, v)
        moves = [radius * e for e in np.eye(x.size)] + [-radius * e for e in np.eye(x.size)[::7]]
        for _ in range(10):
            d = rng.standard_normal(x.size)
            moves.append(radius * d / np.linalg.norm(d))
        worst = max(np.linalg.norm(lower.hvp_xx(x + d, theta, v) - base) for d in moves)
        assert worst <= bound
        # ...and it is not vacuous where the image is flat and the ball small.
        if where == "flat" and radius <= 1e-3:
            assert bound <= 0.1 * lower.hessian_lipschitz(theta) * radius * np.linalg.norm(v)


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_matches_a_linear_program(seed):
    from scipy.optimize import linprog

    from mmopt.bilevel.tv import _knapsack

    rng = np.random.default_rng(seed)
    n = 12
    values, weights = rng.exponential(size=n), rng.uniform(0.1, 3.0, size=n)
    cap, budget = rng.uniform(0.1, 1.0), rng.uniform(0.05, 0.5) * n
    lp = linprog(-values, A_ub=weights[None, :], b_ub=[budget], bounds=[(0, cap)] * n)
    assert lp.success
    np.testing.assert_allclose(_knapsack(values, weights, cap, budget), -lp.fun, rtol=1e-9)
    # A budget beyond every cap fills them all.
    np.testing.assert_allclose(_knapsack(values, weights, cap, 1e9), cap * values.sum())


@pytest.mark.parametrize("kind", ["random", "spike", "smooth"])
@pytest.mark.parametrize("size", [1e-4, 1e-2, 0.2])
def test_energy_constrained_changes_hold_at_the_minimizer(problem, kind, size):
    # With grad_norm the bounds need only hold between x and x* (the energy of x - x* in
    # the Hessian is at most ||grad|| ||x - x*||): check them at x* exactly, for points x
    # around it whose error is spread out, concentrated on one pixel, or smooth.
    lower = problem.lowers[1]
    theta = np.log([0.06, 0.03])
    x_star = MAID().hypergradient(problem, theta, eps=1e-12, delta=1e-12)[3][1]
    rng = np.random.default_rng(3)
    shape = lower.image_shape
    if kind == "random":
        move = rng.standard_normal(x_star.size)
    elif kind == "spike":
        move = np.zeros(x_star.size)
        move[rng.integers(x_star.size)] = 1.0
    else:
        move = np.sin(np.linspace(0, np.pi, shape[0]))[:, None] * np.ones(shape[1])
        move = move.ravel()
    x = x_star + size * move / np.linalg.norm(move)
    grad_norm = float(np.linalg.norm(lower.grad_x(x, theta)))
    radius = grad_norm / lower.mu(theta)  # the certified distance
    assert np.linalg.norm(x - x_star) <= radius
    for v in (rng.standard_normal(x.size), lower.y - x):
        true_h = np.linalg.norm(lower.hvp_xx(x_star, theta, v) - lower.hvp_xx(x, theta, v))
        true_c = np.linalg.norm(lower.vjp_theta(x_star, theta, v) - lower.vjp_theta(x, theta, v))
        h = lower.hessian_change(x, theta, v, radius, grad_norm=grad_norm)
        c = lower.cross_change(x, theta, v, radius, grad_norm=grad_norm)
        assert true_h <= h <= lower.hessian_change(x, theta, v, radius)
        assert true_c <= c <= lower.cross_change(x, theta, v, radius)


@pytest.mark.parametrize("eps", [1e-2, 1e-3, 1e-4, 1e-5])
def test_directional_bound_covers_the_true_error_and_is_sharper(problem, eps, monkeypatch):
    # The changes of A and B measured along the Newton correction (certified on the small
    # ball around x - d) bound the hypergradient error; without it (the whole ball of
    # radius eps) the bound is valid too, and at least twice as loose where eps is small.
    theta = np.log([0.07, 0.025])
    exact = MAID().hypergradient(problem, theta, eps=1e-12, delta=1e-12)[0]
    solver = MAID()
    z, bound, _, _, certified = solver.hypergradient(problem, theta, eps=eps, delta=eps)
    assert certified
    assert np.linalg.norm(z - exact) <= bound
    monkeypatch.setattr(MAID, "_newton_correction", lambda self, *args: None)
    plain = MAID()
    z_plain, bound_plain, *_ = plain.hypergradient(problem, theta, eps=eps, delta=eps)
    np.testing.assert_allclose(z_plain, z, rtol=1e-10, atol=1e-14)
    assert np.linalg.norm(z_plain - exact) <= bound_plain
    assert bound <= bound_plain
    if eps <= 1e-3:
        assert bound < 0.5 * bound_plain


def test_newton_correction_error_bound_is_valid(problem):
    # ||x - d - x*|| <= e_d, and far below the certified distance of x itself.
    from mmopt.bilevel.inner import fista
    from mmopt.bilevel.maid import _MAIDRun

    theta = np.log([0.05, 0.03])
    lower = problem.lowers[0]
    x_star = MAID().hypergradient(problem, theta, eps=1e-12, delta=1e-12)[3][0]
    solver, run = MAID(), _MAIDRun()
    for gtol in (1e-2, 1e-3, 1e-4):
        x = fista(lower, lower.y, theta, gtol).x
        grad_norm = float(np.linalg.norm(lower.grad_x(x, theta)))
        e = grad_norm / lower.mu(theta)
        d, e_d = solver._newton_correction(run, lower, x, theta, e, grad_norm, lower.mu(theta),
                                           None)
        assert np.linalg.norm(x - d - x_star) <= e_d
        if gtol <= 1e-3:
            assert e_d < 0.5 * e
    assert run.cost["n_cg_iter"] > 0  # its CG iterations are counted


def test_broyden_estimates_satisfy_the_secant_condition_and_save_work(problem, monkeypatch):
    from mmopt.bilevel.maid import _MAIDState

    rng = np.random.default_rng(0)
    n, m = 7, 2
    solver = MAID()
    old = _MAIDState(x=np.zeros(m), fun=0.0, qs=[rng.standard_normal(n)],
                     jac_x=[rng.standard_normal((n, m))], jac_q=[rng.standard_normal((n, m))])
    old.evaluation = type("E", (), {"xs": [rng.standard_normal(n)]})()
    new = _MAIDState(x=np.ones(m), fun=0.0, qs=[rng.standard_normal(n)])
    new.evaluation = type("E", (), {"xs": [rng.standard_normal(n)]})()
    move = np.array([0.3, -0.2])
    solver._broyden(new, old, move)
    np.testing.assert_allclose(new.jac_x[0] @ move, new.evaluation.xs[0] - old.evaluation.xs[0])
    np.testing.assert_allclose(new.jac_q[0] @ move, new.qs[0] - old.qs[0])
    # Unchanged across the move: the smallest change that satisfies the secant condition.
    across = np.array([0.2, 0.3])
    np.testing.assert_allclose(new.jac_x[0] @ across, old.jac_x[0] @ across)

    # First-order warm starts need fewer lower-level iterations than the previous points.
    def solve():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return MAID(eps0=1e-4, delta0=1e-4, max_iter=25, tol=1e-8).solve(problem)

    with_broyden = solve()
    monkeypatch.setattr(MAID, "_broyden", lambda self, *args: None)
    monkeypatch.setattr(MAID, "_secant", staticmethod(
        lambda old, previous, state, move: (old.xs, state.qs)))
    without = solve()
    assert with_broyden.n_lower_iter < 0.8 * without.n_lower_iter
