"""The MM family's Cython kernels against plain NumPy references."""

import numpy as np
import pytest
import scipy.sparse as sp

from mmopt.mm._kernels import multiplicative_update, sparse_ratio_and_kl


def _reference(X, W, H, eps):
    dense = X.toarray()
    WH = np.maximum(W @ H, eps)
    rows, cols = X.nonzero()
    ratio = sp.csr_matrix((dense[rows, cols] / WH[rows, cols], (rows, cols)), shape=X.shape)
    pos = dense > 0
    kl = float(np.sum(dense[pos] * np.log(dense[pos] / WH[pos])))
    return ratio, kl


@pytest.mark.parametrize("shape, density, k", [((30, 20), 0.3, 4), ((1, 7), 1.0, 2),
                                               ((50, 40), 0.05, 1), ((12, 9), 0.0, 3)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_sparse_ratio_and_kl_matches_numpy(shape, density, k, n_threads):
    rng = np.random.default_rng(0)
    X = sp.random(*shape, density=density, format="csr", random_state=1)
    X.data = rng.random(X.nnz) * 3
    W, H = rng.random((shape[0], k)), rng.random((k, shape[1]))
    W[0] = 0.0  # a zero row of W hits the eps floor
    ratio, kl = sparse_ratio_and_kl(X, W, H, eps=1e-7, n_threads=n_threads)
    ref_ratio, ref_kl = _reference(X, W, H, 1e-7)
    np.testing.assert_allclose(ratio.toarray(), ref_ratio.toarray(), rtol=1e-12)
    assert kl == pytest.approx(ref_kl, rel=1e-12, abs=1e-12)


def test_thread_count_does_not_change_the_result():
    rng = np.random.default_rng(3)
    X = sp.random(400, 300, density=0.1, format="csr", random_state=2)
    W, H = rng.random((400, 5)), rng.random((5, 300))
    one = sparse_ratio_and_kl(X, W, H, eps=1e-9, n_threads=1)
    two = sparse_ratio_and_kl(X, W, H, eps=1e-9, n_threads=2)
    np.testing.assert_array_equal(one[0].data, two[0].data)
    assert one[1] == two[1]


def test_read_only_inputs_are_accepted():
    X = sp.csr_matrix(np.array([[1.0, 0.0], [2.0, 3.0]]))
    X.data.flags.writeable = False
    W = np.ones((2, 1))
    W.flags.writeable = False
    ratio, _ = sparse_ratio_and_kl(X, W, np.ones((1, 2)), eps=1e-12)
    np.testing.assert_allclose(ratio.toarray(), [[1.0, 0.0], [2.0, 3.0]])


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (200, 12)])
def test_multiplicative_update_matches_numpy(shape):
    rng = np.random.default_rng(sum(shape))
    factor, numerator, denominator = (rng.random(shape) for _ in range(3))
    denominator[0, 0] = 0.0  # a zero denominator reads as float32 eps
    out = np.empty(shape)
    sums = multiplicative_update(factor, numerator, denominator, out)
    safe = np.where(denominator == 0.0, np.finfo(np.float32).eps, denominator)
    expected = factor * numerator / safe
    np.testing.assert_allclose(out, expected, rtol=1e-15)
    reference = (
        np.sum(numerator * factor),
        np.sum(denominator * factor),
        np.sum((expected - factor) ** 2),
        np.sum(factor**2),
    )
    np.testing.assert_allclose(sums, reference, rtol=1e-12)
