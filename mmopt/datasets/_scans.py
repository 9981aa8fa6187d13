"""The real scan pair shipped with mmopt, and synthetic registration clouds.

:func:`make_registration_clouds` returns arrays; :func:`make_registration_problem` wraps them
in a :class:`mmopt.registration.RegistrationProblem`. The data layer sits above the families:
it may import their problem classes, and no family imports it (their ``_demo`` modules, run
by the CLI, aside).
"""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
from sklearn.utils import Bunch, check_random_state

from mmopt._core.validation import check_array, check_scalar
from mmopt.registration.problem import RegistrationProblem

__all__ = ["load_scan_pair", "make_registration_clouds", "make_registration_problem"]

_DATA = "data/scan_pair"


def _read_ascii_ply_vertices(text: str, name: str) -> np.ndarray:
    """Vertex rows of a small ASCII PLY file (enough for the shipped files)."""
    header, sep, body = text.partition("end_header\n")
    if not sep or not header.startswith("ply"):
        raise ValueError(f"{name} is not an ASCII PLY file.")
    n_vertices = next(
        int(line.split()[2]) for line in header.splitlines() if line.startswith("element vertex")
    )
    rows = np.loadtxt(body.splitlines()[:n_vertices], dtype=float, ndmin=2)
    return rows


def load_scan_pair() -> Bunch:
    """Two real partial scans of one object, ~42 degrees apart, with normals.

    The demo pair of the official Fast-Robust-ICP code (Zhang, Yao, Deng; MIT license,
    "Copyright (c) 2020 yaoyuxin", shipped next to the data): a source scan of 14,806 points
    and a target scan of 15,446 points (bounding-box diagonals ~1.94 and ~1.90, point
    spacing ~0.007) overlapping in about 69% of the source, plus the official robust
    point-to-point ICP result (``reference_transform``, ``target ~= T source`` in the data's
    units). The reference is not ground truth: independent implementations agree with it to
    about 0.02-0.05 degrees.

    Returns
    -------
    Bunch
        ``source`` (n, 3), ``target`` (m, 3), ``source_normals``, ``target_normals``,
        ``reference_transform`` (4x4, as written by the official code, rounded to 6 digits,
        so its rotation block is orthonormal to ~1e-6 only), ``DESCR``.

    Examples
    --------
    >>> from mmopt.datasets import load_scan_pair
    >>> data = load_scan_pair()
    >>> data.source.shape, data.target.shape, data.reference_transform.shape
    ((14806, 3), (15446, 3), (4, 4))
    """
    folder = resources.files("mmopt.datasets").joinpath(_DATA)
    source = _read_ascii_ply_vertices(folder.joinpath("source.ply").read_text(), "source.ply")
    target = _read_ascii_ply_vertices(folder.joinpath("target.ply").read_text(), "target.ply")
    reference = np.loadtxt(folder.joinpath("m3trans.txt").read_text().splitlines())
    return Bunch(
        source=np.ascontiguousarray(source[:, :3]),
        target=np.ascontiguousarray(target[:, :3]),
        source_normals=np.ascontiguousarray(source[:, 3:6]),
        target_normals=np.ascontiguousarray(target[:, 3:6]),
        reference_transform=reference,
        DESCR=folder.joinpath("README.md").read_text(),
    )


def _random_rotation(angle_rad: float, rng) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * K + (1 - math.cos(angle_rad)) * (K @ K)


def make_registration_clouds(
    points=None,
    *,
    rotation_deg: float = 30.0,
    translation: float = 0.1,
    noise: float = 0.005,
    outlier_fraction: float = 0.2,
    overlap: float = 0.7,
    random_state=None,
):
    """Source and target clouds with a known rigid motion between them, cut from one cloud.

    The cloud is split along a random direction: the target keeps the points whose rank along
    it is at least ``(1 - overlap) / 2``, the source those below ``(1 + overlap) / 2``, so a
    fraction ``overlap`` of the points lies in both. The source is then moved by the inverse
    of a random rigid transform ``T`` (rotation of ``rotation_deg`` about a random axis,
    translation of length ``translation`` times the bounding-box diagonal, random direction),
    both clouds get independent Gaussian noise of standard deviation ``noise`` times the
    diagonal, and uniform outliers in the source's bounding box are added to make up a
    fraction ``outlier_fraction`` of the source.

    Parameters
    ----------
    points : array-like of shape (n, 3), optional
        The cloud; the shipped scan's source (:func:`load_scan_pair`) when None.
    rotation_deg : float, default=30.0
        Rotation angle of ``T`` in degrees, in [0, 180].
    translation : float, default=0.1
        Length of the translation of ``T`` as a fraction of the bounding-box diagonal.
    noise : float, default=0.005
        Noise standard deviation as a fraction of the diagonal.
    outlier_fraction : float, default=0.2
        Fraction of the source made of outliers, in [0, 1).
    overlap : float, default=0.7
        Fraction of the points in both clouds, in (0, 1].
    random_state : int, RandomState instance or None
        Seed, as in scikit-learn.

    Returns
    -------
    source : ndarray of shape (n_source, 3)
        The moved, noisy, cropped cloud with its outliers.
    target : ndarray of shape (n_target, 3)
        The cropped, noisy cloud.
    transform : ndarray of shape (4, 4)
        The true ``T`` (``target ~= T source`` on the shared part, up to noise).

    See Also
    --------
    make_registration_problem : the same, as a ``RegistrationProblem``.

    Examples
    --------
    >>> from mmopt.datasets import make_registration_clouds
    >>> rng = np.random.default_rng(0)
    >>> source, target, T = make_registration_clouds(rng.random((2000, 3)), random_state=0)
    >>> source.shape, target.shape
    ((2125, 3), (1699, 3))
    """
    if points is None:
        points = load_scan_pair().source
    points = check_array(points, "points", ndim=2, shape=(None, 3))
    check_scalar(rotation_deg, "rotation_deg", min_value=0.0, max_value=180.0)
    check_scalar(translation, "translation", min_value=0.0)
    check_scalar(noise, "noise", min_value=0.0)
    check_scalar(outlier_fraction, "outlier_fraction", min_value=0.0, max_value=1.0,
                 include_max=False)
    check_scalar(overlap, "overlap", min_value=0.0, max_value=1.0, include_min=False)
    rng = check_random_state(random_state)
    with np.errstate(over="ignore", invalid="ignore"):
        spread = np.ptp(points, axis=0)
    if not np.isfinite(spread).all():
        raise ValueError(
            "points: the points spread over more than float64 can hold; rescale them."
        )
    diagonal = _diagonal(points)
    direction = rng.normal(size=3)
    ranks = np.argsort(np.argsort(points @ direction)) / points.shape[0]
    target = points[ranks >= (1.0 - overlap) / 2.0]
    source = points[ranks < (1.0 + overlap) / 2.0]
    if min(source.shape[0], target.shape[0]) < 3:
        raise ValueError(
            f"points and overlap: {points.shape[0]} points with overlap={overlap} leave fewer "
            "than 3 points in a cloud; pass more points or a larger overlap."
        )
    R = _random_rotation(math.radians(rotation_deg), rng)
    shift = rng.normal(size=3)
    with np.errstate(over="ignore", invalid="ignore"):
        t = translation * diagonal * shift / np.linalg.norm(shift)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    # target = R source + t  <=>  source = R^T (target - t)
    with np.errstate(over="ignore", invalid="ignore"):
        source = (source - t) @ R
        source = source + noise * diagonal * rng.normal(size=source.shape)
        target = target + noise * diagonal * rng.normal(size=target.shape)
    if not (np.isfinite(source).all() and np.isfinite(target).all()):
        raise ValueError(
            f"translation={translation} and noise={noise} times the points' extent "
            f"({diagonal:.3g}) overflow float64; lower them or rescale the points."
        )
    n_outliers = int(round(outlier_fraction / (1.0 - outlier_fraction) * source.shape[0]))
    if n_outliers:
        low, high = source.min(axis=0), source.max(axis=0)
        source = np.vstack([source, rng.uniform(low, high, size=(n_outliers, 3))])
        source = source[rng.permutation(source.shape[0])]
    return source, target, T


def _diagonal(points: np.ndarray) -> float:
    """Bounding-box diagonal, without the overflow (1e300) or underflow (1e-300) of squaring."""
    spread = np.ptp(points, axis=0)
    largest = float(spread.max())
    if 1e-150 < largest < 1e150:  # the squares are representable: the plain norm
        return float(np.linalg.norm(spread))
    # hypot scales as it goes: no overflow nor underflow.
    return float(np.hypot.reduce(spread))


def make_registration_problem(points=None, **options):
    """A :class:`RegistrationProblem` with a known answer, cut from one cloud.

    The clouds of :func:`make_registration_clouds` (same ``points`` and
    options: ``rotation_deg``, ``translation``, ``noise``, ``outlier_fraction``, ``overlap``,
    ``random_state``), as a problem; returns ``(problem, transform)``.

    Examples
    --------
    >>> from mmopt.datasets import make_registration_problem
    >>> rng = np.random.default_rng(0)
    >>> problem, T = make_registration_problem(rng.random((2000, 3)), random_state=0)
    >>> problem.source.shape, problem.target.shape
    ((2125, 3), (1699, 3))
    """
    source, target, transform = make_registration_clouds(points, **options)
    return RegistrationProblem(source, target), transform
