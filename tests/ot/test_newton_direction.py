"""The Newton direction's fill-in guard (mmopt.ot._newton.newton_direction), against a dense
NumPy solve of the same system."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

from mmopt.ot import _newton


def _system(n, d, seed=0, k=6):
    """A sparsified dual Hessian of a k-nearest-neighbour plan between two clouds."""
    rng = np.random.default_rng(seed)
    x, y = rng.random((n, d)), rng.random((n, d))
    _, index = cKDTree(y).query(x, k=k)
    S = sp.csr_matrix((rng.random(n * k) / n, (np.repeat(np.arange(n), k), index.ravel())),
                      shape=(n, n))
    reg = 1e-2
    diagonal = np.concatenate([np.asarray(S.sum(1)).ravel(), np.asarray(S.sum(0)).ravel()])
    diagonal = diagonal / reg + 1e-3
    H = np.block([[np.diag(diagonal[:n]), S.toarray() / reg],
                  [S.toarray().T / reg, np.diag(diagonal[n:])]])
    return diagonal, S, rng.standard_normal(2 * n), reg, H


@pytest.mark.parametrize("d", [2, 3])
def test_capped_factorization_is_exact_when_the_cap_is_not_reached(d, monkeypatch):
    diagonal, S, grad, reg, H = _system(300, d)
    monkeypatch.setattr(_newton, "DIRECT_GUARD_SIZE", 10)  # the capped path at 600
    found = _newton.newton_direction(diagonal, S, grad, reg, solver="direct")
    expected = np.linalg.solve(H, -grad)
    assert found.cg_iterations == 0
    np.testing.assert_allclose(found.d, expected, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("d", [2, 3])
def test_capped_factorization_precondition_gmres_when_the_cap_is_reached(d, monkeypatch):
    diagonal, S, grad, reg, H = _system(300, d)
    monkeypatch.setattr(_newton, "DIRECT_GUARD_SIZE", 10)
    # A cap at about the system's own nonzeros: the exact factors do not fit.
    found = _newton.newton_direction(diagonal, S, grad, reg, solver="direct",
                                     direct_max_fill=1, cg_tol=1e-10, max_cg=500)
    assert found.cg_iterations > 0 and found.cg_converged
    expected = np.linalg.solve(H, -grad)
    residual = np.linalg.norm(H @ found.d + grad) / np.linalg.norm(grad)
    assert residual <= 1e-9
    np.testing.assert_allclose(found.d, expected, rtol=1e-6, atol=1e-8)
