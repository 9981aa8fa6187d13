"""BlockCoordinateDescent: every rule/update reaches independent references."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from sklearn.linear_model import Lasso, LogisticRegression

import mmopt
from mmopt.bcd import (
    L1,
    L2,
    BCDProblem,
    BlockCoordinateDescent,
    L1Positive,
    LabelPropagationQuadratic,
    LeastSquares,
    Logistic,
    Multinomial,
    NoPenalty,
    check_blocks,
)
from mmopt.bcd.solver import SELECTIONS, UPDATES
from mmopt.datasets import make_lattice_graph, make_sparse_least_squares


@pytest.fixture(scope="module")
def lasso_data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 15)) * (1 + 3 * rng.random(15))
    y = X @ rng.standard_normal(15) + 0.1 * rng.standard_normal(40)
    alpha = 0.1 * np.abs(X.T @ y).max() / 40
    ref = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=100_000).fit(X, y).coef_
    return X, y, alpha, ref


def _solve(problem, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error", mmopt.ConvergenceWarning)
        return BlockCoordinateDescent(random_state=0, **options).solve(problem)


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("partition", ["sorted", "variable"])
def test_every_rule_and_update_solves_the_lasso(lasso_data, selection, update, partition):
    if partition == "variable" and selection in ("cyclic", "lipschitz"):
        pytest.skip("fixed-block rules")
    X, y, alpha, ref = lasso_data
    res = _solve(
        BCDProblem(LeastSquares(X, y), L1(alpha)),
        selection=selection,
        update=update,
        partition=partition,
        block_size=4,
        tol=1e-10,
        max_iter=20_000,
    )
    assert res.success
    np.testing.assert_allclose(res.x, ref, atol=1e-7)


@pytest.mark.parametrize("update", ["gradient", "backtracking", "matrix", "newton"])
@pytest.mark.parametrize("selection", ["cyclic", "gsl", "gsq"])
def test_l2_logistic_matches_sklearn(update, selection):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((60, 8))
    y = np.where(X[:, 0] + 0.5 * rng.standard_normal(60) > 0, 1.0, -1.0)
    lam = 0.05
    ref = (
        LogisticRegression(C=1 / (lam * 60), fit_intercept=False, tol=1e-12, max_iter=10_000)
        .fit(X, y)
        .coef_[0]
    )
    res = _solve(
        BCDProblem(Logistic(X, y), L2(lam)),
        selection=selection,
        update=update,
        block_size=3,
        tol=1e-10,
        max_iter=50_000,
    )
    np.testing.assert_allclose(res.x, ref, atol=1e-6)


def test_multinomial_matches_sklearn():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((80, 5))
    y = rng.integers(0, 3, 80)
    X[np.arange(80), y] += 1.5
    lam = 0.02
    ref = LogisticRegression(
        C=1 / (lam * 80), fit_intercept=False, tol=1e-12, max_iter=10_000
    ).fit(X, y)
    blocks = [np.arange(3 * j, 3 * j + 3) for j in range(5)]
    res = _solve(
        BCDProblem(Multinomial(X, y), L2(lam)),
        partition=blocks,
        selection="gsq",
        update="newton",
        tol=1e-9,
        max_iter=20_000,
    )
    W = res.x.reshape(5, 3)
    # Softmax coefficients are defined up to a per-feature shift; the L2 penalty picks the
    # zero-mean one in both solvers.
    np.testing.assert_allclose(W.T, ref.coef_, atol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_nonnegative_lasso_kkt(sparse):
    X, y = make_sparse_least_squares(30, 60, density=0.3, random_state=3)
    X = X if sparse else X.toarray()
    alpha = 0.05 * np.abs(X.T @ y).max() / 30
    res = _solve(
        BCDProblem(LeastSquares(X, y), L1Positive(alpha)),
        selection="gs-q",
        partition="variable",
        tol=1e-9,
        max_iter=50_000,
    )
    grad = X.T @ (X @ res.x - y) / 30
    assert np.all(res.x >= 0)
    # KKT of min f + alpha sum x, x >= 0: grad + alpha >= 0, and = 0 on the support.
    assert np.all(grad + alpha >= -1e-7)
    np.testing.assert_allclose((grad + alpha)[res.x > 0], 0, atol=1e-7)
    assert res.residual <= 1e-9  # the duality gap


def test_lattice_red_black_exact_matches_direct_solve():
    W, y = make_lattice_graph(12, n_labelled=10, random_state=0)
    datafit = LabelPropagationQuadratic(W, y, label_weight=100.0)
    x_star = spla.spsolve(datafit.A.tocsc(), datafit.c)
    res = _solve(
        BCDProblem(datafit),
        partition="red-black",
        selection="cyclic",
        update="exact",
        tol=1e-10,
        max_iter=100_000,
    )
    assert len(res.blocks) == 2
    np.testing.assert_allclose(res.x, x_star, atol=1e-8)


@pytest.mark.parametrize("selection", ["gsl", "gs", "random"])
def test_greedy_tree_converges_to_direct_solve(selection):
    W, y = make_lattice_graph(10, n_labelled=8, random_state=2)
    datafit = LabelPropagationQuadratic(W, y, label_weight=50.0)
    x_star = spla.spsolve(datafit.A.tocsc(), datafit.c)
    res = _solve(
        BCDProblem(datafit, L2(1e-3)) if selection == "gs" else BCDProblem(datafit),
        partition="greedy-tree",
        selection=selection,
        tol=1e-10,
        max_iter=10_000,
    )
    if selection != "gs":
        np.testing.assert_allclose(res.x, x_star, atol=1e-8)
    else:
        A = datafit.A + 1e-3 * sp.identity(100)
        np.testing.assert_allclose(res.x, spla.spsolve(A.tocsc(), datafit.c), atol=1e-8)


def test_exact_update_on_a_forest_block_is_one_solve():
    """A block inducing a path (a tree) is minimized exactly in one update."""
    W, y = make_lattice_graph(5, n_labelled=3, random_state=1)
    datafit = LabelPropagationQuadratic(W, y, label_weight=10.0)
    first_row = np.arange(5)  # a path in the lattice
    rest = np.arange(5, 25)
    res = BlockCoordinateDescent(
        partition=[first_row, rest], selection="cyclic", update="exact", max_iter=1, tol=0.0
    )
    with pytest.warns(mmopt.ConvergenceWarning):
        out = res.solve(BCDProblem(datafit))
    # After one exact update of the path with the rest at 0, the path's gradient is 0.
    np.testing.assert_allclose(out.gradient[first_row], 0.0, atol=1e-9)


def test_smooth_least_squares_closed_form():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((30, 12))
    y = rng.standard_normal(30)
    x_star = np.linalg.lstsq(X, y, rcond=None)[0]
    res = _solve(
        BCDProblem(LeastSquares(X, y), NoPenalty()),
        selection="gsd",
        update="backtracking",
        tol=1e-10,
        max_iter=50_000,
    )
    np.testing.assert_allclose(res.x, x_star, atol=1e-8)


def test_greedy_rules_are_greedy():
    """GS picks the block with the largest gradient norm (checked on the first step)."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((20, 9))
    y = rng.standard_normal(20)
    problem = BCDProblem(LeastSquares(X, y))
    blocks = [np.array([0, 1, 2]), np.array([3, 4, 5]), np.array([6, 7, 8])]
    g = X.T @ (-y) / 20
    expected = int(np.argmax([np.linalg.norm(g[b]) for b in blocks]))
    with pytest.warns(mmopt.ConvergenceWarning):
        res = BlockCoordinateDescent(partition=blocks, selection="gs", max_iter=1, tol=0).solve(
            problem
        )
    moved = np.flatnonzero(res.x != 0)
    np.testing.assert_array_equal(moved, blocks[expected])


def test_variable_blocks_take_the_top_coordinates():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((20, 30))
    y = rng.standard_normal(20)
    problem = BCDProblem(LeastSquares(X, y))
    g = X.T @ (-y) / 20
    lip = (X**2).sum(0) / 20
    top = np.sort(np.argsort(g**2 / lip)[-4:])
    with pytest.warns(mmopt.ConvergenceWarning):
        res = BlockCoordinateDescent(
            partition="variable", selection="gsl", block_size=4, max_iter=1, tol=0
        ).solve(problem)
    np.testing.assert_array_equal(np.flatnonzero(res.x != 0), top)


@pytest.mark.parametrize(
    "blocks, error, match",
    [
        ([[0, 1], [1, 2]], ValueError, "more than one block"),
        ([[0, 1]], ValueError, "coordinate 2 is in no block"),
        ([[0, 1], [2, 3]], ValueError, "outside"),
        ([[0.5], [1, 2]], ValueError, "integer"),
        ([[], [0, 1, 2]], ValueError, "non-empty"),
        ("abc", TypeError, "sequence"),
    ],
)
def test_bad_blocks(blocks, error, match):
    with pytest.raises(error, match=match):
        check_blocks(blocks, 3)
    problem = BCDProblem(LeastSquares(np.eye(3), np.ones(3)))
    if isinstance(blocks, str):
        error, match = ValueError, "partition must be one of"
    with pytest.raises(error, match=match):
        BlockCoordinateDescent(partition=blocks).solve(problem)


@pytest.mark.parametrize(
    "option, value, error",
    [
        ("selection", "best", ValueError),
        ("update", "magic", ValueError),
        ("partition", "random", ValueError),
        ("block_size", 0, ValueError),
        ("stopping", "never", ValueError),
    ],
)
def test_bad_options(option, value, error):
    problem = BCDProblem(LeastSquares(np.eye(3), np.ones(3)))
    with pytest.raises(error, match=option):
        BlockCoordinateDescent(**{option: value}).solve(problem)


def test_incompatible_choices_are_explained():
    problem = BCDProblem(Logistic(np.eye(2), [1.0, -1.0]))
    with pytest.raises(ValueError, match="quadratic"):
        BlockCoordinateDescent(update="exact").solve(problem)
    with pytest.raises(ValueError, match="fixed blocks"):
        BlockCoordinateDescent(partition="variable", selection="cyclic").solve(problem)
    with pytest.raises(ValueError, match="LabelPropagation"):
        BlockCoordinateDescent(partition="red-black").solve(problem)
    with pytest.raises(ValueError, match="gap"):
        BlockCoordinateDescent(stopping="gap").solve(problem)
    with pytest.raises(ValueError, match="greedy-tree"):
        BlockCoordinateDescent(partition="greedy-tree").solve(problem)
    with pytest.raises(TypeError, match="datafit"):
        BCDProblem(np.eye(2))


def test_inputs_are_not_modified():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((10, 4))
    y = rng.standard_normal(10)
    x0 = rng.standard_normal(4)
    copies = X.copy(), y.copy(), x0.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        BlockCoordinateDescent(max_iter=5).solve(BCDProblem(LeastSquares(X, y), L1(0.1)), x0=x0)
    for a, b in zip((X, y, x0), copies):
        np.testing.assert_array_equal(a, b)


def test_sparse_and_dense_designs_agree():
    X, y = make_sparse_least_squares(30, 50, density=0.3, random_state=8)
    alpha = 0.05 * np.abs(X.T @ y).max() / 30
    dense = _solve(BCDProblem(LeastSquares(X.toarray(), y), L1(alpha)), tol=1e-10, max_iter=50_000)
    sparse = _solve(
        BCDProblem(LeastSquares(sp.csr_matrix(X), y), L1(alpha)), tol=1e-10, max_iter=50_000
    )
    np.testing.assert_allclose(dense.x, sparse.x, atol=1e-8)


@pytest.mark.parametrize("positive", [False, True])
def test_active_set_newton_terminates_fast(lasso_data, positive):
    X, y, alpha, ref = lasso_data
    pen = L1Positive(alpha) if positive else L1(alpha)
    problem = BCDProblem(LeastSquares(X, y), pen)
    opts = dict(selection="gsl", partition="variable", block_size=2, tol=1e-12, max_iter=50_000)
    plain = _solve(problem, **opts)
    newton = _solve(problem, active_set_newton=True, **opts)
    assert newton.success
    np.testing.assert_allclose(newton.x, plain.x, atol=1e-8)
    if not positive:
        np.testing.assert_allclose(newton.x, ref, atol=1e-8)
    # Once the support is found, one Newton step on it solves the least-squares problem.
    assert newton.nit < plain.nit / 2
