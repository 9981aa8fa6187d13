"""The MM problem protocol (mmopt/mm/problem.py): what it returns and what it refuses."""

import numpy as np
import pytest

from mmopt.mm import MMProblem


def _logcosh(project=None):
    # F(x) = sum log cosh(x - 2), whose quadratic majorizer of curvature 1 gives
    # G(x) = x - tanh(x - 2).
    return MMProblem(
        objective=lambda x: np.sum(np.log(np.cosh(x - 2.0))),
        surrogate_minimizer=lambda x: x - np.tanh(x - 2.0),
        x0=[0.0, 1.0, 3.0],
        project=project,
    )


def test_methods_return_the_callables_values_as_floats():
    problem = _logcosh()
    x = np.array([0.5, -1.0, 2.0])
    # The references: the formulas, evaluated here independently.
    value = problem.objective(x)
    assert type(value) is float
    assert value == pytest.approx(np.log(np.cosh(-1.5)) + np.log(np.cosh(-3.0)))
    step, fun = problem.mm_step(x)
    np.testing.assert_allclose(step, x - np.tanh(x - 2.0))
    assert fun == value
    np.testing.assert_array_equal(problem.initial_point(), [0.0, 1.0, 3.0])
    np.testing.assert_array_equal(problem.project(x), x)  # identity without a projection
    assert repr(problem) == "MMProblem(d=3)"


def test_the_surrogate_step_never_increases_the_objective():
    problem = _logcosh()
    x = np.array([-5.0, 0.0, 9.0])
    for _ in range(20):
        step, fun = problem.mm_step(x)
        assert problem.objective(step) <= fun + 1e-12
        x = step


def test_projection_is_applied_and_checked():
    problem = _logcosh(project=lambda x: np.maximum(x, 0.0))
    np.testing.assert_array_equal(problem.project(np.array([-1.0, 2.0, -3.0])), [0.0, 2.0, 0.0])
    bad = _logcosh(project=lambda x: x[:2])
    with pytest.raises((TypeError, ValueError), match="project"):
        bad.project(np.zeros(3))


@pytest.mark.parametrize("returned, match", [
    ("a", "real number"), (np.ones(2), "scalar"), (True, "real number")])
def test_objective_must_return_one_real_number(returned, match):
    problem = MMProblem(lambda x: returned, lambda x: x, np.zeros(2))
    with pytest.raises(TypeError, match=match):
        problem.objective(np.zeros(2))


def test_surrogate_minimizer_output_is_checked():
    for returned in (None, np.zeros(3)):
        problem = MMProblem(lambda x: 0.0, lambda x, r=returned: r, np.zeros(2))
        with pytest.raises((TypeError, ValueError), match="surrogate_minimizer"):
            problem.surrogate_minimizer(np.zeros(2))
