"""mmopt._core.problem: the base class every problem derives from."""

from dataclasses import dataclass

import numpy as np
import pytest

import mmopt
from mmopt._core.problem import Problem
from mmopt.mm import MMProblem


def _quadratic(x0=(4.0, -2.0)):
    # f(x) = ||x - 1||^2, whose MM step x -> (x + 1) / 2 halves the distance to 1.
    return MMProblem(objective=lambda x: float(np.sum((x - 1.0) ** 2)),
                     surrogate_minimizer=lambda x: 0.5 * (x + 1.0), x0=np.array(x0))


def test_solve_is_the_registry_front_door():
    problem = _quadratic()
    direct = problem.solve(tol=1e-12)
    through = mmopt.solve(problem, "mm", tol=1e-12)
    assert direct.success and direct.nit == through.nit
    np.testing.assert_array_equal(direct.x, through.x)
    np.testing.assert_allclose(direct.x, [1.0, 1.0], atol=1e-6)


def test_a_problem_without_default_solver_asks_for_one():
    class Bare(Problem):
        pass

    assert Problem.default_solver is None
    with pytest.raises(ValueError, match="solver must be given: Bare has no default solver"):
        Bare().solve()


def test_set_fields_stores_checked_values_in_a_frozen_dataclass():
    @dataclass(frozen=True)
    class Scaled(Problem):
        scale: float

        def __post_init__(self):
            self._set_fields(scale=float(self.scale) * 2.0)

    problem = Scaled(3)
    assert problem.scale == 6.0 and isinstance(problem.scale, float)
    with pytest.raises(AttributeError):
        problem.scale = 1.0  # still frozen for everyone else
