"""The sparse SPD solver of SPARE's v-step against a dense solve."""

import numpy as np
import pytest
import scipy.sparse as sp

from mmopt.registration import _spd_solve
from mmopt.registration._spd_solve import SPDSolver


def _spd_sequence(n=40, count=3, seed=0, weak=()):
    """SPD matrices sharing one pattern (a random graph Laplacian plus 3x3 blocks); the data
    blocks of the points ``weak`` are scaled by 1e-9 (a rejected pair leaves only the
    small proximal term there; the same pattern)."""
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
        blocks[list(weak)] *= 1e-9
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


def test_auto_is_superlu_and_cholespy_needs_its_package(monkeypatch):
    assert SPDSolver().method == "superlu"
    monkeypatch.setattr(_spd_solve, "cholespy_available", lambda: False)
    assert SPDSolver("auto").method == "superlu"
    with pytest.raises(ImportError, match="cholespy"):
        SPDSolver("cholespy")


def test_bad_method_names_the_argument():
    with pytest.raises(ValueError, match="linear_solver"):
        SPDSolver("cg")



def test_superlu_fill_depends_on_the_pattern_alone(monkeypatch):
    # The factorization pivots on the diagonal in a symmetric order: weak diagonal blocks
    # (rejected pairs) do not change the factor's size. With partial pivoting, row
    # exchanges there added fill.
    factors = []
    real = _spd_solve.splu

    def spy(A, **options):
        lu = real(A, **options)
        factors.append(lu)
        return lu

    n = 150
    H = next(_spd_sequence(n=n, count=1, seed=2))
    weak = next(_spd_sequence(n=n, count=1, seed=2, weak=range(0, n, 3)))
    assert np.array_equal(H.indices, weak.indices) and np.array_equal(H.indptr, weak.indptr)
    solver = SPDSolver("superlu", block_size=3)
    monkeypatch.setattr(_spd_solve, "splu", spy)
    b = np.random.default_rng(0).normal(size=3 * n)
    for A in (H, weak):
        np.testing.assert_allclose(solver.solve(A, b), np.linalg.solve(A.toarray(), b),
                                   rtol=1e-7, atol=1e-9)
    full = [lu for lu in factors if lu.shape == H.shape]
    assert len(full) == 2
    assert full[0].L.nnz + full[0].U.nnz == full[1].L.nnz + full[1].U.nnz
    for lu in full:  # the diagonal as pivot: no row exchanges
        np.testing.assert_array_equal(lu.perm_r, np.arange(3 * n))


def test_superlu_orders_again_when_the_pattern_changes(monkeypatch):
    calls = []
    real = _spd_solve._symmetric_order
    monkeypatch.setattr(_spd_solve, "_symmetric_order",
                        lambda H, b: calls.append(H.nnz) or real(H, b))
    solver = SPDSolver("superlu", block_size=3)
    rng = np.random.default_rng(4)
    first, second = _spd_sequence(n=30, count=2, seed=5)
    other = next(_spd_sequence(n=30, count=1, seed=6))  # another graph: another pattern
    for H in (first, second, other):
        b = rng.normal(size=(H.shape[0], 2))  # two right-hand sides
        np.testing.assert_allclose(solver.solve(H, b), np.linalg.solve(H.toarray(), b),
                                   rtol=1e-8, atol=1e-10)
    assert len(calls) == 2  # the second matrix shares the first one's pattern


def test_superlu_takes_unsorted_input_without_modifying_it():
    H = next(_spd_sequence(n=20, count=1))
    H.sort_indices()
    unsorted = H.copy()
    for j in range(H.shape[1]):  # each column's entries in reverse: unsorted indices
        lo, hi = unsorted.indptr[j], unsorted.indptr[j + 1]
        unsorted.indices[lo:hi] = H.indices[lo:hi][::-1]
        unsorted.data[lo:hi] = H.data[lo:hi][::-1]
    unsorted.has_sorted_indices = False
    copy = unsorted.copy()
    b = np.ones(H.shape[0])
    x = SPDSolver("superlu", block_size=3).solve(unsorted, b)
    np.testing.assert_allclose(x, np.linalg.solve(H.toarray(), b), rtol=1e-8)
    np.testing.assert_array_equal(unsorted.indices, copy.indices)
    np.testing.assert_array_equal(unsorted.data, copy.data)
