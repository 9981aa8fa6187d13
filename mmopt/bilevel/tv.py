"""Smoothed total-variation denoising with a learned strength and smoothing (2 hyperparameters).

Lower level, for a noisy image ``y``: ``Phi(x, theta) = 1/2 ||x - y||^2 + lam * TV_gam(x)``
with ``TV_gam(x) = sum_pixels sqrt(|(D x)_p|^2 + gam^2)``, ``D`` the forward differences
(zero across the far border), ``lam = exp(theta_0)`` and ``gam = exp(theta_1)``. It is
1-strongly convex with ``grad_x`` Lipschitz ``1 + 8 lam / gam`` (``||D||^2 <= 8``). Upper
level: ``1/2 ||x - clean||^2``. Every constant of MAID's error bound is supplied.
"""

from __future__ import annotations

import numpy as np

from mmopt._core.validation import check_array, check_scalar
from mmopt.bilevel.problem import BilevelProblem, LowerLevel, UpperLevel

__all__ = [
    "SquaredErrorUpperLevel",
    "TVDenoisingLowerLevel",
    "make_tv_denoising_data",
    "tv_denoising_problem",
]

_D_NORM_SQ = 8.0  # ||D||^2 <= 8 for 2-D forward differences
# max_s s (3 + 3 s^2 / (1 + s^2)) / (1 + s^2)^(3/2) = 1.6050 (at s = 0.90), rounded up: the
# largest rate of change of the Hessian of sqrt(|w|^2 + gam^2) is this over gam^2.
_PSI_THIRD = 1.61


def _grad(x):
    """Forward differences, shape (2, H, W); the last row / column differences are zero."""
    d = np.zeros((2, *x.shape))
    d[0, :-1] = x[1:] - x[:-1]
    d[1, :, :-1] = x[:, 1:] - x[:, :-1]
    return d


def _grad_adjoint(d):
    """``D^T`` applied to a (2, H, W) field (minus the divergence)."""
    out = np.zeros(d.shape[1:])
    out[:-1] -= d[0, :-1]
    out[1:] += d[0, :-1]
    out[:, :-1] -= d[1, :, :-1]
    out[:, 1:] += d[1, :, :-1]
    return out


def _knapsack(values, weights, cap, budget):
    """``max sum_p values_p X_p`` over ``0 <= X_p <= cap``, ``sum_p weights_p X_p <=
    budget`` (fractional: the budget goes to the best value per unit of weight first)."""
    order = np.argsort(-(values / weights))
    values, weights = values[order], weights[order]
    spent = np.cumsum(weights * cap)
    full = int(np.searchsorted(spent, budget, side="right"))
    total = cap * float(values[:full].sum())
    if full < values.size:
        left = budget - (spent[full - 1] if full > 0 else 0.0)
        total += left / weights[full] * float(values[full])
    return total


class TVDenoisingLowerLevel(LowerLevel):
    """Smoothed-TV denoising of one image; ``theta = (log strength, log smoothing)``.

    Parameters
    ----------
    noisy : array-like of shape (H, W)
        The noisy image.

    Examples
    --------
    >>> from mmopt.bilevel.tv import TVDenoisingLowerLevel
    >>> lower = TVDenoisingLowerLevel(np.ones((4, 4)))
    >>> bool(np.isclose(lower.value(np.ones(16), np.log([0.1, 0.01])), 16 * 0.1 * 0.01))
    True
    """

    def __init__(self, noisy):
        noisy = check_array(noisy, "noisy", ndim=2)
        self.image_shape = noisy.shape
        self.y = noisy.ravel()
        self.x0 = self.y.copy()

    def _parts(self, x, theta):
        lam, gam = np.exp(theta[0]), np.exp(theta[1])
        u = _grad(x.reshape(self.image_shape))
        r = np.sqrt(u[0] ** 2 + u[1] ** 2 + gam * gam)
        return lam, gam, u, r

    def value(self, x, theta):
        lam, _, _, r = self._parts(x, theta)
        return 0.5 * float(np.sum((x - self.y) ** 2)) + lam * float(r.sum())

    def grad_x(self, x, theta):
        lam, _, u, r = self._parts(x, theta)
        return x - self.y + lam * _grad_adjoint(u / r).ravel()

    def hvp_xx(self, x, theta, v):
        lam, _, u, r = self._parts(x, theta)
        w = _grad(v.reshape(self.image_shape))
        uw = (u[0] * w[0] + u[1] * w[1]) / r**3
        return v + lam * _grad_adjoint(w / r - u * uw).ravel()

    def _columns(self, x, theta):
        lam, gam, u, r = self._parts(x, theta)
        first = lam * _grad_adjoint(u / r).ravel()
        second = -lam * gam * gam * _grad_adjoint(u / r**3).ravel()
        return first, second

    def vjp_theta(self, x, theta, q):
        first, second = self._columns(x, theta)
        return np.array([first @ q, second @ q])

    def mu(self, theta):
        return 1.0

    def lipschitz(self, theta):
        return 1.0 + _D_NORM_SQ * np.exp(theta[0] - theta[1])

    def hessian_lipschitz(self, theta):
        # The Hessian of sqrt(|w|^2 + gam^2) is 5 / gam^2-Lipschitz in w; through D, with
        # max_p |(D h)_p| <= ||D|| ||h||, this gives lam ||D||^3 5 / gam^2.
        lam, gam = np.exp(theta[0]), np.exp(theta[1])
        return lam * _D_NORM_SQ**1.5 * 5.0 / gam**2

    def _segment_radius(self, x, theta, radius):
        """``lam``, ``gam``, ``u = D x``, ``c`` and a lower bound ``rho_p`` of ``r_p =
        sqrt(|(D y)_p|^2 + gam^2)`` over ``||y - x|| <= radius``.

        ``(D y)_p`` moves by at most ``c = sqrt(3) radius``: it involves three pixels, and
        ``(a - b)^2 + (c - b)^2 <= 3 (a^2 + b^2 + c^2)`` (the largest eigenvalue of that
        form); ``r`` is 1-Lipschitz in ``(D y)_p``.
        """
        lam, gam, u, r = self._parts(x, theta)
        c = np.sqrt(3.0) * radius
        return lam, gam, u, c, np.maximum(r - c, gam)

    def _energy_weights(self, gam, u, c, radius, grad_norm, lam):
        """Weights ``omega_p`` and budget ``E`` of the energy constraint ``sum_p omega_p
        |h_p|^2 <= E`` on ``h = D (x* - x)``, or None without ``grad_norm``.

        ``grad_x Phi(x) = Abar (x - x*)`` with ``Abar = I + lam D^T Hbar D`` the mean
        Hessian on the segment, so ``lam sum_p h_p^T Hbar_p h_p <= (x - x*) . grad_x Phi(x)
        <= grad_norm radius``. The Hessian of ``psi`` is at least ``gam^2 / r^3`` (along
        ``w``) and on the segment ``r <= r_p + c``: ``omega_p = gam^2 / (r_p + c)^3``.
        """
        if grad_norm is None:
            return None
        r = np.sqrt(u[0] ** 2 + u[1] ** 2 + gam * gam)
        return gam * gam / (r + c) ** 3, float(grad_norm) * radius / lam

    def hessian_change(self, x, theta, v, radius, *, grad_norm=None):
        """Per-pixel bound on ``||(A(y) - A(x)) v||`` over ``||y - x|| <= radius``.

        The Hessian of ``psi(w) = sqrt(|w|^2 + gam^2)`` changes along ``h`` at the rate
        ``<= (|w| / r^3) (3 + 3 |w|^2 / r^2) |h|``, which is at most ``6 / r^2``, at most
        ``6 |w| / r^3``, and at most ``1.61 / gam^2`` (the maximum over ``w``, at ``|w| ~
        0.9 gam``). On the segment of pixel ``p``, ``r >= rho_p`` and ``|w| <= |u_p| + c``, so
        its Hessian is ``L_p``-Lipschitz with ``L_p = min(6 / rho_p^2, 6 (|u_p| + c) /
        rho_p^3, 1.61 / gam^2)``: small where the image is flat (``|u_p|`` well below
        ``gam``, where ``psi`` is nearly quadratic) and where it has edges (``rho_p``
        large). With ``h = D (y - x)``: ``||(A(y) - A(x)) v|| <= lam ||D|| (sum_p (a_p
        |h_p|)^2)^(1/2)``, ``a_p = L_p |(D v)_p|``, maximized over ``sum_p |h_p|^2 <= ||D||^2
        radius^2`` and ``|h_p| <= c`` (a fractional knapsack: the budget goes to the largest
        ``a_p`` first; at most ``lam ||D||^2 radius max_p a_p``).

        With ``grad_norm`` (``>= ||grad_x Phi(x, theta)||``) the bound holds for ``y = x*``
        (and the segment to it) only, and uses its energy as well: ``sum_p omega_p |h_p|^2
        <= grad_norm radius / lam`` (see ``_energy_weights``), a second knapsack whose
        value also bounds the maximum; the smaller one is returned. A move concentrated on
        the pixels where the Hessian changes fastest (``|w| ~ gam``) is also where it is
        largest, which this constraint charges for.
        """
        lam, gam, u, c, rho = self._segment_radius(x, theta, radius)
        w = _grad(v.reshape(self.image_shape))
        u_norm = np.sqrt(u[0] ** 2 + u[1] ** 2)
        rate = np.minimum(np.minimum(6.0 / rho**2, 6.0 * (u_norm + c) / rho**3),
                          _PSI_THIRD / gam**2)
        a2 = (rate * rate * (w[0] ** 2 + w[1] ** 2)).ravel()
        cap = c * c
        total = _knapsack(a2, np.ones_like(a2), cap, _D_NORM_SQ * radius * radius)
        energy = self._energy_weights(gam, u, c, radius, grad_norm, lam)
        if energy is not None:
            weights, budget = energy
            total = min(total, _knapsack(a2, weights.ravel(), cap, budget))
        local = lam * np.sqrt(_D_NORM_SQ) * float(np.sqrt(total))
        return min(local, self.hessian_lipschitz(theta) * radius * float(np.linalg.norm(v)))

    def cross_change(self, x, theta, q, radius, *, grad_norm=None):
        """Per-pixel bound on ``||(B(y) - B(x))^T q||`` over ``||y - x|| <= radius``.

        ``B^T q = (lam <u / r, D q>, -lam gam^2 <u / r^3, D q>)`` with ``u = D x``; ``w ->
        w / r`` is ``1 / rho``-Lipschitz and ``w -> w / r^3`` is ``2 / rho^3``-Lipschitz
        where ``r >= rho``, and Cauchy-Schwarz over the pixels with ``||h|| <= ||D||
        radius``. With ``grad_norm`` (``y = x*`` only, as in :meth:`hessian_change`), also
        Cauchy-Schwarz weighted by the energy constraint ``sum_p omega_p |h_p|^2 <= E``:
        ``sum_p b_p |h_p| <= (sum_p b_p^2 / omega_p)^(1/2) E^(1/2)``; the smaller is used.
        """
        lam, gam, u, c, rho = self._segment_radius(x, theta, radius)
        dq = _grad(q.reshape(self.image_shape))
        dq_norm = np.sqrt(dq[0] ** 2 + dq[1] ** 2)
        h = np.sqrt(_D_NORM_SQ) * radius
        b_first, b_second = dq_norm / rho, 2.0 * dq_norm / rho**3
        first = h * float(np.linalg.norm(b_first))
        second = h * float(np.linalg.norm(b_second))
        energy = self._energy_weights(gam, u, c, radius, grad_norm, lam)
        if energy is not None:
            weights, budget = energy
            root = np.sqrt(budget)
            first = min(first, root * float(np.sqrt(np.sum(b_first**2 / weights))))
            second = min(second, root * float(np.sqrt(np.sum(b_second**2 / weights))))
        return min(float(np.hypot(lam * first, lam * gam**2 * second)),
                   self.cross_lipschitz(theta) * radius * float(np.linalg.norm(q)))

    def cross_norm(self, x, theta):
        first, second = self._columns(x, theta)
        gram = np.array([[first @ first, first @ second], [first @ second, second @ second]])
        return float(np.sqrt(np.linalg.eigvalsh(gram)[-1]))

    def cross_lipschitz(self, theta):
        # w -> w / r is 1/gam-Lipschitz and w -> w / r^3 is 2/gam^3-Lipschitz.
        lam, gam = np.exp(theta[0]), np.exp(theta[1])
        first = lam * _D_NORM_SQ / gam
        second = lam * gam**2 * _D_NORM_SQ * 2.0 / gam**3
        return float(np.hypot(first, second))


class SquaredErrorUpperLevel(UpperLevel):
    """``g(x) = 1/2 ||x - clean||^2`` (``L_g = 1``).

    Examples
    --------
    >>> from mmopt.bilevel.tv import SquaredErrorUpperLevel
    >>> SquaredErrorUpperLevel(np.zeros((2, 2))).value(np.ones(4))
    2.0
    """

    def __init__(self, clean):
        self.target = check_array(clean, "clean", ndim=2).ravel()
        self.L_g = 1.0

    def value(self, x):
        return 0.5 * float(np.sum((x - self.target) ** 2))

    def grad(self, x):
        return x - self.target


def tv_denoising_problem(noisy, clean, *, strength=0.05, smoothing=0.05, bounds=(-12, 3)):
    """Learn ``(log strength, log smoothing)`` of smoothed-TV denoising from image pairs.

    Parameters
    ----------
    noisy, clean : sequence of array-like of shape (H, W)
        Training pairs (one lower-level instance each); the objective is the mean of
        ``1/2 ||x*(theta) - clean||^2``.
    strength, smoothing : float, default=0.05
        Starting values.
    bounds : tuple, default=(-12, 3)
        Bounds on both log-hyperparameters.

    Returns
    -------
    BilevelProblem

    Examples
    --------
    >>> from mmopt.bilevel.tv import make_tv_denoising_data, tv_denoising_problem
    >>> noisy, clean = make_tv_denoising_data(size=16, n_images=2)
    >>> tv_denoising_problem(noisy, clean).n_instances
    2
    """
    if len(noisy) != len(clean):
        raise ValueError(
            f"noisy and clean must hold as many images; got {len(noisy)} and {len(clean)}."
        )
    lowers = [TVDenoisingLowerLevel(n) for n in noisy]
    uppers = [SquaredErrorUpperLevel(c) for c in clean]
    for k, (low, up) in enumerate(zip(lowers, uppers)):
        if low.y.shape != up.target.shape:
            raise ValueError(f"noisy[{k}] and clean[{k}] must have the same shape.")
    theta0 = np.log([strength, smoothing])
    return BilevelProblem(lowers, uppers, theta0, bounds=bounds)


def make_tv_denoising_data(*, size=48, n_images=1, noise=0.1, random_state=0):
    """Grayscale crops of scikit-learn's sample photo ``china.jpg`` with Gaussian noise.

    The photo is converted to gray levels in [0, 1], downscaled by 4 (block means), and
    ``n_images`` crops of ``size x size`` pixels are taken side by side.

    Returns
    -------
    noisy, clean : list of ndarray of shape (size, size)

    Examples
    --------
    >>> from mmopt.bilevel.tv import make_tv_denoising_data
    >>> noisy, clean = make_tv_denoising_data(size=8)
    >>> noisy[0].shape, float(clean[0].min()) >= 0
    ((8, 8), True)
    """
    from sklearn.datasets import load_sample_image

    size = check_scalar(size, "size", kind=int, min_value=2)
    n_images = check_scalar(n_images, "n_images", kind=int, min_value=1)
    noise = check_scalar(noise, "noise", min_value=0.0)

    photo = load_sample_image("china.jpg").astype(float).mean(axis=2) / 255.0
    h, w = (photo.shape[0] // 4) * 4, (photo.shape[1] // 4) * 4
    small = photo[:h, :w].reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))
    rng = np.random.default_rng(random_state)
    top, left = small.shape[0] // 3, small.shape[1] // 4
    noisy, clean = [], []
    for i in range(n_images):
        crop = small[top : top + size, left + i * size : left + (i + 1) * size]
        if crop.shape != (size, size):
            raise ValueError(f"size={size} and n_images={n_images} do not fit the photo.")
        clean.append(crop.copy())
        noisy.append(crop + noise * rng.standard_normal(crop.shape))
    return noisy, clean
