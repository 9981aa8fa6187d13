"""scikit-learn estimators that learn their L2 penalties by minimizing the CV loss with MAID."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from mmopt._core._docstrings import DATA_PARAMS, fill_doc, references
from mmopt._core.linear_model import LinearClassifierMixin, LinearRegressorMixin
from mmopt._core.params import InstanceOf, Interval, Options, Param, ParamsValidationMixin, Rule
from mmopt._core.validation import validate_fit_data
from mmopt.bilevel.glm import (
    LogisticLowerLevel,
    RidgeLowerLevel,
    _check_labels,
    _encode,
    logistic_cv_problem,
    ridge_cv_problem,
)
from mmopt.bilevel.inner import newton_cg
from mmopt.bilevel.maid import MAID
from mmopt.bilevel.problem import SpreadPenalty

__all__ = ["BilevelLogisticRegression", "BilevelRidge"]


# The options both estimators share (the MAID options they pass on, checked before the CV
# problem is built).
_COMMON_OPTIONS = {
    # Checked by scikit-learn's check_cv when the CV problem is built.
    "cv": Param(5, InstanceOf(object, name="an int, a cross-validation generator or an "
                                            "iterable of (train, validation) pairs")),
    "fit_intercept": Param(True, bool),
    "spread_penalty": Param(0.0, Interval(float, 0, None)),
    "tol": Param(1e-5, Interval(float, 0, None)),
    "xtol": Param(None, Interval(float, 0, None), None),
    "max_iter": Param(100, Interval(int, 1, None)),
    "verbose": Param(0, Interval(int, 0, None)),
}
_PAIR = InstanceOf(tuple, list, name="a pair (low, high)")


def _is_positive_pair(bounds) -> bool:
    if len(bounds) != 2:
        return False
    positive = Interval(float, 0, None, closed="neither")
    low, high = bounds
    return positive.is_satisfied_by(low) and positive.is_satisfied_by(high) and low <= high


def _bounds_rule(name: str) -> Rule:
    return Rule((name,), lambda params: _is_positive_pair(params[name]),
                f"{name} must be a pair (low, high) of finite numbers with 0 < low <= high")


# The MAID options and results both estimators document alike.
_MAID_DOC = {
    "maid_tol": """\
tol : float, default=1e-5
    Tolerance of MAID on the projected hypergradient.""",
    "maid_options": """\
max_iter : int, default=100
    Outer iterations of MAID.
verbose : int, default=0
    Progress of MAID.""",
    "maid_counts": """\
n_iter_ : int
    MAID iterations.
n_features_in_ : int
    Number of features seen in ``fit``.""",
}


def _solver(est):
    # Barzilai-Borwein steps: a secant step fits the few hyperparameters in a handful
    # of iterations where the growth rule needs many.
    # The lower levels are GLMs solved by Newton's method, whose quadratic convergence
    # makes an accurate solve cost little more than a loose one: start accurate rather than
    # at MAID's generic eps0 = 0.1 (the first accuracy test would ask for it anyway).
    return MAID(tol=est.tol, xtol=est.xtol, max_iter=est.max_iter, verbose=est.verbose,
                step_rule="bb", eps0=1e-5, delta0=1e-3)


def _theta_penalty(est):
    return SpreadPenalty(est.spread_penalty) if est.spread_penalty > 0 else None


def _scalar_or_array(values, penalty):
    return float(values[0]) if penalty == "shared" else np.array(values)


@fill_doc(_MAID_DOC, references("salehi2023"))
class BilevelRidge(LinearRegressorMixin, ParamsValidationMixin, RegressorMixin, BaseEstimator):
    """Ridge regression whose penalty is learned by minimizing the K-fold CV error.

    The penalty ``alpha`` (one, or one per feature) minimizes the mean over folds of the
    validation mean squared error of ridge fits on the other folds, by :class:`MAID` on
    ``theta = log(alpha)`` (:func:`mmopt.bilevel.glm.ridge_cv_problem`); then the model is
    refit on all the data. The objective is that of :class:`sklearn.linear_model.Ridge`:
    ``||y - X w - b||^2 + sum_j alpha_j w_j^2``.

    Parameters
    ----------
    penalty : {"shared", "per_feature"}, default="shared"
        One penalty or one per feature.
    cv : int, cross-validation generator or iterable, default=5
        As in scikit-learn; an iterable of one ``(train, validation)`` pair is a single
        validation split.
    fit_intercept : bool, default=True
        Fit an unpenalized intercept.
    alpha_init : float, default=1.0
        Starting penalty.
    alpha_bounds : tuple (low, high), default=(1e-8, 1e8)
        Box on ``alpha`` (per-feature penalties overfit the validation folds without one).
    spread_penalty : float, default=0.0
        Weight of :class:`SpreadPenalty` on ``log(alpha)`` (per-feature penalties).
    %(maid_tol)s
    xtol : float or None, default=None
        Tolerance of MAID on ``log(alpha)``: stop when the secant (Barzilai-Borwein) estimate
        of the distance to the optimum is below it (``alpha`` to about 1%, far finer than a
        grid search); None stops on ``tol`` only.
    %(maid_options)s

    Attributes
    ----------
    alpha_ : float or ndarray of shape (n_features,)
        The learned penalty.
    coef_ : ndarray of shape (n_features,)
        Coefficients refit on all data.
    intercept_ : float
        Intercept.
    best_score_ : float
        Minus the CV mean squared error at ``alpha_`` (as ``RidgeCV.best_score_``).
    result_ : mmopt.Result
        The MAID result (``theta = log(alpha_)``).
    %(maid_counts)s

    %(references)s

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from mmopt.bilevel import BilevelRidge
    >>> X, y = load_diabetes(return_X_y=True)
    >>> model = BilevelRidge().fit(X, y)
    >>> round(model.alpha_, 4), round(-model.best_score_)
    (0.0005, 2993)
    """

    _options = {
        "penalty": Param("shared", Options({"shared", "per_feature"})),
        "alpha_init": Param(1.0, Interval(float, 0, None, closed="neither")),
        "alpha_bounds": Param((1e-8, 1e8), _PAIR),
        **_COMMON_OPTIONS,
    }
    _parameter_rules = [_bounds_rule("alpha_bounds")]

    @fill_doc(DATA_PARAMS)
    def fit(self, X: ArrayLike, y: ArrayLike) -> BilevelRidge:
        """Learn the penalty by cross-validation, then refit on all data.

        %(fit_targets)s

        Returns
        -------
        self : BilevelRidge
        """
        X, y = validate_fit_data(self, X, y)
        self._validate_params()
        low, high = (float(v) for v in self.alpha_bounds)
        solver = _solver(self)
        problem = ridge_cv_problem(
            X, y, cv=self.cv, penalty=self.penalty, fit_intercept=self.fit_intercept,
            alpha0=self.alpha_init, bounds=(np.log(low), np.log(high)),
            theta_penalty=_theta_penalty(self),
        )
        result = solver.solve(problem)
        full = RidgeLowerLevel(X, y, penalty=self.penalty, fit_intercept=self.fit_intercept)
        coef, _ = full.custom_solver(None, result.theta, 0.0)
        self.alpha_ = _scalar_or_array(np.exp(result.theta), self.penalty)
        self.coef_ = np.asarray(coef)
        self.intercept_ = float(full.intercept(coef))
        self.best_score_ = -float(result.fun)
        self.result_ = result
        self.n_iter_ = int(result.nit)
        return self


@fill_doc(_MAID_DOC, references("salehi2023"))
class BilevelLogisticRegression(
    LinearClassifierMixin, ParamsValidationMixin, ClassifierMixin, BaseEstimator
):
    """L2 logistic regression whose penalty is learned by minimizing the K-fold CV log-loss.

    ``C`` (one, one per feature, or one per weight) minimizes the mean over folds of the
    validation log-loss, by :class:`MAID` on ``theta = log(1 / C)``
    (:func:`mmopt.bilevel.glm.logistic_cv_problem`); the model is then refit on all data.
    The training objective is that of :class:`sklearn.linear_model.LogisticRegression`
    (``sum_i loss_i + 1/2 sum_j w_j^2 / C_j``, intercept not penalized; sigmoid for two
    classes, multinomial otherwise).

    Parameters
    ----------
    penalty : {"shared", "per_feature", "per_weight"}, default="shared"
        One ``C``, one per feature (shared by the classes), or one per weight.
    cv : int, cross-validation generator or iterable, default=5
        As in scikit-learn (stratified K-fold for an integer).
    fit_intercept : bool, default=True
        Fit unpenalized intercepts.
    C_init : float, default=1.0
        Starting ``C``.
    C_bounds : tuple (low, high), default=(1e-4, 1e4)
        Box on ``C``.
    spread_penalty : float, default=0.0
        Weight of :class:`SpreadPenalty` on ``log(1 / C)``.
    %(maid_tol)s
    xtol : float or None, default=None
        Tolerance of MAID on ``log(C)``: stop when the secant (Barzilai-Borwein) estimate of
        the distance to the optimum is below it (``C`` to about 1%, far finer than a grid
        search); None stops on ``tol`` only.
    %(maid_options)s

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    C_ : float or ndarray
        Learned ``C`` (shape (n_features,) per feature, (n_features, n_columns) per weight).
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
        Coefficients refit on all data.
    intercept_ : ndarray of shape (1,) or (n_classes,)
        Intercepts.
    best_score_ : float
        Minus the CV log-loss at ``C_``.
    result_ : mmopt.Result
        The MAID result (``theta = log(1 / C_)``).
    %(maid_counts)s

    %(references)s

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.preprocessing import StandardScaler
    >>> from mmopt.bilevel import BilevelLogisticRegression
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> X = StandardScaler().fit_transform(X)
    >>> model = BilevelLogisticRegression().fit(X, y)
    >>> round(model.C_, 2), round(model.best_score_, 4)
    (0.63, -0.0781)
    """

    _options = {
        "penalty": Param("shared", Options({"shared", "per_feature", "per_weight"})),
        "C_init": Param(1.0, Interval(float, 0, None, closed="neither")),
        "C_bounds": Param((1e-4, 1e4), _PAIR),
        **_COMMON_OPTIONS,
    }
    _parameter_rules = [_bounds_rule("C_bounds")]

    @fill_doc(DATA_PARAMS)
    def fit(self, X: ArrayLike, y: ArrayLike) -> BilevelLogisticRegression:
        """Learn the penalty by cross-validation, then refit on all data.

        %(fit_labels)s

        Returns
        -------
        self : BilevelLogisticRegression
        """
        X, y = validate_fit_data(self, X, y, labels=True)
        y = _check_labels(y, X.shape[0])
        self._validate_params()
        low, high = (float(v) for v in self.C_bounds)
        self.classes_, Y = _encode(y)
        solver = _solver(self)
        problem = logistic_cv_problem(
            X, y, cv=self.cv, penalty=self.penalty, fit_intercept=self.fit_intercept,
            C0=self.C_init, bounds=(-np.log(high), -np.log(low)),
            theta_penalty=_theta_penalty(self),
        )
        result = solver.solve(problem)
        full = LogisticLowerLevel(X, Y, penalty=self.penalty, fit_intercept=self.fit_intercept)
        start = self._refit_start(full, result)
        x = newton_cg(full, start, result.theta, 1e-10 * full.mu(result.theta)).x
        coef, intercept = full.coef_intercept(x)
        C = np.exp(-result.theta)
        if self.penalty == "per_weight":
            C = C.reshape(full.p, full.k)
        self.C_ = _scalar_or_array(C.ravel(), "shared") if self.penalty == "shared" else C
        self.coef_, self.intercept_ = coef, intercept
        self.best_score_ = -float(result.fun)
        self.result_ = result
        self.n_iter_ = int(result.nit)
        return self

    @staticmethod
    def _refit_start(full, result):
        # The mean of the fold solutions is close to the full-data one: a warm start.
        return np.mean(result.x_lower, axis=0) if result.x_lower else full.x0
