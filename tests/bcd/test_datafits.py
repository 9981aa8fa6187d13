"""Datafits: gradients by finite differences, Hessians and their bounds, aux updates."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import approx_fprime

from mmopt.bcd import L1, LabelPropagationQuadratic, LeastSquares, Logistic, Multinomial
from mmopt.bcd.penalties import ElasticNet, L1Positive


def _make(kind, sparse=False, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((25, 6))
    if sparse:
        X[rng.random(X.shape) < 0.5] = 0.0
        X = sp.csc_matrix(X)
    if kind == "ls":
        return LeastSquares(X, rng.standard_normal(25))
    if kind == "logistic":
        return Logistic(X, np.where(rng.random(25) < 0.5, -1.0, 1.0))
    if kind == "multinomial":
        return Multinomial(X, rng.integers(0, 3, 25), n_classes=3)
    W = sp.random(12, 12, density=0.3, random_state=seed)
    W = W + W.T
    y = np.full(12, np.nan)
    y[:3] = [1.0, 0.0, 1.0]
    return LabelPropagationQuadratic(W, y, label_weight=10.0)


KINDS = ["ls", "logistic", "multinomial", "graph"]


def _f(datafit, x):
    return datafit.value(x, datafit.init_aux(x))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sparse", [False, True])
def test_gradient_matches_finite_differences(kind, sparse):
    datafit = _make(kind, sparse)
    x = 0.3 * np.random.default_rng(1).standard_normal(datafit.n_coords)
    aux = datafit.init_aux(x)
    numeric = approx_fprime(x, lambda v: _f(datafit, v), 1e-7)
    np.testing.assert_allclose(datafit.gradient(x, aux), numeric, rtol=1e-5, atol=1e-6)
    block = np.array([0, 3, 4])
    np.testing.assert_allclose(
        datafit.gradient_block(x, aux, block),
        datafit.gradient(x, aux)[block],
        rtol=1e-12,
        atol=1e-14,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_update_aux_matches_recomputation(kind):
    datafit = _make(kind)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(datafit.n_coords)
    aux = datafit.init_aux(x)
    block = np.array([1, 2, 5])
    delta = rng.standard_normal(3)
    datafit.update_aux(aux, block, delta)
    x[block] += delta
    np.testing.assert_allclose(aux, datafit.init_aux(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_hessian_matches_finite_differences_and_is_bounded(kind):
    datafit = _make(kind)
    rng = np.random.default_rng(3)
    x = 0.5 * rng.standard_normal(datafit.n_coords)
    block = np.array([0, 2, 4, 5])
    aux = datafit.init_aux(x)
    H = datafit.hessian(aux, block)
    numeric = np.empty((4, 4))
    for a, i in enumerate(block):
        e = np.zeros(datafit.n_coords)
        e[i] = 1e-6
        gp = datafit.gradient(x + e, datafit.init_aux(x + e))[block]
        gm = datafit.gradient(x - e, datafit.init_aux(x - e))[block]
        numeric[:, a] = (gp - gm) / 2e-6
    np.testing.assert_allclose(H, numeric, rtol=1e-5, atol=1e-7)
    # The constant bound majorizes the Hessian: bound - H is positive semidefinite.
    gap = datafit.hessian_bound(block) - H
    assert np.linalg.eigvalsh(gap).min() >= -1e-12
    # The coordinate constants bound the curvature along each coordinate.
    assert np.all(np.diag(H) <= np.asarray(datafit.lipschitz)[block] + 1e-12)


def test_label_propagation_minimizer_is_harmonic():
    """Without ridge, unlabelled nodes are the weighted average of their neighbours."""
    datafit = _make("graph")
    x = np.linalg.solve(datafit.A.toarray(), datafit.c)
    W = datafit.W.toarray()
    free = ~datafit.labelled & (W.sum(1) > 0)
    avg = (W @ x)[free] / W.sum(1)[free]
    np.testing.assert_allclose(x[free], avg, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("penalty", [L1(0.05), L1Positive(0.05), ElasticNet(0.05, 0.5)])
@pytest.mark.parametrize("kind", ["ls", "logistic"])
def test_duality_gap_is_nonnegative_and_vanishes_at_the_optimum(penalty, kind):
    from mmopt.bcd import BCDProblem, CoordinateDescent

    datafit = _make(kind)
    x = np.abs(np.random.default_rng(4).standard_normal(datafit.n_coords))
    gap = datafit.duality_gap(x, datafit.init_aux(x), penalty)
    assert gap > 1e-3
    res = CoordinateDescent(tol=1e-12, max_iter=500).solve(BCDProblem(datafit, penalty))
    assert 0 <= datafit.duality_gap(res.x, datafit.init_aux(res.x), penalty) <= 1e-10


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LeastSquares(np.ones((3, 2)), np.ones(4)), "one entry per row"),
        (lambda: LeastSquares(np.array([[np.nan, 1.0]]), [1.0]), "NaN"),
        (lambda: LeastSquares(sp.csc_matrix(np.array([[np.inf, 1.0]])), [1.0]), "NaN"),
        (lambda: Logistic(np.ones((2, 2)), [0.0, 1.0]), "-1 and \\+1"),
        (lambda: Multinomial(np.ones((2, 2)), [0.5, 1.0]), "class indices"),
        (
            lambda: LabelPropagationQuadratic(np.array([[0, 1.0], [2.0, 0]]), [1, np.nan]),
            "symmetric",
        ),
        (
            lambda: LabelPropagationQuadratic(np.array([[0, -1.0], [-1.0, 0]]), [1, np.nan]),
            "non-negative",
        ),
        (
            lambda: LabelPropagationQuadratic(np.zeros((2, 2)), [1.0], ridge=0),
            "one entry per node",
        ),
    ],
)
def test_bad_data_is_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()
