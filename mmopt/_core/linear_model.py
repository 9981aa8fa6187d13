"""Prediction of the linear regressors that several families fit (``X @ coef_ + intercept_``)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike
from sklearn.utils.validation import check_is_fitted, validate_data

from mmopt._core.validation import check_input

__all__ = ["LinearRegressorMixin"]


class LinearRegressorMixin:
    """``predict`` for a scikit-learn regressor whose ``fit`` sets ``coef_`` (one column)
    and ``intercept_``.

    The input is checked as the estimator's ``fit`` checks it: named errors for malformed
    arrays (:func:`~mmopt._core.validation.check_input`), then scikit-learn's
    ``validate_data`` in float64 (which checks ``n_features_in_``). A subclass that lets
    sparse matrices through to ``validate_data`` sets ``_sparse_predict_input = True``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.base import BaseEstimator, RegressorMixin
    >>> from mmopt._core.linear_model import LinearRegressorMixin
    >>> class Mean(LinearRegressorMixin, RegressorMixin, BaseEstimator):
    ...     def fit(self, X, y):
    ...         self.n_features_in_ = np.shape(X)[1]
    ...         self.coef_, self.intercept_ = np.zeros(self.n_features_in_), np.mean(y)
    ...         return self
    >>> Mean().fit(np.ones((3, 2)), [1.0, 2.0, 3.0]).predict(np.zeros((1, 2)))
    array([2.])
    """

    _sparse_predict_input: ClassVar[bool] = False

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predict ``X @ coef_ + intercept_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        ndarray of shape (n_samples,)
            Predictions.
        """
        check_is_fitted(self)
        check_input(X, "X", allow_sparse=self._sparse_predict_input, ndim=2)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_ + self.intercept_
