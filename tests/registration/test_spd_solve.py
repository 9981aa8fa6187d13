"""The sparse SPD solver of SPARE's v-step against a dense solve."""

import numpy as np
import pytest
import scipy.sparse as sp

from mmopt.registration import _spd_solve
from mmopt.registration._spd_solve import SPDSolver, cholespy_available


def _spd_sequence(n=40, count=3, seed=0):
    """SPD matrices sharing one pattern (a random graph Laplacian plus 3x3 blocks)."""
    rng = np.random.default_rng(seed)
    heads = rng.integers(0, n, 4 * n)
    tails = (heads + 1 + rng.integers(0, n - 1, 4 * n)) % n
    A = sp.csr_matrix((np.ones(4 * n), (heads, tails)), shape=(n, n))
    A = A + A.T
    L = sp.diags(np.asarray(A.sum(axis=1)).ravel()) - A
    for _ in range(count):
        m = rng.normal(size=(n, 3))
        blocks = rng.uniform(0, 2, n)[:, None, None] * np.einsum("na,nb->nab", m, m)
        blocks += 1e-2 * np.eye(3)
        D = sp.bsr_matrix((blocks, np.arange(n), np.arange(n + 1)), shape=(3 * n, 3 * n))
        yield (sp.kron(L, sp.identity(3)) * rng.uniform(1, 100) + D).tocsc()


@pytest.mark.parametrize("method", ["superlu", "cholespy"])
def test_solves_match_a_dense_solve(method):
    if method == "cholespy":
        pytest.importorskip("cholespy")
    solver = SPDSolver(method)
    rng = np.random.default_rng(1)
    for H in _spd_sequence():  # the second and third SuperLU solves reuse the first order
        b = rng.normal(size=H.shape[0])
        expected = np.linalg.solve(H.toarray(), b)
        np.testing.assert_allclose(solver.solve(H, b), expected, rtol=1e-8, atol=1e-10)
    assert solver.method == method


def test_auto_picks_cholespy_when_importable(monkeypatch):
    assert SPDSolver().method == ("cholespy" if cholespy_available() else "superlu")
    monkeypatch.setattr(_spd_solve, "cholespy_available", lambda: False)
    assert SPDSolver("auto").method == "superlu"
    with pytest.raises(ImportError, match="cholespy"):
        SPDSolver("cholespy")


def test_bad_method_names_the_argument():
    with pytest.raises(ValueError, match="linear_solver"):
        SPDSolver("cg")
