"""LinearRegressorMixin (mmopt/_core/linear_model.py): predictions of the linear regressors."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import NotFittedError

from mmopt import ConvergenceWarning
from mmopt._core.linear_model import LinearRegressorMixin
from mmopt.bilevel import BilevelRidge
from mmopt.mm import MMRobustRegressor


class _Fixed(LinearRegressorMixin, RegressorMixin, BaseEstimator):
    """A regressor with given coefficients, fitted on float64 data of two features."""

    def fit(self, X, y=None):
        self.n_features_in_ = 2
        self.coef_, self.intercept_ = np.array([2.0, -1.0]), 0.5
        return self


def test_predict_is_the_affine_map_of_the_fitted_coefficients():
    X = np.random.default_rng(0).standard_normal((7, 2))
    # The reference: the affine map written out per sample.
    expected = [2.0 * a - 1.0 * b + 0.5 for a, b in X]
    np.testing.assert_allclose(_Fixed().fit(X).predict(X), expected, rtol=1e-14)
    np.testing.assert_allclose(_Fixed().fit(X).predict(X.tolist()), expected, rtol=1e-14)


def test_predict_checks_fitted_and_names_malformed_input():
    with pytest.raises(NotFittedError):
        _Fixed().predict(np.zeros((1, 2)))
    model = _Fixed().fit(None)
    with pytest.raises((ValueError, TypeError), match="X"):
        model.predict([[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match="2 features"):
        model.predict(np.zeros((1, 3)))
    with pytest.raises(TypeError, match="X"):
        model.predict(sp.csr_matrix(np.ones((1, 2))))  # dense only unless the class says


@pytest.mark.parametrize("estimator", [BilevelRidge(max_iter=3), MMRobustRegressor()])
def test_the_family_regressors_predict_with_their_coefficients(estimator):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 3))
    y = X @ [1.0, 2.0, -1.0] + 0.1 * rng.standard_normal(40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter=3 is enough here
        model = estimator.fit(X, y)
    np.testing.assert_allclose(model.predict(X), X @ model.coef_ + model.intercept_)
