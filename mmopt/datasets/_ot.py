"""Optimal transport problems of the OT benchmarks: random point clouds, images on a grid."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.utils import check_random_state

from mmopt._core.validation import check_choice, check_scalar

__all__ = ["make_image_histograms", "make_ot_problem"]


def make_ot_problem(
    n_source: int = 1000,
    n_target: int | None = None,
    *,
    n_features: int = 2,
    shift: float = 0.0,
    weights: str = "uniform",
    metric: str = "sqeuclidean",
    normalize_cost: bool = True,
    return_points: bool = False,
    random_state: int | np.random.RandomState | None = None,
):
    """Histograms and cost between two Gaussian point clouds.

    The source points are standard normal in ``n_features`` dimensions, the target points
    standard normal shifted by ``shift`` along every axis; the cost is the ``metric``
    (:func:`scipy.spatial.distance.cdist`) between them, divided by its maximum unless
    ``normalize_cost=False``. This is the problem of the Sinkhorn and SNS benchmarks
    (Tang et al.): ``reg`` is then relative to the cost's scale.

    Parameters
    ----------
    n_source : int, default=1000
        Number of source points (rows of the cost).
    n_target : int, optional
        Number of target points (columns); ``n_source`` when None.
    n_features : int, default=2
        Dimension of the points.
    shift : float, default=0.0
        Offset of the target cloud along every axis.
    weights : {"uniform", "random"}, default="uniform"
        Uniform histograms, or random positive ones (uniform on [0.5, 1.5], rescaled); both
        sum to 1.
    metric : str, default="sqeuclidean"
        Cost between points.
    normalize_cost : bool, default=True
        Divide the cost by its maximum.
    return_points : bool, default=False
        Also return the source and target points.
    random_state : int, RandomState instance or None
        Seed, as in scikit-learn.

    Returns
    -------
    a : ndarray of shape (n_source,)
    b : ndarray of shape (n_target,)
    C : ndarray of shape (n_source, n_target)
    source, target : ndarray
        Only with ``return_points=True``.

    Examples
    --------
    >>> from mmopt.datasets import make_ot_problem
    >>> from mmopt.ot import sinkhorn
    >>> a, b, C = make_ot_problem(50, 40, shift=1.0, random_state=0)
    >>> C.shape, float(C.max()), round(float(a.sum()), 12) == round(float(b.sum()), 12)
    ((50, 40), 1.0, True)
    >>> bool(sinkhorn(a, b, C, reg=1e-2).success)
    True
    """
    n_source = check_scalar(n_source, "n_source", kind=int, min_value=1)
    n_target = n_source if n_target is None else check_scalar(
        n_target, "n_target", kind=int, min_value=1
    )
    n_features = check_scalar(n_features, "n_features", kind=int, min_value=1)
    shift = check_scalar(shift, "shift")
    check_choice(weights, "weights", ("uniform", "random"))
    for flag, value in (("normalize_cost", normalize_cost), ("return_points", return_points)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{flag} must be True or False, got {value!r}.")
    if not (isinstance(metric, str) or callable(metric)):
        raise TypeError(
            f"metric must be a metric name of scipy's cdist or a callable, got {metric!r}."
        )
    try:
        rng = check_random_state(random_state)
    except ValueError as exc:
        raise ValueError(f"random_state: {exc}") from None
    source = rng.standard_normal((n_source, n_features))
    target = rng.standard_normal((n_target, n_features)) + shift
    if weights == "uniform":
        a, b = np.full(n_source, 1.0 / n_source), np.full(n_target, 1.0 / n_target)
    else:
        a, b = rng.uniform(0.5, 1.5, n_source), rng.uniform(0.5, 1.5, n_target)
        a, b = a / a.sum(), b / b.sum()
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            C = cdist(source, target, metric=metric)
    except ValueError as exc:
        raise ValueError(f"metric: {exc}") from None
    if not np.isfinite(C).all():
        raise ValueError(
            f"the {metric!r} cost between the clouds is not finite in float64 "
            f"(shift={shift!r} is too large for it, or the metric gave NaN)."
        )
    if normalize_cost and C.max() > 0:
        C = C / C.max()
    if return_points:
        return a, b, C, source, target
    return a, b, C


def make_image_histograms(
    side: int = 12,
    n_images: int = 1,
    *,
    random_state: int | np.random.RandomState | np.random.Generator | None = None,
):
    """A source image and ``n_images`` target images on a ``side x side`` pixel grid.

    The pixels are the points ``(i, j) / side``; the cost is their squared distance,
    divided by its maximum. The source is one Gaussian blob at the centre; each target is
    the sum of two blobs at random places with random widths, whose pixels below 1e-3 of the
    image's largest are left empty (zero mass), so that the plan has empty columns. Every
    image sums to 1. This is the image problem of the batched Sinkhorn benchmark.

    Parameters
    ----------
    side : int, default=12
        Pixels per side (``side**2`` pixels).
    n_images : int, default=1
        Number of target images (columns of ``B``).
    random_state : int, RandomState, Generator or None
        Seed, as in scikit-learn; a NumPy ``Generator`` is used as is.

    Returns
    -------
    a : ndarray of shape (side**2,)
    B : ndarray of shape (side**2, n_images)
    C : ndarray of shape (side**2, side**2)

    Examples
    --------
    >>> from mmopt.datasets import make_image_histograms
    >>> from mmopt.ot import sinkhorn
    >>> a, B, C = make_image_histograms(8, 3, random_state=0)
    >>> a.shape, B.shape, C.shape
    ((64,), (64, 3), (64, 64))
    >>> bool(sinkhorn(a, B, C, reg=1e-2).success)
    True
    """
    side = check_scalar(side, "side", kind=int, min_value=2)
    n_images = check_scalar(n_images, "n_images", kind=int, min_value=1)
    if isinstance(random_state, np.random.Generator):
        rng = random_state
    else:
        try:
            rng = check_random_state(random_state)
        except ValueError as exc:
            raise ValueError(f"random_state: {exc}") from None
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) / side
    C = ((grid[:, None] - grid[None]) ** 2).sum(-1)
    C /= C.max()
    a = np.exp(-((grid - 0.5) ** 2).sum(1) / 0.1)
    columns = []
    for _ in range(n_images):
        image = sum(np.exp(-((grid - rng.random(2)) ** 2).sum(1) / rng.uniform(0.005, 0.05))
                    for _ in range(2))
        image[image < 1e-3 * image.max()] = 0.0
        columns.append(image / image.sum())
    return a / a.sum(), np.stack(columns, axis=1), C
