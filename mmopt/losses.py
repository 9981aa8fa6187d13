"""Robust losses: ``rho``, its influence function ``psi`` and the IRLS weights, written once.

One hierarchy serves every family that reweights residuals (robust regression, ICP, non-rigid
registration), like Open3D's robust kernels. A loss acts on a standardized residual
``u = r / scale``: the influence function is ``psi = rho'`` and the IRLS weight
``w(u) = psi(u) / u`` (continued to ``w(0) = 1``). Every loss here satisfies the MM
condition: ``t -> rho(sqrt(t))`` is concave on ``t >= 0`` (``w`` is non-increasing in ``|u|``),
so the quadratic ``rho(u0) + w(u0) / 2 * (u**2 - u0**2)`` lies above ``rho`` everywhere and
touches it at ``+-u0``. Minimizing the sum of these majorizers is a weighted least-squares
problem: that is IRLS, read as an MM method.

Residuals in the units of the data go through :meth:`RobustLoss.weights` and
:meth:`RobustLoss.energy`, which take the scale. An infinite residual (a point with no match
within a bounded search) has weight 0 and the loss's limit as energy.

The default tuning constants give 95% asymptotic efficiency at the normal distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from mmopt._core.validation import check_scalar

__all__ = [
    "LOSSES",
    "CauchyLoss",
    "HuberLoss",
    "L2Loss",
    "RobustLoss",
    "TrimmedLoss",
    "TukeyLoss",
    "WelschLoss",
    "get_loss",
]


@dataclass(frozen=True)
class RobustLoss:
    """Base class of the robust losses: ``rho``, ``psi`` and the IRLS weight.

    Subclasses set ``name``, ``convex``, ``cutoff`` and a default for ``c`` and implement
    :meth:`rho` and :meth:`weight` (and :meth:`psi` when it is not just ``u * weight(u)``);
    every method is vectorized and accepts array-likes.

    Parameters
    ----------
    c : float
        Tuning constant (> 0), in units of the scale: residuals much larger than
        ``c * scale`` are down-weighted.

    Examples
    --------
    >>> from mmopt.losses import get_loss
    >>> loss = get_loss("cauchy")
    >>> float(loss.weight(0.0)), float(loss.weight(loss.c))
    (1.0, 0.5)
    >>> loss.weights([0.0, 2.3849, float("inf")], scale=1.0).round(3)
    array([1. , 0.5, 0. ])
    """

    name: ClassVar[str] = "loss"
    #: Whether ``rho`` is convex (then IRLS finds the global minimizer from any start).
    convex: ClassVar[bool] = False
    #: Where the weight becomes negligible (below ~1e-5), in units of ``c``; None when it
    #: never does. Nearest-neighbour searches for such a loss can be bounded at
    #: ``cutoff * c * scale``.
    cutoff: ClassVar[float | None] = None

    c: float = 1.0

    def __post_init__(self):
        # Frozen: the check converts c to a float once, through object.__setattr__.
        object.__setattr__(self, "c", check_scalar(self.c, "c", min_value=0.0, include_min=False))

    def rho(self, u: ArrayLike) -> np.ndarray:  # pragma: no cover - abstract
        """The loss at the standardized residuals ``u``."""
        raise NotImplementedError

    def psi(self, u: ArrayLike) -> np.ndarray:
        """The influence function ``rho'(u)``: ``u * weight(u)`` unless a loss has a closed
        form of its own."""
        u = np.asarray(u, dtype=float)
        return u * self.weight(u)

    def weight(self, u: ArrayLike) -> np.ndarray:  # pragma: no cover - abstract
        """The IRLS weight ``psi(u) / u``, equal to 1 at ``u = 0``."""
        raise NotImplementedError

    def __call__(self, u: ArrayLike) -> np.ndarray:
        return self.rho(u)

    def weights(self, r: ArrayLike, scale: float) -> np.ndarray:
        """IRLS weights of the residuals ``r`` (in data units) at ``scale``; 0 where ``r`` is
        infinite."""
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            w = self.weight(np.asarray(r, dtype=float) / scale)
        return np.where(np.isnan(w), 0.0, w)

    def energy(self, r: ArrayLike, scale: float) -> float:
        """``scale**2 * sum_i rho(r_i / scale)``: the robust energy in squared data units."""
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return float(scale * scale * np.sum(self.rho(np.asarray(r, dtype=float) / scale)))

    @property
    def search_bound(self) -> float | None:
        """``cutoff * c`` (standardized units), or None for a loss that never vanishes."""
        return None if self.cutoff is None else self.cutoff * self.c


@dataclass(frozen=True)
class L2Loss(RobustLoss):
    r"""The least-squares loss: every finite residual has weight 1.

    .. math::

        \rho(u) = u^2 / 2, \qquad w(u) = 1 \ (0 \text{ for an infinite residual}).

    ``c`` has no effect; it is kept so that every loss has the same parameters.

    Examples
    --------
    >>> from mmopt.losses import L2Loss
    >>> L2Loss().weights([0.5, float("inf")], scale=2.0)
    array([1., 0.])
    """

    name: ClassVar[str] = "l2"
    convex: ClassVar[bool] = True

    def rho(self, u: ArrayLike) -> np.ndarray:
        u = np.asarray(u, dtype=float)
        with np.errstate(over="ignore"):
            return 0.5 * u * u

    def psi(self, u: ArrayLike) -> np.ndarray:
        return np.asarray(u, dtype=float) * 1.0

    def weight(self, u: ArrayLike) -> np.ndarray:
        return np.where(np.isfinite(np.asarray(u, dtype=float)), 1.0, 0.0)


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
    >>> from mmopt.losses import HuberLoss
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
    >>> from mmopt.losses import CauchyLoss
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
    >>> from mmopt.losses import WelschLoss
    >>> loss = WelschLoss(c=1.0)
    >>> loss.rho([0.0, 1e3]).round(4)
    array([0. , 0.5])
    """

    name: ClassVar[str] = "welsch"
    # exp(-(u/c)^2) < 4e-6 beyond u = 5 c / sqrt(2).
    cutoff: ClassVar[float | None] = 3.5355339059327378

    c: float = 2.9846

    def rho(self, u: ArrayLike) -> np.ndarray:
        z = np.asarray(u, dtype=float) / self.c
        # -expm1 avoids the cancellation in 1 - exp(-z^2) for small residuals; an overflow of
        # z * z gives the right limit, c^2 / 2.
        with np.errstate(over="ignore"):
            return -0.5 * self.c**2 * np.expm1(-z * z)

    def weight(self, u: ArrayLike) -> np.ndarray:
        z = np.asarray(u, dtype=float) / self.c
        with np.errstate(over="ignore"):  # an overflow gives the right limit, weight 0
            return np.exp(-z * z)


@dataclass(frozen=True)
class TukeyLoss(RobustLoss):
    r"""Tukey's biweight (bisquare): redescending, exactly 0 weight beyond ``c``.

    .. math::

        \rho(u) = \frac{c^2}{6} \left(1 - (1 - (u/c)^2)^3\right) \ (|u| \le c), \qquad
        \frac{c^2}{6} \ (|u| > c); \qquad w(u) = (1 - (u/c)^2)_+^2.

    Not convex; ``c = 4.685`` gives 95% efficiency at the normal. Like Welsch's, the fit depends
    on the start.

    Parameters
    ----------
    c : float, default=4.685
        Tuning constant (> 0).

    Examples
    --------
    >>> from mmopt.losses import TukeyLoss
    >>> TukeyLoss(c=1.0).weight([0.0, 0.5, 2.0])
    array([1.    , 0.5625, 0.    ])
    """

    name: ClassVar[str] = "tukey"
    cutoff: ClassVar[float | None] = 1.0

    c: float = 4.685

    def _inside(self, u: ArrayLike) -> np.ndarray:
        z = np.asarray(u, dtype=float) / self.c
        with np.errstate(over="ignore", invalid="ignore"):
            return np.clip(1.0 - z * z, 0.0, None)

    def rho(self, u: ArrayLike) -> np.ndarray:
        inside = self._inside(u)
        return self.c**2 / 6.0 * (1.0 - inside**3)

    def psi(self, u: ArrayLike) -> np.ndarray:
        u = np.asarray(u, dtype=float)
        with np.errstate(invalid="ignore"):
            return np.where(np.isfinite(u), u * self.weight(u), 0.0)

    def weight(self, u: ArrayLike) -> np.ndarray:
        inside = self._inside(u)
        return inside * inside


@dataclass(frozen=True)
class TrimmedLoss(RobustLoss):
    r"""Trimmed least squares: the fraction ``keep`` of smallest residuals counts, the rest not.

    Not a pointwise loss: which residuals are kept depends on all of them, so only
    :meth:`weights` and :meth:`energy` (which see the whole vector) are defined; its weights
    are 1 for the kept residuals and 0 for the others.

    Parameters
    ----------
    keep : float, default=0.9
        Fraction of the residuals kept, in (0, 1].

    Examples
    --------
    >>> from mmopt.losses import TrimmedLoss
    >>> TrimmedLoss(keep=0.5).weights([3.0, 0.1, 2.0, 0.2], scale=1.0)
    array([0., 1., 0., 1.])
    """

    name: ClassVar[str] = "trimmed"
    convex: ClassVar[bool] = False

    keep: float = 0.9

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(
            self, "keep", check_scalar(self.keep, "keep", min_value=0.0, max_value=1.0,
                                       include_min=False)
        )

    def _kept(self, r2: np.ndarray) -> np.ndarray:
        n_keep = max(1, int(round(self.keep * r2.size)))
        mask = np.zeros(r2.size, dtype=bool)
        if n_keep >= r2.size:
            mask[:] = True
        else:
            # NaN sorts last: a NaN residual is trimmed first.
            mask[np.argpartition(r2, n_keep - 1)[:n_keep]] = True
        return mask

    def _pointwise(self, u):
        raise TypeError(
            "TrimmedLoss is not a pointwise loss: use weights(r, scale) and energy(r, scale)."
        )

    rho = psi = weight = _pointwise

    def weights(self, r: ArrayLike, scale: float = 1.0) -> np.ndarray:
        r = np.asarray(r, dtype=float).ravel()
        with np.errstate(over="ignore"):
            return self._kept(r * r).astype(float)

    def energy(self, r: ArrayLike, scale: float = 1.0) -> float:
        r = np.asarray(r, dtype=float).ravel()
        with np.errstate(over="ignore"):
            r2 = r * r
        return float(0.5 * r2[self._kept(r2)].sum())


#: The loss classes by name; :func:`get_loss` builds one.
LOSSES: dict[str, type[RobustLoss]] = {
    cls.name: cls
    for cls in (L2Loss, HuberLoss, CauchyLoss, WelschLoss, TukeyLoss, TrimmedLoss)
}


def get_loss(loss: str | RobustLoss, c: float | None = None) -> RobustLoss:
    """Build a robust loss from its name (or check a loss object).

    Parameters
    ----------
    loss : {"l2", "huber", "cauchy", "welsch", "tukey", "trimmed"} or RobustLoss
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
    >>> from mmopt.losses import get_loss
    >>> get_loss("welsch")
    WelschLoss(c=2.9846)
    >>> get_loss("huber", c=2.0)
    HuberLoss(c=2.0)
    """
    if isinstance(loss, RobustLoss):
        return loss if c is None else _with_c(loss, c)
    if not isinstance(loss, str) or loss not in LOSSES:
        options = ", ".join(repr(name) for name in LOSSES)
        raise ValueError(f"loss must be one of {options} or a RobustLoss; got {loss!r}.")
    cls = LOSSES[loss]
    return cls() if c is None else cls(c=c)


def _with_c(loss: RobustLoss, c: float) -> RobustLoss:
    from dataclasses import replace

    return replace(loss, c=c)
