"""mmopt.bcd.problem: BCDProblem checks its parts and evaluates F = f + g."""

import numpy as np
import pytest

from mmopt.bcd import L1, BCDProblem, ElasticNet, LeastSquares, Logistic, NoPenalty


def test_objective_is_the_datafit_plus_the_penalty_written_out():
    rng = np.random.default_rng(0)
    X, y, x = rng.standard_normal((20, 4)), rng.standard_normal(20), rng.standard_normal(4)
    problem = BCDProblem(LeastSquares(X, y), L1(0.3))
    expected = np.sum((y - X @ x) ** 2) / (2 * 20) + 0.3 * np.abs(x).sum()
    assert problem.objective(x) == pytest.approx(expected, rel=1e-12)
    assert problem.n_coords == 4
    labels = np.where(y > 0, 1.0, -1.0)
    logistic = BCDProblem(Logistic(X, labels))
    assert isinstance(logistic.penalty, NoPenalty)
    assert logistic.objective(x) == pytest.approx(np.mean(np.log1p(np.exp(-labels * (X @ x)))),
                                                  rel=1e-12)


def test_the_default_solver_reaches_the_lasso_optimum():
    # Identity design, f = ||y - x||^2 / (2 n): the lasso solution soft-thresholds y by n alpha.
    problem = BCDProblem(LeastSquares(np.eye(3), [3.0, -0.5, 1.0]), ElasticNet(0.3, 1.0))
    res = problem.solve(tol=1e-12)
    np.testing.assert_allclose(res.x, [2.1, 0.0, 0.1], atol=1e-8)


@pytest.mark.parametrize("datafit, penalty, name", [
    ("not a datafit", L1(1.0), "datafit"),
    (LeastSquares(np.eye(2), [1.0, 2.0]), 0.5, "penalty"),
])
def test_parts_of_the_wrong_kind_are_named(datafit, penalty, name):
    with pytest.raises(TypeError, match=f"{name} must be a mmopt.bcd"):
        BCDProblem(datafit, penalty)
