"""Hardened inputs of the MM family (issue 13): bad inputs raise naming the argument,
extreme-but-valid inputs give finite results or an honest status, inputs are not modified,
and one solver/estimator serves several threads."""


import numpy as np
import pytest
import scipy.sparse as sp
from _helpers import ARRAY_KINDS, assert_thread_safe, fuzz_settings, linear_data, no_numpy_warnings
from hypothesis import given
from hypothesis import strategies as st

from mmopt.mm import (
    MMNMF,
    MMRobustRegressor,
    MMSolver,
    NMFProblem,
    RobustRegressionProblem,
    get_loss,
    mad_scale,
)

FAST = fuzz_settings(20)


def _regression(seed=0, n=30, p=3):
    X, y = linear_data(seed, n, np.arange(1.0, p + 1.0), noise=0.1)
    y[:3] += 20.0
    return X, y


def _nonnegative(seed=0, n=15, m=6):
    rng = np.random.default_rng(seed)
    return rng.random((n, 2)) @ rng.random((2, m)) + 0.01


# ----------------------------------------------------------------------- bad inputs named
@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_robust_regressor_bad_X_and_y_named(fuzz, kind):
    X, y = _regression()
    bad = fuzz.BAD_ARRAYS[kind]
    error = fuzz.raises_naming(MMRobustRegressor().fit, "X", bad, y)
    assert "setting an array element" not in str(error)
    error = fuzz.raises_naming(MMRobustRegressor().fit, "y", X, bad)
    assert "setting an array element" not in str(error)
    fitted = MMRobustRegressor().fit(X, y)
    fuzz.raises_naming(fitted.predict, "X", bad)


@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_nmf_bad_X_named(fuzz, kind):
    error = fuzz.raises_naming(MMNMF(n_components=2).fit, "X", fuzz.BAD_ARRAYS[kind])
    assert "setting an array element" not in str(error)


def test_ragged_lists_name_the_argument(fuzz):
    # Issue 13: ragged X or y gave NumPy's "setting an array element with a sequence".
    ragged = [[1.0, 2.0], [3.0]]
    fuzz.raises_naming(MMRobustRegressor().fit, "X", ragged, [1.0, 2.0])
    fuzz.raises_naming(MMRobustRegressor().fit, "y", [[1.0], [2.0]], [[1.0], [2.0, 3.0]])
    fuzz.raises_naming(MMNMF().fit, "X", ragged)
    fuzz.raises_naming(RobustRegressionProblem, "X", ragged, [1.0, 2.0])
    fuzz.raises_naming(NMFProblem, "X", ragged, np.ones((2, 1)), np.ones((1, 2)))


@pytest.mark.parametrize(
    "kwargs, name",
    [({"loss": "bogus"}, "loss"), ({"c": -1.0}, "c"), ({"scale": 0.0}, "scale"),
     ({"alpha": -1.0}, "alpha"), ({"anderson": 1}, "anderson"), ({"tol": -1.0}, "tol"),
     ({"max_iter": 0}, "max_iter"), ({"anderson": "yes"}, "anderson")],
)
def test_robust_regressor_bad_options_named(fuzz, kwargs, name):
    fuzz.raises_naming(MMRobustRegressor(**kwargs).fit, name, *_regression())


@pytest.mark.parametrize(
    "kwargs, name",
    [({"n_components": 0}, "n_components"), ({"n_components": 1.5}, "n_components"),
     ({"loss": "bogus"}, "loss"), ({"init": "bogus"}, "init"), ({"anderson": 0}, "anderson"),
     ({"max_iter": 0}, "max_iter")],
)
def test_nmf_bad_options_named(fuzz, kwargs, name):
    fuzz.raises_naming(MMNMF(**kwargs).fit, name, _nonnegative())


def test_nmf_problem_bad_inputs_named(fuzz):
    X = _nonnegative()
    W, H = np.ones((15, 2)), np.ones((2, 6))
    fuzz.raises_naming(NMFProblem, "W0", X, np.ones((14, 2)), H)
    fuzz.raises_naming(NMFProblem, "H0", X, W, np.ones((2, 5)))
    fuzz.raises_naming(NMFProblem, "H0", X, W, -H)
    fuzz.raises_naming(NMFProblem, "X", -X, W, H)
    fuzz.raises_naming(NMFProblem, "loss", X, W, H, loss="l1")
    fuzz.raises_naming(NMFProblem, "update_H", X, W, H, update_H="no")


@pytest.mark.parametrize("n_threads", [0, -10_000, 1.5, True])
def test_nmf_n_threads_checked(fuzz, n_threads):
    # Issue 13: n_threads=0 or a negative count beyond the CPUs was accepted silently.
    X = _nonnegative()
    fuzz.raises_naming(
        NMFProblem, "n_threads", X, np.ones((15, 2)), np.ones((2, 6)), n_threads=n_threads
    )


def test_losses_and_mad_scale_bad_inputs_named(fuzz):
    fuzz.raises_naming(get_loss, "loss", "bogus")
    fuzz.raises_naming(get_loss, "c", "huber", -1.0)
    fuzz.raises_naming(get_loss, "c", "huber", np.nan)
    for kind in ("ragged", "string", "nan", "empty", "none"):
        fuzz.raises_naming(mad_scale, "residuals", fuzz.BAD_ARRAYS[kind])
    fuzz.raises_naming(mad_scale, "sample_weight", np.ones(3), sample_weight=-np.ones(3))
    fuzz.raises_naming(mad_scale, "center", np.ones(3), center="mean")


# -------------------------------------------------------------------- extreme but valid
def test_nmf_at_1e300_and_1e_300_is_finite_and_scaled(fuzz):
    # Issue 13: MMNMF().fit(X * 1e300) returned status 4 with non-finite fields.
    X = _nonnegative()
    reference = MMNMF(n_components=2, random_state=0, max_iter=400).fit(X)
    for factor in (1e300, 1e-300):
        for loss, degree in (("frobenius", 1.0), ("kullback-leibler", 0.5)):
            data = X * factor
            before = fuzz.snapshot(data)
            with no_numpy_warnings():
                model = MMNMF(n_components=2, loss=loss, random_state=0, max_iter=400)
                W = model.fit_transform(data)
            fuzz.assert_unchanged(before, data)
            assert model.result_.status in (0, 1)
            fuzz.assert_honest(model.result_)
            assert np.all(np.isfinite(W)) and np.all(np.isfinite(model.components_))
            assert np.isfinite(model.reconstruction_err_)
            if loss == "frobenius":
                # Reported in the data's units, and a good fit of the nearly rank-2 data.
                err = np.linalg.norm(X - (W @ model.components_) / factor)
                assert model.reconstruction_err_ / factor**degree == pytest.approx(
                    err, rel=1e-6
                )
                assert err <= max(3.0 * reference.reconstruction_err_, 1e-3 * np.linalg.norm(X))
            with no_numpy_warnings():
                assert np.all(np.isfinite(model.transform(data)))


def test_nmf_sparse_at_1e300(fuzz):
    X = sp.csr_matrix(_nonnegative() * 1e300)
    with no_numpy_warnings():
        model = MMNMF(n_components=2, loss="kullback-leibler", max_iter=100).fit(X)
    assert np.all(np.isfinite(model.components_))
    fuzz.assert_honest(model.result_)


def test_robust_regressor_at_1e300_targets_is_equivariant(fuzz):
    # Issue 13: MMRobustRegressor().fit(X, y * 1e300) raised OverflowError.
    X, y = _regression()
    reference = MMRobustRegressor().fit(X, y)
    for factor in (1e300, 1e-300, 1e200):
        target = y * factor
        before = fuzz.snapshot(X, target)
        with no_numpy_warnings():
            model = MMRobustRegressor().fit(X, target)
        fuzz.assert_unchanged(before, X, target)
        assert np.all(np.isfinite(model.coef_)) and np.isfinite(model.intercept_)
        # Equal up to the solver's tolerance (the rescaled run takes its own path).
        np.testing.assert_allclose(model.coef_ / factor, reference.coef_, rtol=1e-4)
        assert model.scale_ / factor == pytest.approx(reference.scale_, rel=1e-4)
        np.testing.assert_array_equal(model.outliers_, reference.outliers_)
        assert np.all(np.isfinite(model.predict(X)))


def test_robust_regressor_extreme_targets_with_a_penalty_are_an_error_naming_y(fuzz):
    X, y = _regression()
    fuzz.raises_naming(MMRobustRegressor(alpha=1.0).fit, "y", X, y * 1e300)
    fuzz.raises_naming(MMRobustRegressor(scale=1.0).fit, "y", X, y * 1e300)


@FAST
@given(
    x_exp=st.integers(-150, 150),
    y_exp=st.integers(-300, 300),
    loss=st.sampled_from(["huber", "cauchy", "welsch"]),
)
def test_robust_regressor_extreme_scales_finite_or_named(fuzz, x_exp, y_exp, loss):
    X, y = _regression(n=20)
    X, y = X * 10.0**x_exp, y * 10.0**y_exp
    before = fuzz.snapshot(X, y)
    try:
        with no_numpy_warnings():
            model = MMRobustRegressor(loss=loss, max_iter=100).fit(X, y)
    except ValueError as error:
        assert "X" in str(error) or "y" in str(error) or "x0" in str(error)
    else:
        fuzz.assert_honest(model.result_)
        assert np.all(np.isfinite(model.coef_)) and np.isfinite(model.intercept_)
    fuzz.assert_unchanged(before, X, y)


@FAST
@given(
    exponent=st.integers(-300, 300),
    loss=st.sampled_from(["frobenius", "kullback-leibler"]),
    layout=st.sampled_from(["C", "F", "readonly", "sparse"]),
)
def test_nmf_extreme_scales_and_layouts(fuzz, exponent, loss, layout):
    X = _nonnegative(n=8, m=5) * 10.0**exponent
    if layout == "F":
        X = np.asfortranarray(X)
    elif layout == "readonly":
        X.flags.writeable = False
    elif layout == "sparse":
        X = sp.csr_matrix(X)
    before = fuzz.snapshot(X)
    with no_numpy_warnings():
        model = MMNMF(n_components=2, loss=loss, max_iter=60, random_state=0).fit(X)
    fuzz.assert_honest(model.result_)
    assert np.all(np.isfinite(model.components_)) and np.isfinite(model.reconstruction_err_)
    fuzz.assert_unchanged(before, X)


# ------------------------------------------------------------------------ the kernels
def test_nmf_kernels_reject_mismatched_shapes(fuzz):
    # Risky (bounds are not checked inside the loops): run in a subprocess so that an
    # out-of-bounds access fails this test instead of the suite.
    fuzz.run_isolated(
        """
        import numpy as np
        from mmopt_ext._nmf import multiplicative_update, sparse_ratio_and_kl
        from mmopt_ext._softmax_hvp import softmax_hessian_rows

        def raises(call):
            try:
                call()
            except ValueError:
                return
            raise AssertionError("no error")

        raises(lambda: softmax_hessian_rows(np.ones((50, 3)), np.ones((2, 3))))
        raises(lambda: multiplicative_update(np.ones((50, 3)), np.ones((50, 3)),
                                             np.ones((50, 3)), np.ones((1, 3)), 1e-7))
        data, idx, ptr = np.ones(4), np.array([0, 1, 9, 2], np.int32), np.array([0, 2, 4],
                                                                                np.int32)
        raises(lambda: sparse_ratio_and_kl(data, idx, ptr, np.ones((2, 2)), np.ones((3, 2)),
                                           np.empty(4), 1e-9, 1))
        raises(lambda: sparse_ratio_and_kl(data, idx[:3] % 3, ptr, np.ones((2, 2)),
                                           np.ones((3, 2)), np.empty(4), 1e-9, 1))
        raises(lambda: sparse_ratio_and_kl(data, idx % 3, ptr, np.ones((5, 2)),
                                           np.ones((3, 2)), np.empty(4), 1e-9, 1))
        """,
        timeout=60,
    )


# ------------------------------------------------------------------------- reentrancy
def test_shared_mm_solver_on_shared_nmf_and_robust_problems_from_threads():
    X = _nonnegative(n=20, m=8)
    rng = np.random.default_rng(1)
    nmf = NMFProblem(X, rng.random((20, 2)), rng.random((2, 8)))
    nmf_kl = NMFProblem(sp.csr_matrix(X), rng.random((20, 2)), rng.random((2, 8)),
                        loss="kullback-leibler")
    robust = RobustRegressionProblem(*_regression(), loss="cauchy", scale=1.0)
    problems = [nmf, nmf_kl, robust]
    solver = MMSolver(tol=1e-8, max_iter=300)
    with no_numpy_warnings():
        assert_thread_safe(solver, problems, ["nit", "x", "n_evaluations"])
