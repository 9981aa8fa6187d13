"""Non-negative matrix factorization by multiplicative (Lee-Seung) updates, as MM."""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.extmath import randomized_svd
from sklearn.utils.validation import check_is_fitted, check_non_negative, validate_data

from mmopt._core.anderson import ANDERSON_OPTION
from mmopt._core.params import InstanceOf, Interval, Options, Param, ParamsValidationMixin
from mmopt._core.threads import check_n_threads
from mmopt._core.validation import check_array, check_choice, check_input
from mmopt.mm._kernels import EPSILON as _EPSILON
from mmopt.mm._kernels import multiplicative_update, sparse_ratio_and_kl
from mmopt.mm.problem import MMProblem
from mmopt.mm.solver import MMSolver

__all__ = ["NMFProblem", "MMNMF"]

LOSSES = ("frobenius", "kullback-leibler")
_TRANSFORM_TOL = 1e-8


def _check_data(X, name="X"):
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-dimensional.")
        if X.nnz and not np.isfinite(X.data).all():
            raise ValueError(f"{name} must not contain NaN or infinite values.")
        if X.nnz and X.data.min() < 0:
            raise ValueError(
                f"{name} must be non-negative; its smallest entry is {X.data.min()!r}."
            )
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(
                f"{name} must have at least one row and one column, got {X.shape}."
            )
        X.data.flags.writeable = False
        return X
    return check_array(X, name, ndim=2, nonnegative=True)


@dataclass(frozen=True)
class NMFProblem(MMProblem):
    r"""Non-negative matrix factorization ``X ~ W H`` as an MM problem.

    Minimizes over ``W >= 0`` (n_samples, k) and ``H >= 0`` (k, n_features)

    - ``loss="frobenius"``: :math:`F = \tfrac12 \|X - WH\|_F^2`,
    - ``loss="kullback-leibler"``:
      :math:`F = \sum_{ij} X_{ij} \log\frac{X_{ij}}{(WH)_{ij}} - X_{ij} + (WH)_{ij}`.

    The MM map ``G`` is one sweep of Lee and Seung's multiplicative updates (``W`` with ``H``
    fixed, then ``H`` with the new ``W``): each half-step minimizes a separable majorizer of
    ``F``, so ``F`` never increases. The iterate is the flat vector
    ``concat(W.ravel(), H.ravel())`` (only ``W`` when ``update_H=False``, which solves for
    ``W`` with ``H`` fixed, as ``transform`` does).

    Parameters
    ----------
    X : array-like or sparse matrix of shape (n_samples, n_features)
        Non-negative data. Sparse input stays sparse (CSR); for the Kullback-Leibler loss only
        the entries of ``W H`` at the stored entries of ``X`` are formed.
    W0 : array-like of shape (n_samples, n_components)
        Non-negative initial ``W``.
    H0 : array-like of shape (n_components, n_features)
        Non-negative initial ``H``; kept fixed when ``update_H=False``.
    loss : {"frobenius", "kullback-leibler"}, default="frobenius"
        The divergence minimized.
    update_H : bool, default=True
        Update ``H`` too (False: only ``W`` moves).
    n_threads : int or None, default=1
        Threads of the sparse Kullback-Leibler kernel (None: all available). One by
        default, because the kernel's OpenMP threads compete with the BLAS threads of the
        products around it; raise it when BLAS runs single-threaded.

    Notes
    -----
    ``mm_step(x)`` returns ``(G(x), F(x))`` from the products the sweep needs anyway: for the
    Frobenius loss ``F = (||X||^2 - 2 <X H^T, W> + <W, W H H^T>) / 2`` uses ``X H^T`` and
    ``W H H^T``, the numerator and denominator of the ``W`` update. A zero entry of ``W`` or
    ``H`` stays zero under multiplicative updates, so :meth:`project` clips extrapolated
    (Anderson) points to a tiny positive floor rather than to zero.

    References
    ----------
    .. [1] D. D. Lee and H. S. Seung, "Algorithms for non-negative matrix factorization",
       *Advances in Neural Information Processing Systems* 13, 556-562, 2001.

    Examples
    --------
    >>> from mmopt.mm import NMFProblem
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((20, 2)) @ rng.random((2, 8))  # exactly rank 2
    >>> problem = NMFProblem(X, rng.random((20, 2)), rng.random((2, 8)))
    >>> res = problem.solve(tol=1e-10, max_iter=5000)
    >>> W, H = problem.factors(res.x)
    >>> bool(np.linalg.norm(X - W @ H) < 1e-3 * np.linalg.norm(X))
    True
    """

    X: np.ndarray
    W0: np.ndarray
    H0: np.ndarray
    _: KW_ONLY
    loss: str = "frobenius"
    update_H: bool = True
    n_threads: int | None = 1

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        X = _check_data(self.X)
        n, m = X.shape
        loss = check_choice(self.loss, "loss", LOSSES)
        H0 = check_array(self.H0, "H0", ndim=2, nonnegative=True)
        k = H0.shape[0]
        if H0.shape != (k, m):
            raise ValueError(
                f"H0 must have shape (n_components, n_features) = ({k}, {m}), got {H0.shape}."
            )
        W0 = check_array(self.W0, "W0", ndim=2, nonnegative=True)
        if W0.shape != (n, k):
            raise ValueError(
                f"W0 must have shape (n_samples, n_components) = ({n}, {k}), got {W0.shape}."
            )
        put("n_threads", check_n_threads(self.n_threads))
        if not isinstance(self.update_H, (bool, np.bool_)):
            raise TypeError(f"update_H must be True or False, got {self.update_H!r}.")
        put("X", X)
        put("W0", W0)
        put("H0", H0)
        put("loss", loss)
        put("update_H", bool(self.update_H))
        put("_n_samples", n)
        put("_n_components", k)
        if loss == "frobenius":
            sq = float(X.multiply(X).sum()) if sp.issparse(X) else float(np.vdot(X, X))
            put("_x_squared_norm", sq)
        else:
            put("_x_sum", float(X.sum()))
            if not sp.issparse(X):
                # Where X > 0: only there does X log(X / WH) contribute.
                put("_positive", X > 0)

    # ----------------------------------------------------------------------------- helpers
    def factors(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Split an iterate into ``(W, H)`` (views, no copy)."""
        x = np.asarray(x, dtype=float)
        size_w = self._n_samples * self._n_components
        W = x[:size_w].reshape(self._n_samples, self._n_components)
        H = x[size_w:].reshape(self.H0.shape) if self.update_H else self.H0
        return W, H

    def _pack(self, W, H):
        if not self.update_H:
            return W.ravel()
        return np.concatenate([W.ravel(), H.ravel()])

    # ------------------------------------------------------------------------ MM protocol
    def initial_point(self) -> np.ndarray:
        """``concat(W0.ravel(), H0.ravel())`` (only ``W0`` when ``update_H=False``)."""
        return self._pack(self.W0, self.H0)

    def objective(self, x) -> float:
        """``F(W, H)`` for the chosen loss, computed directly."""
        W, H = self.factors(x)
        X = self.X
        if self.loss == "frobenius":
            if sp.issparse(X):
                # Never form the dense residual of a sparse X.
                cross = float(np.vdot(X @ H.T, W))
                quad = float(np.vdot(W.T @ W, H @ H.T))
                return max(0.5 * (self._x_squared_norm - 2.0 * cross + quad), 0.0)
            return 0.5 * float(np.sum((X - W @ H) ** 2))
        wh_sum = float(W.sum(axis=0) @ H.sum(axis=1))
        if sp.issparse(X):
            _, kl_data = sparse_ratio_and_kl(X, W, H, eps=_EPSILON, n_threads=self.n_threads)
        else:
            WH = np.maximum(W @ H, _EPSILON)
            pos = self._positive
            kl_data = float(np.sum(X[pos] * np.log(X[pos] / WH[pos])))
        return kl_data - self._x_sum + wh_sum

    def surrogate_minimizer(self, x) -> np.ndarray:
        """One multiplicative-update sweep from ``x``."""
        return self.mm_step(x)[0]

    def mm_step(self, x) -> tuple:
        """Return ``(G(x), F(x))``: one multiplicative sweep and the objective at ``x``.

        The Frobenius sweep also returns ``(||G(x) - x||^2, ||x||^2)``, computed in the same
        pass (see :meth:`MMProblem.mm_step`).
        """
        W, H = self.factors(x)
        if self.loss == "frobenius":
            return self._frobenius_step(W, H)
        return self._kl_step(W, H)

    def project(self, x) -> np.ndarray:
        """Clip an extrapolated point to a small positive floor.

        Multiplicative updates can never leave an exact zero, and entries clipped far below
        their scale take many sweeps to grow back, so the floor is ``1e-6`` times the largest
        entry: a zero floor stalls the updates, and a high one makes most extrapolations
        worse than the plain step.
        """
        floor = 1e-6 * max(float(np.max(x)), _EPSILON)
        return np.maximum(x, floor)

    # ------------------------------------------------------------------- the two sweeps
    def _new_iterate(self):
        """An uninitialized iterate and views of its ``W`` and ``H`` blocks."""
        size_w = self._n_samples * self._n_components
        out = np.empty(size_w + (self.H0.size if self.update_H else 0))
        W = out[:size_w].reshape(self._n_samples, self._n_components)
        H = out[size_w:].reshape(self.H0.shape) if self.update_H else None
        return out, W, H

    def _frobenius_step(self, W, H):
        X = self.X
        out, W_new, H_new = self._new_iterate()
        # One fused pass per factor (Cython): the update, the objective's cross terms
        # <X H^T, W> and <W H H^T, W>, and the squared lengths of the step and of x.
        cross, quad, step_sq, x_sq = multiplicative_update(
            W, X @ H.T, W @ (H @ H.T), W_new
        )
        fun = 0.5 * (self._x_squared_norm - 2.0 * cross + quad)
        if self.update_H:
            WtX = (X.T @ W_new).T if sp.issparse(X) else W_new.T @ X
            _, _, h_step_sq, h_sq = multiplicative_update(
                H, WtX, (W_new.T @ W_new) @ H, H_new
            )
            step_sq, x_sq = step_sq + h_step_sq, x_sq + h_sq
        return out, max(fun, 0.0), (step_sq, x_sq)

    def _kl_ratio(self, W, H):
        """``X / max(WH, eps)`` (sparse when X is) and the data term of the divergence."""
        X = self.X
        if sp.issparse(X):
            return sparse_ratio_and_kl(X, W, H, eps=_EPSILON, n_threads=self.n_threads)
        WH = W @ H
        np.maximum(WH, _EPSILON, out=WH)
        ratio = X / WH
        pos = self._positive
        return ratio, float(np.sum(X[pos] * np.log(ratio[pos])))

    def _kl_step(self, W, H):
        ratio, kl_data = self._kl_ratio(W, H)
        fun = kl_data - self._x_sum + float(W.sum(axis=0) @ H.sum(axis=1))
        out, W_new, H_new = self._new_iterate()
        h_sum = H.sum(axis=1)
        h_sum[h_sum == 0.0] = _EPSILON
        np.multiply(W, (ratio @ H.T) / h_sum, out=W_new)
        if self.update_H:
            ratio, _ = self._kl_ratio(W_new, H)
            w_sum = W_new.sum(axis=0)
            w_sum[w_sum == 0.0] = _EPSILON
            WtR = (ratio.T @ W_new).T if sp.issparse(ratio) else W_new.T @ ratio
            np.multiply(H, WtR / w_sum[:, None], out=H_new)
        return out, fun

    def __repr__(self) -> str:
        n, m = self.X.shape
        return (
            f"NMFProblem(n_samples={n}, n_features={m}, n_components={self._n_components}, "
            f"loss={self.loss!r}, update_H={self.update_H})"
        )


def _unit(X) -> float:
    """A power of four near the largest entry of ``X`` when it is beyond 1e30 or below 1e-30
    (1 otherwise): dividing by it is exact and keeps the objective's fourth-order terms
    (``<W^T W, H H^T>``, with the NNDSVDa fill of the order of ``X``) in range."""
    peak = float(abs(X).max()) if X.shape[0] and X.shape[1] else 0.0
    if peak == 0.0 or 1e-30 <= peak <= 1e30:
        return 1.0
    return 4.0 ** math.floor(math.log(peak, 4))


def initialize_factors(X, n_components, init="nndsvda", *, random_state=None, eps=1e-6):
    """Initial non-negative factors ``(W, H)`` for NMF.

    Parameters
    ----------
    X : array-like or sparse matrix of shape (n_samples, n_features)
        Non-negative data.
    n_components : int
        Rank of the factorization.
    init : {"random", "nndsvd", "nndsvda", "nndsvdar"}, default="nndsvda"
        ``"random"``: uniform entries scaled by ``sqrt(mean(X) / n_components)``.
        ``"nndsvd"``: non-negative double SVD (Boutsidis and Gallopoulos, 2008), which keeps
        exact zeros (bad for multiplicative updates, which cannot leave them); ``"nndsvda"``
        fills those zeros with the mean of ``X``; ``"nndsvdar"`` with small random values.
    random_state : int, RandomState instance or None
        Seed of the random choices.

    Returns
    -------
    W : ndarray of shape (n_samples, n_components)
    H : ndarray of shape (n_components, n_features)

    Examples
    --------
    >>> from mmopt.mm.nmf import initialize_factors
    >>> W, H = initialize_factors(np.ones((4, 3)), 2, init="random", random_state=0)
    >>> W.shape, H.shape, bool((W >= 0).all() and (H >= 0).all())
    ((4, 2), (2, 3), True)
    """
    rng = check_random_state(random_state)
    n, m = X.shape
    mean = float(X.mean())
    if init == "random":
        avg = np.sqrt(mean / n_components)
        W = avg * np.abs(rng.standard_normal((n, n_components)))
        H = avg * np.abs(rng.standard_normal((n_components, m)))
        return W, H
    check_choice(init, "init", ("random", "nndsvd", "nndsvda", "nndsvdar"))
    U, S, Vt = randomized_svd(X, n_components, random_state=rng)
    W = np.zeros((n, n_components))
    H = np.zeros((n_components, m))
    # The leading singular pair of a non-negative matrix can be taken non-negative.
    W[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0])
    H[0, :] = np.sqrt(S[0]) * np.abs(Vt[0, :])
    for j in range(1, n_components):
        u, v = U[:, j], Vt[j, :]
        u_pos, u_neg = np.maximum(u, 0), np.maximum(-u, 0)
        v_pos, v_neg = np.maximum(v, 0), np.maximum(-v, 0)
        pos_norm = np.linalg.norm(u_pos) * np.linalg.norm(v_pos)
        neg_norm = np.linalg.norm(u_neg) * np.linalg.norm(v_neg)
        # Keep whichever sign pattern carries more of the rank-one term.
        if pos_norm >= neg_norm:
            a, b, norm = u_pos, v_pos, pos_norm
        else:
            a, b, norm = u_neg, v_neg, neg_norm
        if norm == 0:
            continue
        scale = np.sqrt(S[j] * norm)
        W[:, j] = scale * a / np.linalg.norm(a)
        H[j, :] = scale * b / np.linalg.norm(b)
    W[W < eps] = 0.0
    H[H < eps] = 0.0
    if init == "nndsvda":
        W[W == 0] = mean
        H[H == 0] = mean
    elif init == "nndsvdar":
        low = mean / 100
        W[W == 0] = np.abs(low * rng.standard_normal(int(np.sum(W == 0))))
        H[H == 0] = np.abs(low * rng.standard_normal(int(np.sum(H == 0))))
    return W, H


class MMNMF(
    ParamsValidationMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Non-negative matrix factorization by Anderson-accelerated multiplicative updates.

    Finds non-negative ``W`` (n_samples, n_components) and ``H`` (n_components, n_features)
    with ``X ~ W H`` by the MM solver :class:`~mmopt.mm.MMSolver` on an
    :class:`~mmopt.mm.NMFProblem`: Lee-Seung multiplicative updates, safeguarded Anderson
    acceleration on top. A drop-in for ``sklearn.decomposition.NMF(solver="mu")`` without
    regularization.

    Parameters
    ----------
    n_components : int, optional
        Rank of the factorization; ``n_features`` when None.
    loss : {"frobenius", "kullback-leibler"}, default="frobenius"
        The divergence between ``X`` and ``W H``.
    init : {"random", "nndsvd", "nndsvda", "nndsvdar", "custom"}, optional
        Initial factors (see :func:`mmopt.mm.nmf.initialize_factors`); ``"custom"`` takes
        ``W`` and ``H`` passed to ``fit``. None means ``"nndsvda"`` when
        ``n_components <= min(n_samples, n_features)``, else ``"random"``.
    anderson : bool or AndersonAcceleration, default=True
        Accelerate the multiplicative updates with safeguarded Anderson acceleration: True
        for the default :class:`mmopt.AndersonAcceleration`, False for plain updates, or a
        configured instance (see :class:`mmopt.mm.MMSolver`).
    tol : float, default=1e-4
        Stop when one sweep changes the factors by at most ``tol`` relative to their norm,
        ``||G(x) - x|| / max(||x||, 1)`` (scikit-learn's ``NMF`` tests the decrease of the
        objective over 10 sweeps instead; that test misfires on Anderson-accelerated runs,
        whose per-sweep decrease is irregular).
    max_iter : int, default=200
        Maximum number of sweeps.
    random_state : int, RandomState instance or None
        Seed of the ``"random"``/``"nndsvdar"`` initializations and the SVD.
    verbose : int, default=0
        Progress of the solver (0 silent, 1 bar, 2 a line per iteration).

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        The factor ``H``.
    n_components_ : int
        The rank used.
    reconstruction_err_ : float
        ``||X - W H||_F`` (Frobenius) or ``sqrt(2 * KL(X, W H))``, as scikit-learn reports.
    n_iter_ : int
        Sweeps done by the last fit.
    n_features_in_ : int
        Number of features seen in ``fit``.
    result_ : mmopt.Result
        The MM solver's result of the last fit (objective history, Anderson counts ...).

    Examples
    --------
    >>> from mmopt.mm import MMNMF
    >>> X = np.array([[1, 1], [2, 1], [3, 1.2], [4, 1], [5, 0.8], [6, 1]])
    >>> model = MMNMF(n_components=2, init="random", random_state=0, max_iter=500)
    >>> W = model.fit_transform(X)
    >>> bool(np.linalg.norm(X - W @ model.components_) < 0.1)
    True
    """

    _options = {
        "n_components": Param(None, None, Interval(int, 1, None), positional=True),
        "loss": Param("frobenius", Options(LOSSES)),
        "init": Param(None, None, Options({"random", "nndsvd", "nndsvda", "nndsvdar", "custom"})),
        "anderson": Param(True, *ANDERSON_OPTION),
        "tol": Param(1e-4, Interval(float, 0, None)),
        "max_iter": Param(200, Interval(int, 1, None)),
        "random_state": Param(None, None, Interval(int, 0, 2**32 - 1),
                              InstanceOf(np.random.RandomState, name="a numpy RandomState")),
        "verbose": Param(0, Interval(int, 0, None)),
    }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.positive_only = True
        tags.requires_fit = True
        return tags

    def _solver(self, *, tol=None) -> MMSolver:
        return MMSolver(
            anderson=self.anderson,
            tol=self.tol if tol is None else tol,
            max_iter=self.max_iter,
            verbose=self.verbose,
        )

    def _validate_data_nonnegative(self, X, reset):
        check_input(X, "X", allow_sparse=True, ndim=2)
        X = validate_data(
            self, X, accept_sparse=("csr", "csc"), dtype=np.float64, reset=reset
        )
        check_non_negative(X, f"{type(self).__name__} (input X)")
        return X

    def fit_transform(self, X, y=None, W=None, H=None) -> np.ndarray:
        """Learn the factorization of ``X`` and return ``W``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Non-negative data.
        y : Ignored
        W : array-like of shape (n_samples, n_components), optional
            Initial ``W`` when ``init="custom"``.
        H : array-like of shape (n_components, n_features), optional
            Initial ``H`` when ``init="custom"``.

        Returns
        -------
        ndarray of shape (n_samples, n_components)
        """
        self._validate_params()
        X = self._validate_data_nonnegative(X, reset=True)
        n_samples, n_features = X.shape
        k = n_features if self.n_components is None else int(self.n_components)
        init = self.init
        if init is None:
            init = "nndsvda" if k <= min(n_samples, n_features) else "random"
        # Data far from unit scale (beyond 1e30 or below 1e-30) is factorized as X / unit,
        # whose squares stay in range; X = (root W)(root H) with root = sqrt(unit) exact.
        unit = _unit(X)
        root = math.sqrt(unit)
        if unit != 1.0:
            X = X / unit
        if init == "custom":
            if W is None or H is None:
                raise ValueError('init="custom" needs both W and H passed to fit.')
            W0, H0 = W, H
            if unit != 1.0:
                W0 = check_array(W0, "W", ndim=2) / root
                H0 = check_array(H0, "H", ndim=2) / root
        else:
            W0, H0 = initialize_factors(X, k, init, random_state=self.random_state)
        problem = NMFProblem(X, W0, H0, loss=self.loss)
        result = self._solver().solve(problem)
        W_out, H_out = problem.factors(result.x)
        self.components_ = np.array(H_out) * root
        self.n_components_ = k
        self._n_features_out = k
        self.n_iter_ = result.nit
        self.result_ = result
        # The Frobenius objective is homogeneous of degree 2 in X, the divergence of degree 1.
        degree = 1.0 if self.loss == "frobenius" else 0.5
        # The divergence, a difference of sums, can round to slightly below zero.
        self.reconstruction_err_ = math.sqrt(2.0 * max(result.fun, 0.0)) * unit**degree
        return np.array(W_out) * root

    def fit(self, X, y=None, **params) -> MMNMF:
        """Learn the factorization of ``X``; ``W``/``H`` may be passed as in ``fit_transform``."""
        self.fit_transform(X, **params)
        return self

    def transform(self, X) -> np.ndarray:
        """Return ``W`` for new data, by multiplicative updates with ``H`` fixed.

        The problem in ``W`` alone is convex; it is solved to ``min(tol, 1e-8)``.
        """
        check_is_fitted(self)
        X = self._validate_data_nonnegative(X, reset=False)
        k = self.n_components_
        # Extreme scales as in fit: X / u = (W v / u)(H / v), exact for powers of two u, v.
        unit_x, unit_h = _unit(X), _unit(self.components_)
        if unit_x != 1.0:
            X = X / unit_x
        H = self.components_ / unit_h if unit_h != 1.0 else self.components_
        # A constant start, as multiplicative updates cannot leave zeros.
        avg = np.sqrt(max(float(X.mean()), 0.0) / k)
        W0 = np.full((X.shape[0], k), avg)
        problem = NMFProblem(X, W0, H, loss=self.loss, update_H=False)
        # With H fixed the problem is convex in W: solve it tightly, so that transform(X)
        # agrees with the W that fit_transform(X) returned, whatever the path to it.
        result = self._solver(tol=min(self.tol, _TRANSFORM_TOL)).solve(problem)
        return np.array(problem.factors(result.x)[0]) * (unit_x / unit_h)

    def inverse_transform(self, X) -> np.ndarray:
        """Map ``W`` back to data space: ``W @ components_``."""
        check_is_fitted(self)
        W = check_array(X, "X", ndim=2, shape=(None, self.n_components_))
        return W @ self.components_
