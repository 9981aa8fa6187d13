r"""Target-based surrogates: MM in the space of the model's outputs (Lavington et al., 2023).

The loss :math:`L(\theta) = \frac1n \sum_i \ell(f_\theta(x_i), y_i)` composes a cheap model
``z = f_theta(X)`` (the *targets*: predictions, logits) with a loss whose gradient may be
expensive. One gradient ``g = grad_z l(z_t)`` at ``z_t = f_{theta_t}(X)`` defines the
surrogate

.. math::

    s_t(\theta) = \frac1n \sum_i \Big[\ell(z_{t,i}) + \langle g_i, f_\theta(x_i) - z_{t,i}
    \rangle + \frac{1}{2\eta} \|f_\theta(x_i) - z_{t,i}\|^2\Big] + \frac\alpha2 \|w\|^2,

which majorizes ``L`` when ``eta <= 1 / beta`` for a loss ``beta``-smooth in one sample's
target, and touches it at ``theta_t``. Up to a constant it is the least-squares distance of
``f_theta(X)`` to the target-space gradient step ``z_t - eta g``: minimizing it (exactly, for
a linear model; by ``m`` steps of gradient descent with an Armijo line search otherwise)
gives many parameter updates per gradient of the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.linalg

from mmopt._core._docstrings import fill_doc, references
from mmopt._core.linesearch import armijo, backtracking
from mmopt._core.validation import check_array, check_callable, check_choice, check_scalar
from mmopt.mm._target_losses import make_target_loss
from mmopt.mm.problem import MMProblem

__all__ = ["LinearTargetModel", "TargetModel", "TargetSurrogateProblem"]


class LinearTargetModel:
    """The linear model ``f_theta(X) = X W + b`` (``b`` only with ``fit_intercept``).

    ``theta`` packs ``W`` (n_features, n_outputs) row by row, then ``b`` (n_outputs,). Its
    surrogate has an exact minimizer (a ridge least-squares solve whose factorization is
    computed once per problem), and the L2 penalty leaves the intercept out.

    Parameters
    ----------
    fit_intercept : bool, default=True
        Whether the model has an intercept.

    Examples
    --------
    >>> from mmopt.mm import LinearTargetModel
    >>> model = LinearTargetModel()
    >>> theta = np.array([1.0, 2.0, 0.5])  # W = [[1], [2]], b = 0.5
    >>> model.predict(theta, np.array([[1.0, 1.0]]))
    array([[3.5]])
    """

    def __init__(self, fit_intercept: bool = True):
        if not isinstance(fit_intercept, bool | np.bool_):
            raise TypeError(f"fit_intercept must be a bool, got {type(fit_intercept).__name__}.")
        self.fit_intercept = bool(fit_intercept)

    def _split(self, theta: np.ndarray, n_features: int):
        rows = n_features + self.fit_intercept
        M = theta.reshape(rows, -1)
        return M[:n_features], (M[n_features] if self.fit_intercept else None)

    def initial_params(self, n_features: int, n_outputs: int) -> np.ndarray:
        """Zeros: the start of every fit."""
        return np.zeros((n_features + self.fit_intercept) * n_outputs)

    def penalty_mask(self, n_features: int, n_outputs: int) -> np.ndarray:
        """True for the entries of ``theta`` that the L2 penalty applies to (not ``b``)."""
        mask = np.ones((n_features + self.fit_intercept, n_outputs), dtype=bool)
        mask[n_features:] = False
        return mask.ravel()

    def predict(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        """``X W + b``, shape (n_samples, n_outputs)."""
        W, b = self._split(theta, X.shape[1])
        Z = X @ W
        return Z + b if b is not None else Z

    def vjp(self, theta: np.ndarray, X: np.ndarray, V: np.ndarray) -> np.ndarray:
        """``J^T V``: the gradient of ``<V, f_theta(X)>`` with respect to ``theta``."""
        parts = [X.T @ V]
        if self.fit_intercept:
            parts.append(V.sum(axis=0)[None, :])
        return np.vstack(parts).ravel()

    def __repr__(self) -> str:
        return f"LinearTargetModel(fit_intercept={self.fit_intercept})"


class TargetModel:
    """Any differentiable model, given by its map and its vector-Jacobian product.

    Parameters
    ----------
    predict : callable
        ``predict(theta, X) -> Z``: the targets, shape (n_samples, n_outputs) (or
        (n_samples,) for one output).
    vjp : callable
        ``vjp(theta, X, V) -> ndarray`` shaped like ``theta``: the gradient of
        ``sum(V * predict(theta, X))`` with respect to ``theta``.
    theta0 : array-like of shape (n_params,)
        The starting parameters.
    penalized : array-like of bool of shape (n_params,), optional
        The entries the L2 penalty applies to (all when None).

    Examples
    --------
    A one-parameter exponential model ``z = exp(theta x)``:

    >>> from mmopt.mm import TargetModel
    >>> model = TargetModel(
    ...     predict=lambda th, X: np.exp(X * th[0]),
    ...     vjp=lambda th, X, V: np.array([np.sum(V * X * np.exp(X * th[0]))]),
    ...     theta0=[0.0],
    ... )
    >>> model.predict(np.array([1.0]), np.array([[0.0], [1.0]]))[:, 0]
    array([1.        , 2.71828183])
    """

    fit_intercept = False

    def __init__(self, predict: Callable, vjp: Callable, theta0, *, penalized=None):
        self._predict = check_callable(predict, "predict", allow_none=False)
        self._vjp = check_callable(vjp, "vjp", allow_none=False)
        self.theta0 = check_array(theta0, "theta0", ndim=1)
        self.penalized = None if penalized is None else np.asarray(
            check_array(penalized, "penalized", ndim=1, shape=self.theta0.shape,
                        dtype=bool, finite=False))

    def initial_params(self, n_features: int, n_outputs: int) -> np.ndarray:
        return np.array(self.theta0, dtype=float)

    def penalty_mask(self, n_features: int, n_outputs: int) -> np.ndarray:
        if self.penalized is None:
            return np.ones(self.theta0.shape, dtype=bool)
        return self.penalized

    def predict(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        Z = np.asarray(self._predict(theta, X), dtype=float)
        if Z.ndim == 1:
            Z = Z[:, None]
        if Z.ndim != 2 or Z.shape[0] != X.shape[0]:
            raise ValueError(
                f"predict must return one row of targets per sample ({X.shape[0]}), got "
                f"shape {Z.shape}."
            )
        return Z

    def vjp(self, theta: np.ndarray, X: np.ndarray, V: np.ndarray) -> np.ndarray:
        out = np.asarray(self._vjp(theta, X, V), dtype=float)
        if out.shape != theta.shape:
            raise ValueError(f"vjp must return an array shaped like theta {theta.shape}, got "
                             f"{out.shape}.")
        return out

    def __repr__(self) -> str:
        return f"TargetModel(n_params={self.theta0.size})"


class _Surrogate:
    """The surrogate built at ``theta_t`` with the loss gradient on ``rows``: value, gradient.

    ``s(theta) = <G, f_S(theta) - z_S> / b + ||f_P(theta) - z_P||^2 / (2 eta n_P) + penalty``
    with ``S`` the ``b`` rows of the gradient and ``P`` those of the proximity term: ``S``
    itself, or all rows (``full``: the paper's projection in target space).
    """

    def __init__(self, problem: TargetSurrogateProblem, theta_t, rows, eta: float,
                 full: bool = False):
        self.problem, self.eta = problem, eta
        self.rows = rows
        self.X = problem.X if rows is None else problem.X[rows]
        self.n = self.X.shape[0]
        self.Z = problem.model.predict(theta_t, self.X)
        self.G = problem.loss.gradient(self.Z, rows)
        # Rows of the proximity term, and where the gradient rows sit among them.
        self.subset = rows is not None and full
        self.X_prox = problem.X if self.subset else self.X
        self.Z_prox = problem.model.predict(theta_t, problem.X) if self.subset else self.Z

    def value_and_outputs(self, theta):
        gap = self.problem.model.predict(theta, self.X_prox) - self.Z_prox
        gap_rows = gap[self.rows] if self.subset else gap
        value = float(np.sum(self.G * gap_rows)) / self.n
        value += float(np.sum(gap * gap)) / (2.0 * self.eta * gap.shape[0])
        return value + self.problem.penalty(theta), gap

    def gradient(self, theta, gap):
        problem = self.problem
        V = gap / (self.eta * gap.shape[0])
        if self.subset:
            V[self.rows] += self.G / self.n
        else:
            V += self.G / self.n
        return problem.model.vjp(theta, self.X_prox, V) + problem.alpha * problem.mask * theta

    def value(self, theta) -> float:
        return self.value_and_outputs(theta)[0]


@fill_doc(references("lavington2023"))
class TargetSurrogateProblem(MMProblem):
    r"""Minimize a loss of a model's outputs by target-based surrogates (MM).

    ``F(theta) = mean_i l(f_theta(x_i), y_i) + alpha / 2 ||w||^2``, where ``w`` are the
    penalized parameters (a linear model's coefficients, not its intercept). ``G(theta)`` is
    the minimizer of the surrogate ``s_t`` of the module's docstring built at ``theta``: one
    gradient of the loss in target space per MM step, then an exact least-squares solve
    (linear model) or ``n_inner`` steps of gradient descent with an Armijo backtracking line
    search (any model: needs only ``predict`` and ``vjp``). With ``eta = 1 / beta`` (the
    default) the surrogate majorizes ``F``, so each exact step decreases ``F``; a partial
    inner minimization started at ``theta`` decreases the surrogate and so ``F`` too.

    The default solver, :class:`~mmopt.mm.SSO`, runs these steps on the full data (with
    safeguarded Anderson acceleration) or on minibatches.

    Parameters
    ----------
    model : LinearTargetModel or TargetModel
        The model ``f_theta``.
    loss : {"squared", "logistic", "softmax"}
        The loss of one sample's targets: ``||z - y||^2 / 2`` (``beta = 1``), the logistic
        loss of labels in {0, 1} (``beta = 1/4``), the cross-entropy of ``softmax(z)``
        against integer labels (``beta = 1/2``).
    X : array-like of shape (n_samples, n_features)
        The inputs.
    y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        Targets (squared loss) or labels.
    eta : float, optional
        Step in target space; ``1 / beta`` when None (the largest that keeps ``s_t`` a
        majorizer).
    alpha : float, default=0.0
        L2 penalty strength (``SGDClassifier``'s ``alpha``; ``LogisticRegression``'s
        ``C`` is ``1 / (alpha n_samples)``).
    inner : {"exact", "gd"}, optional
        How the surrogate is minimized: ``"exact"`` (linear models only; the default for
        them) or ``"gd"`` (the default otherwise). Minibatch steps with the minibatch-only
        surrogate (``projection="batch"``) always use ``"gd"``.
    n_inner : int, default=10
        Gradient steps per surrogate with ``inner="gd"``.
    n_classes : int, optional
        Number of classes of the softmax loss (``max(y) + 1`` when None).

    Notes
    -----
    Every :meth:`mm_step` and :meth:`surrogate_step` computes one gradient of the loss in
    target space (on its rows); the inner minimization only evaluates the model.

    %(references)s

    Examples
    --------
    Least squares with an exact inner solve is ordinary least squares after one step:

    >>> from mmopt.mm import LinearTargetModel, TargetSurrogateProblem
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 3))
    >>> y = X @ [1.0, -2.0, 0.5] + 3.0
    >>> problem = TargetSurrogateProblem(LinearTargetModel(), "squared", X, y)
    >>> theta, _ = problem.mm_step(problem.initial_point())
    >>> np.round(theta, 6)
    array([ 1. , -2. ,  0.5,  3. ])
    """

    default_solver = "sso"

    def __init__(self, model, loss: str, X, y, *, eta: float | None = None,
                 alpha: float = 0.0, inner: str | None = None, n_inner: int = 10,
                 n_classes: int | None = None):
        if not isinstance(model, LinearTargetModel | TargetModel):
            raise TypeError(
                f"model must be a LinearTargetModel or a TargetModel, got {type(model).__name__}."
            )
        self.model = model
        self.X = check_array(X, "X", ndim=2)
        y = check_array(y, "y", ndim=(1, 2))
        if y.shape[0] != self.X.shape[0]:
            raise ValueError(
                f"y must have one row per sample of X ({self.X.shape[0]}), got {y.shape[0]}."
            )
        self.loss = make_target_loss(loss, y, n_classes)
        beta = self.loss.smoothness
        self.eta = 1.0 / beta if eta is None else check_scalar(
            eta, "eta", min_value=0.0, include_min=False)
        self.alpha = check_scalar(alpha, "alpha", min_value=0.0)
        linear = isinstance(model, LinearTargetModel)
        self.inner = ("exact" if linear else "gd") if inner is None else check_choice(
            inner, "inner", ("exact", "gd"))
        if self.inner == "exact" and not linear:
            raise ValueError("inner='exact' needs a LinearTargetModel; use inner='gd'.")
        self.n_inner = check_scalar(n_inner, "n_inner", kind=int, min_value=1)
        n_features, n_outputs = self.X.shape[1], self.loss.n_outputs
        self.x0 = model.initial_params(n_features, n_outputs)
        self.mask = model.penalty_mask(n_features, n_outputs).astype(float)
        if not linear:
            outputs = model.predict(self.x0, self.X[:1]).shape[1]
            if outputs != n_outputs:
                raise ValueError(f"the model predicts {outputs} outputs per sample; the "
                                 f"{loss} loss needs {n_outputs}.")
        self._factor = _RidgeFactor(self.X, model.fit_intercept) if self.inner == "exact" \
            else None
        self._gram = None

    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    def penalty(self, theta: np.ndarray) -> float:
        """``alpha / 2 ||w||^2``."""
        if self.alpha == 0.0:
            return 0.0
        w = theta * self.mask
        return 0.5 * self.alpha * float(w @ w)

    def objective(self, theta: np.ndarray) -> float:
        """``F(theta)``: the mean loss plus the penalty."""
        return self.loss.value(self.model.predict(theta, self.X)) + self.penalty(theta)

    def surrogate(self, theta_t: np.ndarray, rows=None, eta: float | None = None,
                  projection: str = "full") -> _Surrogate:
        """The surrogate built at ``theta_t`` with the loss gradient on ``rows`` (all when
        None) and the step ``eta`` (the problem's when None); one target gradient.

        With ``projection="full"`` its proximity term runs over all rows (the stochastic
        surrogate of Lavington et al., whose mean over the minibatches is the full-batch
        surrogate), with ``"batch"`` over ``rows`` only (the surrogate of the minibatch's
        loss). ``.value(theta)`` is ``s_t(theta)`` less the loss at ``theta_t`` and
        ``.gradient`` its gradient (through the model's ``vjp``).
        """
        projection = check_choice(projection, "projection", ("full", "batch"))
        return _Surrogate(self, theta_t, rows, self.eta if eta is None else eta,
                          full=projection == "full")

    def surrogate_step(self, theta: np.ndarray, rows=None, eta: float | None = None,
                       projection: str = "full") -> tuple[np.ndarray, float]:
        """Build the surrogate at ``theta`` (see :meth:`surrogate`) and minimize it.

        Returns the new parameters and the loss (plus penalty) at ``theta`` on ``rows``.
        Exact for a linear model with ``inner="exact"``: on all rows a ridge solve, on a
        minibatch with ``projection="full"`` the projection of the target-space step
        ``z_S - eta (n / b) g_S`` onto the model's outputs (a solve with the design's Gram
        matrix, no pass over the data). Otherwise ``n_inner`` gradient steps with an
        Armijo line search (the only choice with ``projection="batch"``: the exact
        minimizer of a minibatch's own surrogate would fit that minibatch alone).
        """
        projection = check_choice(projection, "projection", ("full", "batch"))
        if rows is not None and self.inner == "exact" and projection == "full":
            return self._projected_step(theta, rows, self.eta if eta is None else eta)
        surrogate = self.surrogate(theta, rows, eta, projection)
        fun = self.loss.value(surrogate.Z, rows) + self.penalty(theta)
        if rows is None and self.inner == "exact":
            return self._exact_minimizer(surrogate), fun
        return self._descend(surrogate, theta), fun

    def mm_step(self, theta: np.ndarray):
        return self.surrogate_step(theta)

    def surrogate_minimizer(self, theta: np.ndarray) -> np.ndarray:
        return self.surrogate_step(theta)[0]

    def initial_point(self) -> np.ndarray:
        return self.x0

    def _projected_step(self, theta: np.ndarray, rows, eta: float):
        """Exact minimizer of the full-projection surrogate on a minibatch (linear model).

        With ``M`` the parameters as a (p, k) matrix (intercept row last), ``A`` the design
        with its unit column and ``D = M - M_t``, the surrogate is ``<G, A_S D> / b +
        ||A D||^2 / (2 eta n) + alpha / 2 ||mask (M_t + D)||^2``: its minimizer solves
        ``(A^T A / (eta n) + alpha mask) D = -(A_S^T G / b + alpha mask M_t)``.
        """
        X_rows = self.X[rows]
        Z = self.model.predict(theta, X_rows)
        G = self.loss.gradient(Z, rows)
        fun = self.loss.value(Z, rows) + self.penalty(theta)
        M = theta.reshape(-1, G.shape[1])
        mask = self.mask.reshape(M.shape)[:, 0]
        rhs = X_rows.T @ G
        if self.model.fit_intercept:
            rhs = np.vstack([rhs, G.sum(axis=0)[None, :]])
        rhs = rhs / len(rows) + self.alpha * mask[:, None] * M
        vals, vecs = self._gram_eigen(eta)
        keep = vals > vals[-1] * max(self.X.shape) * np.finfo(float).eps
        inverse = np.divide(1.0, vals, out=np.zeros_like(vals), where=keep)
        step = vecs @ ((vecs.T @ rhs) * inverse[:, None])
        return (M - step).ravel(), fun

    def _gram_eigen(self, eta: float):
        """Eigen-decomposition of ``A^T A / (eta n) + alpha mask``, cached per ``eta``."""
        if self._gram is None:
            A = self.X
            gram = A.T @ A
            if self.model.fit_intercept:
                col = A.sum(axis=0)
                gram = np.block([[gram, col[:, None]], [col[None, :], np.array([[len(A)]])]])
            self._gram = (gram, {})
        gram, cache = self._gram
        if eta not in cache:
            mask = self.mask.reshape(gram.shape[0], -1)[:, 0]
            matrix = gram / (eta * self.n_samples) + self.alpha * np.diag(mask)
            if len(cache) > 8:
                cache.clear()
            cache[eta] = np.linalg.eigh(matrix)
        return cache[eta]

    def _exact_minimizer(self, surrogate: _Surrogate) -> np.ndarray:
        # s_t(theta) = ||X W + b - T||^2 / (2 eta n) + alpha/2 ||W||^2 + const, T = z_t - eta g.
        T = surrogate.Z - surrogate.eta * surrogate.G
        return self._factor.solve(self.X, T, self.n_samples * surrogate.eta * self.alpha)

    def _descend(self, surrogate: _Surrogate, theta: np.ndarray) -> np.ndarray:
        value, gap = surrogate.value_and_outputs(theta)
        step = 1.0
        for _ in range(self.n_inner):
            grad = surrogate.gradient(theta, gap)
            slope = -float(grad @ grad)
            if slope == 0.0:
                break
            # Rounding slack, so that a step at the surrogate's floor is not refused forever.
            rounding = 1e-15 * max(abs(value), 1.0)

            def trial(t, theta=theta, grad=grad):
                point = theta - t * grad
                return point, *surrogate.value_and_outputs(point)

            search = backtracking(
                trial, armijo(value, slope, rounding=rounding, value=lambda r: r[1]),
                step=step, max_trials=60)
            if not search.success or not math.isfinite(search.trial[1]):
                break
            theta, value, gap = search.trial
            # Start the next search a little beyond the step just accepted.
            step = 2.0 * search.step
        return theta

    def __repr__(self) -> str:
        return (f"TargetSurrogateProblem(model={self.model!r}, loss={self.loss.name!r}, "
                f"n_samples={self.n_samples}, eta={self.eta:g}, alpha={self.alpha:g}, "
                f"inner={self.inner!r})")


class _RidgeFactor:
    """The factorization of the (centered) design that solves every exact inner problem.

    ``solve(X, T, lam)`` returns the packed ``(W, b)`` minimizing ``||X W + b - T||^2 +
    lam ||W||^2``; with ``lam = 0`` the minimum-norm ``W`` (pseudo-inverse).
    """

    def __init__(self, X: np.ndarray, fit_intercept: bool):
        self.mean = X.mean(axis=0) if fit_intercept else None
        centered = X - self.mean if fit_intercept else X
        # R of a QR, then its SVD: the design's singular values without an n x d factor.
        R = scipy.linalg.qr(centered, mode="r", check_finite=False)[0]
        _, self.s, self.Vt = scipy.linalg.svd(R[: min(R.shape)], full_matrices=False,
                                              check_finite=False)
        self.cut = max(X.shape) * np.finfo(float).eps * (self.s[0] if self.s.size else 0.0)

    def solve(self, X: np.ndarray, T: np.ndarray, lam: float) -> np.ndarray:
        if self.mean is not None:
            T_mean = T.mean(axis=0)
            T = T - T_mean
        s2 = self.s**2 + lam
        inverse = np.divide(1.0, s2, out=np.zeros_like(s2),
                            where=(self.s > self.cut) | (lam > 0))
        # X^T T equals the centered design's X_c^T T once T is centered.
        W = self.Vt.T @ ((self.Vt @ (X.T @ T)) * inverse[:, None])
        if self.mean is None:
            return W.ravel()
        return np.vstack([W, (T_mean - self.mean @ W)[None, :]]).ravel()
