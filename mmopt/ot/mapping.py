"""OTMapping: map samples of one distribution onto another through an optimal transport plan."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from mmopt._core.params import (
    InstanceOf,
    Interval,
    Options,
    Param,
    ParamsValidationMixin,
)
from mmopt._core.registry import solve
from mmopt._core.validation import check_array
from mmopt.ot.pointcloud import PointCloudOTProblem
from mmopt.ot.problem import OTProblem

__all__ = ["OTMapping"]

_SOLVERS = ("sinkhorn", "sns", "exact", "sparsity_constrained")


class OTMapping(ParamsValidationMixin, TransformerMixin, BaseEstimator):
    """Transport samples onto a target sample through an optimal transport plan.

    ``fit(X, y)`` takes source samples ``X`` (n, d) and target samples ``y`` (m, d), builds
    the cost between them, and computes a plan with the chosen solver. ``transform`` maps
    source samples by the barycentric projection ``(P y)_i / (P 1)_i`` (each source sample
    goes to the plan-weighted mean of its targets); samples not seen in ``fit`` move by the
    displacement of their nearest fitted source sample, as in POT's domain-adaptation
    transports. ``inverse_transform`` maps target-side samples back with ``P^T``. A sample
    of zero mass (``sample_weight`` 0) stays where it is.

    Parameters
    ----------
    solver : {"sinkhorn", "sns", "exact", "sparsity_constrained"}, default="sinkhorn"
        How the plan is computed: entropic OT (:func:`~mmopt.ot.sinkhorn`,
        :func:`~mmopt.ot.sinkhorn_newton_sparse`), exact OT (:class:`~mmopt.ot.ExactOT`) or
        at most ``solver_options["k"]`` nonzeros per column
        (:func:`~mmopt.ot.sparsity_constrained_ot`).
    reg : float, default=1e-2
        Regularization, in units of the (normalized) cost; unused by ``"exact"``.
    metric : str, default="sqeuclidean"
        Any metric of :func:`scipy.spatial.distance.cdist`.
    normalize_cost : bool, default=True
        Divide the cost by its maximum, so that ``reg`` is relative to the cost's scale.
    solver_options : dict, optional
        Options passed to the solver (``tol``, ``max_iter``, ``k`` ...).
    max_dense_pairs : int, default=25_000_000
        Above this many pairs ``n * m``, the entropic solvers (``"sinkhorn"``, ``"sns"``)
        with the ``"sqeuclidean"`` or ``"euclidean"`` metric run
        :func:`~mmopt.ot.pointcloud_sinkhorn` on the samples instead of forming the cost
        (``cost_`` is then None, the plan sparse or a linear operator, and a normalized
        ``reg`` is relative to the cost of the samples' bounding-box diagonal, an upper bound
        of the largest cost).

    Attributes
    ----------
    plan_ : ndarray or sparse array of shape (n, m)
        The transport plan between the fitted samples.
    result_ : mmopt.Result
        The solver's result.
    source_, target_ : ndarray
        The fitted samples.
    mapped_source_ : ndarray of shape (n, d)
        The barycentric projection of ``source_``.
    cost_ : ndarray of shape (n, m)
        The cost matrix used (after normalization).
    n_features_in_ : int

    Examples
    --------
    >>> from mmopt.ot import OTMapping
    >>> rng = np.random.default_rng(0)
    >>> source = rng.normal(size=(50, 2))
    >>> target = source + np.array([3.0, 0.0])
    >>> mapping = OTMapping(solver="exact").fit(source, target)
    >>> bool(np.allclose(mapping.transform(source), target))
    True
    """

    _options = {
        "solver": Param("sinkhorn", Options(_SOLVERS)),
        "reg": Param(1e-2, Interval(float, 0, None, closed="neither")),
        "metric": Param("sqeuclidean", str, callable),
        "normalize_cost": Param(True, bool),
        "solver_options": Param(
            None, None, InstanceOf(Mapping, name="a dict of the solver's options")
        ),
        "max_dense_pairs": Param(25_000_000, Interval(int, 1, None)),
    }

    def fit(self, X, y, sample_weight=None, target_weight=None):
        """Compute the plan from source samples ``X`` to target samples ``y``.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Source samples.
        y : array-like of shape (m, d)
            Target samples (any number, same number of features).
        sample_weight, target_weight : array-like, optional
            Masses of the source and target samples (uniform when None); rescaled to the
            same total.

        Returns
        -------
        self
        """
        self._validate_params()
        options = dict(self.solver_options or {})
        if y is None:
            raise ValueError(
                "OTMapping requires y to be passed, but the target y is None: pass the "
                "target samples y, of shape (m, d)."
            )
        X = _named(validate_data, "X", self, X, reset=True, dtype=np.float64)
        target = check_array(y, "y", ndim=2)
        if target.shape[1] != X.shape[1]:
            raise ValueError(
                f"y must have the same number of features as X ({X.shape[1]}), "
                f"got {target.shape[1]}."
            )
        a = _weights(sample_weight, "sample_weight", X.shape[0])
        b = _weights(target_weight, "target_weight", target.shape[0])
        b = b * (a.sum() / b.sum())
        large = (
            X.shape[0] * target.shape[0] > self.max_dense_pairs
            and self.solver in ("sinkhorn", "sns")
            and self.metric in ("sqeuclidean", "euclidean")
        )
        if large:
            C = None
            problem = PointCloudOTProblem(X, target, a, b, reg=self.reg, cost=self.metric)
            if self.normalize_cost:
                problem = PointCloudOTProblem(X, target, a, b, cost=self.metric,
                                              reg=self.reg * problem.cost_scale)
            result = solve(problem, "pointcloud_sinkhorn", **options)
        else:
            C = _cost(X, target, self.metric, self.normalize_cost)
            # The exact solver does not read the problem's reg.
            result = solve(OTProblem(a, b, C, self.reg), self.solver, **options)
        plan = result.plan
        self.result_ = result
        self.plan_ = plan
        self.cost_ = C
        self.source_ = np.array(X)
        self.target_ = np.array(target)
        self.mapped_source_ = _barycentric(plan, self.target_, self.source_)
        self._source_tree = cKDTree(self.source_)
        return self

    def transform(self, X):
        """Map source-side samples onto the target side.

        Fitted source samples go to their barycentric projection; other samples move by the
        displacement of their nearest fitted source sample.
        """
        check_is_fitted(self, "plan_")
        X = _named(validate_data, "X", self, X, reset=False, dtype=np.float64)
        return _displace(X, self.source_, self.mapped_source_, self._source_tree)

    def inverse_transform(self, X):
        """Map target-side samples back onto the source side (with the transposed plan)."""
        check_is_fitted(self, "plan_")
        X = check_array(X, "X", ndim=2)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but OTMapping is expecting "
                f"{self.n_features_in_} features as input."
            )
        mapped_target = _barycentric(self.plan_.T, self.source_, self.target_)
        return _displace(X, self.target_, mapped_target, cKDTree(self.target_))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags


def _named(func, name, *args, **kwargs):
    """Call a scikit-learn validator; its errors name ``name`` (NumPy's do not)."""
    try:
        return func(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        if name in str(exc):
            raise
        raise type(exc)(f"{name}: {exc}") from exc


def _cost(X, Y, metric, normalize):
    """The cost between source and target samples, normalised to a largest entry of 1.

    Samples so large (or small) that the cost overflows (or underflows) are first scaled
    by a common factor when the cost is normalised: every metric of ``cdist`` is
    homogeneous in a common scaling of both samples, so the normalised cost is the same.
    """
    if not (isinstance(metric, str) or callable(metric)):
        raise TypeError(
            f"metric must be a metric name of scipy's cdist or a callable, got {metric!r}."
        )
    scale = max(float(np.abs(X).max(initial=0.0)), float(np.abs(Y).max(initial=0.0)))
    extreme = scale > 1e100 or 0.0 < scale < 1e-100
    try:
        if extreme and normalize and isinstance(metric, str):
            C = cdist(X / scale, Y / scale, metric=metric)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                C = cdist(X, Y, metric=metric)
    except ValueError as exc:
        if "metric" in str(exc).lower():
            raise ValueError(f"metric: {exc}") from None
        raise
    if not np.isfinite(C).all():
        larger_y = float(np.abs(Y).max(initial=0.0)) > float(np.abs(X).max(initial=0.0))
        name = "y" if larger_y else "X"
        raise ValueError(
            f"{name}: the {metric!r} cost between X and y is not finite (the samples are "
            "too large for it in float64, or the metric gave NaN); rescale X and y."
        )
    if normalize and C.max() > 0:
        C = C / C.max()
    return C


def _weights(weight, name, size):
    if weight is None:
        return np.full(size, 1.0 / size)
    weight = check_array(weight, name, ndim=1, nonnegative=True)
    if weight.shape[0] != size:
        raise ValueError(f"{name} must have {size} entries, got {weight.shape[0]}.")
    if not weight.sum() > 0:
        raise ValueError(f"{name} must have a positive total.")
    return weight


def _barycentric(plan, points, fallback):
    """``(P points)_i / (P 1)_i``; a row without mass keeps its ``fallback`` (no move)."""
    if sp.issparse(plan):
        moved = np.asarray(plan @ points)
        mass = np.asarray(plan.sum(axis=1)).ravel()
    elif isinstance(plan, LinearOperator):  # a point-cloud plan applied by its kernel
        moved = np.column_stack([plan.matvec(column) for column in points.T])
        mass = plan.matvec(np.ones(plan.shape[1]))
    else:
        moved = plan @ points
        mass = plan.sum(axis=1)
    out = np.array(fallback, dtype=float, copy=True)
    has_mass = mass > 0
    out[has_mass] = moved[has_mass] / mass[has_mass, None]
    return out


def _displace(X, fitted, mapped, tree):
    _, nearest = tree.query(X)
    return X + (mapped[nearest] - fitted[nearest])
