"""make_ot_problem: the Gaussian-clouds OT problem of the benchmarks."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from mmopt.datasets import make_image_histograms, make_ot_problem


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


def test_image_histograms_on_a_grid():
    a, B, C = make_image_histograms(6, 4, random_state=0)
    assert a.shape == (36,) and B.shape == (36, 4) and C.shape == (36, 36)
    np.testing.assert_allclose(a.sum(), 1.0)
    np.testing.assert_allclose(B.sum(axis=0), np.ones(4))
    # The cost is the squared distance between the pixels (i, j) / side, over its maximum.
    pixels = np.array([(j, i) for i in range(6) for j in range(6)]) / 6
    expected = cdist(pixels, pixels, "sqeuclidean")
    np.testing.assert_allclose(C, expected / expected.max(), atol=1e-15)
    # The source is one blob at the centre; the targets leave their faint pixels empty.
    assert a.argmax() in {14, 15, 20, 21} and np.all(a > 0)
    assert np.all(B >= 0) and (B == 0).any()
    again = make_image_histograms(6, 4, random_state=np.random.RandomState(0))
    for x, y in zip((a, B, C), again):
        np.testing.assert_array_equal(x, y)
    generator = make_image_histograms(6, 4, random_state=np.random.default_rng(0))[1]
    assert generator.shape == (36, 4) and not np.array_equal(generator, B)


@pytest.mark.parametrize("kwargs, name", [({"side": 1}, "side"), ({"n_images": 0}, "n_images"),
                                          ({"random_state": "x"}, "random_state")])
def test_image_histograms_name_a_bad_argument(kwargs, name):
    with pytest.raises((TypeError, ValueError), match=name):
        make_image_histograms(**kwargs)
