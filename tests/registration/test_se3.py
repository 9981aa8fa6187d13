"""se(3)/SO(3) exp and log against scipy (Rotation, expm, logm), incl. the delicate branches."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import expm, logm
from scipy.spatial.transform import Rotation

from mmopt.registration.se3 import hat, rotation_angle, se3_exp, se3_log, so3_exp, so3_log

ANGLES = [0.0, 1e-12, 1e-8, 1e-5, 9.99e-4, 1e-3, 1.01e-3, 0.1, 1.0, 2.5, np.pi - 0.011,
          np.pi - 0.0099, np.pi - 1e-4, np.pi - 1e-8, np.pi]


def _axis(seed):
    v = np.random.default_rng(seed).normal(size=3)
    return v / np.linalg.norm(v)


def _twist_hat(xi):
    M = np.zeros((4, 4))
    M[:3, :3] = hat(xi[:3])
    M[:3, 3] = xi[3:]
    return M


@pytest.mark.parametrize("angle", ANGLES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_so3_exp_matches_scipy(angle, seed):
    omega = angle * _axis(seed)
    np.testing.assert_allclose(
        so3_exp(omega), Rotation.from_rotvec(omega).as_matrix(), atol=1e-15, rtol=0
    )


@pytest.mark.parametrize("angle", ANGLES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_so3_log_inverts_exp(angle, seed):
    omega = angle * _axis(seed)
    R = Rotation.from_rotvec(omega).as_matrix()
    got = so3_log(R)
    if angle > np.pi - 1e-6:
        # At pi the axis sign is ambiguous: either rotation vector is a valid logarithm.
        assert np.linalg.norm(got) == pytest.approx(angle, abs=1e-7)
        np.testing.assert_allclose(so3_exp(got), R, atol=1e-12)
    else:
        np.testing.assert_allclose(got, omega, atol=1e-12 * max(1.0, 1.0 / (np.pi - angle)))
        # scipy's own logarithm as an independent reference
        np.testing.assert_allclose(got, Rotation.from_matrix(R).as_rotvec(), atol=1e-9)
    assert rotation_angle(R) == pytest.approx(angle, abs=1e-9)


def test_small_angle_keeps_relative_precision():
    omega = 1e-10 * _axis(3)
    np.testing.assert_allclose(so3_log(so3_exp(omega)), omega, rtol=1e-6)
    xi = np.r_[omega, 1e-10 * _axis(4)]
    np.testing.assert_allclose(se3_log(se3_exp(xi)), xi, rtol=1e-6)


@pytest.mark.parametrize("angle", [0.0, 1e-7, 1e-3, 0.5, 2.0, 3.0])
def test_se3_exp_matches_expm(angle):
    xi = np.r_[angle * _axis(5), [0.3, -1.2, 2.0]]
    np.testing.assert_allclose(se3_exp(xi), expm(_twist_hat(xi)), atol=1e-12)


@pytest.mark.parametrize("angle", [1e-7, 1e-3, 0.5, 2.0, 3.0])
def test_se3_log_matches_logm(angle):
    xi = np.r_[angle * _axis(6), [0.3, -1.2, 2.0]]
    T = expm(_twist_hat(xi))
    L = np.real(logm(T))
    expected = np.r_[L[2, 1], L[0, 2], L[1, 0], L[:3, 3]]
    np.testing.assert_allclose(se3_log(T), expected, atol=1e-8)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1, 1), min_size=3, max_size=3),
    st.floats(0, np.pi - 1e-6),
    st.lists(st.floats(-10, 10), min_size=3, max_size=3),
)
def test_roundtrip_and_rigidity(axis, angle, v):
    axis = np.asarray(axis)
    if np.linalg.norm(axis) < 1e-3:
        axis = np.array([1.0, 0.0, 0.0])
    xi = np.r_[angle * axis / np.linalg.norm(axis), v]
    T = se3_exp(xi)
    R = T[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(T[3], [0, 0, 0, 1])
    np.testing.assert_allclose(se3_exp(se3_log(T)), T, atol=1e-9)


def test_bad_shapes():
    with pytest.raises(ValueError, match="twist"):
        se3_exp(np.zeros(5))
    with pytest.raises(ValueError, match="4x4"):
        se3_log(np.eye(3))
