"""The rigid registration problem: a source cloud to move onto a target cloud."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from mmopt._core.problem import Problem
from mmopt._core.validation import check_array, readonly

__all__ = [
    "RegistrationProblem",
    "check_point_cloud",
    "check_rigid_transform",
]

# Relative size of the second singular value of the centred cloud below which the points are
# treated as collinear (a rotation about their line is then undetermined).
_COLLINEAR_RTOL = 1e-9


def check_point_cloud(value, name: str) -> np.ndarray:
    """A read-only float64 (n, 3) cloud of at least 3 finite, not all collinear points.

    Examples
    --------
    >>> from mmopt.registration.problem import check_point_cloud
    >>> check_point_cloud([[0, 0, 0], [1, 0, 0], [2, 0, 0]], "source")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: source: the points are collinear (or coincide); ...
    """
    points = check_array(value, name, ndim=2)
    if points.shape[1] != 3:
        raise ValueError(f"{name} must have shape (n, 3), got {points.shape}.")
    if points.shape[0] < 3:
        raise ValueError(f"{name} must hold at least 3 points, got {points.shape[0]}.")
    with np.errstate(over="ignore", invalid="ignore"):
        spread = np.ptp(points, axis=0)
    if not np.isfinite(spread).all():
        raise ValueError(
            f"{name}: the points spread over more than float64 can hold (their coordinates "
            "differ by more than ~1.8e308); rescale them."
        )
    singular = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    if not singular[1] > _COLLINEAR_RTOL * max(singular[0], np.finfo(float).tiny):
        raise ValueError(
            f"{name}: the points are collinear (or coincide); a rotation about their line is "
            "undetermined."
        )
    return points


def _diagonal(points: np.ndarray) -> float:
    """Bounding-box diagonal, without the overflow (1e300) or underflow (1e-300) of squaring."""
    spread = np.ptp(points, axis=0)
    largest = float(spread.max())
    if 1e-150 < largest < 1e150:  # the squares are representable: the plain norm
        return float(np.linalg.norm(spread))
    if largest == 0.0:
        return 0.0
    return largest * float(np.linalg.norm(spread / largest))


def _centroid(points: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        centroid = points.mean(axis=0)
    if np.isfinite(centroid).all():
        return centroid
    # Coordinates near the float64 limit: their sum overflows, a scaled mean does not.
    largest = float(np.abs(points).max())
    return (points / largest).mean(axis=0) * largest


def _check_normals(value, name: str, n_points: int, points_name: str) -> np.ndarray | None:
    if value is None:
        return None
    normals = check_array(value, name, ndim=2)
    if normals.shape != (n_points, 3):
        raise ValueError(
            f"{name} must have shape ({n_points}, 3), one normal per point of {points_name}; "
            f"got {normals.shape}."
        )
    lengths = np.linalg.norm(normals, axis=1)
    if not np.all(lengths > 1e-12):
        raise ValueError(f"{name} must not contain zero vectors.")
    return readonly(normals / lengths[:, None])


def check_rigid_transform(value, name: str, *, similarity: bool = False) -> np.ndarray:
    """A read-only 4x4 rigid transform ``[[R, t], [0, 1]]`` (``[[sR, t], ...]`` if similarity).

    ``R`` must be a rotation (orthonormal, determinant +1) to 1e-6.

    Examples
    --------
    >>> from mmopt.registration.problem import check_rigid_transform
    >>> check_rigid_transform(2 * np.eye(4), "init")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: init must be a 4x4 rigid transform [[R, t], [0, 0, 0, 1]]: its last row is ...
    """
    T = check_array(value, name, shape=(4, 4))
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError(
            f"{name} must be a 4x4 rigid transform [[R, t], [0, 0, 0, 1]]: its last row is "
            f"{np.asarray(T[3])}."
        )
    A = T[:3, :3]
    det = float(np.linalg.det(A))
    scale = np.cbrt(det) if similarity and det > 0 else 1.0
    R = A / scale
    if not (np.allclose(R.T @ R, np.eye(3), atol=1e-6) and np.linalg.det(R) > 0):
        kind = "a rotation times a positive scale" if similarity else "a rotation"
        raise ValueError(
            f"{name} must be a 4x4 rigid transform: its upper-left 3x3 block must be {kind} "
            f"(orthonormal, determinant +1); got determinant {det:.6g} and "
            f"max |R^T R - I| = {np.abs(R.T @ R - np.eye(3)).max():.3g}."
        )
    return T


@dataclass(frozen=True, eq=False)
class _CloudPair(Problem):
    """What the rigid and the non-rigid problem share: a source and a target cloud, their
    common length scale, and a thread-safe memo of what is built from them (KD-trees,
    normals, graphs), which pickling leaves out."""

    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: threading.RLock = field(
        default_factory=threading.RLock, init=False, repr=False, compare=False
    )
    # One lock per entry under construction: entries of different keys build concurrently.
    _building: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def scale(self) -> float:
        """Normalization length: the larger bounding-box diagonal of the two clouds."""
        return max(_diagonal(self.source), _diagonal(self.target))

    def cached(self, key, build):
        """Memoize ``build()`` under ``key`` (KD-trees and geometry are built once).

        Thread-safe: solves sharing the problem build each entry once and read it only;
        entries of different keys can build at the same time (on different threads), and a
        build may ask for other entries.
        """
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            entry_lock = self._building.setdefault(key, threading.RLock())
        with entry_lock:
            with self._lock:
                if key in self._cache:  # built by the thread that held entry_lock
                    return self._cache[key]
            value = build()
            with self._lock:
                self._cache[key] = value
                self._building.pop(key, None)
            return value


@dataclass(frozen=True, eq=False)
class RegistrationProblem(_CloudPair):
    """Rigid registration of ``source`` onto ``target``: find ``T`` with ``target ~= T source``.

    ``T`` is a 4x4 homogeneous transform acting on column vectors, ``y = R @ x + t``. The
    clouds need not have the same number of points nor overlap completely.

    Parameters
    ----------
    source : array-like of shape (n, 3)
        The moving cloud (at least 3 finite, not collinear points).
    target : array-like of shape (m, 3)
        The fixed cloud.
    target_normals : array-like of shape (m, 3), optional
        Normals of the target (any sign; normalized here), used by point-to-plane ICP;
        estimated by PCA when needed and not given.
    source_normals : array-like of shape (n, 3), optional
        Normals of the source (validated and kept for the user; the solvers do not need them).

    Attributes
    ----------
    scale : float
        The larger bounding-box diagonal of the two clouds: the solvers work in coordinates
        divided by it, so that their tolerances are unit-free.

    Examples
    --------
    >>> from mmopt.registration import RegistrationProblem
    >>> rng = np.random.default_rng(0)
    >>> source = rng.random((100, 3))
    >>> problem = RegistrationProblem(source, source + [0.1, 0.0, 0.0])
    >>> res = problem.solve(loss="l2")
    >>> np.round(res.translation, 6) + 0.0
    array([0.1, 0. , 0. ])
    """

    source: np.ndarray
    target: np.ndarray
    target_normals: np.ndarray | None = None
    source_normals: np.ndarray | None = None

    default_solver = "icp"

    def __post_init__(self):
        source = check_point_cloud(self.source, "source")
        target = check_point_cloud(self.target, "target")
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "target", target)
        object.__setattr__(
            self,
            "target_normals",
            _check_normals(self.target_normals, "target_normals", target.shape[0], "target"),
        )
        object.__setattr__(
            self,
            "source_normals",
            _check_normals(self.source_normals, "source_normals", source.shape[0], "source"),
        )

    def __reduce__(self):
        # The cache (KD-trees, local geometry) is rebuilt on demand after unpickling.
        return (
            type(self),
            (self.source, self.target, self.target_normals, self.source_normals),
        )

    @property
    def source_centroid(self) -> np.ndarray:
        return _centroid(self.source)

    @property
    def target_centroid(self) -> np.ndarray:
        return _centroid(self.target)

    def __repr__(self) -> str:
        normals = " with target normals" if self.target_normals is not None else ""
        return (
            f"RegistrationProblem(source: {self.source.shape[0]} points, "
            f"target: {self.target.shape[0]} points{normals})"
        )
