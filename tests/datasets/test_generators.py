import numpy as np
import pytest
from sklearn.datasets import load_diabetes

from mmopt.datasets import load_diabetes_with_outliers, make_regression_with_outliers


def test_make_regression_with_outliers_shapes_and_model():
    X, y, coef, mask = make_regression_with_outliers(
        300, 4, outlier_fraction=0.2, noise=0.5, outlier_scale=40.0, random_state=0
    )
    assert X.shape == (300, 4) and y.shape == (300,) and coef.shape == (4,)
    assert mask.dtype == bool and mask.sum() == 60
    assert np.all(np.abs(coef) <= 10.0)
    error = y - X @ coef
    # Inliers follow the model up to Gaussian noise; every outlier is a gross error.
    assert np.abs(error[~mask]).max() < 6 * 0.5
    assert np.abs(error[mask]).min() >= 40.0 - 6 * 0.5
    assert np.std(error[~mask]) == pytest.approx(0.5, rel=0.15)


def test_make_regression_with_outliers_random_state():
    a = make_regression_with_outliers(random_state=3)
    b = make_regression_with_outliers(random_state=np.random.RandomState(3))
    c = make_regression_with_outliers(random_state=4)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], c[1])
    X, y, coef, mask = make_regression_with_outliers(outlier_fraction=0.0, noise=0.0)
    assert not mask.any()
    np.testing.assert_allclose(y, X @ coef)


def test_load_diabetes_with_outliers():
    data = load_diabetes()
    X, y, mask = load_diabetes_with_outliers(0.2, random_state=0)
    np.testing.assert_array_equal(X, data.data)
    assert mask.sum() == round(0.2 * 442)
    np.testing.assert_array_equal(y[~mask], data.target[~mask])
    shift = np.abs(y[mask] - data.target[mask])
    assert shift.min() >= 5 * data.target.std() and shift.max() <= 10 * data.target.std()
    again = load_diabetes_with_outliers(0.2, random_state=0)
    np.testing.assert_array_equal(again[1], y)
    assert load_diabetes_with_outliers(0.0)[2].sum() == 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_samples": 0}, ValueError, "n_samples must be >= 1"),
        ({"n_features": 2.5}, TypeError, "n_features must be an integer"),
        ({"outlier_fraction": 1.0}, ValueError, "outlier_fraction must be < 1"),
        ({"outlier_fraction": -0.1}, ValueError, "outlier_fraction must be >= 0"),
        ({"noise": -1.0}, ValueError, "noise must be >= 0"),
        ({"outlier_scale": np.nan}, ValueError, "outlier_scale must be finite"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_regression_with_outliers(**kwargs)


def test_diabetes_bad_fraction():
    with pytest.raises(ValueError, match="outlier_fraction must be < 1"):
        load_diabetes_with_outliers(1.5)
