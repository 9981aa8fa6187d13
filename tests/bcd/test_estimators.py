"""BCD estimators: agreement with scikit-learn, bad input, label propagation."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import make_classification, make_moons
from sklearn.linear_model import ElasticNet, Lasso, LogisticRegression

from mmopt import Result
from mmopt.bcd import BCDElasticNet, BCDLabelPropagation, BCDLasso, BCDLogisticRegression


def _regression(seed=0, n=80, p=120):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    y = X[:, :5] @ rng.standard_normal(5) + 2.0 + 0.1 * rng.standard_normal(n)
    return X, y


def _gap_tol(y):
    # sklearn's tol is relative to ||y||^2 / n; ours is absolute, in the objective's units.
    return 1e-13 * len(y) / float(y @ y)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_lasso_equals_sklearn(sparse, fit_intercept):
    X, y = _regression()
    alpha = 0.05
    ref = Lasso(alpha=alpha, fit_intercept=fit_intercept, tol=_gap_tol(y), max_iter=100_000).fit(
        X, y
    )
    design = sp.csr_matrix(X) if sparse else X
    model = BCDLasso(alpha=alpha, fit_intercept=fit_intercept, tol=1e-13).fit(design, y)
    np.testing.assert_allclose(model.coef_, ref.coef_, atol=1e-6)
    assert model.intercept_ == pytest.approx(ref.intercept_, abs=1e-6)
    np.testing.assert_allclose(model.predict(design), ref.predict(X), atol=1e-5)
    assert isinstance(model.result_, Result) and model.n_iter_ == model.result_.nit
    assert model.dual_gap_ <= 1e-13


def test_elastic_net_equals_sklearn():
    X, y = _regression(1)
    ref = ElasticNet(alpha=0.1, l1_ratio=0.4, tol=_gap_tol(y), max_iter=100_000).fit(X, y)
    model = BCDElasticNet(alpha=0.1, l1_ratio=0.4, tol=1e-13).fit(X, y)
    np.testing.assert_allclose(model.coef_, ref.coef_, atol=1e-6)
    assert model.intercept_ == pytest.approx(ref.intercept_, abs=1e-6)


@pytest.mark.parametrize("penalty, solver", [("l2", "lbfgs"), ("l1", "saga")])
def test_binary_logistic_equals_sklearn(penalty, solver):
    X, y = make_classification(150, 10, random_state=0)
    ref = LogisticRegression(
        penalty=penalty, C=0.3, solver=solver, fit_intercept=False, tol=1e-12, max_iter=100_000
    ).fit(X, y)
    model = BCDLogisticRegression(penalty=penalty, C=0.3, fit_intercept=False, tol=1e-12).fit(X, y)
    np.testing.assert_allclose(model.coef_, ref.coef_, atol=1e-5)
    np.testing.assert_allclose(model.predict_proba(X), ref.predict_proba(X), atol=1e-5)


def test_l2_logistic_with_intercept_equals_sklearn():
    X, y = make_classification(150, 10, random_state=1)
    ref = LogisticRegression(C=0.3, tol=1e-12, max_iter=100_000).fit(X, y)
    model = BCDLogisticRegression(C=0.3, tol=1e-12).fit(X, y)
    np.testing.assert_allclose(model.coef_, ref.coef_, atol=1e-6)
    np.testing.assert_allclose(model.intercept_, ref.intercept_, atol=1e-6)


def test_multinomial_equals_sklearn_without_intercept():
    X, y = make_classification(150, 6, n_informative=4, n_classes=3, random_state=2)
    ref = LogisticRegression(C=0.5, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(X, y)
    model = BCDLogisticRegression(C=0.5, fit_intercept=False, tol=1e-7, max_iter=2000).fit(X, y)
    np.testing.assert_allclose(model.coef_, ref.coef_, atol=1e-4)
    assert model.predict(X).tolist() == ref.predict(X).tolist()


@pytest.mark.parametrize("model", [BCDLasso(), BCDElasticNet(), BCDLogisticRegression()])
def test_nan_in_X_and_wrong_y_length(model):
    X = np.ones((10, 3))
    y = np.r_[np.zeros(5), np.ones(5)]
    X_nan = X.copy()
    X_nan[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(X_nan, y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        model.fit(X, y[:-1])


@pytest.mark.parametrize("model", [BCDLasso(alpha=-1.0), BCDElasticNet(alpha=-0.5)])
def test_negative_alpha(model):
    X, y = _regression()
    with pytest.raises(ValueError, match=r"alpha must be a real number in \[0, inf\)"):
        model.fit(X, y)


def test_bad_logistic_options():
    X, y = make_classification(30, 4, random_state=0)
    with pytest.raises(ValueError, match="penalty"):
        BCDLogisticRegression(penalty="l3").fit(X, y)
    with pytest.raises(ValueError, match=r"C must be a real number in \(0, inf\)"):
        BCDLogisticRegression(C=0.0).fit(X, y)


def test_label_propagation_two_moons():
    X, y_true = make_moons(200, noise=0.05, random_state=0)
    rng = np.random.default_rng(0)
    y = -np.ones(200, dtype=int)
    labelled = rng.choice(200, 10, replace=False)
    y[labelled] = y_true[labelled]
    model = BCDLabelPropagation(n_neighbors=10).fit(X, y)
    assert (model.transduction_ == y_true).mean() >= 0.95
    np.testing.assert_allclose(model.label_distributions_.sum(1), 1.0)
    assert (model.predict(X) == y_true).mean() >= 0.95
    # Labelled samples keep their labels.
    np.testing.assert_array_equal(model.transduction_[labelled], y_true[labelled])


def test_label_propagation_needs_a_label():
    with pytest.raises(ValueError, match="labelled"):
        BCDLabelPropagation().fit(np.random.default_rng(0).random((5, 2)), -np.ones(5, dtype=int))


@pytest.mark.parametrize(
    "partition, tol, atol",
    [("clusters", 1e-15, 1e-6), ("red-black", 1e-10, 1e-4), ("greedy-tree", 1e-10, 1e-4)],
)
def test_label_propagation_partitions_agree_with_direct_solve(partition, tol, atol):
    import scipy.sparse.linalg as spla
    from sklearn.neighbors import kneighbors_graph

    from mmopt.bcd import LabelPropagationQuadratic

    n = 120
    X, y_true = make_moons(n, noise=0.05, random_state=1)
    y = -np.ones(n, dtype=int)
    y[:6] = y_true[:6]
    selection = "gsl" if partition == "greedy-tree" else "cyclic"
    model = BCDLabelPropagation(
        n_neighbors=8, partition=partition, selection=selection, tol=tol, max_iter=100_000
    ).fit(X, y)
    W = kneighbors_graph(X, 8)
    W = W.maximum(W.T)
    F = []
    for label in (0, 1):
        targets = np.where(y != -1, (y == label).astype(float), np.nan)
        datafit = LabelPropagationQuadratic(W, targets, label_weight=1e5, ridge=1e-8)
        F.append(spla.spsolve(datafit.A.tocsc(), datafit.c))
    F = np.clip(np.column_stack(F), 0, None)
    expected = F / F.sum(1, keepdims=True)
    np.testing.assert_allclose(model.label_distributions_, expected, atol=atol)
