"""Built-in bilevel problems: cross-validated ridge and L2-regularized logistic regression.

The hyperparameters are ``theta = log(penalty)``: one shared penalty, one per feature, or
(logistic) one per weight. Each cross-validation fold is one instance of the bilevel problem,
with its own lower level (training on the other folds) and upper level (the loss on the fold).
Penalties are scaled as in scikit-learn: ridge minimizes ``||y - X w - b||^2 + sum_j alpha_j
w_j^2`` (as :class:`sklearn.linear_model.Ridge`) and logistic regression
``sum_i loss_i + 1/2 sum_j w_j^2 / C_j`` (as :class:`sklearn.linear_model.LogisticRegression`,
intercept not penalized); the lower levels divide these by the number of training samples.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.linalg
import scipy.special
from sklearn.model_selection import check_cv
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import type_of_target

from mmopt._core._docstrings import DATA_PARAMS, fill_doc
from mmopt._core.validation import check_array, check_choice, check_input
from mmopt.bilevel.problem import BilevelProblem, LowerLevel, UpperLevel
from mmopt_ext._softmax_hvp import softmax_hessian_rows

__all__ = [
    "LogLossUpperLevel",
    "LogisticLowerLevel",
    "RidgeLowerLevel",
    "SquaredLossUpperLevel",
    "logistic_cv_problem",
    "ridge_cv_problem",
]

# max |d^3/dt^3 log(1 + e^t)| = 1 / (6 sqrt 3); the third derivative of log-sum-exp is bounded
# by 2 ||u||_inf ||u||^2 (a third central moment), whence the Hessian Lipschitz constants.
_SIGMOID_THIRD = 1.0 / (6.0 * np.sqrt(3.0))
_SOFTMAX_THIRD = 2.0
_PENALTIES = ("shared", "per_feature", "per_weight")


def _spectral_norm_sq(A: np.ndarray) -> float:
    """Largest eigenvalue of ``A^T A``."""
    if A.size == 0:
        return 0.0
    small = A.T @ A if A.shape[1] <= A.shape[0] else A @ A.T
    return float(scipy.linalg.eigvalsh(small, subset_by_index=[small.shape[0] - 1] * 2)[0])


# ------------------------------------------------------------------------------------ ridge
@fill_doc(DATA_PARAMS)
class RidgeLowerLevel(LowerLevel):
    """Ridge training problem ``Phi(w, theta) = (||Xc w - yc||^2 + sum_j e^theta_j w_j^2)
    / (2 n)`` over the coefficients ``w``.

    With ``fit_intercept`` the data are centred (the intercept ``mean(y) - mean(X) w`` is
    eliminated exactly). The Hessian is constant in ``w`` and the problem is solved exactly
    by a Cholesky factorization (the custom inner solver).

    Parameters
    ----------
    %(X)s
    %(y_targets)s
    penalty : {"shared", "per_feature"}, default="shared"
        One penalty (``theta`` of size 1) or one per feature.
    fit_intercept : bool, default=True
        Fit an unpenalized intercept.

    Examples
    --------
    >>> from sklearn.linear_model import Ridge
    >>> from mmopt.bilevel.glm import RidgeLowerLevel
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.standard_normal((20, 3)), rng.standard_normal(20)
    >>> lower = RidgeLowerLevel(X, y)
    >>> w, _ = lower.custom_solver(None, np.log([2.0]), 0.0)
    >>> bool(np.allclose(w, Ridge(alpha=2.0).fit(X, y).coef_))
    True
    """

    def __init__(self, X, y, *, penalty: str = "shared", fit_intercept: bool = True):
        X = check_array(X, "X", ndim=2)
        y = check_array(y, "y", ndim=1, shape=(X.shape[0],))
        check_choice(penalty, "penalty", _PENALTIES[:2])
        n, p = X.shape
        self.penalty, self.fit_intercept = penalty, bool(fit_intercept)
        self.x_mean = X.mean(0) if fit_intercept else np.zeros(p)
        self.y_mean = float(y.mean()) if fit_intercept else 0.0
        self.Xc = X - self.x_mean
        self.yc = y - self.y_mean
        self.n = n
        self.gram = self.Xc.T @ self.Xc
        self.Xty = self.Xc.T @ self.yc
        eig = scipy.linalg.eigvalsh(self.gram)
        self.eig_min, self.eig_max = max(float(eig[0]), 0.0), float(eig[-1])
        self.x0 = np.zeros(p)
        self.n_theta = 1 if penalty == "shared" else p

    def _alpha(self, theta):
        return np.exp(theta) if self.penalty == "per_feature" else np.exp(theta[0])

    def value(self, x, theta):
        r = self.Xc @ x - self.yc
        return float(r @ r + np.sum(self._alpha(theta) * x * x)) / (2 * self.n)

    def grad_x(self, x, theta):
        return (self.gram @ x - self.Xty + self._alpha(theta) * x) / self.n

    def hvp_xx(self, x, theta, v):
        return (self.gram @ v + self._alpha(theta) * v) / self.n

    def hessian(self, x, theta):
        """Dense Hessian ``(Xc^T Xc + diag(alpha)) / n``."""
        H = self.gram.copy()
        H[np.diag_indices_from(H)] += self._alpha(theta)
        return H / self.n

    def vjp_theta(self, x, theta, q):
        m = self._alpha(theta) * x * q / self.n
        return m if self.penalty == "per_feature" else np.array([m.sum()])

    def mu(self, theta):
        return (self.eig_min + float(np.min(self._alpha(theta)))) / self.n

    def lipschitz(self, theta):
        return (self.eig_max + float(np.max(self._alpha(theta)))) / self.n

    def hessian_lipschitz(self, theta):
        return 0.0

    def cross_norm(self, x, theta):
        ax = self._alpha(theta) * x
        if self.penalty == "per_feature":
            return float(np.max(np.abs(ax), initial=0.0)) / self.n
        return float(np.linalg.norm(ax)) / self.n

    def cross_lipschitz(self, theta):
        return float(np.max(self._alpha(theta))) / self.n

    @property
    def custom_solver(self):
        def solve(x0, theta, gtol):
            return scipy.linalg.solve(self.hessian(None, theta), self.Xty / self.n,
                                      assume_a="pos", check_finite=False), 1

        return solve

    def intercept(self, x) -> float:
        """Intercept that goes with coefficients ``x``."""
        return self.y_mean - float(self.x_mean @ x)


class SquaredLossUpperLevel(UpperLevel):
    """Validation mean squared error ``g(w) = mean((X w + b(w) - y)^2)`` of a ridge fold,
    with the intercept ``b(w)`` of the training centring.

    Examples
    --------
    >>> from mmopt.bilevel.glm import SquaredLossUpperLevel
    >>> upper = SquaredLossUpperLevel(np.eye(2), np.ones(2))
    >>> upper.value(np.ones(2))
    0.0
    """

    def __init__(self, X, y, *, x_mean=None, y_mean=0.0):
        X = check_array(X, "X", ndim=2)
        y = check_array(y, "y", ndim=1, shape=(X.shape[0],))
        x_mean = np.zeros(X.shape[1]) if x_mean is None else np.asarray(x_mean, dtype=float)
        self.Xc, self.yc, self.n = X - x_mean, y - y_mean, X.shape[0]
        self.L_g = 2.0 * _spectral_norm_sq(self.Xc) / self.n

    def value(self, x):
        r = self.Xc @ x - self.yc
        return float(r @ r) / self.n

    def grad(self, x):
        return 2.0 * (self.Xc.T @ (self.Xc @ x - self.yc)) / self.n


def _splits(cv, X, y, classifier):
    if isinstance(cv, numbers.Integral) and not isinstance(cv, bool):
        if not 2 <= cv <= X.shape[0]:
            raise ValueError(
                f"cv must be between 2 and n_samples={X.shape[0]} folds, got {cv}."
            )
    try:
        splitter = check_cv(cv, y, classifier=classifier)
        splits = list(splitter.split(X, y))
    except (TypeError, ValueError) as error:
        if "cv" in str(error):
            raise
        raise ValueError(f"cv could not split the data: {error}") from None
    if not splits:
        raise ValueError("cv must produce at least one (train, validation) split.")
    return [_check_split(split, k, X.shape[0]) for k, split in enumerate(splits)]


def _check_split(split, k: int, n: int):
    """One ``(train, validation)`` pair as integer index arrays in ``[0, n)``, or an error
    naming ``cv`` (a user's iterable of pairs is otherwise used as given)."""
    try:
        train, val = split
    except (TypeError, ValueError):
        raise ValueError(
            f"cv must yield (train, validation) pairs; split {k} is not one."
        ) from None
    out = []
    for part, name in ((train, "training"), (val, "validation")):
        try:
            idx = np.asarray(part)
        except ValueError:
            raise ValueError(f"cv split {k}: the {name} indices are ragged.") from None
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise ValueError(
                    f"cv split {k}: a boolean {name} mask must have length n_samples={n}, "
                    f"got shape {idx.shape}."
                )
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise ValueError(
                f"cv split {k}: the {name} indices must be a 1-d array of integers, got "
                f"dtype {idx.dtype} and shape {idx.shape}."
            )
        if idx.size == 0:
            raise ValueError(f"cv split {k}: the {name} set is empty.")
        if idx.min() < 0 or idx.max() >= n:
            raise ValueError(
                f"cv split {k}: {name} indices must lie in [0, {n}) (n_samples), got "
                f"{int(idx.min())} to {int(idx.max())}."
            )
        out.append(idx.astype(np.intp, copy=False))
    return tuple(out)


# The certified bounds of these problems hold up to third and fourth powers of the data
# (Lipschitz constants of Hessians, squared validation errors times curvatures): beyond this
# magnitude they overflow, so larger data is refused with a message naming it.
_MAX_DATA_MAGNITUDE = 1e50


def _check_scale(A, name: str) -> None:
    """Reject data too large in magnitude for the problem's bounds to be represented."""
    peak = float(np.max(np.abs(A))) if A.size else 0.0
    if peak > _MAX_DATA_MAGNITUDE:
        raise ValueError(
            f"{name} has entries of magnitude {peak:.3g}: beyond {_MAX_DATA_MAGNITUDE:.0e} "
            f"the powers of the data in this problem's bounds overflow; rescale {name}."
        )


def ridge_cv_problem(
    X, y, *, cv=5, penalty="shared", fit_intercept=True, alpha0=1.0, bounds=None,
    theta_penalty=None,
) -> BilevelProblem:
    """K-fold cross-validated ridge regression as a bilevel problem in ``theta = log(alpha)``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Data.
    y : array-like of shape (n_samples,)
        Targets.
    cv : int, cross-validation generator or iterable, default=5
        As in scikit-learn (:func:`sklearn.model_selection.check_cv`); an iterable of one
        ``(train, validation)`` pair gives a single validation split.
    penalty : {"shared", "per_feature"}, default="shared"
        One ``alpha`` or one per feature.
    fit_intercept : bool, default=True
        Fit an unpenalized intercept in every fold.
    alpha0 : float or array-like, default=1.0
        Starting penalty.
    bounds : tuple (lo, hi), optional
        Bounds on ``theta = log(alpha)``.
    theta_penalty : object, optional
        Penalty ``r(theta)`` (see :class:`mmopt.bilevel.SpreadPenalty`).

    Returns
    -------
    BilevelProblem
        The mean over folds of the validation mean squared error.

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from mmopt.bilevel.glm import ridge_cv_problem
    >>> X, y = load_diabetes(return_X_y=True)
    >>> ridge_cv_problem(X, y, cv=5).n_instances
    5
    """
    X = check_array(X, "X", ndim=2)
    y = check_array(y, "y", ndim=1, shape=(X.shape[0],))
    _check_scale(X, "X")
    _check_scale(y, "y")
    lowers, uppers = [], []
    for train, val in _splits(cv, X, y, classifier=False):
        lower = RidgeLowerLevel(X[train], y[train], penalty=penalty, fit_intercept=fit_intercept)
        lowers.append(lower)
        uppers.append(
            SquaredLossUpperLevel(X[val], y[val], x_mean=lower.x_mean, y_mean=lower.y_mean)
        )
    theta0 = np.log(np.broadcast_to(np.asarray(alpha0, dtype=float), (lowers[0].n_theta,)))
    return BilevelProblem(lowers, uppers, theta0, bounds=bounds, theta_penalty=theta_penalty)


# --------------------------------------------------------------------------------- logistic
def _augment(X, fit_intercept):
    return np.hstack([X, np.ones((X.shape[0], 1))]) if fit_intercept else np.asarray(X)


class _LogisticLoss:
    """Sum of binary (sigmoid) or multinomial (softmax) log-losses of ``Xa @ W``."""

    def __init__(self, Xa, Y, binary):
        self.Xa, self.Y, self.binary = Xa, Y, binary
        self._ones = np.ones(Y.shape[1])
        # (key, Z, P, lse) of the last point, replaced as one tuple so that concurrent
        # solves sharing this problem never read a mix of two points.
        self._last = None

    def _evaluate(self, W):
        # The last point's products are cached: the solvers ask for the gradient and then
        # several Hessian-vector products at the same point.
        key = W.tobytes()  # a byte comparison is several times faster than array_equal
        last = self._last
        if last is not None and last[0] == key:
            return last
        Z = self.Xa @ W
        if self.binary:
            P = scipy.special.expit(Z)
            lse = None
        else:
            # Softmax and log-sum-exp in one pass (the value needs the latter).
            top = Z.max(axis=1, keepdims=True)
            P = np.exp(Z - top)
            total = P @ self._ones
            P /= total[:, None]
            lse = top[:, 0] + np.log(total)
        last = (key, Z, P, lse)
        self._last = last
        return last

    def probabilities(self, W):
        _, Z, P, _ = self._evaluate(W)
        return Z, P

    def value(self, W):
        _, Z, _, lse = self._evaluate(W)
        if self.binary:
            return float(np.sum(np.logaddexp(0.0, Z)) - np.sum(self.Y * Z))
        return float(np.sum(lse) - np.sum(self.Y * Z))

    def grad(self, W):
        _, P = self.probabilities(W)
        return self.Xa.T @ (P - self.Y)

    def hvp(self, W, V):
        _, P = self.probabilities(W)
        U = self.Xa @ V
        if self.binary:
            HU = P * (1.0 - P) * U
        else:
            # HU = P * (U - rowsum(P * U)) in one pass (Cython; NumPy needs four).
            HU = np.ascontiguousarray(U)
            softmax_hessian_rows(np.ascontiguousarray(P), HU)
        return self.Xa.T @ HU


class LogisticLowerLevel(LowerLevel):
    """L2-regularized logistic regression training problem, ``theta = log(1 / C)``.

    ``Phi(W, theta) = (sum_i loss_i(W) + 1/2 sum e^theta * W_coef^2) / n`` with the binary
    (one column of weights) or multinomial (one per class) log-loss, the intercept not
    penalized. ``x`` is ``W`` of shape (n_features [+ 1], n_columns) flattened row-wise.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Training data.
    Y : array-like of shape (n_samples,) or (n_samples, n_classes)
        0/1 labels (binary) or a one-hot matrix (multinomial).
    penalty : {"shared", "per_feature", "per_weight"}, default="shared"
        One penalty, one per feature (shared by the classes), or one per weight.
    fit_intercept : bool, default=True
        Fit an unpenalized intercept (per class).

    Notes
    -----
    ``mu`` is the penalty's curvature ``min e^theta / n``; it bounds the strong convexity in
    the coefficients but not in the unpenalized intercept, so with ``fit_intercept`` it is
    only a heuristic (``mu_certified`` is False) and :class:`MAID` certifies the distance to
    the solution with :meth:`local_mu`, a lower bound of the curvature on a ball that uses
    the data (the intercept is held in place by the loss, not the penalty). The multinomial
    loss does not change when the same constant is added to every class's intercept: there
    the lower-level solution is unique up to that shift, which neither the validation loss
    nor the hypergradient sees, and every distance is measured off that direction.
    :meth:`hessian_change` bounds ``||(A(y) - A(x)) v||`` per sample, much more sharply
    than the global Lipschitz constant of the Hessian. Binary problems offer a dense
    ``hessian`` (Newton inner solver); multinomial ones use Newton-CG on Hessian-vector
    products.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from mmopt.bilevel.glm import LogisticLowerLevel
    >>> from mmopt.bilevel.inner import newton_cg
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((40, 3)); y = (X[:, 0] + rng.standard_normal(40) > 0) * 1.0
    >>> lower = LogisticLowerLevel(X, y)
    >>> w = newton_cg(lower, lower.x0, np.log([1 / 0.5]), 1e-12).x
    >>> ref = LogisticRegression(C=0.5, tol=1e-12).fit(X, y)
    >>> bool(np.allclose(w, np.r_[ref.coef_[0], ref.intercept_], atol=1e-6))
    True
    """

    inner_solver_hint = "newton-cg"

    def __init__(self, X, Y, *, penalty: str = "shared", fit_intercept: bool = True):
        X = check_array(X, "X", ndim=2)
        Y = check_array(Y, "Y", ndim=(1, 2))
        if Y.shape[0] != X.shape[0]:
            raise ValueError(f"Y must have {X.shape[0]} rows like X, got shape {Y.shape}.")
        check_choice(penalty, "penalty", _PENALTIES)
        self.binary = Y.ndim == 1
        Y = Y[:, None] if self.binary else Y
        self.n, self.p = X.shape
        self.k = Y.shape[1]
        self.penalty, self.fit_intercept = penalty, bool(fit_intercept)
        Xa = _augment(X, fit_intercept)
        self.loss = _LogisticLoss(Xa, Y, self.binary)
        self.shape = (Xa.shape[1], self.k)
        self.x0 = np.zeros(Xa.shape[1] * self.k)
        self.n_theta = {"shared": 1, "per_feature": self.p, "per_weight": self.p * self.k}[
            penalty
        ]
        self._Xa_squared = Xa * Xa
        self._row_norms = np.sqrt(self._Xa_squared.sum(1))
        self._Xa_norm = float(np.sqrt(_spectral_norm_sq(Xa)))
        third = _SIGMOID_THIRD if self.binary else _SOFTMAX_THIRD
        self._hessian_lipschitz = (
            third * float(self._row_norms.max(initial=0.0)) * self._Xa_norm**2 / self.n
        )
        # mu = min(penalty) / n misses the unpenalized intercept; local_mu certifies it.
        self.mu_certified = not fit_intercept
        if fit_intercept and not self.binary:
            # The class pairs (c, d) of the softmax Hessian diag(p) - p p^T =
            # sum_{c<d} p_c p_d (e_c - e_d)(e_c - e_d)^T, and a basis of the intercepts
            # orthogonal to the constant one (the loss does not change along it).
            self._pairs = np.triu_indices(self.k, 1)
            n_pairs = self._pairs[0].size
            incidence = np.zeros((n_pairs, self.k))
            incidence[np.arange(n_pairs), self._pairs[0]] = 1.0
            incidence[np.arange(n_pairs), self._pairs[1]] = -1.0
            self._incidence = incidence
            self._incidence_gram = incidence @ incidence.T
            centred = np.eye(self.k) - 1.0 / self.k
            self._pair_basis = incidence @ scipy.linalg.orth(centred)
        if self.binary:
            self.hessian = self._hessian

    def _alpha(self, theta):
        """Penalties as an array broadcastable to the coefficient block (p, k)."""
        a = np.exp(theta)
        if self.penalty == "shared":
            return a[0]
        if self.penalty == "per_feature":
            return a[:, None]
        return a.reshape(self.p, self.k)

    def _split(self, x):
        W = x.reshape(self.shape)
        return W, W[: self.p]

    def _pad(self, coef_part):
        if not self.fit_intercept:
            return coef_part
        return np.vstack([coef_part, np.zeros((1, self.k))])

    def value(self, x, theta):
        W, coef = self._split(x)
        return (self.loss.value(W) + 0.5 * float(np.sum(self._alpha(theta) * coef * coef))) / (
            self.n
        )

    def grad_x(self, x, theta):
        W, coef = self._split(x)
        return ((self.loss.grad(W) + self._pad(self._alpha(theta) * coef)) / self.n).ravel()

    def hvp_xx(self, x, theta, v):
        # The hot path of Newton-CG and the adjoint CG: no more than the two products.
        V = v.reshape(self.shape)
        out = self.loss.hvp(x.reshape(self.shape), V)
        if self.penalty == "shared":
            out[: self.p] += math.exp(theta[0]) * V[: self.p]
        else:
            out[: self.p] += self._alpha(theta) * V[: self.p]
        out /= self.n
        return out.ravel()

    def hessian_diagonal(self, x, theta):
        """Diagonal of the Hessian in ``x`` (a Jacobi preconditioner for CG)."""
        W, _ = self._split(x)
        _, P = self.loss.probabilities(W)
        diag = self._Xa_squared.T @ (P * (1.0 - P))
        diag[: self.p] += np.broadcast_to(self._alpha(theta), (self.p, self.k))
        return (diag / self.n).ravel()

    def _hessian(self, x, theta):
        W, _ = self._split(x)
        _, P = self.loss.probabilities(W)
        Xa = self.loss.Xa
        d = (P * (1.0 - P))[:, 0]
        H = Xa.T @ (Xa * d[:, None])
        diag = np.zeros(Xa.shape[1])
        diag[: self.p] = np.broadcast_to(self._alpha(theta), (self.p, 1))[:, 0]
        H[np.diag_indices_from(H)] += diag
        return H / self.n

    def jvp_theta(self, x, theta, d):
        _, coef = self._split(x)
        # d/dtheta_j of the penalty's gradient e^theta_j coef / n, along d.
        scaled = self._alpha(theta) * self._broadcast(np.asarray(d, float))
        return (self._pad(scaled * coef) / self.n).ravel()

    def _broadcast(self, values):
        """Per-hyperparameter values as an array broadcastable to the coefficient block."""
        if self.penalty == "shared":
            return values[0]
        if self.penalty == "per_feature":
            return values[:, None]
        return values.reshape(self.p, self.k)

    def vjp_theta(self, x, theta, q):
        _, coef = self._split(x)
        Q = q.reshape(self.shape)[: self.p]
        M = self._alpha(theta) * coef * Q / self.n
        if self.penalty == "shared":
            return np.array([M.sum()])
        if self.penalty == "per_feature":
            return M.sum(axis=1)
        return M.ravel()

    def mu(self, theta):
        return float(np.min(np.exp(theta))) / self.n

    def lipschitz(self, theta):
        return None

    def hessian_lipschitz(self, theta):
        return self._hessian_lipschitz

    def hessian_change(self, x, theta, v, radius):
        """Upper bound on ``||(A(y) - A(x)) v||`` over ``||y - x|| <= radius``.

        ``A(y) - A(x) = Xa^T (H_i(y) - H_i(x)) Xa / n`` with ``H_i`` the loss curvature of
        sample ``i``, whose scores move by ``tau_i = ||Delta z_i|| <= t_i = ||xa_i||
        radius``, with ``sum_i tau_i^2 <= ||Xa||^2 radius^2``. Binary: ``log sigma'`` is
        1-Lipschitz, so ``|sigma'(z + s) - sigma'(z)| <= sigma'(z) |s| e^t_i`` (and ``<= |s|
        / (6 sqrt 3)``). Multinomial: the third derivative of log-sum-exp is
        ``E_p[(h - Eh)(u - Eu)(w - Ew)]``, so ``||(H(z + h) - H(z)) u|| <= 2 range(h)
        sd_p'(u)`` along the segment, with ``p' <= p e^range(h)`` and ``range(h) <= 2
        tau_i``: ``<= 4 tau_i e^t_i sd_p(u)`` (and ``<= 2 tau_i range(u)``). Then ``||Xa^T M||
        <= ||Xa|| ||M||_F``, maximized over the ``tau_i`` (greedily); never more than the
        global ``L_A radius ||v||``.
        """
        W, _ = self._split(x)
        _, P = self.loss.probabilities(W)
        U = self.loss.Xa @ v.reshape(self.shape)
        t = np.minimum(self._row_norms * radius, 700.0)
        # Per unit of tau_i = ||Delta z_i|| (<= t_i): the change of sample i's term.
        if self.binary:
            d = (P * (1.0 - P))[:, 0]
            slope = np.minimum(d * np.exp(t), _SIGMOID_THIRD) * np.abs(U[:, 0])
        else:
            ones = np.ones(self.k)
            mean = (P * U) @ ones
            var = np.maximum((P * U * U) @ ones - mean * mean, 0.0)
            # sd <= range / 2 under any distribution: the bound for large t.
            spread = U.max(axis=1) - U.min(axis=1)
            # exp(t) * sd may overflow to inf for t near its cap: the minimum then takes the
            # range bound, which is the right answer.
            with np.errstate(over="ignore"):
                slope = np.minimum(4.0 * np.exp(t) * np.sqrt(var), 2.0 * spread)
        # ||M||_F^2 <= sum_i slope_i^2 tau_i^2 with tau_i <= t_i and sum_i tau_i^2 =
        # ||Xa (Y - X)||_F^2 <= ||Xa||^2 radius^2: the largest value puts the budget on the
        # steepest samples first (a fractional knapsack).
        order = np.argsort(-slope)
        caps = (t * t)[order]
        budget = (self._Xa_norm * radius) ** 2
        used = np.minimum(caps, np.maximum(budget - (np.cumsum(caps) - caps), 0.0))
        local = self._Xa_norm * float(np.sqrt(np.sum(slope[order] ** 2 * used))) / self.n
        return min(local, self._hessian_lipschitz * radius * float(np.linalg.norm(v)))

    def local_mu(self, x, theta, radius):
        """Lower bound on the Hessian's eigenvalues over ``||y - x|| <= radius``.

        Without an intercept: ``mu(theta)``. With one, the data curvature is what keeps the
        intercept in place. Each sample's loss curvature on the ball is at least ``gamma_i``
        times the one at ``x`` (``gamma_i = e^-t_i`` binary, ``e^-2 t_i`` multinomial, with
        ``t_i = ||xa_i|| radius``). Binary: writing the weights ``omega_i = gamma_i
        sigma'(z_i)``, ``sum_i omega_i (x_i w + b)^2 >= Omega (xbar w + b)^2`` (``Omega =
        sum omega_i``, ``xbar`` the omega-weighted mean of the samples), which with the
        penalty ``alpha ||w||^2`` has the smallest eigenvalue of ``[[alpha + Omega |xbar|^2,
        Omega |xbar|], [Omega |xbar|, Omega]]``. Multinomial: the softmax curvature is a sum
        over class pairs, ``u^T H u = sum_{c<d} p_c p_d (u_c - u_d)^2``; the same weighted
        centring per pair leaves a quadratic form in the intercepts (orthogonal to the
        constant direction, along which the loss does not change) and in the projection of
        the coefficients onto the span of the pairs' mean samples, whose smallest eigenvalue
        is computed (a matrix of size n_pairs + n_classes - 1).
        """
        alpha = float(np.min(np.exp(theta)))
        if not self.fit_intercept:
            return alpha / self.n
        W, _ = self._split(x)
        _, P = self.loss.probabilities(W)
        X = self.loss.Xa[:, : self.p]
        t = self._row_norms * radius
        if self.binary:
            omega = (P * (1.0 - P))[:, 0] * np.exp(-t)
            total = float(omega.sum())
            if not total > 0:
                return 0.0
            xbar = (omega @ X) / total
            c2 = float(xbar @ xbar)
            trace = alpha + total * (1.0 + c2)
            disc = np.sqrt(max(trace * trace - 4.0 * alpha * total, 0.0))
            lam = 2.0 * alpha * total / (trace + disc)
            scale = trace
        else:
            first, second = self._pairs
            omega = np.exp(-2.0 * t)[:, None] * P[:, first] * P[:, second]
            totals = omega.sum(0)
            keep = totals > 0
            omega, totals = omega[:, keep], totals[keep]
            if totals.size == 0:
                return 0.0
            means = (omega.T @ X) / totals[:, None]
            # Coefficient part: W -> (xbar_e . (w_c - w_d))_e has Gram matrix G G^T; its
            # square root S gives an isometric parametrization of the span it sees.
            gram = (means @ means.T) * self._incidence_gram[np.ix_(keep, keep)]
            try:
                # Any root with root root^T = G G^T will do (G = root U, U a partial
                # isometry): Cholesky when G G^T is definite, else the symmetric root.
                root = np.linalg.cholesky(gram)
            except np.linalg.LinAlgError:
                evals, evecs = np.linalg.eigh(gram)
                root = (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T
            # In the coordinates y (W_1 = U^T y, G W_1 = root y) the form is
            # alpha |y|^2 + |Omega^1/2 (root y + Inc B beta)|^2.
            weighted = totals[:, None] * root
            basis = self._pair_basis[keep]
            n_keep = totals.size
            M = np.block([
                [alpha * np.eye(n_keep) + root.T @ weighted, weighted.T @ basis],
                [basis.T @ weighted, basis.T @ (totals[:, None] * basis)],
            ])
            eig = np.linalg.eigvalsh(M)
            lam, scale = float(eig[0]), float(eig[-1])
        # Rounding of the eigenvalue computation, then never above the penalty's curvature.
        lam = min(lam - 64 * np.finfo(float).eps * scale, alpha)
        return max(lam, 0.0) / self.n

    def cross_norm(self, x, theta):
        _, coef = self._split(x)
        AC = self._alpha(theta) * coef
        if self.penalty == "shared":
            return float(np.linalg.norm(AC)) / self.n
        if self.penalty == "per_feature":
            return float(np.max(np.linalg.norm(AC, axis=1), initial=0.0)) / self.n
        return float(np.max(np.abs(AC), initial=0.0)) / self.n

    def cross_lipschitz(self, theta):
        return float(np.max(np.exp(theta))) / self.n

    def coef_intercept(self, x):
        """``(coef, intercept)`` of shapes (n_columns, n_features) and (n_columns,)."""
        W = x.reshape(self.shape)
        intercept = W[self.p] if self.fit_intercept else np.zeros(self.k)
        return W[: self.p].T.copy(), np.array(intercept)


class LogLossUpperLevel(UpperLevel):
    """Mean validation log-loss of the weights ``W`` of a :class:`LogisticLowerLevel`.

    Examples
    --------
    >>> from mmopt.bilevel.glm import LogLossUpperLevel
    >>> upper = LogLossUpperLevel(np.ones((2, 1)), np.array([0.0, 1.0]))
    >>> bool(np.isclose(upper.value(np.zeros(2)), np.log(2)))
    True
    """

    def __init__(self, X, Y, *, fit_intercept=True):
        X = check_array(X, "X", ndim=2)
        Y = check_array(Y, "Y", ndim=(1, 2))
        binary = Y.ndim == 1
        Xa = _augment(X, fit_intercept)
        self.loss = _LogisticLoss(Xa, Y[:, None] if binary else Y, binary)
        self.shape = (Xa.shape[1], 1 if binary else Y.shape[1])
        self.n = X.shape[0]
        self.L_g = (0.25 if binary else 0.5) * _spectral_norm_sq(Xa) / self.n

    def value(self, x):
        return self.loss.value(x.reshape(self.shape)) / self.n

    def grad(self, x):
        return (self.loss.grad(x.reshape(self.shape)) / self.n).ravel()


def _check_labels(y, n_samples: int) -> np.ndarray:
    """Class labels as a 1-d array of length ``n_samples``; continuous targets refused."""
    check_input(y, "y", numeric=False)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n_samples:
        raise ValueError(
            f"y must have shape (n_samples,) = ({n_samples},) to match X, got {y.shape}."
        )
    kind = type_of_target(y, input_name="y")
    if kind not in ("binary", "multiclass"):
        raise ValueError(
            f"Unknown label type: {kind}. y must hold class labels for logistic regression "
            "(use ridge_cv_problem / BilevelRidge for a regression target)."
        )
    return y


def _encode(y):
    encoder = LabelEncoder().fit(y)
    codes = encoder.transform(y)
    n_classes = encoder.classes_.size
    if n_classes < 2:
        raise ValueError(
            f"y must hold at least 2 classes for logistic regression; got 1 class "
            f"({encoder.classes_[0]!r})."
        )
    if n_classes == 2:
        return encoder.classes_, codes.astype(float)
    return encoder.classes_, np.eye(n_classes)[codes]


def logistic_cv_problem(
    X, y, *, cv=5, penalty="shared", fit_intercept=True, C0=1.0, bounds=None,
    theta_penalty=None,
) -> BilevelProblem:
    """K-fold cross-validated L2 logistic regression as a bilevel problem in
    ``theta = log(1 / C)``.

    Binary labels give the sigmoid model, more classes the multinomial one. The objective is
    the mean over folds of the mean validation log-loss, the quantity GridSearchCV maximizes
    with ``scoring="neg_log_loss"`` (with the same folds: a stratified K-fold for an integer
    ``cv``, as scikit-learn uses for classifiers).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Data.
    y : array-like of shape (n_samples,)
        Class labels.
    cv : int, cross-validation generator or iterable, default=5
        As in scikit-learn.
    penalty : {"shared", "per_feature", "per_weight"}, default="shared"
        One ``C``, one per feature, or one per weight (``n_features * n_columns``).
    fit_intercept : bool, default=True
        Fit unpenalized intercepts.
    C0 : float or array-like, default=1.0
        Starting inverse penalty.
    bounds : tuple (lo, hi), optional
        Bounds on ``theta = log(1 / C)``.
    theta_penalty : object, optional
        Penalty ``r(theta)``.

    Returns
    -------
    BilevelProblem

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from mmopt.bilevel.glm import logistic_cv_problem
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> problem = logistic_cv_problem(X, y, cv=3)
    >>> problem.n_instances, problem.theta0.shape
    (3, (1,))
    """
    X = check_array(X, "X", ndim=2)
    _check_scale(X, "X")
    y = _check_labels(y, X.shape[0])
    classes, Y = _encode(y)
    lowers, uppers = [], []
    for train, val in _splits(cv, X, y, classifier=True):
        lowers.append(
            LogisticLowerLevel(X[train], Y[train], penalty=penalty, fit_intercept=fit_intercept)
        )
        uppers.append(LogLossUpperLevel(X[val], Y[val], fit_intercept=fit_intercept))
    n_theta = lowers[0].n_theta
    theta0 = -np.log(np.broadcast_to(np.asarray(C0, dtype=float), (n_theta,)))
    problem = BilevelProblem(lowers, uppers, theta0, bounds=bounds, theta_penalty=theta_penalty)
    problem.classes_ = classes
    return problem
