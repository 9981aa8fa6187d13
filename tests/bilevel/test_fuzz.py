"""Hardened inputs of the bilevel family (issue 13): bad inputs raise naming the argument,
extreme-but-valid inputs give finite results or a clear error, inputs are not modified, and
one MAID instance serves several threads on shared problems."""


import numpy as np
import pytest
from _helpers import (
    ARRAY_KINDS,
    assert_thread_safe,
    fuzz_settings,
    linear_data,
    no_numpy_warnings,
    shrinkage_problem,
)
from hypothesis import given
from hypothesis import strategies as st

from mmopt.bilevel import (
    MAID,
    BilevelLogisticRegression,
    BilevelProblem,
    BilevelRidge,
    logistic_cv_problem,
    make_tv_denoising_data,
    ridge_cv_problem,
    tv_denoising_problem,
)

FAST = fuzz_settings(8)


def _regression(seed=0, n=40, p=4):
    return linear_data(seed, n, np.linspace(1.0, 2.0, p), noise=0.5)


def _classification(seed=0, n=40, p=3):
    X, y = _regression(seed, n, p)
    return X, (y > np.median(y)).astype(int)


# ----------------------------------------------------------------------- bad inputs named
@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_estimators_bad_X_and_y_named(fuzz, kind):
    bad = fuzz.BAD_ARRAYS[kind]
    X, y = _regression()
    Xc, yc = _classification()
    for estimator, (A, b) in ((BilevelRidge(max_iter=5), (X, y)),
                              (BilevelLogisticRegression(max_iter=5), (Xc, yc))):
        error = fuzz.raises_naming(estimator.fit, "X", bad, b)
        assert "setting an array element" not in str(error)
        if kind in ("nan", "inf") and estimator.__class__ is BilevelLogisticRegression:
            continue  # NaN labels are labels to sklearn's LabelEncoder; checked below
        error = fuzz.raises_naming(estimator.fit, "y", A, bad)
        assert "setting an array element" not in str(error)


@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_cv_problems_bad_X_and_y_named(fuzz, kind):
    bad = fuzz.BAD_ARRAYS[kind]
    X, y = _regression()
    Xc, yc = _classification()
    fuzz.raises_naming(ridge_cv_problem, "X", bad, y)
    fuzz.raises_naming(ridge_cv_problem, "y", X, bad)
    fuzz.raises_naming(logistic_cv_problem, "X", bad, yc)
    if kind not in ("nan", "inf"):
        fuzz.raises_naming(logistic_cv_problem, "y", Xc, bad)


def test_ragged_lists_name_the_argument(fuzz):
    # Issue 13: NumPy's "setting an array element with a sequence" named nothing.
    ragged = [[1.0, 2.0], [3.0]]
    fuzz.raises_naming(BilevelRidge().fit, "X", ragged, [1.0, 2.0])
    fuzz.raises_naming(BilevelRidge().fit, "y", [[1.0], [2.0]], [[1.0], [2.0, 3.0]])
    fuzz.raises_naming(BilevelLogisticRegression().fit, "X", ragged, [0, 1])
    fuzz.raises_naming(BilevelLogisticRegression().fit, "y", [[1.0], [2.0]], [[0], [1, 1]])


@pytest.mark.parametrize(
    "cv",
    [
        [(np.arange(10), np.arange(35, 45))],  # past the end
        [(np.arange(10), np.array([-1, 3]))],  # negative
        [(np.arange(10), np.array([], dtype=int))],  # empty validation set
        [(np.arange(10), np.array([1.5, 2.0]))],  # not integers
        [(np.ones(5, bool), np.arange(3))],  # mask of the wrong length
        [(np.arange(10),)],  # not a pair
        1,  # too few folds
        1000,  # more folds than samples
    ],
)
def test_bad_cv_named(fuzz, cv):
    # Issue 13: indices out of range gave IndexError from inside the problem.
    X, y = _regression()
    fuzz.raises_naming(BilevelRidge(cv=cv).fit, "cv", X, y)
    fuzz.raises_naming(ridge_cv_problem, "cv", X, y, cv=cv)


def test_boolean_masks_are_valid_cv():
    X, y = _regression()
    mask = np.arange(40) < 30
    problem = ridge_cv_problem(X, y, cv=[(mask, ~mask)])
    assert problem.n_instances == 1


def test_extreme_targets_named(fuzz):
    # Issue 13: 1e300 targets gave "lower[0].mu(theta) must be a positive finite ...".
    X, y = _regression()
    fuzz.raises_naming(BilevelRidge().fit, "y", X, y * 1e300)
    fuzz.raises_naming(BilevelRidge().fit, "X", X * 1e300, y)
    fuzz.raises_naming(ridge_cv_problem, "y", X, y * 1e300)


def test_continuous_targets_rejected_for_logistic(fuzz):
    # Issue 13: logistic_cv_problem accepted a continuous y silently.
    X, y = _regression()
    fuzz.raises_naming(logistic_cv_problem, "y", X, y)
    fuzz.raises_naming(BilevelLogisticRegression().fit, "y", X, y)
    fuzz.raises_naming(logistic_cv_problem, "y", X, np.zeros(40))  # one class
    fuzz.raises_naming(logistic_cv_problem, "y", X, np.zeros(39, int))


@pytest.mark.parametrize(
    "kwargs, name",
    [({"noise": -1.0}, "noise"), ({"noise": np.nan}, "noise"), ({"size": 0}, "size"),
     ({"size": 1}, "size"), ({"size": 2.5}, "size"), ({"n_images": 0}, "n_images"),
     ({"n_images": -2}, "n_images"), ({"size": 10_000}, "size")],
)
def test_make_tv_denoising_data_checks_its_arguments(fuzz, kwargs, name):
    # Issue 13: noise=-1, size=0 and n_images=0 were accepted.
    fuzz.raises_naming(make_tv_denoising_data, name, **kwargs)


def test_tv_problem_bad_images_named(fuzz):
    noisy, clean = make_tv_denoising_data(size=6)
    for kind in ("ragged", "nan", "string", "none"):
        fuzz.raises_naming(tv_denoising_problem, "noisy", [fuzz.BAD_ARRAYS[kind]], clean)
    fuzz.raises_naming(tv_denoising_problem, "clean", noisy, [np.ones((6, 6)) * np.nan])


@pytest.mark.parametrize(
    "kwargs, name",
    [({"penalty": "bogus"}, "penalty"), ({"alpha_init": 0.0}, "alpha_init"),
     ({"alpha_bounds": (1.0, 0.1)}, "alpha_bounds"), ({"tol": -1.0}, "tol"),
     ({"max_iter": 0}, "max_iter")],
)
def test_ridge_bad_options_named(fuzz, kwargs, name):
    fuzz.raises_naming(BilevelRidge(**kwargs).fit, name, *_regression())


def _estimator_invalid_cases():
    from mmopt._core.params import constraints_of, invalid_values

    return [pytest.param(cls, option, value, error, id=f"{cls.__name__}-{option}-{value!r}")
            for cls in (BilevelRidge, BilevelLogisticRegression)
            for option, value, error in invalid_values(constraints_of(cls)[0])]


@pytest.mark.parametrize("cls, option, value, error", _estimator_invalid_cases())
def test_estimator_options_reject_their_table_invalid_values(cls, option, value, error):
    X, y = _classification() if cls is BilevelLogisticRegression else _regression()
    with pytest.raises(error, match=option):
        cls(**{option: value}).fit(X, y)


@pytest.mark.parametrize("option", ["alpha_bounds", "C_bounds"])
@pytest.mark.parametrize("bounds", [(1.0, 0.1), (0.0, 1.0), (1.0,), (1.0, np.inf), ("a", 1.0)])
def test_estimator_bounds_rule(option, bounds):
    X, y = _regression()
    cls = BilevelRidge if option == "alpha_bounds" else BilevelLogisticRegression
    if cls is BilevelLogisticRegression:
        X, y = _classification()
    with pytest.raises(ValueError, match=option):
        cls(**{option: bounds}).fit(X, y)


@pytest.mark.parametrize(
    "option, value",
    [("eps0", 0.0), ("eta", 1.0), ("tau", 0.0), ("accuracy_growth", 0.5), ("accuracy", "bogus"),
     ("step_rule", "bogus"), ("max_cost", 0), ("inner_solver", "bogus"), ("tol", np.nan)],
)
def test_maid_bad_options_named(fuzz, option, value):
    fuzz.raises_naming(MAID(**{option: value}).solve, option, ridge_cv_problem(*_regression()))


@pytest.mark.parametrize("kind", ["ragged", "string", "nan", "inf", "complex", "empty", "none"])
def test_bilevel_problem_bad_arrays_named(fuzz, kind):
    bad = fuzz.BAD_ARRAYS[kind]
    fuzz.raises_naming(shrinkage_problem, "theta0", theta0=bad)
    if kind != "none":  # None means the default start in these two
        fuzz.raises_naming(shrinkage_problem, "x0", x0=bad)
        fuzz.raises_naming(MAID().solve, "x0", shrinkage_problem(), bad)


def test_bilevel_problem_bad_parts_named(fuzz):
    problem = shrinkage_problem()
    lower, upper = problem.lowers[0], problem.uppers[0]
    fuzz.raises_naming(BilevelProblem, "lower", None, upper, theta0=1.0)
    fuzz.raises_naming(BilevelProblem, "upper", lower, 3, theta0=1.0)
    fuzz.raises_naming(BilevelProblem, "bounds", lower, upper, theta0=1.0, bounds=(2.0, 1.0))


# -------------------------------------------------------------------- extreme but valid
@FAST
@given(exponent=st.integers(-100, 100), x_exponent=st.integers(-50, 100))
def test_ridge_extreme_scales_finite_and_inputs_unchanged(fuzz, exponent, x_exponent):
    X, y = _regression(n=20, p=3)
    X, y = X * 10.0**x_exponent, y * 10.0**exponent
    before = fuzz.snapshot(X, y)
    with no_numpy_warnings():
        try:
            model = BilevelRidge(max_iter=10).fit(X, y)
        except ValueError as error:
            # Refused only beyond the documented magnitude, naming the culprit.
            assert ("X" in str(error) and x_exponent > 49) or ("y" in str(error)
                                                             and exponent > 49)
            return
        finally:
            fuzz.assert_unchanged(before, X, y)
    assert np.all(np.isfinite(model.coef_)) and np.isfinite(model.intercept_)
    assert np.all(np.isfinite(model.alpha_)) and np.isfinite(model.best_score_)
    fuzz.assert_honest(model.result_)


@FAST
@given(exponent=st.integers(-100, 100), labels=st.sampled_from(["int", "str", "float"]))
def test_logistic_extreme_feature_scales(fuzz, exponent, labels):
    X, y = _classification(n=20)
    X = X * 10.0**exponent
    y = {"int": y, "str": np.where(y == 1, "yes", "no"), "float": y.astype(float)}[labels]
    before = fuzz.snapshot(X, y)
    with no_numpy_warnings():
        try:
            model = BilevelLogisticRegression(max_iter=5).fit(X, y)
        except ValueError as error:
            assert "X" in str(error) and exponent > 49
            return
        finally:
            fuzz.assert_unchanged(before, X, y)
    assert np.all(np.isfinite(model.coef_)) and np.all(np.isfinite(model.intercept_))
    fuzz.assert_honest(model.result_)
    assert set(model.predict(X)) <= set(np.unique(y))


# -------------------------------------------------------------------------- reentrancy
def test_one_maid_on_shared_glm_problems_from_threads():
    # The logistic problems cache the last point's probabilities: concurrent solves of the
    # same problem must not read each other's cache (the multinomial one uses the Cython
    # kernel too).
    X, y = _regression(n=45)
    classes3 = np.digitize(y, np.quantile(y, [1 / 3, 2 / 3]))
    problems = [
        ridge_cv_problem(X, y, cv=3),
        logistic_cv_problem(X, (y > 0).astype(int), cv=3),
        logistic_cv_problem(X, classes3, cv=3),
    ]
    solver = MAID(max_iter=8)
    with no_numpy_warnings():
        assert_thread_safe(solver, problems, ["nit", "fun", "x", "cost"])
    assert solver.callback is None


def test_maid_budget_stop_with_a_user_callback_leaves_the_solver_unchanged():
    seen = []
    solver = MAID(max_cost=50, callback=lambda r: seen.append(r.nit), max_iter=1000)
    before = dict(vars(solver))
    with no_numpy_warnings():
        res = solver.solve(ridge_cv_problem(*_regression(), cv=3))
    assert res.status == 1 and "max_cost" in res.message and seen
    assert vars(solver) == before
