"""Non-rigid registration problems with known answers: smooth deformations of a scan."""

from __future__ import annotations

import numpy as np
from sklearn.utils import Bunch, check_random_state

from mmopt._core.validation import check_array, check_choice, check_scalar

__all__ = ["make_nonrigid_problem"]

KINDS = ("bend", "twist", "bumps")


def _deformation(kind: str, amplitude: float, centre, axes, length, rng):
    """The map ``f`` (vectorized over rows) of one smooth deformation."""
    half = 0.5 * length
    if kind == "bumps":
        n_bumps = 3
        width = 0.15 * length
        centres = rng.normal(size=(n_bumps, 3)) * 0.25 * length
        signs = rng.choice([-1.0, 1.0], size=n_bumps)

    def f(x):
        local = (x - centre) @ axes  # coordinates along the principal axes
        s = local[:, 0] / half
        if kind == "bend":
            local = local + np.outer(amplitude * length * s**2, [0.0, 0.0, 1.0])
        elif kind == "twist":
            angle = amplitude * np.pi * s
            c, sn = np.cos(angle), np.sin(angle)
            y, z = local[:, 1].copy(), local[:, 2].copy()
            local = np.c_[local[:, 0], c * y - sn * z, sn * y + c * z]
        else:
            r2 = np.sum((local[:, None, :] - centres[None]) ** 2, axis=2)
            height = np.exp(-0.5 * r2 / width**2) @ (signs * amplitude * length)
            local = local + np.outer(height, [0.0, 0.0, 1.0])
        return centre + local @ axes.T

    return f


def make_nonrigid_problem(
    points=None,
    normals=None,
    *,
    kind: str = "bend",
    amplitude: float = 0.05,
    noise: float = 0.001,
    outlier_fraction: float = 0.0,
    overlap: float = 1.0,
    random_state=None,
) -> Bunch:
    """A non-rigid registration problem with the true position of every source point.

    The target is a smooth deformation ``f`` of the cloud (in the frame of its principal
    axes, with ``L`` its bounding-box diagonal and ``s`` the coordinate along the first axis
    scaled to [-1, 1] at +-L/2): ``"bend"`` lifts points along the third axis by
    ``amplitude * L * s^2``; ``"twist"`` rotates them about the first axis by
    ``amplitude * pi * s``; ``"bumps"`` adds three Gaussian bumps (width ``0.15 L``, height
    ``amplitude * L``, random centres and signs) along the third axis. The target normals
    are the source normals mapped by the inverse transpose of ``f``'s Jacobian. The target
    then gets Gaussian noise (``noise * L``), loses the points below rank ``1 - overlap``
    along a random direction, and gets uniform outliers in its bounding box (with random
    normals) making up ``outlier_fraction`` of it. The source is the cloud itself.

    Parameters
    ----------
    points : array-like of shape (n, 3), optional
        The cloud; the shipped scan's source (:func:`load_scan_pair`) when None.
    normals : array-like of shape (n, 3), optional
        Its normals (the scan's when ``points`` is None); estimated by PCA otherwise.
    kind : {"bend", "twist", "bumps"}, default="bend"
        The deformation.
    amplitude : float, default=0.05
        Its size (see above), at least 0.
    noise : float, default=0.001
        Noise standard deviation as a fraction of ``L``.
    outlier_fraction : float, default=0.0
        Fraction of the target made of outliers, in [0, 1).
    overlap : float, default=1.0
        Fraction of the deformed points kept in the target, in (0, 1].
    random_state : int, RandomState instance or None
        Seed, as in scikit-learn.

    Returns
    -------
    Bunch
        ``problem`` (:class:`~mmopt.registration.NonRigidRegistrationProblem`),
        ``ground_truth`` (n, 3): ``f`` of every source point (noise-free),
        ``ground_truth_normals`` (n, 3): the unit normals there (to split an error into its
        normal and tangential parts), ``in_target`` (n,) bool: whether the point's image
        was kept in the target.

    Examples
    --------
    >>> from mmopt.datasets import make_nonrigid_problem
    >>> data = make_nonrigid_problem(kind="twist", overlap=0.7, random_state=0)
    >>> data.ground_truth.shape, round(float(data.in_target.mean()), 2)
    ((14806, 3), 0.7)
    """
    from mmopt.datasets._scans import load_scan_pair
    from mmopt.registration import NonRigidRegistrationProblem, estimate_normals
    from mmopt.registration.problem import _diagonal

    if points is None:
        scan = load_scan_pair()
        points = scan.source
        normals = scan.source_normals if normals is None else normals
    points = check_array(points, "points", ndim=2, shape=(None, 3))
    if points.shape[0] < 10:
        raise ValueError(f"points must hold at least 10 points, got {points.shape[0]}.")
    if normals is None:
        normals = estimate_normals(points)
    normals = check_array(normals, "normals", shape=points.shape)
    normals = normals / np.linalg.norm(normals, axis=1)[:, None]
    check_choice(kind, "kind", KINDS)
    amplitude = check_scalar(amplitude, "amplitude", min_value=0.0)
    noise = check_scalar(noise, "noise", min_value=0.0)
    check_scalar(outlier_fraction, "outlier_fraction", min_value=0.0, max_value=1.0,
                 include_max=False)
    check_scalar(overlap, "overlap", min_value=0.0, max_value=1.0, include_min=False)
    rng = check_random_state(random_state)

    length = _diagonal(points)
    centre = points.mean(axis=0)
    axes = np.linalg.svd(points - centre, full_matrices=False)[2].T
    f = _deformation(kind, amplitude, centre, axes, length, rng)
    truth = f(points)
    # Normals by the inverse transpose of the Jacobian (central differences).
    h = 1e-6 * length
    jac = np.stack([(f(points + h * e) - f(points - h * e)) / (2 * h) for e in np.eye(3)],
                   axis=2)
    target_normals = np.linalg.solve(np.transpose(jac, (0, 2, 1)), normals[:, :, None])[..., 0]
    target_normals /= np.linalg.norm(target_normals, axis=1)[:, None]

    target = truth + noise * length * rng.normal(size=truth.shape)
    direction = rng.normal(size=3)
    ranks = np.argsort(np.argsort(points @ direction)) / points.shape[0]
    keep = ranks >= 1.0 - overlap
    truth_normals = target_normals
    target, target_normals = target[keep], target_normals[keep]
    n_outliers = int(round(outlier_fraction / (1.0 - outlier_fraction) * target.shape[0]))
    if n_outliers:
        low, high = target.min(axis=0), target.max(axis=0)
        random_normals = rng.normal(size=(n_outliers, 3))
        target = np.vstack([target, rng.uniform(low, high, size=(n_outliers, 3))])
        target_normals = np.vstack([target_normals, random_normals
                                    / np.linalg.norm(random_normals, axis=1)[:, None]])
    order = rng.permutation(target.shape[0])
    problem = NonRigidRegistrationProblem(points, target[order], source_normals=normals,
                                          target_normals=target_normals[order])
    return Bunch(problem=problem, ground_truth=truth, ground_truth_normals=truth_normals,
                 in_target=keep)
