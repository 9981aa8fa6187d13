"""Smooth datafits ``f(x)`` for block coordinate descent.

A datafit owns its (validated, read-only) data and works with an auxiliary vector ``aux``
that a solver keeps up to date as coordinates move: the linear predictor ``X w`` for the
linear models, ``A x`` for the quadratic graph problem. From ``aux`` it evaluates the value
and the gradient; ``update_aux`` applies a block move in ``O(n |b|)`` (or the block's
neighbours on a graph). Curvature comes in two kinds: ``hessian_bound(b)``, a constant
matrix majorizing the block Hessian (the datafit's Lipschitz geometry, used by Lipschitz and
GSQ rules and by matrix updates, whose Cholesky factor can then be cached), and
``hessian(aux, b)``, the exact block Hessian for Newton steps.

Designs are dense (stored Fortran-ordered: columns contiguous) or ``scipy.sparse`` (stored
CSC). Coordinates of the multinomial datafit are the entries of the ``(n_features,
n_classes)`` coefficient matrix in C order: coordinate ``j * n_classes + k``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import expit, log_expit, logsumexp, softmax

from mmopt._core.validation import check_array, check_scalar, readonly

__all__ = [
    "Datafit",
    "LeastSquares",
    "Logistic",
    "Multinomial",
    "LabelPropagationQuadratic",
    "check_design",
]


def check_design(X, name: str = "X"):
    """Validate a design matrix: dense -> read-only Fortran array, sparse -> CSC matrix.

    float32 designs stay float32 (the compiled kernels run in either precision); any other
    dtype is converted to float64.

    Examples
    --------
    >>> check_design(np.eye(2)).flags.f_contiguous
    True
    """
    dtype = np.float32 if getattr(X, "dtype", None) == np.float32 else np.float64
    if sp.issparse(X):
        _check_sparse_dtype(X, name)
        X = sp.csc_matrix(X, dtype=dtype)
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-dimensional.")
        if not np.isfinite(X.data).all():
            raise ValueError(f"{name} must not contain NaN or infinite values.")
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(f"{name} must have at least one row and one column, got {X.shape}.")
        X.sort_indices()
        X.indices = X.indices.astype(np.int32, copy=False)
        X.indptr = X.indptr.astype(np.int32, copy=False)
        return X
    return check_array(X, name, ndim=2, order="F", dtype=dtype)


def _check_sparse_dtype(X, name: str) -> None:
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got a sparse matrix of dtype {X.dtype}.")


def _column_norms2(X) -> np.ndarray:
    """Squared column norms, summed in float64 whatever the design's precision."""
    if sp.issparse(X):
        return np.asarray(X.multiply(X).sum(axis=0, dtype=np.float64)).ravel()
    return np.einsum("ij,ij->j", X, X, dtype=np.float64)


def _times(X, v) -> np.ndarray:
    """``X @ v`` in the design's precision (a float64 ``v`` would make NumPy copy a float32
    ``X`` to float64)."""
    return np.asarray(X @ np.asarray(v).astype(X.dtype, copy=False)).ravel()


def _times_T(X, v) -> np.ndarray:
    """``X.T @ v`` in the design's precision."""
    return np.asarray(X.T @ np.asarray(v).astype(X.dtype, copy=False)).ravel()


def _columns(X, cols) -> np.ndarray:
    """Dense copy of the columns ``cols`` of ``X``, shape (n, len(cols))."""
    sub = X[:, cols]
    return sub.toarray() if sp.issparse(sub) else np.asarray(sub)


class Datafit:
    """Interface of a smooth datafit (see the module docstring)."""

    #: True when f is quadratic: ``hessian_bound`` is then the exact block Hessian.
    quadratic: bool = False
    n_coords: int

    def init_aux(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def value(self, x: np.ndarray, aux: np.ndarray) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def gradient(self, x: np.ndarray, aux: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def gradient_block(self, x, aux, block) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def update_aux(self, aux, block, delta) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def hessian_bound(self, block) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def hessian(self, aux, block) -> np.ndarray:
        """Exact block Hessian; the bound for quadratic datafits."""
        return self.hessian_bound(block)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_coords={self.n_coords})"


class _LinearDatafit(Datafit):
    """Shared pieces of datafits of the linear predictor ``X w``."""

    def _setup(self, X):
        self.X = check_design(X)
        self.n_samples, self.n_features = self.X.shape
        self.sparse = sp.issparse(self.X)
        dtype = self.X.dtype
        with np.errstate(over="ignore"):
            norms2 = _column_norms2(self.X).astype(dtype)
        if not np.isfinite(norms2).all():
            # Every step size and curvature comes from these norms: past float64's range
            # the updates would be NaN (0 * inf) and the solvers would never stop.
            j = int(np.flatnonzero(~np.isfinite(norms2))[0])
            raise ValueError(
                f"X is too large in magnitude: the squared norm of its column {j} overflows "
                f"{dtype}; rescale X (e.g. with sklearn.preprocessing.StandardScaler)."
            )
        tiny = np.finfo(dtype).tiny
        small = np.flatnonzero(norms2 < tiny)
        if small.size:
            small = small[_columns(self.X, small).any(axis=0)]
        if small.size:
            # A non-zero column whose squared norm underflows would be taken for a zero
            # column (a coordinate that never moves): a wrong answer, not a slow one.
            raise ValueError(
                f"X is too small in magnitude: the squared norm of its column {small[0]} "
                f"underflows {dtype} although the column is not zero; rescale X (e.g. with "
                "sklearn.preprocessing.StandardScaler)."
            )
        self.norms2 = readonly(norms2)

    def _check_y(self, y):
        # In the design's precision: the compiled kernels read it as they read X.
        y = check_array(y, "y", ndim=1, dtype=self.X.dtype)
        if y.shape[0] != self.n_samples:
            raise ValueError(
                f"y must have one entry per row of X: got {y.shape[0]} entries for "
                f"{self.n_samples} rows."
            )
        return y

    def init_aux(self, x):
        return _times(self.X, x)

    def gradient(self, x, aux):
        return _times_T(self.X, self.raw_gradient(aux)) / self.n_samples

    def gradient_block(self, x, aux, block):
        return _columns(self.X, block).T @ self.raw_gradient(aux) / self.n_samples

    def update_aux(self, aux, block, delta):
        aux += _columns(self.X, block) @ delta


class LeastSquares(_LinearDatafit):
    """``f(w) = 1 / (2 n) ||y - X w||^2``.

    Parameters
    ----------
    X : array-like or sparse matrix of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)

    Examples
    --------
    >>> f = LeastSquares(np.eye(2), [1.0, 2.0])
    >>> w = np.zeros(2)
    >>> f.value(w, f.init_aux(w)), f.gradient(w, f.init_aux(w))
    (1.25, array([-0.5, -1. ]))
    """

    quadratic = True

    def __init__(self, X, y):
        self._setup(X)
        self.y = self._check_y(y)
        with np.errstate(over="ignore"):
            start = float(np.dot(self.y, self.y.astype(float)))
        if not np.isfinite(start):
            raise ValueError(
                "y is too large in magnitude: ||y||^2 overflows float64, so the objective "
                "cannot be evaluated; rescale y."
            )
        self.n_coords = self.n_features
        self.lipschitz = readonly(self.norms2 / self.n_samples)

    def value(self, x, aux):
        r = np.subtract(self.y, aux, dtype=float)  # summed in float64 for any design
        return float(r @ r) / (2 * self.n_samples)

    def raw_gradient(self, aux):
        return aux - self.y

    def hessian_bound(self, block):
        cols = _columns(self.X, block)
        return cols.T @ cols / self.n_samples

    def duality_gap(self, w, aux, penalty, *, grad=None) -> float:
        """Duality gap of ``f + penalty``: an upper bound on ``F(w) - min F``.

        The dual of ``min_w f(X w) + g(w)`` is ``max_u u^T y - n/2 ||u||^2 - g^*(X^T u)``,
        evaluated at the residual ``u = (y - X w) / n``. With an L1 part, ``g^*`` is finite
        only on a box: the residual is rescaled into it, as in scikit-learn's coordinate
        descent. A ridge penalty (L2 without L1) has a finite ``g^*`` everywhere, so the
        residual is used as it is: the gap is the exact Fenchel gap and vanishes at the
        optimum. Without any penalty (``alpha = 0``) the only dual point formed without
        solving the problem is 0 (unless ``X^T (y - X w) = 0``): the gap is then the
        objective itself, a valid but loose bound that does not vanish unless the fit is
        exact. The gap is in the units of ``f``. ``grad``, the gradient at ``w`` when the
        caller keeps it, spares the product ``X^T (y - X w)``.
        """
        n = self.n_samples
        # Summed in float64 whatever the design's precision (X products in the design's).
        R = np.subtract(self.y, aux, dtype=float)
        w = np.asarray(w, dtype=float)
        l1, l2 = n * penalty.l1, n * penalty.l2
        XtR = _times_T(self.X, R) if grad is None else -n * np.asarray(grad)
        XtR = XtR.astype(float, copy=False)
        if penalty.l1 == 0 and penalty.l2 > 0:
            # g^*(v) = sum (v_j)_+^2 / (2 l2) (positive) or v_j^2 / (2 l2): no rescaling.
            v = XtR / n
            if penalty.positive:
                v = np.maximum(v, 0.0)
            R2 = float(R @ R)
            primal = 0.5 * R2 / n + penalty.value(w)
            dual = (float(R @ self.y) - 0.5 * R2) / n - float(v @ v) / (2.0 * penalty.l2)
            return primal - dual
        XtA = XtR - l2 * w
        dual_norm = XtA.max(initial=0.0) if penalty.positive else np.abs(XtA).max()
        R2 = float(R @ R)
        if dual_norm > l1:
            const = l1 / dual_norm
            gap = 0.5 * (R2 + R2 * const**2)
        else:
            const = 1.0
            gap = R2
        gap += l1 * np.abs(w).sum() - const * float(R @ self.y)
        gap += 0.5 * l2 * (1 + const**2) * float(w @ w)
        return float(gap) / n


class Logistic(_LinearDatafit):
    """Binary logistic loss ``f(w) = 1/n sum_i log(1 + exp(-y_i x_i^T w))``, ``y`` in {-1, 1}.

    Examples
    --------
    >>> f = Logistic(np.eye(2), [1.0, -1.0])
    >>> round(f.value(np.zeros(2), f.init_aux(np.zeros(2))), 4)
    0.6931
    """

    def __init__(self, X, y):
        self._setup(X)
        y = self._check_y(y)
        if not np.all(np.abs(y) == 1.0):
            raise ValueError("y must hold labels -1 and +1 for the Logistic datafit.")
        self.y = y
        self.n_coords = self.n_features
        # sigma' <= 1/4.
        self.lipschitz = readonly(self.norms2 / (4 * self.n_samples))

    def value(self, x, aux):
        margins = np.multiply(self.y, aux, dtype=float)  # summed in float64 for any design
        return float(-log_expit(margins).sum()) / self.n_samples

    def raw_gradient(self, aux):
        return -self.y * expit(-self.y * aux)

    def hessian_bound(self, block):
        cols = _columns(self.X, block)
        return cols.T @ cols / (4 * self.n_samples)

    def hessian(self, aux, block):
        cols = _columns(self.X, block)
        s = expit(aux)
        return cols.T @ (cols * (s * (1 - s))[:, None]) / self.n_samples

    def duality_gap(self, w, aux, penalty, *, grad=None) -> float:
        """Duality gap of ``f + penalty``: an upper bound on ``F(w) - min F``.

        The dual of ``min_w 1/n sum_i h(y_i z_i) + g(w)`` (``h`` the logistic loss,
        ``z = X w``) is ``max_v -1/n sum_i H(v_i) - g^*(X^T (y v) / n)`` over ``v`` in
        ``[0, 1]^n``, with ``H(v) = v log v + (1 - v) log(1 - v)``; it is evaluated at
        ``v_i = sigma(-y_i z_i)``, the point that is optimal when ``w`` is. A pure L1 penalty
        (with or without positivity) has a ``g^*`` finite only on a box: ``v`` is rescaled
        into it. With an L2 part ``g^*(u) = sum (|u_j| - l1)_+^2 / (2 l2)`` is finite
        everywhere and no rescaling is needed. Without any penalty the dual point is 0 and
        the gap is the objective itself (a loose bound). ``grad``, the gradient at ``w``
        when the caller keeps it, spares a product with ``X^T``.
        """
        n = self.n_samples
        primal = self.value(w, aux) + penalty.value(w)
        if penalty.l1 == 0 and penalty.l2 == 0:
            return primal  # the dual point 0: H(0) = 0 and g^*(0) = 0
        # Summed in float64 whatever the design's precision (X products in the design's).
        aux = np.asarray(aux, dtype=float)
        rho = -self.raw_gradient(aux) / n  # y v / n
        Xtr = _times_T(self.X, rho) if grad is None else -np.asarray(grad)
        Xtr = Xtr.astype(float, copy=False)
        if penalty.l2 > 0:
            over = Xtr - penalty.l1 if penalty.positive else np.abs(Xtr) - penalty.l1
            over = np.maximum(over, 0.0)
            conjugate = float(over @ over) / (2.0 * penalty.l2)
            scale = 1.0
        else:
            norm = Xtr.max(initial=0.0) if penalty.positive else np.abs(Xtr).max()
            scale = 1.0 if norm <= penalty.l1 else penalty.l1 / norm
            conjugate = 0.0
        v = np.clip(n * self.y * rho * scale, 0.0, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = np.where(v > 0, v * np.log(v), 0.0) + np.where(
                v < 1, (1 - v) * np.log1p(-v), 0.0
            )
        dual = -float(ent.sum()) / n - conjugate
        return primal - dual


class Multinomial(_LinearDatafit):
    """Softmax cross-entropy ``f(W) = 1/n sum_i (logsumexp(x_i^T W) - x_i^T W_{:, y_i})``.

    ``y`` holds integer class indices ``0 .. n_classes - 1``; the variable is ``W.ravel()``
    with ``W`` of shape (n_features, n_classes).

    Examples
    --------
    >>> f = Multinomial(np.eye(3), [0, 1, 2])
    >>> round(f.value(np.zeros(9), f.init_aux(np.zeros(9))), 4)  # log 3
    1.0986
    """

    def __init__(self, X, y, *, n_classes: int | None = None):
        self._setup(X)
        y = self._check_y(y)
        if np.any(y != np.round(y)) or np.any(y < 0):
            raise ValueError("y must hold class indices 0, 1, ... for the Multinomial datafit.")
        y = y.astype(np.intp)
        k = (
            int(y.max()) + 1
            if n_classes is None
            else check_scalar(n_classes, "n_classes", kind=int, min_value=2)
        )
        if y.max() >= k:
            raise ValueError(f"y has a class index {y.max()} >= n_classes={k}.")
        self.n_classes = k
        self.y = readonly(y)
        self.Y = readonly(np.eye(k)[y])
        self.n_coords = self.n_features * k
        self.lipschitz = readonly(np.repeat(self.norms2 / (4 * self.n_samples), k))

    def init_aux(self, x):
        W = x.reshape(self.n_features, self.n_classes)
        return np.asarray(self.X @ W, dtype=float)

    def value(self, x, aux):
        return (
            float((logsumexp(aux, axis=1) - aux[np.arange(self.n_samples), self.y]).sum())
            / self.n_samples
        )

    def raw_gradient(self, aux):
        return softmax(aux, axis=1) - self.Y

    def gradient(self, x, aux):
        return (np.asarray(self.X.T @ self.raw_gradient(aux)) / self.n_samples).ravel()

    def gradient_block(self, x, aux, block):
        feats, classes = np.divmod(np.asarray(block), self.n_classes)
        cols = _columns(self.X, feats)
        return np.einsum("ib,ib->b", cols, self.raw_gradient(aux)[:, classes]) / self.n_samples

    def update_aux(self, aux, block, delta):
        feats, classes = np.divmod(np.asarray(block), self.n_classes)
        cols = _columns(self.X, feats)
        np.add.at(aux.T, classes, (cols * delta).T)

    def hessian_bound(self, block):
        # diag(p) - p p^T <= 1/2 I (Böhning's bound), so the block of 1/(2n) X^T X (x) I bounds
        # any block; a single coordinate's curvature is at most 1/4.
        feats, classes = np.divmod(np.asarray(block), self.n_classes)
        cols = _columns(self.X, feats)
        H = cols.T @ cols / (2 * self.n_samples) * (classes[:, None] == classes[None, :])
        if len(block) == 1:
            H = H / 2
        return H

    def hessian(self, aux, block):
        feats, classes = np.divmod(np.asarray(block), self.n_classes)
        cols = _columns(self.X, feats)
        P = softmax(aux, axis=1)[:, classes]  # (n, b)
        same = classes[:, None] == classes[None, :]
        # H_(j,k),(j',k') = 1/n sum_i x_ij x_ij' p_ik (delta_kk' - p_ik')
        left = cols * P
        H = (left.T @ cols) * same - left.T @ (cols * P)
        return H / self.n_samples


class LabelPropagationQuadratic(Datafit):
    """Quadratic label propagation on a graph (Bengio, Delalleau, Le Roux's criterion).

    ``f(x) = w / 2 sum_{i labelled} (x_i - y_i)^2 + 1/4 sum_ij W_ij (x_i - x_j)^2
    + ridge / 2 ||x||^2``, i.e. ``1/2 x^T A x - c^T x + const`` with
    ``A = diag(w [labelled] + ridge) + D - W`` (``D`` the degrees). ``aux`` is ``A x``, kept up
    to date through the sparse columns of ``A``, so a block move costs the block's degrees.

    Parameters
    ----------
    graph : array-like or sparse matrix of shape (n, n)
        Symmetric non-negative weights (the diagonal is ignored).
    y : array-like of shape (n,)
        Targets of labelled nodes; NaN marks an unlabelled node.
    label_weight : float, default=1e5
        ``w``: how strongly labelled nodes are pulled to their targets.
    ridge : float, default=1e-8
        Keeps ``A`` positive definite on components without a labelled node.

    Examples
    --------
    >>> W = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0.0]])
    >>> f = LabelPropagationQuadratic(W, [1.0, np.nan, 0.0], label_weight=1.0)
    >>> np.round(np.linalg.solve(f.A.toarray(), f.c), 3)
    array([0.75, 0.5 , 0.25])
    """

    quadratic = True

    def __init__(self, graph, y, *, label_weight: float = 1e5, ridge: float = 1e-8):
        if sp.issparse(graph):
            _check_sparse_dtype(graph, "graph")
            W = sp.csr_matrix(graph, dtype=np.float64)
            if not np.isfinite(W.data).all():
                raise ValueError("graph must not contain NaN or infinite values.")
        else:
            W = sp.csr_matrix(check_array(graph, "graph", ndim=2))
        n = W.shape[0]
        if W.shape != (n, n):
            raise ValueError(f"graph must be square, got shape {W.shape}.")
        if W.nnz and W.data.min() < 0:
            raise ValueError("graph must have non-negative weights.")
        W = W - sp.diags(W.diagonal())
        W.eliminate_zeros()
        if abs(W - W.T).max() > 1e-12 * max(1.0, abs(W).max()):
            raise ValueError("graph must be symmetric.")
        y = check_array(y, "y", ndim=1, finite=False)
        if y.shape[0] != n:
            raise ValueError(f"y must have one entry per node: got {y.shape[0]} for {n} nodes.")
        self.label_weight = check_scalar(
            label_weight, "label_weight", min_value=0.0, include_min=False
        )
        self.ridge = check_scalar(ridge, "ridge", min_value=0.0)
        if np.isinf(y).any():
            raise ValueError("y must hold finite targets, or NaN for unlabelled nodes.")
        labelled = np.isfinite(y)
        with np.errstate(over="ignore", invalid="ignore"):
            degree = np.asarray(W.sum(axis=1)).ravel()
            diag = degree + self.label_weight * labelled + self.ridge
            targets = np.where(labelled, y, 0.0)
            const = 0.5 * self.label_weight * float(targets @ targets)
            scale = self.label_weight * np.abs(targets).max(initial=0.0)
        if not np.isfinite(degree).all():
            raise ValueError("graph is too large in magnitude: a node's degree overflows float64.")
        if not (np.isfinite(diag).all() and np.isfinite(const) and np.isfinite(scale)):
            raise ValueError(
                "label_weight and y are too large together: the objective overflows float64; "
                "rescale y or lower label_weight."
            )
        if np.any(diag <= 0):
            raise ValueError("every node needs an edge, a label, or ridge > 0.")
        self.A = sp.csc_matrix(sp.diags(diag) - W)
        self.A.sort_indices()
        self.W = W
        self.labelled = readonly(labelled)
        self.c = readonly(self.label_weight * targets)
        self.const = const
        self.n_coords = n
        self.lipschitz = readonly(diag)

    def init_aux(self, x):
        return np.asarray(self.A @ x, dtype=float)

    def value(self, x, aux):
        return float(0.5 * (x @ aux) - self.c @ x + self.const)

    def gradient(self, x, aux):
        return aux - self.c

    def gradient_block(self, x, aux, block):
        return aux[block] - self.c[block]

    def update_aux(self, aux, block, delta):
        aux += self.A[:, block] @ delta

    def hessian_bound(self, block):
        return self.A[block][:, block].toarray()
