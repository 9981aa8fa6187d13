
"""Conjugate gradients (mmopt/_core/krylov.py) against direct solves."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmopt._core.krylov import InnerSolveResult, conjugate_gradient, inverse_diagonal


def _spd(n, seed, shift=0.1):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, n))
    return G @ G.T + shift * np.eye(n), rng.standard_normal(n)


class Counting:
    """A matvec that counts its calls (the reference the reported n_matvec must match)."""

    def __init__(self, A):
        self.A, self.calls = A, 0

    def __call__(self, v):
        self.calls += 1
        return self.A @ v


@pytest.mark.parametrize("preconditioned", [False, True])
def test_conjugate_gradient_against_a_direct_solve(preconditioned):
    rng = np.random.default_rng(4)
    G = rng.standard_normal((30, 30))
    A = G @ G.T + 0.1 * np.eye(30)
    b = rng.standard_normal(30)
    inv_diag = 1.0 / np.diag(A) if preconditioned else None
    exact = np.linalg.solve(A, b)
    checked = conjugate_gradient(lambda v: A @ v, b, np.zeros(30), 1e-9, inv_diag=inv_diag)
    recursive = conjugate_gradient(lambda v: A @ v, b, np.zeros(30), 1e-9, inv_diag=inv_diag,
                                   true_residual=False)
    assert checked.converged
    # The reported residual is the true one; skipping the final check saves products only.
    assert checked.residual == pytest.approx(np.linalg.norm(A @ checked.x - b), rel=1e-12)
    assert np.linalg.norm(A @ checked.x - b) <= 1e-9
    np.testing.assert_allclose(recursive.x, checked.x, rtol=0, atol=1e-12)
    assert recursive.n_matvec < checked.n_matvec
    np.testing.assert_allclose(checked.x, exact, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 10_000), warm=st.booleans(),
       preconditioned=st.booleans())
def test_products_are_counted_and_the_residual_is_true(n, seed, warm, preconditioned):
    A, b = _spd(n, seed, shift=1.0)
    x0 = np.random.default_rng(seed + 1).standard_normal(n) if warm else np.zeros(n)
    before = x0.copy()
    matvec = Counting(A)
    out = conjugate_gradient(matvec, b, x0, 1e-8,
                             inv_diag=inverse_diagonal(np.diag(A)) if preconditioned else None)
    assert isinstance(out, InnerSolveResult)
    assert out.n_matvec == matvec.calls
    assert out.converged and out.residual <= 1e-8
    assert out.residual == pytest.approx(np.linalg.norm(A @ out.x - b), rel=1e-10, abs=1e-15)
    np.testing.assert_array_equal(x0, before)  # the start is not modified
    np.testing.assert_allclose(A @ out.x, b, atol=1e-7)


def test_a_cold_start_costs_no_product_and_a_warm_start_one():
    A, b = _spd(5, 0)
    cold, warm = Counting(A), Counting(A)
    conjugate_gradient(cold, b, np.zeros(5), np.inf)
    conjugate_gradient(warm, b, np.ones(5), np.inf)
    assert (cold.calls, warm.calls) == (0, 1)


def test_consistent_semi_definite_system():
    A = np.diag([1.0, 2.0, 0.0])
    # b in the range of A: solved, with no component along the null direction.
    out = conjugate_gradient(lambda v: A @ v, np.array([1.0, 1.0, 0.0]), np.zeros(3), 1e-12)
    assert out.converged
    np.testing.assert_allclose(out.x, [1.0, 0.5, 0.0])


def test_max_iter_caps_the_iterations():
    A, b = _spd(40, 1, shift=1e-3)
    out = conjugate_gradient(lambda v: A @ v, b, np.zeros(40), 1e-14, max_iter=3)
    assert out.nit == 3 and not out.converged


def test_inverse_diagonal_keeps_null_entries_at_unit_scale():
    np.testing.assert_array_equal(inverse_diagonal(np.array([4.0, 0.0, -1.0])), [0.25, 1, 1])


def test_inconsistent_semidefinite_system_stops_without_overflow():
    # b has a part in A's null space: no x solves A x = b, and a step along the null
    # direction would be infinite. CG must stop with a finite iterate whose reported residual
    # is the true one, and no warning.
    A = np.diag([2.0, 1.0, 1e-300, 0.0])
    b = np.array([2.0, 1.0, 1.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = conjugate_gradient(lambda v: A @ v, b, np.zeros(4), 1e-10)
    assert not out.converged and np.all(np.isfinite(out.x))
    assert out.residual == pytest.approx(np.linalg.norm(A @ out.x - b))


def test_on_step_accumulates_a_linear_image_of_the_iterate():
    # A = X^T X: the hook folds the products X p the matvec forms into q = X x, which must
    # match the product formed afresh from the returned x.
    rng = np.random.default_rng(7)
    X = rng.standard_normal((40, 15))
    b = rng.standard_normal(15)
    q = np.zeros(40)
    last = []

    def matvec(p):
        last[:] = [X @ p]
        return X.T @ last[0]

    def on_step(alpha, p):
        np.add(q, alpha * last[0], out=q)

    out = conjugate_gradient(matvec, b, np.zeros(15), 1e-10, on_step=on_step)
    assert out.converged
    np.testing.assert_allclose(q, X @ out.x, atol=1e-10)


def test_a_stopping_rule_ends_the_iteration_once_it_holds():
    A, b = _spd(25, 3)
    threshold = 1e-3 * np.abs(b).max()
    rule_calls = []

    def stop(r):
        rule_calls.append(float(np.abs(r).max()))
        return rule_calls[-1] <= threshold

    out = conjugate_gradient(lambda v: A @ v, b, np.zeros(25), 1e-14, stop=stop,
                             true_residual=False)
    full = conjugate_gradient(lambda v: A @ v, b, np.zeros(25), 1e-14, true_residual=False)
    # The rule saw each iteration's residual, was false until the last one, and that
    # residual is (to rounding) the true one of the returned x.
    assert len(rule_calls) == out.nit
    assert all(value > threshold for value in rule_calls[:-1])
    assert np.abs(b - A @ out.x).max() <= threshold * (1 + 1e-6)
    assert out.nit < full.nit
    assert not out.converged  # ||r|| is still above tol: converged speaks of tol only


def test_float32_systems_stay_float32():
    A, b = _spd(6, 1, shift=1.0)
    out = conjugate_gradient(lambda v: A.astype(np.float32) @ v, b.astype(np.float32),
                             np.zeros(6, np.float32), 1e-3)
    assert out.x.dtype == np.float32
    np.testing.assert_allclose(out.x, np.linalg.solve(A, b), rtol=1e-3, atol=1e-3)
