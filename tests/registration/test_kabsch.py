"""Weighted Kabsch / Umeyama against scipy's Rotation.align_vectors and closed forms."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from mmopt.registration.kabsch import weighted_kabsch


@pytest.mark.parametrize("seed", range(5))
def test_matches_scipy_align_vectors(seed):
    rng = np.random.default_rng(seed)
    P = rng.normal(size=(40, 3))
    Q = rng.normal(size=(40, 3))  # no exact transform: a genuine least-squares fit
    w = rng.random(40)
    T = weighted_kabsch(P, Q, w)
    # Reference: centre with the weighted means, then scipy's weighted Wahba solution.
    p_bar, q_bar = w @ P / w.sum(), w @ Q / w.sum()
    R_ref, _ = Rotation.align_vectors(Q - q_bar, P - p_bar, weights=w)
    np.testing.assert_allclose(T[:3, :3], R_ref.as_matrix(), atol=1e-10)
    np.testing.assert_allclose(T[:3, 3], q_bar - R_ref.as_matrix() @ p_bar, atol=1e-10)


def test_never_returns_a_reflection():
    # A mirrored planar cloud: the best orthogonal map is a reflection; Kabsch must return a
    # proper rotation instead.
    rng = np.random.default_rng(0)
    P = np.c_[rng.normal(size=(30, 2)), rng.normal(scale=0.01, size=30)]
    Q = P * [1.0, 1.0, -1.0]
    R = weighted_kabsch(P, Q)[:3, :3]
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_zero_weights_are_ignored():
    rng = np.random.default_rng(1)
    P = rng.normal(size=(20, 3))
    R = Rotation.from_rotvec([0.2, 0.1, -0.3]).as_matrix()
    Q = P @ R.T + 1.0
    Q_bad = Q.copy()
    Q_bad[:5] += 100.0
    w = np.r_[np.zeros(5), np.ones(15)]
    np.testing.assert_allclose(weighted_kabsch(P, Q_bad, w)[:3, :3], R, atol=1e-10)
    with pytest.raises(ValueError, match="weights"):
        weighted_kabsch(P, Q, np.zeros(20))


@pytest.mark.parametrize(
    "scale, bounds, expected", [(1.7, (0.5, 2.0), 1.7), (3.0, (0.5, 2.0), 2.0)]
)
def test_similarity_scale_and_bounds(scale, bounds, expected):
    rng = np.random.default_rng(2)
    P = rng.normal(size=(50, 3))
    R = Rotation.from_rotvec([0.4, -0.1, 0.2]).as_matrix()
    Q = scale * P @ R.T + [1.0, 2.0, 3.0]
    T = weighted_kabsch(P, Q, similarity=True, scale_bounds=bounds)
    s = np.cbrt(np.linalg.det(T[:3, :3]))
    assert s == pytest.approx(expected)
    np.testing.assert_allclose(T[:3, :3] / s, R, atol=1e-10)
    if expected != scale:
        # Clipped: the translation is still optimal for that scale.
        q_bar, p_bar = Q.mean(0), P.mean(0)
        np.testing.assert_allclose(T[:3, 3], q_bar - expected * R @ p_bar, atol=1e-10)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 3.1))
def test_recovers_exact_transform(seed, angle):
    rng = np.random.default_rng(seed)
    P = rng.normal(size=(10, 3))
    axis = rng.normal(size=3)
    R = Rotation.from_rotvec(angle * axis / np.linalg.norm(axis)).as_matrix()
    t = rng.normal(size=3)
    T = weighted_kabsch(P, P @ R.T + t, rng.random(10) + 0.1)
    np.testing.assert_allclose(T[:3, :3], R, atol=1e-8)
    np.testing.assert_allclose(T[:3, 3], t, atol=1e-8)
