"""Separable penalties ``g(x) = sum_i g_i(x_i)`` for block coordinate descent.

Each penalty is a small object with its strength: ``value``, an elementwise ``prox``, the
distance of ``-grad`` to its subdifferential (the optimality violation per coordinate) and,
for the smooth ones, a gradient and a Hessian diagonal so that matrix and Newton updates can
add them to the datafit's curvature. Their L1 and L2 weights (``l1``, ``l2``, ``positive``)
are what the compiled coordinate-descent kernels need.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from mmopt._core.validation import check_scalar

__all__ = ["NoPenalty", "L2", "L1", "L1Positive", "ElasticNet", "Penalty"]


class Penalty:
    """Base class: ``g(x) = l1 ||x||_1 + l2 / 2 ||x||^2`` (plus ``x >= 0`` when positive).

    Every penalty here is of that form, which keeps the prox, the subdifferential and the
    dual computations in one place.
    """

    l1: float = 0.0
    l2: float = 0.0
    positive: bool = False

    @property
    def smooth(self) -> bool:
        """True when the penalty is differentiable everywhere (no L1 part, no constraint)."""
        return self.l1 == 0.0 and not self.positive

    def value(self, x: np.ndarray) -> float:
        """Penalty value at ``x`` (``inf`` when a positivity constraint is violated)."""
        if self.positive and np.any(x < 0):
            return np.inf
        x = np.asarray(x, dtype=float)  # summed in float64 for float32 iterates too
        return float(self.l1 * np.abs(x).sum() + 0.5 * self.l2 * (x @ x))

    def prox(self, v: np.ndarray, step) -> np.ndarray:
        """``argmin_u 1/(2 step) ||u - v||^2 + g(u)``, elementwise; ``step`` scalar or array."""
        step = np.asarray(step, dtype=float)
        if self.positive:
            u = np.maximum(v - step * self.l1, 0.0)
        elif self.l1 > 0:
            u = np.sign(v) * np.maximum(np.abs(v) - step * self.l1, 0.0)
        else:
            u = np.array(v, dtype=float, copy=True)
        if self.l2 > 0:
            u = u / (1.0 + step * self.l2)
        return u

    def gradient(self, x: np.ndarray) -> np.ndarray:
        """Gradient of the smooth (L2) part."""
        return self.l2 * x

    def hessian_diag(self) -> float:
        """Curvature of the smooth (L2) part, the same for every coordinate."""
        return self.l2

    def subdiff_distance(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """``dist(-grad_i, dg_i(x_i))`` per coordinate: zero exactly at a minimizer."""
        g = grad + self.l2 * x
        if self.l1 == 0.0 and not self.positive:
            return np.abs(g)
        out = np.where(
            x != 0, np.abs(g + self.l1 * np.sign(x)), np.maximum(np.abs(g) - self.l1, 0.0)
        )
        if self.positive:
            # At x_i = 0 the subdifferential is (-inf, l1]: only -grad_i > l1 violates it.
            out = np.where(x > 0, np.abs(g + self.l1), np.maximum(-g - self.l1, 0.0))
        return out

    def generalized_support(self, x: np.ndarray) -> np.ndarray:
        """Coordinates where the penalty is differentiable (non-zero for L1 penalties)."""
        if self.l1 == 0.0 and not self.positive:
            return np.ones(x.shape, dtype=bool)
        return x != 0

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict:
        return {}


class _OneTerm(Penalty):
    """A penalty of one term, ``l1`` or ``l2`` (named by ``_term``), equal to ``alpha``."""

    _term: ClassVar[str]

    def __init__(self, alpha: float = 1.0):
        self.alpha = check_scalar(alpha, "alpha", min_value=0.0)
        setattr(self, self._term, self.alpha)

    def _params(self):
        return {"alpha": self.alpha}


class NoPenalty(Penalty):
    """No penalty: ``g = 0``.

    Examples
    --------
    >>> NoPenalty().prox(np.array([1.0, -2.0]), 0.5)
    array([ 1., -2.])
    """


class L2(_OneTerm):
    """Ridge penalty ``alpha / 2 ||x||^2``.

    Examples
    --------
    >>> L2(1.0).prox(np.array([2.0]), 1.0)
    array([1.])
    """

    _term = "l2"


class L1(_OneTerm):
    """Lasso penalty ``alpha ||x||_1``.

    Examples
    --------
    >>> L1(1.0).prox(np.array([3.0, -0.5]), 1.0)
    array([ 2., -0.])
    """

    _term = "l1"


class L1Positive(_OneTerm):
    """``alpha ||x||_1`` restricted to ``x >= 0`` (non-negative Lasso).

    Examples
    --------
    >>> L1Positive(1.0).prox(np.array([3.0, -0.5]), 1.0)
    array([2., 0.])
    """

    positive = True
    _term = "l1"


class ElasticNet(Penalty):
    """``alpha * (l1_ratio ||x||_1 + (1 - l1_ratio) / 2 ||x||^2)``, as scikit-learn's.

    Examples
    --------
    >>> pen = ElasticNet(1.0, l1_ratio=0.5)
    >>> pen.l1, pen.l2
    (0.5, 0.5)
    """

    def __init__(self, alpha: float = 1.0, l1_ratio: float = 0.5, *, positive: bool = False):
        self.alpha = check_scalar(alpha, "alpha", min_value=0.0)
        self.l1_ratio = check_scalar(l1_ratio, "l1_ratio", min_value=0.0, max_value=1.0)
        self.positive = bool(positive)
        self.l1 = self.alpha * self.l1_ratio
        self.l2 = self.alpha * (1.0 - self.l1_ratio)

    def _params(self):
        return {"alpha": self.alpha, "l1_ratio": self.l1_ratio, "positive": self.positive}
