"""The Cython moments kernel against a NumPy reference, and the fit it feeds."""

import numpy as np
import pytest

from mmopt.registration import weighted_kabsch
from mmopt.registration._kernels import weighted_pair_moments
from mmopt.registration.kabsch import kabsch_from_moments


def _reference(P, Q, idx, w):
    keep = (idx >= 0) & (w != 0)
    p, q, ww = P[keep], Q[idx[keep]], w[keep]
    return ww.sum(), ww @ p, ww @ q, (p * ww[:, None]).T @ q, float(ww @ (p * p).sum(1))


@pytest.mark.parametrize("seed", range(4))
def test_moments_match_numpy(seed):
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(size=(500, 3)), rng.normal(size=(300, 3))
    idx = rng.integers(-1, 300, size=500)
    w = rng.random(500) * (rng.random(500) > 0.2)
    got = weighted_pair_moments(P, Q, idx, w)
    want = _reference(P, Q, idx, w)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)


def test_read_only_and_non_contiguous_inputs():
    rng = np.random.default_rng(5)
    P = np.asfortranarray(rng.normal(size=(50, 3)))
    Q = rng.normal(size=(40, 3))
    Q.flags.writeable = False
    idx = rng.integers(0, 40, size=50)
    w = rng.random(50)
    np.testing.assert_allclose(weighted_pair_moments(P, Q, idx, w)[3],
                               _reference(P, Q, idx, w)[3], rtol=1e-12)


@pytest.mark.parametrize("similarity", [False, True])
def test_fit_from_moments_matches_weighted_kabsch(similarity):
    rng = np.random.default_rng(6)
    P, Q = rng.normal(size=(200, 3)), rng.normal(size=(150, 3)) * 1.5
    idx = rng.integers(-1, 150, size=200)
    w = rng.random(200)
    total, p_sum, q_sum, cross, p_sq = weighted_pair_moments(P, Q, idx, w)
    p_bar, q_bar = p_sum / total, q_sum / total
    T = kabsch_from_moments(p_bar, q_bar, cross / total - np.outer(p_bar, q_bar),
                            p_sq / total - p_bar @ p_bar, similarity=similarity,
                            scale_bounds=(0.1, 10.0))
    keep = idx >= 0
    expected = weighted_kabsch(P[keep], Q[idx[keep]], w[keep], similarity=similarity,
                               scale_bounds=(0.1, 10.0))
    np.testing.assert_allclose(T, expected, atol=1e-10)
