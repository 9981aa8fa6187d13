"""Robust losses of a residual ``r`` at scale ``nu``: the energy ``psi`` and IRLS weights.

Each loss gives ``psi(r; nu)`` and the weight ``w(r) = psi'(r) / (c r)`` of its quadratic
majorizer at ``r`` (``c`` a constant of the loss, so that ``w(0) = 1``): minimizing
``sum_i w_i r_i^2`` with the weights frozen decreases ``sum_i psi(r_i)``, the MM step of ICP.
An infinite residual (no target point within the search bound) has weight 0; only the
losses whose weights vanish far away (``welsch``, ``tukey``) are used with bounded searches.

==========  =====================================================  ==========================
loss        ``psi(r)``                                             weight ``w(r)``
==========  =====================================================  ==========================
l2          ``r^2``                                                ``1``
welsch      ``1 - exp(-r^2 / (2 nu^2))``                           ``exp(-r^2 / (2 nu^2))``
huber       ``r^2 / 2`` if ``|r| <= nu`` else ``nu |r| - nu^2/2``  ``min(1, nu / |r|)``
cauchy      ``nu^2 / 2 log(1 + r^2 / nu^2)``                       ``1 / (1 + r^2 / nu^2)``
tukey       ``nu^2/6 (1 - (1 - r^2/nu^2)^3)``, ``nu^2/6`` beyond   ``(1 - r^2/nu^2)^2``, 0 beyond
trimmed     ``r^2`` for the kept fraction, 0 for the rest          1 kept, 0 trimmed
==========  =====================================================  ==========================
"""

from __future__ import annotations

import numpy as np

__all__ = ["LOSSES", "loss_energy", "loss_weights"]

LOSSES = ("l2", "welsch", "huber", "cauchy", "tukey", "trimmed")
# Losses whose weight is ~0 beyond a few nu: their nearest-neighbour searches can be bounded.
BOUNDED_LOSSES = {"welsch": 5.0, "tukey": 1.0}


def _trim_mask(r2: np.ndarray, keep: float) -> np.ndarray:
    n_keep = max(1, int(round(keep * r2.size)))
    mask = np.zeros(r2.size, dtype=bool)
    if n_keep >= r2.size:
        mask[:] = True
    else:
        mask[np.argpartition(r2, n_keep - 1)[:n_keep]] = True
    return mask


def loss_weights(loss: str, r, nu: float, *, keep: float = 0.9) -> np.ndarray:
    """IRLS weights of the residuals ``r`` (``keep``: kept fraction for ``"trimmed"``).

    Examples
    --------
    >>> import numpy as np
    >>> from mmopt.registration.losses import loss_weights
    >>> np.round(loss_weights("huber", np.array([0.5, 2.0, 4.0]), 1.0), 3)
    array([1.  , 0.5 , 0.25])
    """
    r = np.asarray(r, dtype=float)
    r2 = r * r
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if loss == "l2":
            return np.where(np.isfinite(r2), 1.0, 0.0)
        if loss == "welsch":
            return np.exp(-r2 / (2.0 * nu * nu))
        if loss == "huber":
            return np.minimum(1.0, nu / np.abs(r))
        if loss == "cauchy":
            return 1.0 / (1.0 + r2 / (nu * nu))
        if loss == "tukey":
            inside = 1.0 - r2 / (nu * nu)
            return np.where(inside > 0, inside * inside, 0.0)
        if loss == "trimmed":
            return _trim_mask(r2, keep).astype(float)
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}.")


def loss_energy(loss: str, r, nu: float, *, keep: float = 0.9) -> float:
    """``sum_i psi(r_i; nu)``.

    Examples
    --------
    >>> import numpy as np
    >>> from mmopt.registration.losses import loss_energy
    >>> round(loss_energy("welsch", np.array([0.0, np.inf]), 1.0), 12)
    1.0
    """
    r = np.asarray(r, dtype=float)
    r2 = r * r
    with np.errstate(invalid="ignore", over="ignore"):
        if loss == "l2":
            return float(r2.sum())
        if loss == "welsch":
            return float(np.sum(-np.expm1(-r2 / (2.0 * nu * nu))))
        if loss == "huber":
            a = np.abs(r)
            return float(np.sum(np.where(a <= nu, 0.5 * r2, nu * a - 0.5 * nu * nu)))
        if loss == "cauchy":
            return float(0.5 * nu * nu * np.sum(np.log1p(r2 / (nu * nu))))
        if loss == "tukey":
            inside = np.clip(1.0 - r2 / (nu * nu), 0.0, None)
            return float(nu * nu / 6.0 * np.sum(1.0 - inside**3))
        if loss == "trimmed":
            return float(r2[_trim_mask(r2, keep)].sum())
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}.")
