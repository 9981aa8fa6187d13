"""The bilevel problem protocol: a lower level, an upper level, and the hyperparameters.

``min_theta f(theta) = (1/K) sum_k g_k(x_k*(theta)) + r(theta)`` subject to ``lo <= theta <=
hi``, where ``x_k*(theta) = argmin_x Phi_k(x, theta)`` and each ``Phi_k`` is smooth and
strongly convex in ``x``. ``K > 1`` instances (cross-validation folds, several images) share
the hyperparameters; each keeps its own warm-started lower-level state in the solver.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from mmopt._core.problem import Problem
from mmopt._core.validation import check_array, check_callable, readonly

__all__ = ["BilevelProblem", "LowerLevel", "SpreadPenalty", "UpperLevel"]


class LowerLevel:
    """A lower-level problem ``min_x Phi(x, theta)``, smooth and strongly convex in ``x``.

    Give the functions as callables, or subclass and override the methods (the built-in
    problems do). ``x`` is a flat float vector, ``theta`` a 1-D vector of hyperparameters.

    Parameters
    ----------
    value : callable ``value(x, theta) -> float``
        ``Phi(x, theta)``.
    grad_x : callable ``grad_x(x, theta) -> ndarray``
        Gradient of ``Phi`` in ``x``.
    hvp_xx : callable ``hvp_xx(x, theta, v) -> ndarray``
        Hessian-vector product ``A v`` with ``A = d^2 Phi / dx^2``.
    vjp_theta : callable ``vjp_theta(x, theta, q) -> ndarray``
        ``B^T q`` with ``B = d^2 Phi / dx dtheta`` (shape of ``theta``).
    mu : callable ``mu(theta) -> float``
        A valid lower bound on the strong-convexity modulus of ``Phi(., theta)``: the stopping
        test ``||grad_x|| <= mu * eps`` certifies ``||x - x*|| <= eps`` only if it is.
    x0 : array-like of shape (d,)
        Default starting point of the lower level.
    lipschitz : callable ``lipschitz(theta) -> float``, optional
        Lipschitz constant of ``grad_x`` (the step of the accelerated gradient inner solver;
        estimated by backtracking when None).
    hessian_lipschitz : callable ``hessian_lipschitz(theta) -> float``, optional
        Lipschitz constant of ``x -> A(x)`` (0 for a lower level quadratic in ``x``).
    cross_norm : callable ``cross_norm(x, theta) -> float``, optional
        An upper bound on the operator norm ``||B(x, theta)||``.
    cross_lipschitz : callable ``cross_lipschitz(theta) -> float``, optional
        Lipschitz constant of ``x -> B(x, theta)``.
    local_mu : callable ``local_mu(x, theta, radius) -> float``, optional
        A valid lower bound on the smallest eigenvalue of ``A(y)`` over the ball
        ``||y - x|| <= radius`` (on the complement of the directions in which ``Phi`` is
        constant, if any). It certifies the distance to ``x*`` where no global ``mu`` does
        (an unpenalized intercept), or more sharply: when ``||grad_x Phi(x)|| <= m * radius``
        with ``m = local_mu(x, theta, radius)``, then ``||x - x*|| <= ||grad_x Phi(x)|| / m``.
    hessian_change : callable ``hessian_change(x, theta, v, radius) -> float``, optional
        An upper bound on ``||(A(y) - A(x)) v||`` over ``||y - x|| <= radius``; by default
        ``hessian_lipschitz(theta) * radius * ||v||``. A subclass whose method also takes a
        keyword ``grad_norm`` receives ``||grad_x Phi(x)||`` where only ``y = x*`` (and the
        segment to it) matters, and may use it: then ``(x - x*) . Abar (x - x*) <=
        grad_norm * radius`` with ``Abar`` the mean Hessian on the segment (the built-in
        TV lower level does). The same holds for ``cross_change``.
    cross_change : callable ``cross_change(x, theta, q, radius) -> float``, optional
        An upper bound on ``||(B(y) - B(x))^T q||`` over ``||y - x|| <= radius``; by default
        ``cross_lipschitz(theta) * radius * ||q||``.
    solver : callable ``solver(x0, theta, gtol) -> (x, n_iter)``, optional
        A custom inner solver that returns a point with ``||grad_x(x)|| <= gtol``.

    Notes
    -----
    The optional constants (``hessian_lipschitz`` or ``hessian_change``, ``cross_norm``,
    ``cross_lipschitz``) make the hypergradient error bound of :class:`MAID` certified; when
    any is missing the solver falls back to estimates (0 for the Lipschitz constants,
    ``||B^T q|| / ||q||`` for the norm) and reports ``bound_certified=False``. A lower level
    whose ``mu`` is only a heuristic sets the attribute ``mu_certified = False``; it is then
    certified through ``local_mu`` when it has one.

    Examples
    --------
    ``Phi(x, theta) = 1/2 ||x - c||^2 + exp(theta)/2 ||x||^2``:

    >>> from mmopt.bilevel import LowerLevel
    >>> c = np.array([1.0, 2.0])
    >>> lower = LowerLevel(
    ...     value=lambda x, t: 0.5 * np.sum((x - c) ** 2) + 0.5 * np.exp(t[0]) * x @ x,
    ...     grad_x=lambda x, t: x - c + np.exp(t[0]) * x,
    ...     hvp_xx=lambda x, t, v: (1.0 + np.exp(t[0])) * v,
    ...     vjp_theta=lambda x, t, q: np.array([np.exp(t[0]) * x @ q]),
    ...     mu=lambda t: 1.0 + np.exp(t[0]),
    ...     x0=np.zeros(2),
    ... )
    >>> lower.grad_x(np.zeros(2), np.zeros(1))
    array([-1., -2.])
    """

    def __init__(
        self,
        value: Callable | None = None,
        grad_x: Callable | None = None,
        hvp_xx: Callable | None = None,
        vjp_theta: Callable | None = None,
        mu: Callable | None = None,
        x0=None,
        *,
        lipschitz: Callable | None = None,
        hessian_lipschitz: Callable | None = None,
        cross_norm: Callable | None = None,
        cross_lipschitz: Callable | None = None,
        local_mu: Callable | None = None,
        hessian_change: Callable | None = None,
        cross_change: Callable | None = None,
        solver: Callable | None = None,
    ):
        for name, func in (
            ("value", value),
            ("grad_x", grad_x),
            ("hvp_xx", hvp_xx),
            ("vjp_theta", vjp_theta),
            ("mu", mu),
        ):
            check_callable(func, name, allow_none=False)
        self._value, self._grad_x, self._hvp_xx = value, grad_x, hvp_xx
        self._vjp_theta, self._mu = vjp_theta, mu
        self._lipschitz = check_callable(lipschitz, "lipschitz")
        self._hessian_lipschitz = check_callable(hessian_lipschitz, "hessian_lipschitz")
        self._cross_norm = check_callable(cross_norm, "cross_norm")
        self._cross_lipschitz = check_callable(cross_lipschitz, "cross_lipschitz")
        self._local_mu = check_callable(local_mu, "local_mu")
        self._hessian_change = check_callable(hessian_change, "hessian_change")
        self._cross_change = check_callable(cross_change, "cross_change")
        self._solver = check_callable(solver, "solver")
        self.x0 = check_array(x0, "x0", ndim=1)

    def value(self, x, theta) -> float:
        """``Phi(x, theta)``."""
        return float(self._value(x, theta))

    def grad_x(self, x, theta) -> np.ndarray:
        """Gradient of ``Phi`` in ``x``."""
        return np.asarray(self._grad_x(x, theta), dtype=float)

    def hvp_xx(self, x, theta, v) -> np.ndarray:
        """Hessian-vector product in ``x``."""
        return np.asarray(self._hvp_xx(x, theta, v), dtype=float)

    def vjp_theta(self, x, theta, q) -> np.ndarray:
        """``B^T q``: the mixed second derivative applied to ``q``."""
        return np.asarray(self._vjp_theta(x, theta, q), dtype=float).reshape(-1)

    def mu(self, theta) -> float:
        """Strong-convexity modulus (a valid lower bound) at ``theta``."""
        return float(self._mu(theta))

    def lipschitz(self, theta) -> float | None:
        """Lipschitz constant of ``grad_x``, or None when unknown."""
        return None if self._lipschitz is None else float(self._lipschitz(theta))

    def hessian_lipschitz(self, theta) -> float | None:
        """Lipschitz constant of the Hessian in ``x``, or None when unknown."""
        if self._hessian_lipschitz is None:
            return None
        return float(self._hessian_lipschitz(theta))

    def cross_norm(self, x, theta) -> float | None:
        """Upper bound on ``||B(x, theta)||``, or None when unknown."""
        return None if self._cross_norm is None else float(self._cross_norm(x, theta))

    def cross_lipschitz(self, theta) -> float | None:
        """Lipschitz constant of ``x -> B(x, theta)``, or None when unknown."""
        if self._cross_lipschitz is None:
            return None
        return float(self._cross_lipschitz(theta))

    def local_mu(self, x, theta, radius) -> float | None:
        """Lower bound on the curvature of ``Phi`` near ``x``, or None when not offered."""
        local = getattr(self, "_local_mu", None)
        return None if local is None else float(local(x, theta, radius))

    def hessian_change(self, x, theta, v, radius) -> float | None:
        """Upper bound on ``||(A(y) - A(x)) v||`` over ``||y - x|| <= radius``, or None
        (then ``hessian_lipschitz(theta) * radius * ||v||`` is used)."""
        change = getattr(self, "_hessian_change", None)
        return None if change is None else float(change(x, theta, v, radius))

    def cross_change(self, x, theta, q, radius) -> float | None:
        """Upper bound on ``||(B(y) - B(x))^T q||`` over ``||y - x|| <= radius``, or None
        (then ``cross_lipschitz(theta) * radius * ||q||`` is used)."""
        change = getattr(self, "_cross_change", None)
        return None if change is None else float(change(x, theta, q, radius))

    def jvp_theta(self, x, theta, d) -> np.ndarray | None:
        """``B d``, the mixed second derivative applied to a direction ``d`` of ``theta``,
        or None when not offered. With one hyperparameter :class:`MAID` uses it for the
        tangent ``t = A^-1 B`` (``-dx*/dtheta``): a sharper error bound (``||A*^-1 B||``
        instead of ``||B|| / mu``) and first-order warm starts."""
        return None

    @property
    def custom_solver(self) -> Callable | None:
        """The custom inner solver ``solver(x0, theta, gtol) -> (x, n_iter)``, if any."""
        return getattr(self, "_solver", None)


class UpperLevel:
    """An upper-level loss ``g(x)`` of the lower-level solution.

    Parameters
    ----------
    value : callable ``value(x) -> float``
        ``g(x)``.
    grad : callable ``grad(x) -> ndarray``
        Gradient of ``g``.
    L_g : float, optional
        Lipschitz constant of ``grad`` (used by the error bounds and the inexact
        sufficient-decrease test; 0 and an uncertified bound when None).

    Examples
    --------
    >>> from mmopt.bilevel import UpperLevel
    >>> upper = UpperLevel(lambda x: 0.5 * x @ x, lambda x: x, L_g=1.0)
    >>> upper.value(np.ones(2))
    1.0
    """

    def __init__(self, value: Callable | None = None, grad: Callable | None = None, L_g=None):
        check_callable(value, "value", allow_none=False)
        check_callable(grad, "grad", allow_none=False)
        self._value, self._grad = value, grad
        if L_g is not None:
            L_g = float(L_g)
            if not (math.isfinite(L_g) and L_g >= 0):
                raise ValueError(f"L_g must be a finite non-negative number, got {L_g!r}.")
        self.L_g = L_g

    def value(self, x) -> float:
        """``g(x)``."""
        return float(self._value(x))

    def grad(self, x) -> np.ndarray:
        """Gradient of ``g``."""
        return np.asarray(self._grad(x), dtype=float)


class SpreadPenalty:
    """``r(theta) = strength / 2 * ||theta - mean(theta)||^2``: keeps per-feature penalties
    close to each other (they overfit a small validation set otherwise).

    Parameters
    ----------
    strength : float
        Non-negative weight.

    Examples
    --------
    >>> from mmopt.bilevel import SpreadPenalty
    >>> SpreadPenalty(2.0).value(np.array([0.0, 2.0]))
    2.0
    """

    def __init__(self, strength: float = 1.0):
        strength = float(strength)
        if not (math.isfinite(strength) and strength >= 0):
            raise ValueError(f"strength must be a finite non-negative number, got {strength!r}.")
        self.strength = strength

    def value(self, theta) -> float:
        """Value of the penalty."""
        centred = theta - theta.mean()
        return 0.5 * self.strength * float(centred @ centred)

    def grad(self, theta) -> np.ndarray:
        """Gradient of the penalty."""
        return self.strength * (theta - theta.mean())


def _as_list(value, name, kind) -> list:
    items = list(value) if isinstance(value, Sequence) else [value]
    if not items:
        raise ValueError(f"{name} must hold at least one {kind.__name__}.")
    for i, item in enumerate(items):
        for method in _REQUIRED[kind]:
            if not callable(getattr(item, method, None)):
                raise TypeError(
                    f"{name}[{i}] must provide {method}() (a {kind.__name__}); "
                    f"got {type(item).__name__}."
                )
    return items


_REQUIRED = {
    LowerLevel: ("value", "grad_x", "hvp_xx", "vjp_theta", "mu"),
    UpperLevel: ("value", "grad"),
}


class BilevelProblem(Problem):
    """Bilevel problem ``min_theta (1/K) sum_k g_k(x_k*(theta)) + r(theta)``.

    Parameters
    ----------
    lower : LowerLevel or sequence of LowerLevel
        The lower-level problem(s) (one per instance, e.g. per cross-validation fold).
    upper : UpperLevel or sequence of UpperLevel
        The upper-level loss(es), one per lower level; the objective is their mean.
    theta0 : array-like of shape (m,) or float
        Starting hyperparameters (projected onto ``bounds``).
    bounds : tuple (lo, hi), optional
        Box constraints on ``theta``: scalars or arrays of shape (m,), ``lo <= hi``; the
        solver projects onto the box.
    theta_penalty : object with ``value(theta)`` and ``grad(theta)``, optional
        A smooth penalty ``r(theta)`` added to the objective (e.g. :class:`SpreadPenalty`).

    Raises
    ------
    ValueError
        Non-finite ``theta0``, ``lo > hi``, shapes that do not match (``grad_x`` versus
        ``x0``, ``vjp_theta`` versus ``theta0``, a different number of lower and upper
        levels), or ``mu(theta0) <= 0``.

    Examples
    --------
    Learn the shrinkage ``exp(theta)`` that brings ``x*(theta) = c / (1 + exp(theta))``
    closest to a target ``t`` (closed form: ``exp(theta*) = c.c / c.t - 1``):

    >>> from mmopt.bilevel import BilevelProblem, LowerLevel, UpperLevel
    >>> c, t = np.array([1.0, 2.0]), np.array([0.4, 0.9])
    >>> lower = LowerLevel(
    ...     value=lambda x, th: 0.5 * np.sum((x - c) ** 2) + 0.5 * np.exp(th[0]) * x @ x,
    ...     grad_x=lambda x, th: x - c + np.exp(th[0]) * x,
    ...     hvp_xx=lambda x, th, v: (1.0 + np.exp(th[0])) * v,
    ...     vjp_theta=lambda x, th, q: np.array([np.exp(th[0]) * x @ q]),
    ...     mu=lambda th: 1.0 + np.exp(th[0]),
    ...     x0=np.zeros(2),
    ...     hessian_lipschitz=lambda th: 0.0,
    ...     cross_norm=lambda x, th: np.exp(th[0]) * np.linalg.norm(x),
    ...     cross_lipschitz=lambda th: np.exp(th[0]),
    ... )
    >>> upper = UpperLevel(lambda x: 0.5 * np.sum((x - t) ** 2), lambda x: x - t, L_g=1.0)
    >>> res = BilevelProblem(lower, upper, theta0=0.0).solve(tol=1e-7)
    >>> alpha_star = float(c @ c / (c @ t)) - 1
    >>> bool(res.success), round(float(np.exp(res.theta[0])), 5), round(alpha_star, 5)
    (True, 1.27273, 1.27273)
    """

    default_solver = "maid"

    def __init__(self, lower, upper, theta0, *, bounds=None, theta_penalty=None):
        self.lowers = _as_list(lower, "lower", LowerLevel)
        self.uppers = _as_list(upper, "upper", UpperLevel)
        if len(self.lowers) != len(self.uppers):
            raise ValueError(
                f"lower and upper must have the same length: got {len(self.lowers)} lower and "
                f"{len(self.uppers)} upper levels."
            )
        theta0 = check_array(theta0, "theta0", ndim=(0, 1)).reshape(-1)
        m = theta0.size
        if bounds is None:
            lo, hi = np.full(m, -np.inf), np.full(m, np.inf)
        else:
            if not (isinstance(bounds, Sequence) and len(bounds) == 2):
                raise ValueError("bounds must be a pair (lo, hi) of scalars or arrays.")
            lo, hi = (
                np.broadcast_to(np.asarray(b, dtype=float), (m,)).copy()
                if np.ndim(b) == 0 or np.shape(b) == (m,)
                else _bad_bound_shape(b, m)
                for b in bounds
            )
            if np.isnan(lo).any() or np.isnan(hi).any():
                raise ValueError("bounds must not contain NaN.")
            if (lo > hi).any():
                j = int(np.flatnonzero(lo > hi)[0])
                raise ValueError(
                    f"bounds must satisfy lo <= hi; entry {j} has lo={lo[j]!r} > hi={hi[j]!r}."
                )
        if theta_penalty is not None:
            for method in ("value", "grad"):
                if not callable(getattr(theta_penalty, method, None)):
                    raise TypeError(
                        f"theta_penalty must provide {method}(theta); "
                        f"got {type(theta_penalty).__name__}."
                    )
        self.lo, self.hi = readonly(lo), readonly(hi)
        self.theta0 = readonly(np.clip(theta0, lo, hi))
        self.bounds = None if bounds is None else (self.lo, self.hi)
        self.theta_penalty = theta_penalty
        self._check_shapes()

    def _check_shapes(self) -> None:
        theta = np.array(self.theta0)
        for k, (lower, upper) in enumerate(zip(self.lowers, self.uppers)):
            x0 = np.asarray(lower.x0, dtype=float)
            if x0.ndim != 1:
                raise ValueError(f"lower[{k}].x0 must be 1-dimensional, got shape {x0.shape}.")
            checks = (
                ("grad_x(x0, theta0)", lower.grad_x(x0, theta), x0.shape),
                ("hvp_xx(x0, theta0, x0)", lower.hvp_xx(x0, theta, x0), x0.shape),
                ("vjp_theta(x0, theta0, x0)", lower.vjp_theta(x0, theta, x0), theta.shape),
                ("upper grad(x0)", upper.grad(x0), x0.shape),
            )
            for what, got, want in checks:
                got = np.asarray(got)
                if got.shape != want:
                    raise ValueError(
                        f"lower[{k}]: {what} has shape {got.shape}, expected {want} "
                        "(theta0 and x0 shapes must match the functions)."
                    )
            self.check_mu(lower.mu(theta), k)

    @staticmethod
    def check_mu(mu: float, k: int = 0) -> float:
        """Raise ``ValueError`` unless the strong-convexity modulus is positive and finite."""
        if not (math.isfinite(mu) and mu > 0):
            raise ValueError(
                f"lower[{k}].mu(theta) must be a positive finite strong-convexity modulus, "
                f"got {mu!r}."
            )
        return mu

    @property
    def n_instances(self) -> int:
        """Number of lower-level instances ``K``."""
        return len(self.lowers)

    def project(self, theta: np.ndarray) -> np.ndarray:
        """Projection onto the box ``bounds``."""
        return np.clip(theta, self.lo, self.hi)

    def penalty_value(self, theta) -> float:
        """``r(theta)`` (0 without a penalty)."""
        return 0.0 if self.theta_penalty is None else float(self.theta_penalty.value(theta))

    def penalty_grad(self, theta) -> np.ndarray:
        """Gradient of ``r`` (zeros without a penalty)."""
        if self.theta_penalty is None:
            return np.zeros_like(theta)
        return np.asarray(self.theta_penalty.grad(theta), dtype=float)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_instances={self.n_instances}, "
            f"n_hyperparameters={self.theta0.size}, bounded={self.bounds is not None})"
        )


def _bad_bound_shape(b, m):
    raise ValueError(
        f"bounds entries must be scalars or arrays of shape ({m},) like theta0, "
        f"got shape {np.shape(b)}."
    )
