"""Generators of the block coordinate descent test problems of Nutini, Laradji and Schmidt.

The paper's data are not shipped; these generators follow its descriptions (sizes, sparsity,
scaled columns so that the coordinate Lipschitz constants differ, a lattice graph with few
labelled nodes). Values are not the paper's, but the comparisons between rules are.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mmopt._core.params import InstanceOf, Interval, validate_params
from mmopt._core.validation import check_scalar

__all__ = ["make_sparse_least_squares", "make_lattice_graph"]

# Seeds of numpy.random.default_rng.
_SEED = [
    None,
    Interval(int, 0, None),
    InstanceOf(
        np.random.Generator,
        np.random.BitGenerator,
        np.random.SeedSequence,
        name="a numpy Generator, BitGenerator or SeedSequence",
    ),
]


def make_sparse_least_squares(
    n_samples: int = 1000,
    n_features: int = 10_000,
    *,
    density: float = 0.1,
    random_state=None,
):
    """Sparse design with scaled columns, and targets from a sparse signal (problem A).

    Entries are standard normal with probability ``density``; column ``j`` is multiplied by
    ``1 + 10 u_j`` with ``u_j`` uniform, so the coordinate Lipschitz constants spread over two
    orders of magnitude; the targets are ``X w + noise`` with 10% of ``w`` non-zero. With
    ``n_samples < n_features`` the least-squares minimum is 0.

    Returns
    -------
    X : scipy.sparse.csc_matrix of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)

    Examples
    --------
    >>> from mmopt.datasets import make_sparse_least_squares
    >>> X, y = make_sparse_least_squares(20, 50, random_state=0)
    >>> X.shape, y.shape
    ((20, 50), (20,))
    """
    validate_params(
        {
            "n_samples": [Interval(int, 1, None)],
            "n_features": [Interval(int, 1, None)],
            "density": [Interval(float, 0, 1, closed="right")],
            "random_state": _SEED,
        },
        {
            "n_samples": n_samples,
            "n_features": n_features,
            "density": density,
            "random_state": random_state,
        },
    )
    rng = np.random.default_rng(random_state)
    X = sp.random(
        n_samples,
        n_features,
        density=density,
        format="csc",
        random_state=rng,
        data_rvs=rng.standard_normal,
    )
    X = X @ sp.diags(1.0 + 10.0 * rng.random(n_features))
    w = np.where(rng.random(n_features) < 0.1, rng.standard_normal(n_features), 0.0)
    y = X @ w + rng.standard_normal(n_samples)
    return sp.csc_matrix(X), y


def make_lattice_graph(side: int = 50, *, n_labelled: int = 100, random_state=None):
    """A ``side x side`` 4-neighbour lattice with ``n_labelled`` random nodes labelled (problem D).

    Labels are +1 / -1 by the side of the lattice's diagonal the node is on.

    Returns
    -------
    W : scipy.sparse.csr_matrix of shape (side**2, side**2)
        Unit edge weights.
    y : ndarray of shape (side**2,)
        The label of labelled nodes, NaN elsewhere.

    Examples
    --------
    >>> from mmopt.datasets import make_lattice_graph
    >>> W, y = make_lattice_graph(4, n_labelled=3, random_state=0)
    >>> W.shape, int(W.sum()), int(np.isfinite(y).sum())
    ((16, 16), 48, 3)
    """
    check_scalar(side, "side", kind=int, min_value=2)
    check_scalar(n_labelled, "n_labelled", kind=int, min_value=1, max_value=side * side)
    validate_params({"random_state": _SEED}, {"random_state": random_state})
    rng = np.random.default_rng(random_state)
    path = sp.diags([np.ones(side - 1), np.ones(side - 1)], [-1, 1])
    eye = sp.identity(side)
    W = sp.csr_matrix(sp.kron(path, eye) + sp.kron(eye, path))
    n = side * side
    rows, cols = np.divmod(np.arange(n), side)
    y = np.full(n, np.nan)
    chosen = rng.choice(n, n_labelled, replace=False)
    y[chosen] = np.where(rows[chosen] > cols[chosen], 1.0, -1.0)
    return W, y
