import dataclasses
import pickle
import warnings

import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone

from mmopt import AndersonAcceleration, ConvergenceWarning, Result
from mmopt._core.params import constraints_of, invalid_values
from mmopt.datasets import load_diabetes_with_outliers, make_regression_with_outliers
from mmopt.mm.robust_regression import MMRobustRegressor, RobustRegressionProblem, mad_scale
from mmopt.mm.solver import MMSolver

LOSSES = ("huber", "cauchy", "welsch")


def _data(seed=0, n=60, p=4, outliers=6):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    y = X @ rng.uniform(-3, 3, p) + 1.0 + 0.5 * rng.standard_normal(n)
    y[:outliers] += 25.0 * rng.choice([-1.0, 1.0], outliers)
    sw = rng.uniform(0.5, 2.0, n)
    return X, y, sw


# --------------------------------------------------------------------------------------------
# Correctness against references that share no code with mmopt
# --------------------------------------------------------------------------------------------
def _huber_objective_and_gradient(X, y, sw, scale, c, alpha):
    """Huber objective over (coef, intercept), written from the formula."""

    def fun(x):
        coef, b = x[:-1], x[-1]
        u = (y - X @ coef - b) / scale
        a = np.abs(u)
        rho = np.where(a <= c, 0.5 * u**2, c * a - 0.5 * c**2)
        psi = np.clip(u, -c, c)
        value = sw @ rho + 0.5 * alpha * coef @ coef
        grad = np.concatenate([-(X.T @ (sw * psi)) / scale + alpha * coef, [-(sw @ psi) / scale]])
        return value, grad

    return fun


@pytest.mark.parametrize("alpha", [0.0, 3.0])
def test_huber_solution_satisfies_kkt(alpha):
    X, y, sw = _data(0)
    scale, c = 0.8, 1.345
    problem = RobustRegressionProblem(
        X, y, loss="huber", scale=scale, alpha=alpha, sample_weight=sw
    )
    res = MMSolver(tol=1e-12, max_iter=2000).solve(problem)
    assert res.success
    coef, b = res.x[:-1], res.x[-1]
    psi = np.clip((y - X @ coef - b) / scale, -c, c)
    lhs = X.T @ (sw * psi) / scale
    np.testing.assert_allclose(lhs, alpha * coef, atol=1e-9 * (1 + np.abs(lhs).max()))
    assert abs(sw @ psi) < 1e-9 * sw.sum()  # the intercept's condition


def test_huber_matches_lbfgs():
    X, y, sw = _data(1)
    scale, c, alpha = 1.5, 1.345, 0.5
    fun = _huber_objective_and_gradient(X, y, sw, scale, c, alpha)
    ref = scipy.optimize.minimize(
        fun,
        np.zeros(X.shape[1] + 1),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-11, "ftol": 1e-15, "maxiter": 10_000},
    )
    problem = RobustRegressionProblem(X, y, scale=scale, alpha=alpha, sample_weight=sw)
    res = MMSolver(tol=1e-12).solve(problem)
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-6, atol=1e-6)
    assert res.fun <= ref.fun + 1e-10 * abs(ref.fun)
    assert res.fun == pytest.approx(fun(res.x)[0], rel=1e-13)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_huge_c_is_least_squares(loss, fit_intercept):
    X, y, sw = _data(2)
    problem = RobustRegressionProblem(
        X, y, loss=loss, c=1e8, scale=1.0, fit_intercept=fit_intercept, sample_weight=sw
    )
    # Start away from the least-squares default start, so the MM iteration does the work.
    res = MMSolver(tol=1e-12).solve(problem, x0=np.full(problem.n_params, 5.0))
    design = np.hstack([X, np.ones((len(y), 1))]) if fit_intercept else X
    root = np.sqrt(sw)[:, None]
    expected = np.linalg.lstsq(design * root, y * root[:, 0], rcond=None)[0]
    np.testing.assert_allclose(res.x, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(problem.initial_point(), expected, rtol=1e-9, atol=1e-9)


def test_huge_c_with_ridge_is_ridge():
    X, y, _ = _data(3)
    scale, alpha = 2.0, 4.0
    problem = RobustRegressionProblem(X, y, c=1e8, scale=scale, alpha=alpha)
    res = MMSolver(tol=1e-12).solve(problem, x0=np.ones(problem.n_params))
    # sum r^2 / (2 scale^2) + alpha/2 |coef|^2: ridge with penalty alpha * scale^2, free
    # intercept.
    Xc, yc = X - X.mean(0), y - y.mean()
    coef = np.linalg.solve(Xc.T @ Xc + alpha * scale**2 * np.eye(X.shape[1]), Xc.T @ yc)
    np.testing.assert_allclose(res.x[:-1], coef, rtol=1e-9)
    assert res.x[-1] == pytest.approx(y.mean() - X.mean(0) @ coef, rel=1e-9)


@pytest.mark.parametrize("loss", ["cauchy", "welsch"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_redescending_losses_recover_coefficients(loss, seed):
    X, y, coef, mask = make_regression_with_outliers(
        200, 5, outlier_fraction=0.3, random_state=seed
    )
    model = MMRobustRegressor(loss=loss).fit(X, y)
    design = np.hstack([X, np.ones((len(y), 1))])
    ols = np.linalg.lstsq(design, y, rcond=None)[0][:-1]
    robust_error = np.linalg.norm(model.coef_ - coef)
    ols_error = np.linalg.norm(ols - coef)
    # Noise 1 and 140 clean points: the error of a least-squares fit of the clean points
    # alone is about sqrt(5 / 140) = 0.19.
    assert robust_error < 0.5
    assert robust_error < ols_error / 20
    assert abs(model.intercept_) < 0.3
    np.testing.assert_array_equal(model.outliers_, mask)


# --------------------------------------------------------------------------------------------
# Anderson acceleration
# --------------------------------------------------------------------------------------------
def _fit_pair(X, y, loss, scale):
    fits = []
    for anderson in (False, True):
        model = MMRobustRegressor(
            loss=loss, scale=scale, anderson=anderson, tol=1e-10, max_iter=5000
        )
        fits.append(model.fit(X, y))
    return fits


def _assert_not_worse(plain, fast):
    assert fast.result_.success and plain.result_.success
    assert fast.result_.fun <= plain.result_.fun + 1e-12 * abs(plain.result_.fun)


# Plain IRLS contracts at a rate set by the points outside the quadratic zone of the loss. At
# the MAD scale it is already fast (9-17 iterations to tol=1e-10; rate 0.1-0.2 per step) and
# Anderson saves 25-40% of the iterations, about what the Krylov (GMRES) bound allows for a
# map with that spectrum. Where plain MM is slow -- a scale below the noise, the LAD-like
# regime -- Anderson needs at most half the iterations. Both regimes are tested.
def _problem_class(dataset, seed):
    if dataset == "diabetes":
        X, y, _ = load_diabetes_with_outliers(0.1, random_state=seed)
    else:
        X, y, _, _ = make_regression_with_outliers(200, 5, outlier_fraction=0.3, random_state=seed)
    return X, y


@pytest.mark.parametrize("dataset", ["diabetes", "generated"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("seed", [0, 1])
def test_anderson_halves_iterations_when_mm_is_slow(dataset, loss, seed):
    X, y = _problem_class(dataset, seed)
    scale = MMRobustRegressor(loss=loss).fit(X, y).scale_ / 5
    plain, fast = _fit_pair(X, y, loss, scale)
    assert plain.n_iter_ >= 25  # the regime this test is about
    assert fast.n_iter_ <= plain.n_iter_ / 2
    assert fast.result_.n_evaluations <= plain.result_.n_evaluations * 0.6
    _assert_not_worse(plain, fast)


@pytest.mark.parametrize("dataset", ["diabetes", "generated"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_anderson_never_worse_at_default_scale(dataset, loss, seed):
    X, y = _problem_class(dataset, seed)
    scale = MMRobustRegressor(loss=loss).fit(X, y).scale_
    plain, fast = _fit_pair(X, y, loss, scale)
    _assert_not_worse(plain, fast)
    if dataset == "diabetes":
        # On the generated problem plain Huber IRLS sometimes needs only 7-9 steps, and
        # Anderson one more.
        assert fast.n_iter_ < plain.n_iter_


@pytest.mark.filterwarnings("ignore::mmopt.ConvergenceWarning")
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    loss=st.sampled_from(LOSSES),
    log_scale=st.floats(-2.0, 1.0),
    anderson=st.booleans(),
    memory=st.integers(1, 8),
    alpha=st.sampled_from([0.0, 1.0]),
)
def test_objective_never_increases(seed, loss, log_scale, anderson, memory, alpha):
    X, y, sw = _data(seed, n=40, p=3, outliers=8)
    problem = RobustRegressionProblem(
        X, y, loss=loss, scale=10.0**log_scale, alpha=alpha, sample_weight=sw
    )
    option = AndersonAcceleration(memory=memory) if anderson else False
    res = MMSolver(anderson=option, tol=1e-10, max_iter=200).solve(problem)
    fun = np.concatenate([[problem.objective(problem.initial_point())], res.history["fun"]])
    assert np.all(np.diff(fun) <= 1e-12 * np.abs(fun[:-1]) + 1e-15)


# --------------------------------------------------------------------------------------------
# The problem object
# --------------------------------------------------------------------------------------------
def test_mm_step_returns_map_and_objective():
    X, y, sw = _data(4)
    problem = RobustRegressionProblem(X, y, loss="welsch", scale=0.7, alpha=0.3, sample_weight=sw)
    x = np.linspace(-1, 1, problem.n_params)
    g, f = problem.mm_step(x)
    assert f == problem.objective(x)
    np.testing.assert_array_equal(g, problem.surrogate_minimizer(x))
    # G(x) minimizes the quadratic majorizer: the objective does not increase.
    assert problem.objective(g) <= f
    coef, intercept = problem.split(x)
    np.testing.assert_allclose(problem.residuals(x), y - X @ coef - intercept)
    np.testing.assert_allclose(
        problem.weights(x), np.exp(-(((y - X @ coef - intercept) / 0.7 / 2.9846) ** 2))
    )


def test_problem_is_frozen_read_only_and_picklable():
    X, y, sw = _data(5)
    problem = RobustRegressionProblem(X, y, sample_weight=sw)
    for array in (problem.X, problem.y, problem.sample_weight, problem.initial_point()):
        assert not array.flags.writeable
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.scale = 2.0
    clone_ = pickle.loads(pickle.dumps(problem))
    np.testing.assert_array_equal(clone_.solve().x, problem.solve().x)
    assert "n_samples=60" in repr(problem)


def test_singular_weighted_gram_falls_back_to_least_squares():
    rng = np.random.default_rng(0)
    # More features than samples: the Gram matrix is singular at every step.
    X, y = rng.standard_normal((6, 15)), rng.standard_normal(6)
    res = RobustRegressionProblem(X, y, loss="welsch", scale=0.5).solve(tol=1e-10)
    assert res.success and np.all(np.isfinite(res.x))
    # Welsch weights that underflow to 0: the surrogate is flat and the iterate stays put.
    X, y, _ = _data(6)
    problem = RobustRegressionProblem(X, y, loss="welsch", scale=1e-200)
    x0 = np.full(problem.n_params, 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or LinAlg warnings either
        res = problem.solve(x0=x0)
    np.testing.assert_array_equal(res.x, x0)
    assert res.fun == pytest.approx(len(y) * 2.9846**2 / 2)


# --------------------------------------------------------------------------------------------
# Robust scale
# --------------------------------------------------------------------------------------------
def test_mad_scale_values():
    rng = np.random.default_rng(0)
    r = rng.standard_normal(100_001)
    assert mad_scale(r) == pytest.approx(1.0, rel=0.02)  # consistent at the normal
    assert mad_scale(r + 50.0) == pytest.approx(mad_scale(r))
    assert mad_scale(r + 50.0, center="zero") == pytest.approx(1.4826 * 50.0, rel=0.01)
    contaminated = np.concatenate([r[:1000], np.full(400, 1e6)])
    assert mad_scale(contaminated) < 2.0


def test_mad_scale_weights_equal_repetition():
    rng = np.random.default_rng(1)
    r = rng.standard_normal(15)
    sw = rng.integers(0, 4, 15)
    for center in ("median", "zero"):
        assert mad_scale(r, sample_weight=sw, center=center) == pytest.approx(
            mad_scale(np.repeat(r, sw), center=center), rel=1e-15
        )


def test_mad_scale_zero_mad_fallbacks():
    # More than half of the residuals exactly 0: small, positive, finite.
    r = np.array([0.0] * 6 + [1.0, -2.0, 5.0])
    scale = mad_scale(r)
    assert 0.0 < scale < 1e-6
    assert np.all(np.isfinite(r / scale))
    # Every residual 0: no information, any positive scale does; 1.0.
    assert mad_scale(np.zeros(4)) == 1.0
    # Never so small that r / scale overflows.
    assert np.isfinite(1e300 / mad_scale(np.array([0.0, 0.0, 1e-300, 1e300])))


def test_exact_fit_of_most_points():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 2))
    y = X @ [1.5, -2.0] + 3.0
    y[:10] += rng.choice([-1.0, 1.0], 10) * (30.0 + 30.0 * rng.random(10))
    for loss in ("huber", "welsch"):
        model = MMRobustRegressor(loss=loss, tol=1e-10).fit(X, y)
        assert model.scale_ > 0 and np.isfinite(model.scale_)
        np.testing.assert_allclose(model.coef_, [1.5, -2.0], atol=1e-6)
        assert model.intercept_ == pytest.approx(3.0, abs=1e-6)
    # Every point fitted exactly.
    model = MMRobustRegressor(loss="welsch").fit(X, X @ [1.5, -2.0] + 3.0)
    np.testing.assert_allclose(model.coef_, [1.5, -2.0])
    assert model.scale_ > 0


# --------------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------------
def test_fitted_attributes():
    X, y, _ = load_diabetes_with_outliers(0.1, random_state=0)
    model = MMRobustRegressor(loss="welsch").fit(X, y)
    assert model.coef_.shape == (10,) and isinstance(model.intercept_, float)
    assert model.n_features_in_ == 10
    assert isinstance(model.result_, Result) and model.n_iter_ == model.result_.nit
    assert model.weights_.shape == (442,) and np.all((model.weights_ >= 0) & (model.weights_ <= 1))
    r = y - model.predict(X)
    np.testing.assert_array_equal(model.outliers_, np.abs(r) > 2.9846 * model.scale_)
    np.testing.assert_allclose(model.weights_, np.exp(-((r / model.scale_ / 2.9846) ** 2)))
    np.testing.assert_allclose(model.result_.x, np.r_[model.coef_, model.intercept_])
    fixed = MMRobustRegressor(scale=40.0, c=2.0).fit(X, y)
    assert fixed.scale_ == 40.0
    np.testing.assert_array_equal(fixed.outliers_, np.abs(y - fixed.predict(X)) > 80.0)


def test_max_iter_warns():
    X, y, _ = load_diabetes_with_outliers(0.1, random_state=0)
    with pytest.warns(ConvergenceWarning):
        model = MMRobustRegressor(max_iter=1, tol=0.0).fit(X, y)
    # One iteration per solve: each Huber pass of the scale estimate and the final fit.
    stages = model.result_.nit_per_stage
    assert np.all(stages == 1) and model.n_iter_ == stages.size >= 2
    assert model.result_.status == 1


@pytest.mark.parametrize("loss", ["huber", "welsch"])
def test_iterations_and_history_cover_every_solve_of_the_fit(loss):
    X, y, _ = load_diabetes_with_outliers(0.1, random_state=1)
    model = MMRobustRegressor(loss=loss).fit(X, y)
    res = model.result_
    stages = res.nit_per_stage
    assert stages.size >= 2  # at least one Huber pass for the scale, then the final fit
    assert model.n_iter_ == res.nit == stages.sum()
    for key, column in res.history.items():
        assert column.shape == (res.nit,), key
    np.testing.assert_array_equal(res.history["stage"], np.repeat(np.arange(stages.size), stages))
    assert np.all(np.diff(res.history["time"]) >= 0)
    assert np.all(np.diff(res.history["n_evaluations"]) > 0)
    assert res.n_evaluations == res.history["n_evaluations"][-1]
    final = res.history["stage"] == stages.size - 1
    np.testing.assert_array_equal(res.history["scale"][final], model.scale_)
    assert res.history["fun"][-1] == res.fun


def test_fixed_scale_chain_matches_the_solves_run_by_hand():
    # Welsch at a fixed scale starts from a Huber fit at that scale: two solves.
    X, y, _ = load_diabetes_with_outliers(0.1, random_state=0)
    model = MMRobustRegressor(loss="welsch", scale=30.0).fit(X, y)
    huber = MMSolver(max_iter=500).solve(RobustRegressionProblem(X, y, scale=30.0))
    welsch = MMSolver(max_iter=500).solve(
        RobustRegressionProblem(X, y, loss="welsch", scale=30.0), x0=huber.x
    )
    assert list(model.result_.nit_per_stage) == [huber.nit, welsch.nit]
    assert model.n_iter_ == huber.nit + welsch.nit
    assert model.result_.n_evaluations == huber.n_evaluations + welsch.n_evaluations
    assert model.result_.n_accepted == huber.n_accepted + welsch.n_accepted
    np.testing.assert_array_equal(
        model.result_.history["fun"], np.r_[huber.history["fun"], welsch.history["fun"]]
    )
    np.testing.assert_array_equal(model.result_.x, welsch.x)


def test_every_invalid_option_value_is_refused_naming_it():
    X, y, _ = _data(0, n=30)
    table, _ = constraints_of(MMRobustRegressor)
    cases = invalid_values(table)
    assert {name for name, _, _ in cases} == set(table)
    for name, value, error in cases:
        with pytest.raises(error, match=rf"\b{name}\b"):
            MMRobustRegressor(**{name: value}).fit(X, y)


def test_anderson_option_object_and_other_pointwise_losses():
    X, y, _ = load_diabetes_with_outliers(0.1, random_state=0)
    option = AndersonAcceleration(memory=2)
    model = MMRobustRegressor(loss="welsch", anderson=option).fit(X, y)
    assert model.anderson is option and option.n_accepted == 0  # never mutated
    assert model.result_.n_accepted > 0
    tukey = MMRobustRegressor(loss="tukey").fit(X, y)
    welsch = MMRobustRegressor(loss="welsch").fit(X, y)
    # Two redescending losses ignore the same gross outliers.
    np.testing.assert_allclose(tukey.coef_, welsch.coef_, rtol=0.1, atol=0.1 * np.abs(
        welsch.coef_).max())
    with pytest.raises(ValueError, match="loss must be"):
        MMRobustRegressor(loss="trimmed").fit(X, y)


def test_sample_weight_matches_repetition():
    X, y, _ = _data(7, n=30)
    sw = np.random.default_rng(7).integers(0, 4, 30)
    for loss in LOSSES:
        a = MMRobustRegressor(loss=loss, tol=1e-12).fit(X, y, sample_weight=sw)
        b = MMRobustRegressor(loss=loss, tol=1e-12).fit(np.repeat(X, sw, 0), np.repeat(y, sw))
        assert a.scale_ == pytest.approx(b.scale_, rel=1e-9)
        np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-8, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
def _bad(key, value):
    X, y, sw = _data(8, n=10, p=2, outliers=0)
    args = {"X": X, "y": y, "sample_weight": sw}
    args[key] = value(X, y, sw) if callable(value) else value
    return args


BAD_DATA = [
    ("X", lambda X, y, sw: X[:, 0], ValueError, "X must be 2-dimensional"),
    ("X", lambda X, y, sw: np.where(np.eye(10, 2) > 0, np.nan, X), ValueError, "X must not"),
    ("X", "abc", TypeError, "X must be an array of real numbers"),
    ("y", lambda X, y, sw: y[:-1], ValueError, r"y must have shape \(n_samples,\) = \(10,\)"),
    ("y", lambda X, y, sw: np.r_[y[:-1], np.inf], ValueError, "y must not contain NaN"),
    ("y", lambda X, y, sw: y[:, None], ValueError, "y must be 1-dimensional"),
    ("sample_weight", lambda X, y, sw: sw[:-1], ValueError, r"sample_weight must have shape"),
    ("sample_weight", lambda X, y, sw: -sw, ValueError, "sample_weight must be non-negative"),
    ("sample_weight", lambda X, y, sw: 0 * sw, ValueError, "sample_weight .* zero"),
]
BAD_OPTIONS = [
    ({"scale": 0.0}, ValueError, "scale must be > 0"),
    ({"scale": -1.0}, ValueError, "scale must be > 0"),
    ({"scale": np.nan}, ValueError, "scale must be finite"),
    ({"loss": "trimmed"}, ValueError, "loss must be one of"),
    ({"loss": "bogus"}, ValueError, "loss must be one of"),
    ({"alpha": -1.0}, ValueError, "alpha must be >= 0"),
    ({"c": 0.0}, ValueError, "c must be > 0"),
    ({"fit_intercept": "yes"}, TypeError, "fit_intercept must be True or False"),
]


@pytest.mark.parametrize("key, value, error, match", BAD_DATA)
def test_problem_rejects_bad_data(key, value, error, match):
    with pytest.raises(error, match=match):
        RobustRegressionProblem(**_bad(key, value))


@pytest.mark.parametrize("options, error, match", BAD_OPTIONS)
def test_problem_rejects_bad_options(options, error, match):
    X, y, _ = _data(8, n=10, p=2)
    with pytest.raises(error, match=match):
        RobustRegressionProblem(X, y, **options)


@pytest.mark.parametrize(
    "options, error",
    [(options, error) for options, error, _ in BAD_OPTIONS]
    + [
        ({"anderson": "no"}, TypeError),
        ({"tol": -1.0}, ValueError),
        ({"max_iter": 0}, ValueError),
    ],
)
def test_estimator_rejects_bad_options(options, error):
    X, y, _ = _data(8, n=10, p=2)
    (name,) = options
    with pytest.raises(error, match=rf"^{name} must be"):
        MMRobustRegressor(**options).fit(X, y)


@pytest.mark.parametrize(
    "key, value, error, match", [b for b in BAD_DATA if b[0] == "sample_weight"]
)
def test_estimator_rejects_bad_sample_weight(key, value, error, match):
    args = _bad(key, value)
    with pytest.raises(error, match=match):
        MMRobustRegressor().fit(args["X"], args["y"], sample_weight=args["sample_weight"])


def test_mad_scale_rejects_bad_input():
    with pytest.raises(ValueError, match="residuals must be 1-dimensional"):
        mad_scale(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="center must be one of"):
        mad_scale([1.0, 2.0], center="mean")
    with pytest.raises(ValueError, match="sample_weight .* zero"):
        mad_scale([1.0, 2.0], sample_weight=[0, 0])


def test_inputs_never_mutated():
    X, y, sw = _data(9)
    X_copy, y_copy, sw_copy = X.copy(), y.copy(), sw.copy()
    for loss in LOSSES:
        model = MMRobustRegressor(loss=loss, alpha=0.1).fit(X, y, sample_weight=sw)
        model.predict(X)
        problem = RobustRegressionProblem(X, y, loss=loss, sample_weight=sw)
        problem.solve()
        mad_scale(y, sample_weight=sw)
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(y, y_copy)
    np.testing.assert_array_equal(sw, sw_copy)
    assert X.flags.writeable and y.flags.writeable and sw.flags.writeable
    # Fitted attributes belong to the estimator: writing to them must not touch the data.
    model.coef_[0] = 1e9
    np.testing.assert_array_equal(X, X_copy)
    assert clone(model).get_params() == model.get_params()
