"""Robust losses for iteratively reweighted least squares: ``rho``, ``psi`` and weights.

Each loss ``rho`` acts on a standardized residual ``u = r / scale``. Its influence function is
``psi = rho'`` and its IRLS weight ``w(u) = psi(u) / u`` (continued to ``w(0) = 1``). All three
losses here satisfy the MM condition: ``t -> rho(sqrt(t))`` is concave on ``t >= 0``
(equivalently ``w`` is non-increasing in ``|u|``), so the quadratic

``rho(u0) + w(u0) / 2 * (u**2 - u0**2)``

lies above ``rho`` everywhere and touches it at ``+-u0``. Minimizing the sum of these
majorizers over the coefficients is a weighted least-squares problem: that is IRLS, read as
an MM method.

The default tuning constants give 95% asymptotic efficiency at the normal distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from mmopt._core.validation import check_scalar

__all__ = ["LOSSES", "CauchyLoss", "HuberLoss", "RobustLoss", "WelschLoss", "get_loss"]


@dataclass(frozen=True)
class RobustLoss:
    """Base class of the robust losses: ``rho``, ``psi`` and the IRLS weight.

    Subclasses set ``name``, ``convex`` and a default for ``c`` and implement :meth:`rho`,
    :meth:`psi` and :meth:`weight`; every method is vectorized and accepts array-likes.

    Parameters
    ----------
    c : float
        Tuning constant (> 0), in units of the scale: residuals much larger than
        ``c * scale`` are down-weighted.

    Examples
    --------
    >>> from mmopt.mm.losses import get_loss
    >>> loss = get_loss("cauchy")
    >>> float(loss.weight(0.0)), float(loss.weight(loss.c))
    (1.0, 0.5)
    """

    name: ClassVar[str] = "loss"
    #: Whether ``rho`` is convex (then IRLS finds the global minimizer from any start).
    convex: ClassVar[bool] = False

    c: float = 1.0

    def __post_init__(self):
        # Frozen: the check converts c to a float once, through object.__setattr__.
        object.__setattr__(self, "c", check_scalar(self.c, "c", min_value=0.0, include_min=False))

    def rho(self, u: ArrayLike) -> np.ndarray:  # pragma: no cover - abstract
        """The loss at the standardized residuals ``u``."""
        raise NotImplementedError

    def psi(self, u: ArrayLike) -> np.ndarray:  # pragma: no cover - abstract
        """The influence function ``rho'(u)``."""
        raise NotImplementedError

    def weight(self, u: ArrayLike) -> np.ndarray:  # pragma: no cover - abstract
        """The IRLS weight ``psi(u) / u``, equal to 1 at ``u = 0``."""
        raise NotImplementedError

    def __call__(self, u: ArrayLike) -> np.ndarray:
        return self.rho(u)


@dataclass(frozen=True)
class HuberLoss(RobustLoss):
    r"""Huber's loss: quadratic up to ``c``, linear beyond.

    .. math::

        \rho(u) = u^2/2 \ (|u| \le c), \qquad c|u| - c^2/2 \ (|u| > c);
        \qquad w(u) = \min(1, c/|u|).

    Convex; ``c = 1.345`` gives 95% efficiency at the normal.

    Parameters
    ----------
    c : float, default=1.345
        Tuning constant (> 0).

    Examples
    --------
    >>> from mmopt.mm.losses import HuberLoss
    >>> loss = HuberLoss()
    >>> loss.rho([0.0, 1.0, 3.0]).round(4)
    array([0.    , 0.5   , 3.1305])
    >>> loss.weight([0.0, 2.69]).round(4)
    array([1. , 0.5])
    """

    name: ClassVar[str] = "huber"
    convex: ClassVar[bool] = True

    c: float = 1.345

    def rho(self, u: ArrayLike) -> np.ndarray:
        a = np.abs(np.asarray(u, dtype=float))
        c = self.c
        return np.where(a <= c, 0.5 * a * a, c * (a - 0.5 * c))

    def psi(self, u: ArrayLike) -> np.ndarray:
        return np.clip(np.asarray(u, dtype=float), -self.c, self.c)

    def weight(self, u: ArrayLike) -> np.ndarray:
        # c / max(|u|, c) is 1 inside the quadratic zone and never divides by zero.
        return self.c / np.maximum(np.abs(np.asarray(u, dtype=float)), self.c)


@dataclass(frozen=True)
class CauchyLoss(RobustLoss):
    r"""The Cauchy (Lorentzian) loss, redescending slowly.

    .. math::

        \rho(u) = \frac{c^2}{2} \log(1 + (u/c)^2), \qquad w(u) = \frac{1}{1 + (u/c)^2}.

    Not convex (``rho`` is concave for ``|u| > c``); ``c = 2.3849`` gives 95% efficiency at
    the normal.

    Parameters
    ----------
    c : float, default=2.3849
        Tuning constant (> 0).

    Examples
    --------
    >>> from mmopt.mm.losses import CauchyLoss
    >>> loss = CauchyLoss(c=1.0)
    >>> loss.weight([0.0, 1.0, 3.0]).round(4)
    array([1. , 0.5, 0.1])
    """

    name: ClassVar[str] = "cauchy"

    c: float = 2.3849

    def rho(self, u: ArrayLike) -> np.ndarray:
        z = np.asarray(u, dtype=float) / self.c
        # log1p keeps full relative accuracy for the small residuals that dominate near the fit;
        # z * z may overflow to inf for an absurdly small scale, and then rho is inf.
        with np.errstate(over="ignore"):
            return 0.5 * self.c**2 * np.log1p(z * z)

    def psi(self, u: ArrayLike) -> np.ndarray:
        u = np.asarray(u, dtype=float)
        return u * self.weight(u)

    def weight(self, u: ArrayLike) -> np.ndarray:
        z = np.asarray(u, dtype=float) / self.c
        with np.errstate(over="ignore"):  # an overflow gives the right limit, weight 0
            return 1.0 / (1.0 + z * z)


@dataclass(frozen=True)
class WelschLoss(RobustLoss):
    r"""The Welsch (Leclerc) loss, bounded: gross outliers get weight ~0.

    .. math::

        \rho(u) = \frac{c^2}{2} \left(1 - e^{-(u/c)^2}\right), \qquad w(u) = e^{-(u/c)^2}.

    Not convex; ``c = 2.9846`` gives 95% efficiency at the normal. Because ``rho`` is bounded
    by ``c^2 / 2``, the fit depends on the start: start from a convex (Huber) fit.

    Parameters
    ----------
    c : float, default=2.9846
        Tuning constant (> 0).

    Examples
    --------
    >>> from mmopt.mm.losses import WelschLoss
    >>> loss = WelschLoss(c=1.0)
    >>> loss.rho([0.0, 1e3]).round(4)
    array([0. , 0.5])
    """

    name: ClassVar[str] = "welsch"

    c: float = 2.9846

    def rho(self, u: ArrayLike) -> np.ndarray:
        z = np.asarray(u, dtype=float) / self.c
        # -expm1 avoids the cancellation in 1 - exp(-z^2) for small residuals; an overflow of
        # z * z gives the right limit, c^2 / 2.
        with np.errstate(over="ignore"):
            return -0.5 * self.c**2 * np.expm1(-z * z)

    def psi(self, u: ArrayLike) -> np.ndarray:
        u = np.asarray(u, dtype=float)
        return u * self.weight(u)

    def weight(self, u: ArrayLike) -> np.ndarray:
        z = np.asarray(u, dtype=float) / self.c
        with np.errstate(over="ignore"):  # an overflow gives the right limit, weight 0
            return np.exp(-z * z)


#: The loss classes by name; :func:`get_loss` builds one.
LOSSES: dict[str, type[RobustLoss]] = {
    cls.name: cls for cls in (HuberLoss, CauchyLoss, WelschLoss)
}


def get_loss(loss: str | RobustLoss, c: float | None = None) -> RobustLoss:
    """Build a robust loss from its name (or check a loss object).

    Parameters
    ----------
    loss : {"huber", "cauchy", "welsch"} or RobustLoss
        The loss's name, or an instance (returned as is when ``c`` is None).
    c : float, optional
        Tuning constant; the loss's 95%-efficiency default when None.

    Returns
    -------
    RobustLoss

    Raises
    ------
    ValueError
        If ``loss`` is not a known name or ``c`` is not positive (the message names the
        argument).

    Examples
    --------
    >>> from mmopt.mm.losses import get_loss
    >>> get_loss("welsch")
    WelschLoss(c=2.9846)
    >>> get_loss("huber", c=2.0)
    HuberLoss(c=2.0)
    """
    if isinstance(loss, RobustLoss):
        return loss if c is None else type(loss)(c=c)
    if not isinstance(loss, str) or loss not in LOSSES:
        options = ", ".join(repr(name) for name in LOSSES)
        raise ValueError(f"loss must be one of {options}; got {loss!r}.")
    cls = LOSSES[loss]
    return cls() if c is None else cls(c=c)
