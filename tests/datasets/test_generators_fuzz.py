"""Bad arguments of the generic data generators name themselves; valid extremes are finite
(issue 13)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmopt.datasets import load_diabetes_with_outliers, make_regression_with_outliers


@pytest.mark.parametrize(
    "kwargs, name",
    [({"n_samples": 0}, "n_samples"), ({"n_samples": True}, "n_samples"),
     ({"n_samples": 2.5}, "n_samples"), ({"n_features": 0}, "n_features"),
     ({"outlier_fraction": 1.0}, "outlier_fraction"),
     ({"outlier_fraction": -0.1}, "outlier_fraction"), ({"noise": np.nan}, "noise"),
     ({"noise": -1.0}, "noise"), ({"outlier_scale": np.inf}, "outlier_scale"),
     ({"outlier_scale": 1e308}, "outlier_scale"), ({"random_state": "x"}, "random_state")],
)
def test_make_regression_with_outliers_names_bad_arguments(fuzz, kwargs, name):
    fuzz.raises_naming(make_regression_with_outliers, name, **kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"outlier_fraction": 2.0}, "outlier_fraction"), ({"random_state": "x"}, "random_state"),
     ({"random_state": 1.5}, "random_state")],
)
def test_load_diabetes_with_outliers_names_bad_arguments(fuzz, kwargs, name):
    fuzz.raises_naming(load_diabetes_with_outliers, name, **kwargs)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 30),
    p=st.integers(1, 5),
    fraction=st.floats(0.0, 0.99),
    noise=st.sampled_from([0.0, 1e-300, 1.0, 1e100]),
    scale=st.sampled_from([0.0, 1e-300, 100.0, 1e200]),
)
def test_make_regression_with_outliers_valid_extremes(n, p, fraction, noise, scale):
    X, y, coef, mask = make_regression_with_outliers(
        n, p, outlier_fraction=fraction, noise=noise, outlier_scale=scale, random_state=0
    )
    assert X.shape == (n, p) and y.shape == (n,) and coef.shape == (p,) and mask.shape == (n,)
    assert np.isfinite(X).all() and np.isfinite(y).all()
    assert mask.sum() == round(fraction * n)
