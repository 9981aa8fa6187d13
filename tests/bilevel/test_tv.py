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
    _, _, start, _ = MAID().hypergradient(problem, problem.theta0, eps=1e-10, delta=1e-10)
    finals = []
    for eps0 in (1e-5, 1e-2, 1e1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = MAID(eps0=eps0, delta0=eps0, max_iter=60, tol=1e-6).solve(problem)
        assert res.bound_certified
        _, _, final, _ = MAID().hypergradient(problem, res.theta, eps=1e-10, delta=1e-10)
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
