"""Simulated data from a softmax-gated mixture of linear-Gaussian experts."""

from __future__ import annotations

import numpy as np
from sklearn.utils import Bunch

from mmopt._core.validation import check_scalar
from mmopt.datasets._generators import _random_state

__all__ = ["make_moe_regression"]


def make_moe_regression(
    n_samples: int = 1000,
    n_features: int = 1,
    n_experts: int = 3,
    *,
    noise: float = 0.3,
    gate_scale: float = 4.0,
    random_state: int | np.random.RandomState | None = None,
) -> tuple[np.ndarray, np.ndarray, Bunch]:
    r"""Sample a mixture of linear-Gaussian experts with softmax gates, and its parameters.

    The model is :math:`p(y \mid x) = \sum_k \pi_k(x)\, N(y;\, b_k + x^\top \beta_k,
    \sigma_k^2)` with gates :math:`\pi(x) = \mathrm{softmax}(c + W x)`. ``X`` has independent
    standard normal entries. The gate rows ``W_k`` are ``gate_scale`` times random unit
    vectors (the last gate is the reference: ``W_K = 0``, ``c_K = 0``), so each expert rules a
    region of the input space when ``gate_scale`` is large. Expert slopes and intercepts are
    uniform on ``[-3, 3]``; expert standard deviations are ``noise`` times uniform numbers in
    ``[0.5, 1.5]``. Each sample draws its expert ``z_i`` from the gates, then ``y_i`` from
    that expert.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of samples.
    n_features : int, default=1
        Number of features.
    n_experts : int, default=3
        Number of experts ``K`` (at least 1).
    noise : float, default=0.3
        Scale of the experts' standard deviations (positive).
    gate_scale : float, default=4.0
        Length of the gate vectors: larger values make sharper gates (non-negative).
    random_state : int, RandomState instance or None, default=None
        Seed of the draws.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
    truth : Bunch
        ``gate_coef`` (n_experts, n_features), ``gate_intercept`` (n_experts,), ``coef``
        (n_experts, n_features), ``intercept`` (n_experts,), ``sigma`` (n_experts,) the
        experts' standard deviations, and ``labels`` (n_samples,) the expert of each sample.

    Examples
    --------
    >>> from mmopt.datasets import make_moe_regression
    >>> X, y, truth = make_moe_regression(200, 2, 3, random_state=0)
    >>> X.shape, y.shape, truth.coef.shape, truth.sigma.shape
    ((200, 2), (200,), (3, 2), (3,))
    """
    n_samples = check_scalar(n_samples, "n_samples", kind=int, min_value=1)
    n_features = check_scalar(n_features, "n_features", kind=int, min_value=1)
    n_experts = check_scalar(n_experts, "n_experts", kind=int, min_value=1)
    noise = check_scalar(noise, "noise", min_value=0.0, include_min=False)
    gate_scale = check_scalar(gate_scale, "gate_scale", min_value=0.0)
    rng = _random_state(random_state)

    directions = rng.standard_normal((n_experts, n_features))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    gate_coef = gate_scale * directions
    gate_intercept = rng.uniform(-1.0, 1.0, n_experts)
    gate_coef[-1] = 0.0
    gate_intercept[-1] = 0.0
    coef = rng.uniform(-3.0, 3.0, (n_experts, n_features))
    intercept = rng.uniform(-3.0, 3.0, n_experts)
    sigma = noise * rng.uniform(0.5, 1.5, n_experts)

    X = rng.standard_normal((n_samples, n_features))
    logits = X @ gate_coef.T + gate_intercept
    logits -= logits.max(axis=1, keepdims=True)
    gates = np.exp(logits)
    gates /= gates.sum(axis=1, keepdims=True)
    # Inverse-CDF draw of each sample's expert from its gate probabilities.
    labels = (rng.random_sample((n_samples, 1)) > np.cumsum(gates, axis=1)).sum(axis=1)
    labels = np.minimum(labels, n_experts - 1)
    means = np.einsum("ij,ij->i", X, coef[labels]) + intercept[labels]
    y = means + sigma[labels] * rng.standard_normal(n_samples)
    truth = Bunch(
        gate_coef=gate_coef,
        gate_intercept=gate_intercept,
        coef=coef,
        intercept=intercept,
        sigma=sigma,
        labels=labels,
    )
    return X, y, truth
