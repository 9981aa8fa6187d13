r"""Mixtures of linear-Gaussian experts with softmax gates, fitted by EM as an MM problem.

The model is :math:`p(y \mid x) = \sum_k \pi_k(x; W)\, N(y;\, z^\top \beta_k, \sigma_k^2)`
with :math:`z = (1, x)` and gates :math:`\pi(x; W) = \mathrm{softmax}(W z)`, the last gate
row fixed to zero (the softmax is unchanged by adding one vector to every row). EM is MM on
the negative log-likelihood: the E-step's lower bound (Jensen's inequality on the log of the
mixture) touches the log-likelihood at the current parameters, and the M-step maximizes it:
weighted least squares per expert, the weighted variance of its residuals, and a weighted
multinomial-logistic fit of the gates (convex, solved by Newton's method with a line search
from the current gates, so the bound never goes down even when it stops early).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.cluster import KMeans
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from mmopt._core._docstrings import DATA_PARAMS, fill_doc
from mmopt._core.linesearch import armijo, backtracking
from mmopt._core.params import (
    InstanceOf,
    Interval,
    Param,
    ParamsValidationMixin,
    constraints_of,
    validate_params,
)
from mmopt._core.validation import check_input, validate_fit_data
from mmopt.mm.problem import MMProblem
from mmopt.mm.solver import MMSolver
from mmopt_ext import _moe as _kernels

__all__ = ["MixtureOfExperts", "MoEProblem"]

_LOG_2PI = float(np.log(2.0 * np.pi))
# Floor of the experts' variances relative to the variance of y: keeps an expert that
# collapses onto a few points from driving the likelihood to infinity.
_VARIANCE_FLOOR = 1e-8
_GATE_MIN_DECREASE = 1e-13
_GATE_MAX_ITER = 50


def logsumexp(a: np.ndarray, axis: int = 1, keepdims: bool = False) -> np.ndarray:
    """``log(sum(exp(a)))`` along ``axis``, shifted by the maximum (finite inputs)."""
    a = np.asarray(a)
    if a.ndim == 2 and axis in (1, -1):
        # Few columns: NumPy reduces a short last axis row by row, far slower than a loop
        # over the columns and a matrix-vector product.
        top = a[:, 0].copy()
        for j in range(1, a.shape[1]):
            np.maximum(top, a[:, j], out=top)
        out = top + np.log(np.exp(a - top[:, None]) @ np.ones(a.shape[1]))
        return out[:, None] if keepdims else out
    top = np.max(a, axis=axis, keepdims=True)
    out = top + np.log(np.sum(np.exp(a - top), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def log_softmax(a: np.ndarray, axis: int = 1) -> np.ndarray:
    """``a - logsumexp(a)`` along ``axis``.

    scipy.special's versions check their inputs for the array API on every call, which cost
    more than the arithmetic on the small matrices of the gate fit.
    """
    return a - logsumexp(a, axis=axis, keepdims=True)


def _design(X: np.ndarray) -> np.ndarray:
    """``[1, X]``: the intercept column first (C order, as the kernels need it)."""
    return np.ascontiguousarray(np.hstack([np.ones((X.shape[0], 1)), X]))


def _gate_objective(free: np.ndarray, Z: np.ndarray, R: np.ndarray, scale: float,
                    *, derivatives: bool = True):
    """Negative weighted multinomial log-likelihood of the gates, its gradient and Hessian.

    ``-sum_ik R_ik log softmax(Z W^T)_ik / scale`` over the first ``K - 1`` gate rows (the
    last is zero); ``R`` holds non-negative weights per sample and gate. The Hessian is
    ``sum_i r_i (diag(P_i) - P_i P_i^T) (x) z_i z_i^T / scale`` with ``r_i = sum_k R_ik``.
    Only the value when ``derivatives`` is false. One pass over the rows
    (:func:`mmopt_ext._moe.gate_objective`), without (n, p) temporaries.
    """
    n_gates, p = R.shape[1], Z.shape[1]
    W = np.ascontiguousarray(free, dtype=float).reshape(n_gates - 1, p)
    if not derivatives:
        return _kernels.gate_objective(Z, R, W, None, None, False) / scale
    size = (n_gates - 1) * p
    grad, H = np.empty(size), np.empty((size, size))
    value = _kernels.gate_objective(Z, R, W, grad, H.reshape(-1), True)
    grad /= scale
    H /= scale
    return value / scale, grad, H


def _first(evaluation) -> float:
    """The value of a :func:`_gate_objective` evaluation (a tuple with its derivatives)."""
    return evaluation[0] if isinstance(evaluation, tuple) else evaluation


def fit_gates(Z: np.ndarray, R: np.ndarray, W0: np.ndarray, *, max_iter: int = _GATE_MAX_ITER,
              tol: float = 1e-10, start: tuple | None = None) -> np.ndarray:
    """Gate parameters maximizing ``sum_ik R_ik log softmax(Z W^T)_ik``, from ``W0``.

    Newton's method (IRLS) with an Armijo backtracking line search on the convex weighted
    multinomial-logistic objective, over the first ``K - 1`` rows (the last row stays zero),
    until the largest gradient entry of the objective divided by ``sum R`` is at most
    ``tol``. Only steps that lower the objective are taken, so its value at the returned
    point is never above its value at ``W0``. ``start``: the objective's ``(value,
    gradient, Hessian)`` at ``W0`` and ``sum R``, when already known (EM's E-step computes
    them in its pass over the data), instead of a first pass here.
    """
    n_gates = R.shape[1]
    if n_gates == 1:
        return np.zeros_like(W0)
    Z = np.ascontiguousarray(Z, dtype=float)
    R = np.ascontiguousarray(R, dtype=float)
    free = (W0[:-1] - W0[-1]).ravel()
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if start is None:
            scale = max(float(R.sum()), np.finfo(float).tiny)
            value, grad, H = _gate_objective(free, Z, R, scale)
        else:
            value, grad, H, total = start
            scale = max(float(total), np.finfo(float).tiny)
            value, grad, H = value / scale, grad / scale, H / scale
        for _ in range(max_iter):
            if not np.isfinite(value) or np.abs(grad).max() <= tol:
                break
            # The Hessian is positive semi-definite: clip its spectrum from below.
            eigval, eigvec = np.linalg.eigh(H)
            floor = max(float(eigval[-1]), 1.0) * 1e-12
            direction = -eigvec @ ((eigvec.T @ grad) / np.maximum(eigval, floor))
            slope = float(grad @ direction)
            # -slope is twice Newton's predicted decrease: below the rounding of the value (a
            # sum over all samples) no step can be seen to lower it, and a line search would
            # spend its every trial finding that out.
            if not slope < -_GATE_MIN_DECREASE * max(1.0, abs(value)):
                break
            # Newton's full step is nearly always accepted: its trial gets the derivatives
            # too (in the same pass), the next iteration's; shorter trials only the value.
            search = backtracking(
                lambda step, x=free, d=direction: _gate_objective(
                    x + step * d, Z, R, scale, derivatives=step == 1.0),
                armijo(value, slope, value=_first), max_trials=40)
            if not search.success:
                break
            free = free + search.step * direction
            if isinstance(search.trial, tuple):
                value, grad, H = search.trial
            else:
                value, grad, H = _gate_objective(free, Z, R, scale)
    return np.vstack([free.reshape(n_gates - 1, -1), np.zeros((1, Z.shape[1]))])


def log_joint(Z, y, W, B, variances):
    """``log pi_k(x_i) + log N(y_i; z_i^T beta_k, sigma_k^2)``, shape (n, K)."""
    # Contiguous right operands: OpenBLAS is slow on (n, p) @ (p, K)-transposed products.
    log_pi = log_softmax(Z @ np.ascontiguousarray(W.T), axis=1)
    residual = y[:, None] - Z @ np.ascontiguousarray(B.T)
    return log_pi - 0.5 * (_LOG_2PI + np.log(variances) + residual**2 / variances)


class MoEProblem(MMProblem):
    """Maximum likelihood of a mixture of experts as an MM problem (EM).

    The iterate packs the gates' free rows ``W[:-1]`` (K - 1, p), the experts ``B`` (K, p)
    and their variances (K,), with ``p = n_features + 1`` (intercept first). ``F`` is the
    negative mean log-likelihood; ``G`` is one EM step.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
    n_experts : int
    x0 : ndarray
        Starting parameters (packed as above).
    """

    def __init__(self, X, y, n_experts: int, x0):
        self.Z = _design(np.asarray(X, dtype=float))
        self.y = np.ascontiguousarray(y, dtype=float)
        self.n_experts = int(n_experts)
        self.x0 = np.asarray(x0, dtype=float)
        self.variance_floor = _VARIANCE_FLOOR * max(float(np.var(self.y)), 1e-300)

    def unpack(self, x):
        """``(W, B, variances)`` from a packed iterate."""
        K, p = self.n_experts, self.Z.shape[1]
        W = np.vstack([x[: (K - 1) * p].reshape(K - 1, p), np.zeros((1, p))])
        B = x[(K - 1) * p: (2 * K - 1) * p].reshape(K, p)
        return W, B, x[(2 * K - 1) * p:]

    @staticmethod
    def pack(W, B, variances):
        """Inverse of :meth:`unpack` (``W``'s last row is subtracted from every row)."""
        W = np.asarray(W) - np.asarray(W)[-1]
        return np.concatenate([W[:-1].ravel(), np.ravel(B), np.ravel(variances)])

    def objective(self, x) -> float:
        return self._e_step(x, np.empty((self.Z.shape[0], self.n_experts)))

    def _e_step(self, x, R) -> float:
        """Write the responsibilities at ``x`` to ``R``; return ``F(x)``."""
        W, B, v = self.unpack(x)
        total = _kernels.e_step(self.Z, self.y, W, np.ascontiguousarray(B), v, R)
        return -total / self.Z.shape[0]

    def surrogate_minimizer(self, x):
        return self.mm_step(x)[0]

    def mm_step(self, x):
        # E-step (responsibilities) and, in the same pass over the data, the sums the
        # M-step starts from: the experts' normal equations and the gates' objective with
        # its derivatives at the current gates (Newton's first iterate).
        Z, K, p = self.Z, self.n_experts, self.Z.shape[1]
        W, B, v = self.unpack(x)
        R = np.empty((Z.shape[0], K))
        moments = np.empty((K, p, p)), np.empty((K, p)), np.empty(K)
        size = (K - 1) * p
        grad, H = np.empty(size), np.empty((size, size))
        total, gate_value = _kernels.e_step_moments(
            Z, self.y, W, np.ascontiguousarray(B), v, R, *moments, grad, H.reshape(-1))
        gates = (gate_value, grad, H, moments[2].sum())
        return self.m_step(R, W, moments=moments, gates=gates), -total / Z.shape[0]

    def m_step(self, R, W0, *, moments=None, gates=None):
        """The packed parameters maximizing the EM bound with responsibilities ``R``.

        ``moments``: the experts' weighted normal equations ``(gram, rhs, masses)`` of
        ``R`` (:func:`mmopt_ext._moe.expert_moments`), ``gates``: the gates' objective at
        ``W0`` (``start`` of :func:`fit_gates`), when already computed.
        """
        Z, y = self.Z, self.y
        K, p = self.n_experts, Z.shape[1]
        R = np.ascontiguousarray(R, dtype=float)
        if moments is None:
            moments = np.empty((K, p, p)), np.empty((K, p)), np.empty(K)
            _kernels.expert_moments(Z, y, R, *moments)
        gram, rhs, masses = moments
        # Weighted least squares by its normal equations (p is small); lstsq on the p x p
        # system still answers when an expert's weights leave it singular.
        B = np.array([np.linalg.lstsq(gram[k], rhs[k], rcond=None)[0] for k in range(K)])
        squares = np.empty(K)
        _kernels.expert_residuals(Z, y, R, B, squares)
        with np.errstate(divide="ignore", invalid="ignore"):
            variances = np.where(masses > 0, squares / masses, np.inf)
        if not np.isfinite(variances).all():
            variances[~np.isfinite(variances)] = np.var(y)
        variances = np.maximum(variances, self.variance_floor)
        W = fit_gates(Z, R, W0, start=gates)
        return self.pack(W, B, variances)

    def project(self, x):
        out = np.array(x, dtype=float)
        K, p = self.n_experts, self.Z.shape[1]
        tail = (2 * K - 1) * p
        out[tail:] = np.maximum(out[tail:], self.variance_floor)
        return out

    def initial_point(self):
        return self.x0


def _distinct_rows(data: np.ndarray, at_most: int) -> int:
    """``min(at_most, number of distinct rows of data)``: from the first rows when they
    suffice, else in ``at_most`` passes over all rows (no sort of all rows)."""
    # The first rows nearly always hold enough distinct ones: sorting a few is free, each
    # full pass costs as much as a k-means iteration.
    if len(np.unique(data[: 64 * at_most], axis=0)) >= at_most:
        return at_most
    count = 0
    while count < at_most and len(data):
        count += 1
        data = data[np.any(data != data[0], axis=1)]
    return count


def _initial_responsibilities(X, y, n_experts, rng) -> np.ndarray:
    """Hard responsibilities from k-means on the standardized ``(X, y)``."""
    data = np.column_stack([X, y])
    scale = data.std(axis=0)
    data = (data - data.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    n_clusters = _distinct_rows(data, n_experts)
    labels = KMeans(n_clusters, n_init=1, random_state=rng.randint(2**31 - 1)).fit(data).labels_
    # Rows (1, 1e-3, ...) in some order, normalized: every row sums to the same total.
    total = 1.0 + (n_experts - 1) * 1e-3
    R = np.full((X.shape[0], n_experts), 1e-3 / total)
    R[np.arange(X.shape[0]), labels] = 1.0 / total
    return R


class MixtureOfExperts(ParamsValidationMixin, RegressorMixin, BaseEstimator):
    r"""Mixture of linear-Gaussian experts with softmax gates, fitted by EM.

    :math:`p(y \mid x) = \sum_k \pi_k(x)\, N(y;\, b_k + x^\top \beta_k, \sigma_k^2)`, gates
    :math:`\pi(x) = \mathrm{softmax}(c + W x)` with the last gate as reference
    (:math:`c_K = 0`, :math:`W_K = 0`). Each start initializes the responsibilities by k-means
    on the standardized ``(X, y)``; EM then runs on the shared MM loop (:class:`MoEProblem`,
    :class:`~mmopt.mm.MMSolver` without extrapolation) until the relative change of the mean
    log-likelihood is at most ``tol``. The start with the highest log-likelihood is kept.

    Parameters
    ----------
    n_experts : int, default=3
        Number of experts ``K``.
    max_iter : int, default=300
        Maximum EM iterations per start.
    tol : float, default=1e-6
        Relative change of the mean log-likelihood that stops EM.
    n_init : int, default=3
        Number of starts.
    random_state : int, RandomState instance or None, default=None
        Seed of the k-means initializations.

    Attributes
    ----------
    coef_ : ndarray of shape (n_experts, n_features)
        Expert slopes.
    intercept_ : ndarray of shape (n_experts,)
        Expert intercepts.
    variances_ : ndarray of shape (n_experts,)
        Expert noise variances.
    gate_coef_ : ndarray of shape (n_experts, n_features)
        Gate slopes (last row zero).
    gate_intercept_ : ndarray of shape (n_experts,)
        Gate intercepts (last entry zero).
    log_likelihood_ : float
        Mean log-likelihood of the training data at the kept start.
    result_ : mmopt.Result
        The kept start's EM run (``fun`` is the negative mean log-likelihood).
    n_iter_ : int
        EM iterations of the kept start.

    Examples
    --------
    >>> from mmopt.datasets import make_moe_regression
    >>> from mmopt.mm import MixtureOfExperts
    >>> X, y, truth = make_moe_regression(2000, 1, 2, noise=0.2, random_state=0)
    >>> moe = MixtureOfExperts(n_experts=2, random_state=0).fit(X, y)
    >>> moe.predict_proba(X[:3]).shape
    (3, 2)
    >>> bool(moe.score(X, y) > -1.0)
    True
    """

    _options = {
        "n_experts": Param(3, Interval(int, 1, None), positional=True),
        "max_iter": Param(300, Interval(int, 1, None)),
        "tol": Param(1e-6, Interval(float, 0, None)),
        "n_init": Param(3, Interval(int, 1, None)),
        # Checked by scikit-learn's check_random_state when the fit starts.
        "random_state": Param(None, None, Interval(int, 0, None),
                              InstanceOf(np.random.RandomState)),
    }

    def _check_params(self):
        table = {k: v for k, v in constraints_of(type(self))[0].items() if k != "random_state"}
        validate_params(table, self.get_params(deep=False), owner=type(self).__name__)

    @fill_doc(DATA_PARAMS)
    def fit(self, X, y) -> MixtureOfExperts:
        """Fit the mixture by EM from ``n_init`` starts.

        %(fit_targets)s

        Returns
        -------
        self : MixtureOfExperts
        """
        self._check_params()
        X, y = validate_fit_data(self, X, y)
        rng = check_random_state(self.random_state)
        solver = MMSolver(anderson=False, stopping="objective", tol=self.tol,
                          max_iter=self.max_iter)
        K = self.n_experts
        best = None
        for _ in range(self.n_init):
            R = _initial_responsibilities(X, y, K, rng)
            blank = MoEProblem(X, y, K, np.zeros(0))
            start = blank.m_step(R, np.zeros((K, X.shape[1] + 1)))
            result = solver.solve(MoEProblem(X, y, K, start))
            if best is None or result.fun < best.fun:
                best = result
        W, B, variances = blank.unpack(best.x)
        self._set_parameters(W, B, variances)
        self.log_likelihood_ = -float(best.fun)
        self.result_ = best
        self.n_iter_ = int(best.nit)
        return self

    def _set_parameters(self, W, B, variances):
        self.gate_intercept_, self.gate_coef_ = W[:, 0].copy(), W[:, 1:].copy()
        self.intercept_, self.coef_ = B[:, 0].copy(), B[:, 1:].copy()
        self.variances_ = np.asarray(variances, dtype=float).copy()

    def _parameters(self):
        W = np.column_stack([self.gate_intercept_, self.gate_coef_])
        B = np.column_stack([self.intercept_, self.coef_])
        return W, B, self.variances_

    def _validate_X(self, X):
        check_is_fitted(self)
        check_input(X, "X", ndim=2)
        return validate_data(self, X, dtype=np.float64, reset=False)

    def predict_proba(self, X) -> np.ndarray:
        """Gate probabilities ``pi_k(x)``, shape (n_samples, n_experts)."""
        X = self._validate_X(X)
        W = self._parameters()[0]
        return np.exp(log_softmax(_design(X) @ W.T, axis=1))

    def predict(self, X) -> np.ndarray:
        """The conditional mean ``sum_k pi_k(x) (b_k + x^T beta_k)``."""
        X = self._validate_X(X)
        W, B, _ = self._parameters()
        Z = _design(X)
        gates = np.exp(log_softmax(Z @ W.T, axis=1))
        return np.sum(gates * (Z @ B.T), axis=1)

    def predict_expert(self, X, y) -> np.ndarray:
        """The most probable expert of each sample given ``y`` (posterior responsibilities)."""
        return np.argmax(self.responsibilities(X, y), axis=1)

    def responsibilities(self, X, y) -> np.ndarray:
        """Posterior expert probabilities ``p(k | x, y)``, shape (n_samples, n_experts)."""
        X = self._validate_X(X)
        y = np.asarray(y, dtype=float).ravel()
        joint = log_joint(_design(X), y, *self._parameters())
        return np.exp(joint - logsumexp(joint, axis=1, keepdims=True))

    def sample_log_likelihood(self, X, y) -> np.ndarray:
        """Log-likelihood ``log p(y_i | x_i)`` of each sample."""
        X = self._validate_X(X)
        y = np.asarray(y, dtype=float).ravel()
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"y must have {X.shape[0]} entries like X, got {y.shape[0]}.")
        return logsumexp(log_joint(_design(X), y, *self._parameters()), axis=1)

    def score(self, X, y, sample_weight=None) -> float:
        """Mean log-likelihood of ``(X, y)`` (not the R^2 of other regressors)."""
        return float(np.average(self.sample_log_likelihood(X, y), weights=sample_weight))
