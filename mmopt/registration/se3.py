"""Closed-form exponential and logarithm of SO(3) and SE(3), with their delicate branches.

A twist is the 6-vector ``(omega, v)``: ``omega`` the rotation vector (axis times angle, in
radians), ``v`` the translational part; ``exp`` maps it to the 4x4 rigid transform
``[[R, V(omega) v], [0, 1]]`` with ``R = exp([omega]_x)`` and ``V`` the left Jacobian of SO(3).
Near angle 0 the coefficients ``sin(t)/t``, ``(1 - cos(t))/t^2``, ``(t - sin(t))/t^3`` are
replaced by their Taylor series (the closed forms cancel catastrophically there); near
``pi`` the logarithm reads the axis from the symmetric part of ``R``, where the usual
``(R - R^T) / (2 sin(t))`` divides by almost zero.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["hat", "so3_exp", "so3_log", "se3_exp", "se3_log", "rotation_angle"]

# Below this angle (radians) the Taylor series are used: their truncation error, ~t^6/5040,
# is below double precision there, while the closed forms lose ~eps/t^2 to cancellation.
_SMALL_ANGLE = 1e-3
# Above pi minus this angle the logarithm reads the axis from the symmetric part of R.
_NEAR_PI = 1e-2
# Above this angle |omega|^2 and [omega]_x^2 may overflow: the exponential uses the unit axis.
_LARGE_ANGLE = 1e100


def hat(omega) -> np.ndarray:
    """The skew-symmetric matrix ``[omega]_x`` with ``[omega]_x @ u == cross(omega, u)``.

    Examples
    --------
    >>> from mmopt.registration.se3 import hat
    >>> bool(np.allclose(hat([1.0, 2.0, 3.0]) @ [4.0, 5.0, 6.0], np.cross([1, 2, 3], [4, 5, 6])))
    True
    """
    wx, wy, wz = (float(c) for c in np.asarray(omega, dtype=float).ravel())
    return np.array([[0.0, -wz, wy], [wz, 0.0, -wx], [-wy, wx, 0.0]])


def _coefficients(theta: float) -> tuple[float, float, float]:
    """``sin(t)/t``, ``(1 - cos(t))/t^2`` and ``(t - sin(t))/t^3`` at ``t = theta``."""
    if theta < _SMALL_ANGLE:
        t2 = theta * theta
        return (
            1.0 - t2 / 6.0 * (1.0 - t2 / 20.0),
            0.5 - t2 / 24.0 * (1.0 - t2 / 30.0),
            1.0 / 6.0 - t2 / 120.0 * (1.0 - t2 / 42.0),
        )
    s, c = math.sin(theta), math.cos(theta)
    return s / theta, (1.0 - c) / (theta * theta), (theta - s) / theta**3


def so3_exp(omega) -> np.ndarray:
    """Rotation matrix of the rotation vector ``omega`` (Rodrigues' formula).

    Examples
    --------
    >>> from mmopt.registration.se3 import so3_exp
    >>> np.round(so3_exp([0.0, 0.0, np.pi / 2]), 12) + 0.0
    array([[ 0., -1.,  0.],
           [ 1.,  0.,  0.],
           [ 0.,  0.,  1.]])
    """
    omega = np.asarray(omega, dtype=float).ravel()
    theta = _norm(omega)
    if theta > _LARGE_ANGLE:
        # |omega|^2 overflows: Rodrigues on the unit axis, with the angle reduced mod 2 pi.
        K = hat(omega / theta)
        angle = math.fmod(theta, 2.0 * math.pi)
        return np.eye(3) + math.sin(angle) * K + (1.0 - math.cos(angle)) * (K @ K)
    a, b, _ = _coefficients(theta)
    W = hat(omega)
    return np.eye(3) + a * W + b * (W @ W)


def rotation_angle(R) -> float:
    """Angle (radians, in [0, pi]) of the rotation matrix ``R``, accurate at every angle.

    ``atan2(|axial part|, (trace - 1)/2)`` keeps full precision near 0 and near pi, where
    ``arccos`` of the trace does not.

    Examples
    --------
    >>> from mmopt.registration.se3 import rotation_angle, so3_exp
    >>> round(float(np.degrees(rotation_angle(so3_exp([0.0, 0.3, 0.0])))), 6)
    17.188734
    """
    R = np.asarray(R, dtype=float)
    axial = 0.5 * np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    cosine = 0.5 * (R[0, 0] + R[1, 1] + R[2, 2] - 1.0)
    return math.atan2(math.sqrt(float(axial @ axial)), cosine)


def so3_log(R) -> np.ndarray:
    """Rotation vector (axis times angle in [0, pi]) of the rotation matrix ``R``.

    Examples
    --------
    >>> from mmopt.registration.se3 import so3_exp, so3_log
    >>> np.round(so3_log(so3_exp([0.1, -0.2, 0.3])), 12)
    array([ 0.1, -0.2,  0.3])
    """
    R = np.asarray(R, dtype=float)
    # sin(theta) * axis, read from the antisymmetric part.
    axial = 0.5 * np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    sine = math.sqrt(float(axial @ axial))
    cosine = 0.5 * (R[0, 0] + R[1, 1] + R[2, 2] - 1.0)
    theta = math.atan2(sine, cosine)
    if theta < _SMALL_ANGLE:
        # theta / sin(theta) = 1 + theta^2/6 + 7 theta^4/360 + ...
        t2 = theta * theta
        return axial * (1.0 + t2 / 6.0 + 7.0 * t2 * t2 / 360.0)
    if theta < math.pi - _NEAR_PI:
        return axial * (theta / sine)
    # Near pi: the symmetric part is cos(t) I + (1 - cos(t)) a a^T; its largest column gives
    # the axis up to sign, and the antisymmetric part (sin(t) a, small but exact in sign)
    # picks the sign.
    outer = (0.5 * (R + R.T) - cosine * np.eye(3)) / (1.0 - cosine)
    column = int(np.argmax(np.diag(outer)))
    axis = outer[:, column] / math.sqrt(max(outer[column, column], np.finfo(float).tiny))
    axis /= np.linalg.norm(axis)
    if float(axis @ axial) < 0.0:
        axis = -axis
    return theta * axis


def _norm(v: np.ndarray) -> float:
    largest = float(np.abs(v).max()) if v.size else 0.0
    if largest < 1e150:
        return math.sqrt(float(v @ v))
    return largest * math.sqrt(float((v / largest) @ (v / largest)))


def _left_jacobian(omega: np.ndarray) -> np.ndarray:
    theta = _norm(omega)
    if theta > _LARGE_ANGLE:
        K = hat(omega / theta)
        return (
            np.eye(3) + (1.0 - math.cos(theta)) / theta * K
            + (theta - math.sin(theta)) / theta * (K @ K)
        )
    _, b, c = _coefficients(theta)
    W = hat(omega)
    return np.eye(3) + b * W + c * (W @ W)


def _finite(array: np.ndarray, name: str) -> np.ndarray:
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must not contain NaN or infinite values.")
    return array


def _real(value, name: str) -> np.ndarray:
    try:
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise TypeError
        return array.astype(float)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be an array of real numbers, got {type(value).__name__}."
        ) from None


def se3_exp(twist) -> np.ndarray:
    """4x4 rigid transform of the twist ``(omega, v)`` (rotation vector first).

    Raises ``ValueError`` for a twist that is not 6 finite numbers.

    Examples
    --------
    >>> from mmopt.registration.se3 import se3_exp
    >>> np.round(se3_exp([0.0, 0.0, 0.0, 1.0, 2.0, 3.0]), 12)
    array([[1., 0., 0., 1.],
           [0., 1., 0., 2.],
           [0., 0., 1., 3.],
           [0., 0., 0., 1.]])
    """
    twist = _real(twist, "twist").ravel()
    if twist.shape != (6,):
        raise ValueError(f"twist must have 6 entries, got shape {twist.shape}.")
    return _se3_exp(_finite(twist, "twist"))


def _se3_exp(twist: np.ndarray) -> np.ndarray:
    """:func:`se3_exp` without the checks (the solvers' inner loops)."""
    twist = np.asarray(twist, dtype=float).ravel()
    omega, v = twist[:3], twist[3:]
    T = np.eye(4)
    T[:3, :3] = so3_exp(omega)
    T[:3, 3] = _left_jacobian(omega) @ v
    return T


def se3_log(T) -> np.ndarray:
    """Twist ``(omega, v)`` of the 4x4 rigid transform ``T``; inverse of :func:`se3_exp`.

    Raises ``ValueError`` for a matrix that is not a finite 4x4 rigid transform (rotation
    block orthonormal to 1e-6, last row ``(0, 0, 0, 1)``).

    Examples
    --------
    >>> from mmopt.registration.se3 import se3_exp, se3_log
    >>> xi = np.array([0.3, -0.1, 0.2, 1.0, -2.0, 0.5])
    >>> bool(np.allclose(se3_log(se3_exp(xi)), xi))
    True
    """
    from mmopt.registration.problem import check_rigid_transform

    T = _real(T, "T")
    if T.shape != (4, 4):
        raise ValueError(f"T must be a 4x4 matrix, got shape {T.shape}.")
    return _se3_log(check_rigid_transform(_finite(T, "T"), "T"))


def _se3_log(T: np.ndarray) -> np.ndarray:
    """:func:`se3_log` without the checks (the solvers' inner loops)."""
    omega = so3_log(T[:3, :3])
    # V(omega) is invertible for angles below 2 pi: solving is exact and branch-free.
    v = np.linalg.solve(_left_jacobian(omega), T[:3, 3])
    return np.concatenate([omega, v])
