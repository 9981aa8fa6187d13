"""Incremental gradient maintenance: equal to recomputation up to rounding."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from mmopt.bcd import (
    L1,
    BCDProblem,
    BlockCoordinateDescent,
    LabelPropagationQuadratic,
    LeastSquares,
    Logistic,
)
from mmopt.bcd._kernels import gram_columns
from mmopt.bcd.gradient import IncrementalGradient, incremental_pays
from mmopt.datasets import make_lattice_graph, make_sparse_least_squares


@pytest.mark.parametrize("seed", range(4))
def test_gram_columns_kernel_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    X = sp.random(30, 20, density=0.3, format="csc", random_state=rng)
    cols = rng.choice(20, size=7)  # repeats allowed
    out = gram_columns(X, X.tocsr(), cols)
    dense = X.toarray()
    np.testing.assert_allclose(out, dense.T @ dense[:, cols], rtol=1e-13, atol=1e-13)
    assert out.flags.f_contiguous and out.shape == (20, 7)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("max_bytes", [8 * 40 * 3, 2**20])  # 3 cached columns: evictions
def test_least_squares_updates_match_recomputation(sparse, max_bytes):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((25, 40)) * (rng.random((25, 40)) < 0.4)
    f = LeastSquares(sp.csc_matrix(X) if sparse else X, rng.standard_normal(25))
    inc = IncrementalGradient(f, max_bytes=max_bytes)
    x = np.zeros(40)
    aux = f.init_aux(x)
    grad = f.gradient(x, aux)
    for _ in range(60):
        block = rng.choice(40, size=rng.integers(1, 5), replace=False)
        delta = rng.standard_normal(block.size) * (rng.random(block.size) < 0.8)
        x[block] += delta
        f.update_aux(aux, block, delta)
        inc.update(grad, block, delta)
        np.testing.assert_allclose(grad, X.T @ (X @ x - f.y) / 25, rtol=1e-10, atol=1e-12)
    assert len(inc._slots) <= inc.capacity


def test_label_propagation_update_is_exact():
    W, y = make_lattice_graph(6, n_labelled=5, random_state=0)
    f = LabelPropagationQuadratic(W, y, label_weight=10.0)
    inc = IncrementalGradient(f)
    rng = np.random.default_rng(1)
    x = np.zeros(36)
    aux = f.init_aux(x)
    grad = f.gradient(x, aux)
    for _ in range(30):
        block = rng.choice(36, size=4, replace=False)
        delta = rng.standard_normal(4)
        x[block] += delta
        f.update_aux(aux, block, delta)
        inc.update(grad, block, delta, aux=aux)
        np.testing.assert_array_equal(grad, aux - f.c)
    np.testing.assert_allclose(grad, f.A @ x - f.c, rtol=1e-12, atol=1e-12)


def _solve(problem, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BlockCoordinateDescent(random_state=0, tol=0.0, **options).solve(problem)


@pytest.fixture(scope="module")
def paper_problem():
    X, y = make_sparse_least_squares(1000, 10_000, random_state=0)
    return BCDProblem(LeastSquares(X, y))


@pytest.mark.parametrize(
    "options",
    [
        {"selection": "gsl", "partition": "variable"},
        {"selection": "gs", "partition": "order"},
    ],
)
def test_paper_least_squares_paths_agree(paper_problem, options):
    kw = dict(block_size=5, max_iter=500, **options)
    rec = _solve(paper_problem, gradient="recompute", **kw)
    inc = _solve(paper_problem, gradient="incremental", **kw)
    assert rec.nit == inc.nit == 500
    np.testing.assert_allclose(inc.x, rec.x, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(inc.fun, rec.fun, rtol=1e-10)
    np.testing.assert_allclose(inc.gradient, rec.gradient, rtol=1e-8, atol=1e-12)
    # The maintained gradient is the true one at the returned point.
    f = paper_problem.datafit
    np.testing.assert_allclose(inc.gradient, f.gradient(inc.x, f.init_aux(inc.x)), atol=1e-10)


def test_auto_chooses_incremental_on_the_paper_problem(paper_problem):
    solver = BlockCoordinateDescent(selection="gsl", partition="variable", max_iter=2, tol=0.0)
    # The choice is part of a run's set-up (the solver object keeps its options only).
    assert isinstance(solver._setup(paper_problem).incremental, IncrementalGradient)


@pytest.mark.parametrize("selection", ["gs-q", "gsq"])
def test_lasso_paths_agree_with_epoch_refresh(selection):
    # p = 30, blocks of 3: an exact refresh every 10 iterations; gap stopping uses the
    # maintained gradient.
    rng = np.random.default_rng(3)
    X = rng.standard_normal((50, 30))
    y = X @ rng.standard_normal(30)
    problem = BCDProblem(LeastSquares(X, y), L1(0.05 * np.abs(X.T @ y).max() / 50))
    kw = dict(selection=selection, update="matrix", block_size=3, max_iter=300)
    rec = _solve(problem, gradient="recompute", **kw)
    inc = _solve(problem, gradient="incremental", **kw)
    np.testing.assert_allclose(inc.x, rec.x, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(inc.fun, rec.fun, rtol=1e-12)


def test_lattice_paths_are_identical():
    W, y = make_lattice_graph(50, n_labelled=100, random_state=0)
    problem = BCDProblem(LabelPropagationQuadratic(W, y, label_weight=1e5))
    kw = dict(selection="gsl", partition="variable", block_size=5, max_iter=500)
    rec = _solve(problem, gradient="recompute", **kw)
    inc = _solve(problem, gradient="incremental", **kw)
    np.testing.assert_array_equal(inc.x, rec.x)
    assert inc.fun == rec.fun


def test_incremental_pays_by_problem_size(paper_problem):
    rng = np.random.default_rng(0)
    assert incremental_pays(paper_problem.datafit, 5)
    assert not incremental_pays(paper_problem.datafit, 500)  # forming columns costs more
    assert incremental_pays(LeastSquares(rng.standard_normal((100, 20)), np.ones(100)), 5)
    assert not incremental_pays(LeastSquares(rng.standard_normal((8, 20)), np.ones(8)), 5)
    y = np.where(rng.random(100) < 0.5, 1.0, -1.0)
    assert not incremental_pays(Logistic(rng.standard_normal((100, 20)), y), 5)
    W, yl = make_lattice_graph(10, n_labelled=3, random_state=0)
    assert not incremental_pays(LabelPropagationQuadratic(W, yl), 5)


def test_incremental_needs_a_quadratic_datafit():
    rng = np.random.default_rng(0)
    problem = BCDProblem(Logistic(rng.standard_normal((10, 3)), np.ones(10)))
    with pytest.raises(ValueError, match="gradient='incremental' needs a quadratic"):
        BlockCoordinateDescent(gradient="incremental").solve(problem)
    with pytest.raises(ValueError, match="gradient"):
        BlockCoordinateDescent(gradient="sometimes").solve(problem)
    with pytest.raises(TypeError, match="LeastSquares or LabelPropagationQuadratic"):
        IncrementalGradient(problem.datafit)


@pytest.mark.parametrize("sparse", [False, True])
def test_block_hessian_from_the_cache(sparse):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((20, 12)) * (rng.random((20, 12)) < 0.5)
    f = LeastSquares(sp.csc_matrix(X) if sparse else X, rng.standard_normal(20))
    inc = IncrementalGradient(f, max_bytes=8 * 12 * 4)  # 4 columns: evictions
    for _ in range(10):
        block = rng.choice(12, size=3, replace=False)
        np.testing.assert_allclose(inc.block_hessian(block), f.hessian_bound(block), atol=1e-13)
    assert inc.block_hessian(np.arange(5)) is None  # more columns than the cache holds


def test_gsq_matrix_variable_blocks_paths_agree(paper_problem):
    kw = dict(selection="gsq", partition="variable", update="matrix", block_size=5, max_iter=300)
    rec = _solve(paper_problem, gradient="recompute", **kw)
    inc = _solve(paper_problem, gradient="incremental", **kw)
    np.testing.assert_allclose(inc.x, rec.x, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(inc.fun, rec.fun, rtol=1e-10)
