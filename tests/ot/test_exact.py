import numpy as np
import pytest

from mmopt.ot import exact_ot


def _random_problem(seed, n=7, m=9):
    rng = np.random.default_rng(seed)
    a, b = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m))
    return a, b, rng.random((n, m))


@pytest.mark.parametrize("seed", range(4))
def test_highs_solution_is_optimal_by_duality(seed):
    a, b, C = _random_problem(seed)
    res = exact_ot(a, b, C)
    assert res.method == "highs" and res.success
    P, f, g = res.plan, res.f, res.g
    # Primal feasibility, dual feasibility, equal objectives: optimality, independent of HiGHS.
    assert (P >= -1e-12).all()
    np.testing.assert_allclose(P.sum(1), a, atol=1e-10)
    np.testing.assert_allclose(P.sum(0), b, atol=1e-10)
    assert (f[:, None] + g[None, :] <= C + 1e-9).all()
    assert res.fun == pytest.approx(a @ f + b @ g, abs=1e-10)
    assert res.marginal_error < 1e-9


def test_uniform_square_uses_assignment_and_matches_the_lp():
    rng = np.random.default_rng(5)
    C = rng.random((12, 12))
    res = exact_ot([], [], C)
    assert res.method == "assignment"
    assert (np.count_nonzero(res.plan, axis=1) == 1).all()
    # The same problem with slightly non-uniform weights goes through HiGHS.
    lp = exact_ot(np.full(12, 1 / 12), np.full(12, 1 / 12) + np.r_[1e-12, -1e-12, [0] * 10], C)
    assert lp.method == "highs"
    assert res.fun == pytest.approx(lp.fun, abs=1e-9)


@pytest.mark.parametrize(
    "a, b, C, match",
    [
        ([0.5, 0.5], [1.0], np.ones((2, 2)), "b must have one entry per column"),
        ([0.5, -0.5], [], np.ones((2, 2)), "a must be non-negative"),
        ([0.5, 0.6], [0.5, 0.5], np.ones((2, 2)), "same total mass"),
        ([], [], [[0.0, np.inf]], "C must not contain NaN or infinite"),
        ([np.nan, 1.0], [], np.ones((2, 2)), "a must not contain NaN"),
        ([0.0, 0.0], [0.0, 0.0], np.ones((2, 2)), "a must have a positive total mass"),
    ],
)
def test_bad_input(a, b, C, match):
    with pytest.raises(ValueError, match=match):
        exact_ot(a, b, C)
