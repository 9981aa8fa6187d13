"""The BCD problem generators (mmopt/datasets/_bcd.py) and their former import path."""

import numpy as np
import pytest
import scipy.sparse as sp

import mmopt.datasets
from mmopt.datasets import make_lattice_graph, make_sparse_least_squares


def test_sparse_least_squares_shapes_density_and_seed():
    X, y = make_sparse_least_squares(100, 300, density=0.05, random_state=0)
    assert sp.isspmatrix_csc(X) and X.shape == (100, 300) and y.shape == (100,)
    assert 0.03 < X.nnz / (X.shape[0] * X.shape[1]) < 0.07
    X2, y2 = make_sparse_least_squares(100, 300, density=0.05, random_state=0)
    np.testing.assert_array_equal(X.toarray(), X2.toarray())
    np.testing.assert_array_equal(y, y2)
    # Scaled columns: the coordinate Lipschitz constants spread widely.
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=0)).ravel())
    assert norms.max() > 5 * norms[norms > 0].min()


def test_lattice_graph_is_a_four_neighbour_grid():
    W, y = make_lattice_graph(5, n_labelled=7, random_state=1)
    degrees = np.asarray(W.sum(axis=1)).ravel()
    assert W.shape == (25, 25) and (W != W.T).nnz == 0
    assert sorted(set(degrees)) == [2.0, 3.0, 4.0]  # corners, sides, interior
    assert int(np.isfinite(y).sum()) == 7 and set(y[np.isfinite(y)]) <= {-1.0, 1.0}


@pytest.mark.parametrize(
    "call, name, error",
    [
        (lambda: make_sparse_least_squares(0, 5), "n_samples", ValueError),
        (lambda: make_sparse_least_squares(5, 2.5), "n_features", TypeError),
        (lambda: make_sparse_least_squares(5, 5, density=0.0), "density", ValueError),
        (lambda: make_sparse_least_squares(5, 5, random_state="x"), "random_state", TypeError),
        (lambda: make_lattice_graph(1), "side", ValueError),
        (lambda: make_lattice_graph(3, n_labelled=10), "n_labelled", ValueError),
        (lambda: make_lattice_graph(3, n_labelled=2, random_state=-1), "random_state", ValueError),
    ],
)
def test_bad_arguments_are_named(call, name, error):
    with pytest.raises(error, match=name):
        call()


def test_former_import_path_warns_and_gives_the_same_function():
    import mmopt.bcd.datasets as old

    with pytest.warns(DeprecationWarning, match="mmopt.datasets"):
        moved = old.make_lattice_graph
    assert moved is mmopt.datasets.make_lattice_graph
    with pytest.raises(AttributeError):
        old.nothing_here  # noqa: B018
