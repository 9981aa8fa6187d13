"""ICPRegistration: the scikit-learn conventions that apply to a (source, target) estimator.

scikit-learn's full ``check_estimator`` suite assumes ``y`` holds one label per row of ``X``
and any number of features (31 of its 48 checks feed ``y`` of shape (n,) or 2-feature
``X``); a registration's ``y`` is a second (m, 3) cloud. The checks below are the ones whose
assumptions hold.
"""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from mmopt import Result
from mmopt.registration import ICPRegistration
from mmopt.registration.se3 import se3_exp

ESTIMATORS = [ICPRegistration(), ICPRegistration(loss="l2", anderson=False)]


@pytest.mark.parametrize(
    "check",
    [check_get_params_invariance, check_set_params, check_no_attributes_set_in_init,
     check_parameters_default_constructible],
)
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=repr)
def test_sklearn_parameter_checks(estimator, check):
    check(type(estimator).__name__, estimator)


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)) * [3.0, 2.0, 1.0]
    T = se3_exp([0.1, -0.2, 0.25, 0.3, 0.1, -0.2])
    return X, X @ T[:3, :3].T + T[:3, 3], T


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=repr)
def test_fit_transform_clone_pickle(estimator, pair):
    X, Y, T = pair
    est = clone(estimator)
    with pytest.raises(NotFittedError):
        est.transform(X)
    assert est.fit(X, Y) is est
    assert isinstance(est.result_, Result) and est.n_iter_ == est.result_.nit
    np.testing.assert_allclose(est.transform_matrix_, T, atol=1e-5)
    np.testing.assert_allclose(est.transform(X), Y, atol=1e-4)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.transform(X[:5]), est.transform(X[:5]))
    assert clone(est).get_params() == estimator.get_params()
    assert not hasattr(clone(est), "transform_matrix_")


def test_bad_input(pair):
    X, Y, _ = pair
    with pytest.raises(ValueError, match="y"):
        ICPRegistration().fit(X, None)
    est = ICPRegistration().fit(X, Y)
    with pytest.raises(ValueError, match=r"X must have shape \(k, 3\)"):
        est.transform(X[:, :2])
