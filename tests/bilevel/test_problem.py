"""mmopt.bilevel.problem: BilevelProblem's checks, box and penalty; SpreadPenalty."""

import numpy as np
import pytest
from _helpers import distance_upper_level, shrinkage_lower_level, shrinkage_problem

from mmopt.bilevel import BilevelProblem, SpreadPenalty, UpperLevel


def test_spread_penalty_gradient_matches_finite_differences():
    penalty, theta = SpreadPenalty(1.7), np.array([0.3, -1.2, 2.0, 0.5])
    h, eye = 1e-6, np.eye(4)
    numeric = [(penalty.value(theta + h * e) - penalty.value(theta - h * e)) / (2 * h)
               for e in eye]
    np.testing.assert_allclose(penalty.grad(theta), numeric, atol=1e-8)
    assert penalty.value(np.full(4, 3.0)) == 0.0  # equal penalties cost nothing
    with pytest.raises(ValueError, match="strength"):
        SpreadPenalty(-1.0)


def test_box_projection_start_and_penalty_defaults():
    lower, upper = shrinkage_lower_level([1.0, 2.0]), distance_upper_level([0.5, 0.5])
    problem = BilevelProblem(lower, upper, theta0=5.0, bounds=(-1.0, 2.0))
    assert problem.theta0.tolist() == [2.0]  # the start is projected into the box
    assert problem.project(np.array([-3.0])).tolist() == [-1.0]
    assert problem.penalty_value(problem.theta0) == 0.0
    assert problem.penalty_grad(problem.theta0).tolist() == [0.0]
    assert problem.n_instances == 1
    assert repr(problem) == "BilevelProblem(n_instances=1, n_hyperparameters=1, bounded=True)"


def test_several_instances_share_theta():
    lowers = [shrinkage_lower_level([1.0, 2.0]), shrinkage_lower_level([0.0, 4.0])]
    uppers = [distance_upper_level([0.5, 1.0]), distance_upper_level([0.0, 2.0])]
    assert BilevelProblem(lowers, uppers, theta0=0.0).n_instances == 2
    with pytest.raises(ValueError, match="same length"):
        BilevelProblem(lowers, uppers[:1], theta0=0.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"bounds": (1.0, 0.0)}, "lo <= hi"),
    ({"bounds": (0.0, [1.0, 2.0])}, "bounds entries must be scalars or arrays of shape"),
    ({"bounds": (np.nan, 1.0)}, "NaN"),
    ({"bounds": 3.0}, "pair"),
    ({"theta_penalty": object()}, "theta_penalty must provide value"),
])
def test_bad_box_and_penalty_are_named(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        BilevelProblem(shrinkage_lower_level([1.0]), distance_upper_level([0.5]), theta0=0.0,
                       **kwargs)


def test_lower_levels_with_the_wrong_shapes_or_modulus_are_named():
    with pytest.raises(TypeError, match=r"lower\[0\] must provide"):
        BilevelProblem(object(), distance_upper_level([0.5]), theta0=0.0)
    with pytest.raises(ValueError, match=r"upper grad\(x0\) has shape"):
        BilevelProblem(shrinkage_lower_level([1.0, 2.0]),
                       UpperLevel(lambda x: 0.0, lambda x: np.zeros(3)), theta0=0.0)
    with pytest.raises(ValueError, match="positive finite strong-convexity modulus"):
        BilevelProblem.check_mu(0.0)
    assert shrinkage_problem().theta0.tolist() == [2.0]
