"""Synthetic and real regression data with gross outliers, for the robust MM estimators."""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state

from mmopt._core.validation import check_scalar

__all__ = ["load_diabetes_with_outliers", "make_regression_with_outliers"]


def _outlier_mask(n_samples: int, outlier_fraction: float, rng) -> np.ndarray:
    n_outliers = int(round(outlier_fraction * n_samples))
    mask = np.zeros(n_samples, dtype=bool)
    mask[rng.choice(n_samples, size=n_outliers, replace=False)] = True
    return mask


def _random_state(random_state):
    """``check_random_state``, with a message naming ``random_state``."""
    try:
        return check_random_state(random_state)
    except (TypeError, ValueError):
        raise ValueError(
            "random_state must be None, an integer or a numpy RandomState/Generator seed, got "
            f"{random_state!r}."
        ) from None


def _random_signs(size: int, rng) -> np.ndarray:
    return np.where(rng.random_sample(size) < 0.5, -1.0, 1.0)


def make_regression_with_outliers(
    n_samples: int = 200,
    n_features: int = 5,
    *,
    outlier_fraction: float = 0.1,
    noise: float = 1.0,
    outlier_scale: float = 100.0,
    random_state: int | np.random.RandomState | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A linear model with Gaussian noise, a fraction of whose responses are gross errors.

    ``X`` has independent standard normal entries, the true coefficients are uniform on
    ``[-10, 10]`` (no intercept), and ``y = X @ coef + noise * z`` with ``z`` standard normal.
    Then ``round(outlier_fraction * n_samples)`` responses, chosen at random, get a gross error
    ``+-outlier_scale * (1 + |z'|)`` with a random sign: every outlier lies at least
    ``outlier_scale`` away from the model, far outside the noise when
    ``outlier_scale >> noise``.

    Parameters
    ----------
    n_samples : int, default=200
        Number of samples.
    n_features : int, default=5
        Number of features.
    outlier_fraction : float, default=0.1
        Fraction of responses replaced by gross errors, in [0, 1).
    noise : float, default=1.0
        Standard deviation of the Gaussian noise (>= 0).
    outlier_scale : float, default=100.0
        Smallest size of a gross error (>= 0).
    random_state : int, RandomState instance or None, default=None
        Seed or generator, as in scikit-learn (see :func:`sklearn.utils.check_random_state`).

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        Design matrix.
    y : ndarray of shape (n_samples,)
        Responses, outliers included.
    coef : ndarray of shape (n_features,)
        The true coefficients.
    outlier_mask : ndarray of bool of shape (n_samples,)
        True for the responses that received a gross error.

    Examples
    --------
    >>> from mmopt.datasets import make_regression_with_outliers
    >>> X, y, coef, outliers = make_regression_with_outliers(
    ...     100, 3, outlier_fraction=0.2, random_state=0
    ... )
    >>> X.shape, y.shape, coef.shape, int(outliers.sum())
    ((100, 3), (100,), (3,), 20)
    """
    n_samples = check_scalar(n_samples, "n_samples", kind=int, min_value=1)
    n_features = check_scalar(n_features, "n_features", kind=int, min_value=1)
    outlier_fraction = check_scalar(
        outlier_fraction, "outlier_fraction", min_value=0.0, max_value=1.0, include_max=False
    )
    noise = check_scalar(noise, "noise", min_value=0.0)
    outlier_scale = check_scalar(outlier_scale, "outlier_scale", min_value=0.0)
    rng = _random_state(random_state)
    X = rng.standard_normal((n_samples, n_features))
    coef = rng.uniform(-10.0, 10.0, n_features)
    y = X @ coef + noise * rng.standard_normal(n_samples)
    mask = _outlier_mask(n_samples, outlier_fraction, rng)
    k = int(mask.sum())
    with np.errstate(over="ignore", invalid="ignore"):
        y[mask] += _random_signs(k, rng) * outlier_scale * (1.0 + np.abs(rng.standard_normal(k)))
    if not np.isfinite(y).all():
        raise ValueError(
            f"noise={noise!r} or outlier_scale={outlier_scale!r} is too large: the targets "
            "overflow."
        )
    return X, y, coef, mask


def load_diabetes_with_outliers(
    outlier_fraction: float = 0.1, random_state: int | np.random.RandomState | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The diabetes data of :func:`sklearn.datasets.load_diabetes` with gross errors in ``y``.

    ``X`` is the standard (mean-centred, scaled) 442 x 10 design. A random
    ``round(outlier_fraction * 442)`` of the disease-progression targets (mean 152, standard
    deviation 77) are moved by ``+-U(5, 10)`` standard deviations of ``y``, with a random sign:
    values no real patient has, as a data-entry error would produce.

    Parameters
    ----------
    outlier_fraction : float, default=0.1
        Fraction of targets corrupted, in [0, 1).
    random_state : int, RandomState instance or None, default=None
        Seed or generator, as in scikit-learn.

    Returns
    -------
    X : ndarray of shape (442, 10)
        Features.
    y : ndarray of shape (442,)
        Targets, outliers included (the clean targets are ``load_diabetes().target``).
    outlier_mask : ndarray of bool of shape (442,)
        True for the corrupted targets.

    Examples
    --------
    >>> from mmopt.datasets import load_diabetes_with_outliers
    >>> X, y, outliers = load_diabetes_with_outliers(0.1, random_state=0)
    >>> X.shape, int(outliers.sum())
    ((442, 10), 44)
    """
    from sklearn.datasets import load_diabetes

    outlier_fraction = check_scalar(
        outlier_fraction, "outlier_fraction", min_value=0.0, max_value=1.0, include_max=False
    )
    rng = _random_state(random_state)
    data = load_diabetes()
    X = np.asarray(data.data, dtype=float)
    y = np.array(data.target, dtype=float)
    mask = _outlier_mask(y.size, outlier_fraction, rng)
    k = int(mask.sum())
    y[mask] += _random_signs(k, rng) * rng.uniform(5.0, 10.0, k) * y.std()
    return X, y, mask
