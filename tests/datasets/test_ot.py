"""make_ot_problem: the Gaussian-clouds OT problem of the benchmarks."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from mmopt.datasets import make_ot_problem


@pytest.mark.parametrize("weights", ["uniform", "random"])
def test_shapes_masses_and_cost(weights):
    a, b, C, source, target = make_ot_problem(
        30, 20, n_features=3, shift=2.0, weights=weights, return_points=True, random_state=0
    )
    assert a.shape == (30,) and b.shape == (20,) and C.shape == (30, 20)
    assert source.shape == (30, 3) and target.shape == (20, 3)
    assert a.sum() == pytest.approx(1.0) and b.sum() == pytest.approx(1.0)
    assert np.all(a > 0) and np.all(b > 0)
    expected = cdist(source, target, "sqeuclidean")
    np.testing.assert_allclose(C, expected / expected.max())
    # The shift moves the target cloud's mean.
    assert target.mean(axis=0) == pytest.approx(source.mean(axis=0) + 2.0, abs=0.8)


def test_reproducible_and_unnormalized():
    first = make_ot_problem(10, random_state=3)
    second = make_ot_problem(10, random_state=3)
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x, y)
    raw = make_ot_problem(10, normalize_cost=False, metric="euclidean", random_state=3)[2]
    assert raw.shape == (10, 10) and raw.max() > 0 and not np.isclose(raw.max(), 1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_source": 0}, "n_source"), ({"n_target": 0}, "n_target"),
     ({"n_features": 0}, "n_features"), ({"weights": "dirichlet"}, "weights"),
     ({"shift": np.nan}, "shift")],
)
def test_bad_input(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_ot_problem(**{"n_source": 5, **kwargs})
