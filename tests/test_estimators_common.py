"""scikit-learn's estimator checks over every mmopt estimator, and the shared conventions."""

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from mmopt import Result
from mmopt.bcd import BCDElasticNet, BCDLabelPropagation, BCDLasso, BCDLogisticRegression
from mmopt.bilevel import BilevelLogisticRegression, BilevelRidge
from mmopt.mm import MMNMF, MMRobustRegressor

MM_ESTIMATORS = [
    MMRobustRegressor(),
    MMRobustRegressor(loss="welsch"),
    MMRobustRegressor(loss="cauchy", anderson=False, fit_intercept=False),
    MMRobustRegressor(loss="welsch", scale=1.0, alpha=0.1),
    MMNMF(n_components=2, max_iter=500),
    MMNMF(n_components=2, loss="kullback-leibler", init="random", max_iter=1000),
    MMNMF(n_components=2, anderson=False, init="nndsvda", max_iter=3000),
    BilevelRidge(),
    BilevelRidge(penalty="per_feature", cv=3, fit_intercept=False),
    BilevelLogisticRegression(max_iter=30),
    BilevelLogisticRegression(penalty="per_feature", cv=3, max_iter=20, spread_penalty=0.1),
]

BCD_ESTIMATORS = [
    BCDLasso(alpha=0.1),
    BCDLasso(alpha=0.01, positive=True, fit_intercept=False),
    BCDElasticNet(alpha=0.1, l1_ratio=0.5),
    BCDLogisticRegression(),
    BCDLogisticRegression(penalty="l1", C=10.0),
    BCDLabelPropagation(),
]

ESTIMATORS = MM_ESTIMATORS + BCD_ESTIMATORS

# Expected failures, each with its reason.
EXPECTED_FAILED_CHECKS: dict = {
    BCDLabelPropagation: {
        "check_classifiers_classes": (
            "-1 marks unlabelled samples (the sklearn.semi_supervised convention), so a class "
            "labelled -1 is not a class"
        ),
    },
}


@pytest.mark.filterwarnings("ignore::mmopt.ConvergenceWarning")
@parametrize_with_checks(
    ESTIMATORS, expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS.get(type(est), {})
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("estimator", MM_ESTIMATORS, ids=lambda e: type(e).__name__)
def test_every_estimator_exposes_result_and_n_iter(estimator):
    rng = np.random.default_rng(0)
    X = rng.random((30, 4))
    y = X @ np.arange(1.0, 5.0)
    if getattr(estimator, "_estimator_type", None) == "classifier" or hasattr(
        estimator, "predict_proba"
    ):
        y = (y > np.median(y)).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = clone(estimator).fit(X, y)
    assert isinstance(fitted.result_, Result)
    assert fitted.n_iter_ == fitted.result_.nit
    assert fitted.result_.solver in ("mm", "maid")
