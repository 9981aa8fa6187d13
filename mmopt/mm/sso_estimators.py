"""Linear models fitted by target-based surrogates: SSORegressor and SSOClassifier."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from mmopt._core._docstrings import DATA_PARAMS, fill_doc, references
from mmopt._core.anderson import ANDERSON_OPTION
from mmopt._core.params import Interval, Options, Param, ParamsValidationMixin
from mmopt._core.validation import validate_fit_data
from mmopt.mm.sso import SSO
from mmopt.mm.target_surrogate import LinearTargetModel, TargetSurrogateProblem

__all__ = ["SSOClassifier", "SSORegressor"]


# The options and attributes both estimators share, with the same meaning.
_SHARED_DOC = {
    "batch_size_inner": """\
batch_size : int, optional
    Minibatch size of SSO; None for full-batch MM.
inner : {"exact", "gd"}, optional
    Inner minimization of the surrogates (exact when None: a ridge solve on the full
    batch, the projection in target space on minibatches).""",
    "solver_options": """\
anderson : bool or AndersonAcceleration, default=True
    Safeguarded Anderson acceleration of the full-batch MM.
tol : float, default=1e-6
    Tolerance of the solver's stopping test.
max_iter : int, default=1000
    Maximum MM steps (or epochs with ``batch_size``).
random_state : int, numpy Generator or None, default=None
    Seed of the minibatch order.
verbose : int, default=0
    Progress output of the solver.""",
    "fit_counts": """\
n_target_gradients_ : int
    Per-sample gradients of the loss computed (summed over ``partial_fit`` calls).
n_features_in_ : int
feature_names_in_ : ndarray of str""",
}


class _SSOLinearModel(ParamsValidationMixin, BaseEstimator):
    """What both estimators share: options, the fit on the shared loop, ``partial_fit``."""

    _options = {
        "alpha": Param(1e-4, Interval(float, 0, None)),
        "fit_intercept": Param(True, bool),
        "eta": Param(None, None, Interval(float, 0, None, closed="neither")),
        "batch_size": Param(None, None, Interval(int, 1, None)),
        "inner": Param(None, None, Options({"exact", "gd"})),
        "n_inner": Param(10, Interval(int, 1, None)),
        "anderson": Param(True, *ANDERSON_OPTION),
        "tol": Param(1e-6, Interval(float, 0, None)),
        "max_iter": Param(1000, Interval(int, 1, None)),
        "random_state": Param(None, *SSO._options["random_state"].constraints),
        "verbose": Param(0, Interval(int, 0, None)),
    }

    def _problem(self, X, y, *, inner=None) -> TargetSurrogateProblem:
        return TargetSurrogateProblem(
            LinearTargetModel(self.fit_intercept), self._loss, X, y, eta=self.eta,
            alpha=self.alpha, inner=inner or self.inner, n_inner=self.n_inner,
            n_classes=self._n_outputs if self._loss == "softmax" else None)

    def _fit(self, X, y):
        problem = self._problem(X, y)
        solver = SSO(batch_size=self.batch_size, anderson=self.anderson, tol=self.tol,
                     max_iter=self.max_iter, random_state=self.random_state,
                     verbose=self.verbose)
        result = solver.solve(problem)
        self._set_theta(result.x, X.shape[1])
        self.result_ = result
        self.n_iter_ = int(result.nit)
        self.n_target_gradients_ = int(result.n_target_gradients)
        return self

    def _partial_fit(self, X, y):
        # One step on this minibatch: a stream has no other rows to project on, so the
        # minibatch's own surrogate, decreased by n_inner Armijo steps.
        problem = self._problem(X, y, inner="gd")
        theta = self._theta() if hasattr(self, "coef_") else problem.initial_point()
        theta = problem.surrogate_step(theta)[0]
        self._set_theta(theta, X.shape[1])
        self.n_target_gradients_ = getattr(self, "n_target_gradients_", 0) + X.shape[0]
        return self

    def _set_theta(self, theta, n_features):
        rows = theta.reshape(n_features + self.fit_intercept, -1)
        self.coef_ = np.ascontiguousarray(rows[:n_features].T)
        self.intercept_ = rows[n_features].copy() if self.fit_intercept else \
            np.zeros(rows.shape[1])

    def _theta(self):
        rows = [self.coef_.T] + ([self.intercept_[None, :]] if self.fit_intercept else [])
        return np.vstack(rows).ravel()


@fill_doc(_SHARED_DOC, references("lavington2023"))
class SSORegressor(RegressorMixin, _SSOLinearModel):
    """Linear least squares fitted by target-based surrogates (MM) or SSO.

    Minimizes ``mean_i (y_i - x_i^T w - b)^2 / 2 + alpha / 2 ||w||^2`` (the objective of
    :class:`sklearn.linear_model.SGDRegressor` with ``penalty="l2"``) with the
    :class:`~mmopt.mm.SSO` solver on a :class:`~mmopt.mm.TargetSurrogateProblem`. With the
    default ``eta = 1`` and an exact inner solve the surrogate of the squared loss is the
    loss itself, so the full-batch fit ends after one gradient; minibatches
    (``batch_size``) and ``partial_fit`` run SSO, one surrogate per minibatch.

    Parameters
    ----------
    alpha : float, default=1e-4
        L2 penalty strength (the intercept is not penalized).
    fit_intercept : bool, default=True
        Whether to fit an intercept.
    eta : float, optional
        Step in target space; 1 (the loss's smoothness) when None.
    %(batch_size_inner)s
    n_inner : int, default=10
        Armijo gradient steps per surrogate when they are used (``inner="gd"``,
        ``partial_fit``).
    %(solver_options)s

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
    intercept_ : float
    result_ : mmopt.Result
        The solver's result (not set by ``partial_fit``).
    n_iter_ : int
        Iterations of the solve.
    %(fit_counts)s

    See Also
    --------
    SSOClassifier, TargetSurrogateProblem, sklearn.linear_model.SGDRegressor

    %(references)s

    Examples
    --------
    >>> from mmopt.mm import SSORegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((100, 3))
    >>> y = X @ [1.0, 2.0, -1.0] + 0.5
    >>> model = SSORegressor(alpha=0.0).fit(X, y)
    >>> np.round(model.coef_, 6), round(model.intercept_, 6), model.n_iter_
    (array([ 1.,  2., -1.]), 0.5, 1)
    """

    _loss = "squared"
    _n_outputs = 1

    @fill_doc(DATA_PARAMS)
    def fit(self, X: ArrayLike, y: ArrayLike) -> SSORegressor:
        """Fit the model.

        %(fit_targets)s

        Returns
        -------
        self : SSORegressor
        """
        self._validate_params()
        X, y = validate_fit_data(self, X, y)
        self._fit(X, y)
        self.coef_, self.intercept_ = self.coef_[0], float(self.intercept_[0])
        return self

    def partial_fit(self, X: ArrayLike, y: ArrayLike) -> SSORegressor:
        """One SSO step on the minibatch ``(X, y)`` (a surrogate, ``n_inner`` Armijo steps).

        Returns
        -------
        self : SSORegressor
        """
        first = not hasattr(self, "coef_")
        if first:
            self._validate_params()
        X, y = validate_fit_data(self, X, y, reset=first)
        if not first:
            self.coef_, self.intercept_ = self.coef_[None, :], np.array([self.intercept_])
        self._partial_fit(X, y)
        self.coef_, self.intercept_ = self.coef_[0], float(self.intercept_[0])
        return self

    def predict(self, X: ArrayLike) -> np.ndarray:
        """``X coef_ + intercept_``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_ + self.intercept_


@fill_doc(_SHARED_DOC, references("lavington2023", "bohning1992"))
class SSOClassifier(ClassifierMixin, _SSOLinearModel):
    """Logistic (binary) or softmax (multiclass) regression by target-based surrogates.

    Minimizes the mean log-loss plus ``alpha / 2 ||W||^2`` (``SGDClassifier(loss="log_loss",
    penalty="l2")``'s objective; :class:`sklearn.linear_model.LogisticRegression` with ``C =
    1 / (alpha n_samples)``) with the :class:`~mmopt.mm.SSO` solver on a
    :class:`~mmopt.mm.TargetSurrogateProblem`: each MM step takes one gradient of the loss
    in logit space and solves a least-squares problem exactly (a factorization of ``X``
    computed once), which is Böhning's bound on the logistic Hessian; Anderson acceleration
    makes up for the bound's looseness. Minibatches (``batch_size``) and ``partial_fit`` run
    SSO.

    Parameters
    ----------
    alpha : float, default=1e-4
        L2 penalty strength (the intercepts are not penalized).
    fit_intercept : bool, default=True
        Whether to fit intercepts.
    eta : float, optional
        Step in logit space; ``1 / beta`` when None (4 for two classes, 2 for more).
    %(batch_size_inner)s
    n_inner : int, default=10
        Armijo gradient steps per surrogate when they are used.
    %(solver_options)s

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    result_ : mmopt.Result
        The solver's result (not set by ``partial_fit``).
    n_iter_ : int
    %(fit_counts)s

    See Also
    --------
    SSORegressor, TargetSurrogateProblem, sklearn.linear_model.LogisticRegression

    %(references)s

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.preprocessing import StandardScaler
    >>> from mmopt.mm import SSOClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> X = StandardScaler().fit_transform(X)
    >>> clf = SSOClassifier(alpha=1e-3).fit(X, y)
    >>> clf.coef_.shape, bool(clf.score(X, y) > 0.95)
    ((3, 4), True)
    """

    @fill_doc(DATA_PARAMS)
    def fit(self, X: ArrayLike, y: ArrayLike) -> SSOClassifier:
        """Fit the model.

        %(fit_labels)s

        Returns
        -------
        self : SSOClassifier
        """
        self._validate_params()
        X, y = validate_fit_data(self, X, y, labels=True)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"y must hold at least 2 classes; got 1 class: {self.classes_[0]!r}.")
        return self._fit(X, codes.astype(float))

    @fill_doc(DATA_PARAMS)
    def partial_fit(self, X: ArrayLike, y: ArrayLike, classes: ArrayLike | None = None
                    ) -> SSOClassifier:
        """One SSO step on the minibatch ``(X, y)``.

        Parameters
        ----------
        %(X)s
        %(y_labels)s
        classes : array-like of shape (n_classes,), optional
            All the classes; required on the first call.

        Returns
        -------
        self : SSOClassifier
        """
        first = not hasattr(self, "coef_")
        if first:
            self._validate_params()
            if classes is None:
                raise ValueError("classes must be given on the first call to partial_fit.")
            self.classes_ = np.unique(np.asarray(classes))
            if len(self.classes_) < 2:
                raise ValueError("classes must hold at least 2 classes.")
        X, y = validate_fit_data(self, X, y, labels=True, reset=first)
        check_classification_targets(y)
        unknown = np.setdiff1d(y, self.classes_)
        if unknown.size:
            raise ValueError(f"y holds labels not in classes: {unknown.tolist()!r}.")
        return self._partial_fit(X, np.searchsorted(self.classes_, y).astype(float))

    @property
    def _loss(self) -> str:
        return "logistic" if len(self.classes_) == 2 else "softmax"

    @property
    def _n_outputs(self) -> int:
        return 1 if len(self.classes_) == 2 else len(self.classes_)

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """The logits ``X coef_^T + intercept_``: shape (n_samples,) for two classes (the
        second class's), (n_samples, n_classes) for more."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        scores = X @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The class of largest probability."""
        scores = self.decision_function(X)
        best = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[best]

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities: the logistic function of the decision (two classes), the
        softmax of the decisions (more)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = 0.5 * (1.0 + np.tanh(0.5 * scores))
            return np.column_stack([1.0 - p, p])
        scores = scores - scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X: ArrayLike) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))
