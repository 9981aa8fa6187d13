"""Predictions of the linear models that several families fit: ``X @ coef_ + intercept_``
for regressors, and the scores, probabilities and classes of linear classifiers."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import scipy.special
from numpy.typing import ArrayLike
from sklearn.utils.validation import check_is_fitted, validate_data

from mmopt._core.validation import check_input

__all__ = ["LinearClassifierMixin", "LinearRegressorMixin"]


class _LinearPredictor:
    """The checks and the affine map shared by the two mixins.

    The input is checked as the estimator's ``fit`` checks it: named errors for malformed
    arrays (:func:`~mmopt._core.validation.check_input`, sparse matrices let through when
    ``_sparse_predict_input``), then scikit-learn's ``validate_data`` with
    ``_predict_validation`` (float64 by default; it checks ``n_features_in_``).
    """

    _sparse_predict_input: ClassVar[bool] = False
    # Whether fit takes sparse X (scikit-learn's input tag).
    _sparse_fit_input: ClassVar[bool] = False
    _predict_validation: ClassVar[dict[str, Any]] = {"dtype": np.float64}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = self._sparse_fit_input
        return tags

    def _linear_scores(self, X: ArrayLike) -> np.ndarray:
        check_is_fitted(self)
        check_input(X, "X", allow_sparse=self._sparse_predict_input, ndim=2)
        X = validate_data(self, X, reset=False, **self._predict_validation)
        coef = self.coef_
        # (np.asarray: a sparse X times a dense array may be a matrix)
        return np.asarray(X @ (coef.T if coef.ndim == 2 else coef)) + self.intercept_


class LinearRegressorMixin(_LinearPredictor):
    """``predict`` for a scikit-learn regressor whose ``fit`` sets ``coef_`` of shape
    (n_features,) and ``intercept_``. ``X`` is array-like of shape (n_samples, n_features);
    predictions have shape (n_samples,).

    Examples
    --------
    A line fitted elsewhere, ``y = 2 x + 1``:

    >>> from sklearn.base import BaseEstimator
    >>> from mmopt._core.linear_model import LinearRegressorMixin
    >>> Line = type("Line", (LinearRegressorMixin, BaseEstimator), {"fit": lambda s, X, y: s})
    >>> line = Line()
    >>> line.n_features_in_, line.coef_, line.intercept_ = 1, np.array([2.0]), 1.0
    >>> line.predict([[0.0], [3.0]])
    array([1., 7.])
    """

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predict ``X @ coef_ + intercept_``."""
        return self._linear_scores(X).ravel()


class LinearClassifierMixin(_LinearPredictor):
    """``decision_function``, ``predict_proba``, ``predict_log_proba`` and ``predict`` for a
    logistic classifier whose ``fit`` sets ``classes_``, ``coef_`` of shape (1, n_features)
    for two classes or (n_classes, n_features) for more, and ``intercept_``.

    Two classes: the probability of the second is the sigmoid of the score; more: the
    softmax of the scores. ``X`` is array-like of shape (n_samples, n_features); scores have
    shape (n_samples,) for two classes, (n_samples, n_classes) otherwise, and probabilities
    (n_samples, n_classes).

    Examples
    --------
    >>> from sklearn.base import BaseEstimator, ClassifierMixin
    >>> from mmopt._core.linear_model import LinearClassifierMixin
    >>> class Sign(LinearClassifierMixin, ClassifierMixin, BaseEstimator):
    ...     def fit(self, X, y):
    ...         self.n_features_in_, self.classes_ = 1, np.array(["neg", "pos"])
    ...         self.coef_, self.intercept_ = np.array([[1.0]]), np.zeros(1)
    ...         return self
    >>> model = Sign().fit(None, None)
    >>> model.predict([[-2.0], [3.0]]), model.predict_proba([[0.0]])
    (array(['neg', 'pos'], dtype='<U3'), array([[0.5, 0.5]]))
    """

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """Linear scores ``X @ coef_.T + intercept_`` (a vector for two classes)."""
        scores = self._linear_scores(X)
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities (sigmoid for two classes, softmax for more)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = scipy.special.expit(scores)
            return np.column_stack([1.0 - p, p])
        return scipy.special.softmax(scores, axis=1)

    def predict_log_proba(self, X: ArrayLike) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`."""
        return np.log(self.predict_proba(X))

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The most probable class."""
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]
