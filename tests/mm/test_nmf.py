import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from sklearn.decomposition import NMF

from mmopt import ConvergenceWarning
from mmopt.mm import MMNMF, MMSolver, NMFProblem
from mmopt.mm.nmf import initialize_factors


@pytest.fixture(scope="module")
def digits():
    return load_digits().data[:400]


def _start(X, k, seed=0):
    rng = np.random.default_rng(seed)
    avg = np.sqrt(X.mean() / k)
    return avg * rng.random((X.shape[0], k)), avg * rng.random((k, X.shape[1]))


def _kl(X, WH):
    X = np.asarray(X.todense()) if sp.issparse(X) else X
    pos = X > 0
    return float(np.sum(X[pos] * np.log(X[pos] / WH[pos])) - X.sum() + WH.sum())


@pytest.mark.parametrize("sparse", [False, True])
def test_same_objective_as_sklearn_mu_after_same_iterations(digits, sparse):
    X = sp.csr_matrix(digits) if sparse else digits
    W0, H0 = _start(digits, 8)
    n_iter = 60
    ref = NMF(8, solver="mu", init="custom", tol=0.0, max_iter=n_iter, beta_loss="frobenius")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit_transform(X, W=W0.copy(), H=H0.copy())
        ours = MMNMF(8, init="custom", anderson=False, tol=0.0, max_iter=n_iter)
        W = ours.fit_transform(X, W=W0, H=H0)
    assert ours.n_iter_ == n_iter
    direct = 0.5 * np.linalg.norm(digits - W @ ours.components_) ** 2
    assert 0.5 * ours.reconstruction_err_**2 == pytest.approx(direct, rel=1e-9)
    assert ours.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=1e-4)
    np.testing.assert_allclose(ours.components_, ref.components_, rtol=1e-6, atol=1e-9)


def test_objective_matches_direct_computation_for_both_losses(digits):
    W0, H0 = _start(digits, 5)
    x = np.concatenate([W0.ravel(), H0.ravel()])
    fro = NMFProblem(digits, W0, H0)
    kl = NMFProblem(digits, W0, H0, loss="kullback-leibler")
    assert fro.objective(x) == pytest.approx(0.5 * np.sum((digits - W0 @ H0) ** 2), rel=1e-12)
    g, fun, (step_sq, x_sq) = fro.mm_step(x)
    assert fun == pytest.approx(fro.objective(x), rel=1e-10)
    # The squared lengths the fused kernel returns, against NumPy.
    assert step_sq == pytest.approx(np.sum((g - x) ** 2), rel=1e-10)
    assert x_sq == pytest.approx(np.sum(x**2), rel=1e-12)
    assert kl.objective(x) == pytest.approx(_kl(digits, W0 @ H0), rel=1e-12)
    assert kl.mm_step(x)[1] == pytest.approx(kl.objective(x), rel=1e-12)


@pytest.mark.parametrize("loss", ["frobenius", "kullback-leibler"])
def test_dense_and_sparse_give_the_same_iterates(digits, loss):
    W0, H0 = _start(digits, 4, seed=2)
    dense = NMFProblem(digits, W0, H0, loss=loss)
    sparse = NMFProblem(sp.csr_matrix(digits), W0, H0, loss=loss)
    x = dense.initial_point()
    for _ in range(5):
        (gd, fd), (gs, fs) = dense.mm_step(x)[:2], sparse.mm_step(x)[:2]
        np.testing.assert_allclose(gs, gd, rtol=1e-10)
        assert fs == pytest.approx(fd, rel=1e-10)
        assert sparse.objective(x) == pytest.approx(dense.objective(x), rel=1e-10)
        x = gd


@pytest.mark.parametrize("k, seed, ratio", [(10, 0, 0.5), (16, 1, 0.75)])
def test_anderson_cuts_iterations_with_the_same_budget(k, seed, ratio):
    X = load_digits().data
    W0, H0 = _start(X, k, seed)
    problem = NMFProblem(X, W0, H0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = MMSolver(anderson=False, tol=0.0, max_iter=1500).solve(problem)
        fast = MMSolver(anderson=True, tol=0.0, max_iter=1500).solve(problem)
    reached = np.flatnonzero(fast.history["fun"] <= plain.fun)
    # Measured: 0.22 and 0.55 of plain's iterations (see BENCHMARKS.md for more cases).
    assert reached.size and reached[0] + 1 <= ratio * plain.nit
    # Same budget: the accelerated run never ends worse.
    assert fast.fun <= plain.fun


@pytest.mark.parametrize("loss", ["frobenius", "kullback-leibler"])
def test_tightly_converged_anderson_not_worse_than_plain(digits, loss):
    for seed in range(2):
        W0, H0 = _start(digits[:100, :32], 3, seed)
        problem = NMFProblem(digits[:100, :32], W0, H0, loss=loss)
        opts = dict(tol=1e-7, max_iter=20_000)
        plain = MMSolver(anderson=False, **opts).solve(problem)
        fast = MMSolver(anderson=True, **opts).solve(problem)
        assert fast.fun <= plain.fun * (1 + 1e-6)


@pytest.mark.filterwarnings("ignore::mmopt.ConvergenceWarning")
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    shape=st.tuples(st.integers(2, 12), st.integers(2, 12)),
    k=st.integers(1, 4),
    loss=st.sampled_from(["frobenius", "kullback-leibler"]),
    anderson=st.booleans(),
)
def test_objective_never_increases(seed, shape, k, loss, anderson):
    rng = np.random.default_rng(seed)
    X = rng.random(shape) * (rng.random(shape) > 0.3)
    problem = NMFProblem(X, rng.random((shape[0], k)) + 0.1, rng.random((k, shape[1])) + 0.1,
                         loss=loss)
    res = MMSolver(anderson=anderson, tol=0.0, max_iter=60).solve(problem)
    fun = res.history["fun"]
    assert np.all(np.diff(fun) <= 1e-10 * np.abs(fun[:-1]) + 1e-12)
    W, H = problem.factors(res.x)
    assert (W >= 0).all() and (H >= 0).all()


def test_transform_solves_for_w_with_h_fixed(digits):
    model = MMNMF(6, init="nndsvda", max_iter=400, tol=1e-8, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W_fit = model.fit_transform(digits)
        W_new = MMNMF.transform(model.set_params(max_iter=2000), digits)
    # The fitted W is a minimizer over W for the final H: transform gets close to its loss.
    fit_loss = np.linalg.norm(digits - W_fit @ model.components_)
    new_loss = np.linalg.norm(digits - W_new @ model.components_)
    assert new_loss <= fit_loss * 1.01
    np.testing.assert_allclose(model.inverse_transform(W_new), W_new @ model.components_)


@pytest.mark.parametrize("init", ["random", "nndsvd", "nndsvda", "nndsvdar"])
def test_initializations_are_non_negative_and_reasonable(digits, init):
    W, H = initialize_factors(digits, 5, init, random_state=0)
    assert W.shape == (400, 5) and H.shape == (5, 64)
    assert (W >= 0).all() and (H >= 0).all()
    if init == "nndsvd":
        # The truncated SVD's leading terms: much closer to X than zero.
        assert np.linalg.norm(digits - W @ H) < 0.7 * np.linalg.norm(digits)
    if init in ("nndsvda", "nndsvdar", "random"):
        # Multiplicative updates cannot leave exact zeros.
        assert (W > 0).all() and (H > 0).all()


def test_kl_fit_reduces_divergence(digits):
    model = MMNMF(5, loss="kullback-leibler", max_iter=200, random_state=0, init="random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = model.fit_transform(digits)
    W0, H0 = initialize_factors(digits, 5, "random", random_state=0)
    assert _kl(digits, W @ model.components_) < 0.5 * _kl(digits, W0 @ H0)
    assert model.reconstruction_err_ == pytest.approx(
        np.sqrt(2 * _kl(digits, np.maximum(W @ model.components_, 1e-300))), rel=1e-6
    )


def test_inputs_not_mutated(digits):
    X = digits.copy()
    W0, H0 = _start(X, 3)
    copies = (X.copy(), W0.copy(), H0.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MMNMF(3, init="custom", max_iter=20).fit(X, W=W0, H=H0)
    for original, copy in zip((X, W0, H0), copies):
        np.testing.assert_array_equal(original, copy)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"X": -np.ones((3, 3))}, ValueError, "X must be non-negative"),
        ({"X": np.full((3, 3), np.nan)}, ValueError, "X must not contain NaN"),
        ({"W0": np.ones((2, 2))}, ValueError, r"W0 must have shape"),
        ({"H0": np.ones((2, 4))}, ValueError, r"H0 must have shape"),
        ({"H0": -np.ones((2, 3))}, ValueError, "H0 must be non-negative"),
        ({"loss": "beta"}, ValueError, "loss must be one of"),
        ({"X": sp.csr_matrix(-np.eye(3))}, ValueError, "X must be non-negative"),
    ],
)
def test_problem_validation(kwargs, error, match):
    args = {"X": np.ones((3, 3)), "W0": np.ones((3, 2)), "H0": np.ones((2, 3))}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        NMFProblem(**args)


@pytest.mark.parametrize(
    "params, fit_kwargs, error, match",
    [
        ({"n_components": 0}, {}, ValueError, "n_components"),
        ({"n_components": 2.5}, {}, TypeError, "n_components"),
        ({"loss": "l1"}, {}, ValueError, "loss"),
        ({"init": "bogus"}, {}, ValueError, "init"),
        ({"init": "custom"}, {}, ValueError, "W and H"),
    ],
)
def test_estimator_validation(params, fit_kwargs, error, match):
    with pytest.raises(error, match=match):
        MMNMF(**params).fit(np.ones((4, 3)), **fit_kwargs)
    with pytest.raises(ValueError, match="Negative values"):
        MMNMF(2).fit(-np.ones((4, 3)))


def test_every_invalid_option_value_is_refused_naming_it():
    from mmopt._core.params import constraints_of, invalid_values

    X = np.random.default_rng(0).random((6, 4))
    table, _ = constraints_of(MMNMF)
    cases = invalid_values(table)
    assert {name for name, _, _ in cases} == set(table)
    for name, value, error in cases:
        with pytest.raises(error, match=rf"^{name} must be"):
            MMNMF(**{name: value}).fit(X)


@pytest.mark.filterwarnings("ignore::mmopt.ConvergenceWarning")
def test_anderson_option_object_is_used_and_not_mutated():
    from mmopt import AndersonAcceleration

    X = np.random.default_rng(1).random((12, 8))
    option = AndersonAcceleration(memory=2)
    small = MMNMF(3, anderson=option, random_state=0, max_iter=80, tol=0.0).fit(X)
    default = MMNMF(3, random_state=0, max_iter=80, tol=0.0).fit(X)
    assert option.n_accepted == 0 and option.history_size == 0
    assert small.result_.n_accepted > 0
    assert not np.array_equal(small.components_, default.components_)
