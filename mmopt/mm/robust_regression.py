"""Robust linear regression by iteratively reweighted least squares, read as MM.

For a robust loss ``rho`` whose ``rho(sqrt(t))`` is concave (Huber, Cauchy, Welsch, Tukey;
see :mod:`mmopt.losses`), each term of

``F(beta) = sum_i sw_i rho((y_i - x_i beta) / scale) + alpha / 2 ||coef||^2``

is majorized at the current residuals ``r0`` by the quadratic
``rho(u0) + w(u0) / 2 (u^2 - u0^2)``, so minimizing the surrogate is a weighted (ridge) least
squares problem with weights ``sw_i w(r0_i / scale)``: IRLS is an MM method, ``F`` never
increases, and :class:`mmopt.mm.MMSolver` can accelerate it with a safeguarded Anderson step.

:class:`RobustRegressionProblem` is the problem at a fixed scale, :func:`mad_scale` the robust
scale estimate, and :class:`MMRobustRegressor` the scikit-learn estimator that chains them.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass

import numpy as np
import scipy.linalg
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import validate_data

from mmopt._core._docstrings import SOLVER_PARAMS, fill_doc
from mmopt._core.anderson import ANDERSON_OPTION
from mmopt._core.linear_model import LinearRegressorMixin
from mmopt._core.params import InstanceOf, Interval, Options, Param, ParamsValidationMixin
from mmopt._core.result import Result
from mmopt._core.validation import (
    check_array,
    check_choice,
    check_input,
    check_scalar,
    readonly,
)
from mmopt.losses import LOSSES, HuberLoss, RobustLoss, TrimmedLoss, get_loss
from mmopt.mm.problem import MMProblem
from mmopt.mm.solver import MMSolver

__all__ = ["MMRobustRegressor", "RobustRegressionProblem", "mad_scale"]

# 1 / Phi^{-1}(3/4): makes the MAD a consistent estimate of the standard deviation of normal
# errors.
_MAD_NORMAL = 1.482602218505602
# sqrt(pi / 2): the same for the mean absolute deviation.
_MEAN_AD_NORMAL = 1.2533141373155001
# Largest accepted ratio between the largest and smallest diagonal entry of the Cholesky
# factor of the weighted Gram matrix (a lower bound on sqrt(condition number)); past it the
# factorization is no longer trusted and the least-squares fallback is used.
_MAX_CHOLESKY_RATIO = 1e7
# Scale estimation: Huber fit / MAD passes stop when the scale changes by less than this
# fraction, or after this many passes.
_SCALE_RTOL = 1e-2
_MAX_SCALE_PASSES = 20
# The losses IRLS can use: every pointwise loss of mmopt.losses (a trimmed loss decides which
# residuals count from all of them, so it has no per-residual majorizer).
_IRLS_LOSSES = tuple(name for name, cls in LOSSES.items() if cls is not TrimmedLoss)


def _irls_loss(loss, c) -> RobustLoss:
    """The loss object for IRLS from ``loss`` and ``c``; a trimmed loss is refused."""
    rho = get_loss(loss, c)
    if isinstance(rho, TrimmedLoss):
        options = ", ".join(repr(name) for name in _IRLS_LOSSES)
        raise ValueError(
            f"loss must be one of {options} or a pointwise RobustLoss; a trimmed loss has no "
            "IRLS weights per residual."
        )
    return rho


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """Weighted median that equals ``np.median`` of the data repeated by integer weights.

    The lower and upper weighted medians are averaged, which is what ``np.median`` does for an
    even number of repeated values; entries with zero weight never matter.
    """
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(weights[order])
    half = 0.5 * cumulative[-1]
    lower = values[np.searchsorted(cumulative, half, side="left")]
    upper = values[min(np.searchsorted(cumulative, half, side="right"), values.size - 1)]
    return 0.5 * (lower + upper)


def mad_scale(
    residuals: ArrayLike, *, sample_weight: ArrayLike | None = None, center: str = "median"
) -> float:
    """Robust scale of residuals: ``1.4826 * median(|r - center|)``.

    The factor makes it a consistent estimate of the standard deviation of normal errors,
    and it ignores any fraction below one half of gross outliers.

    Parameters
    ----------
    residuals : array-like of shape (n,)
        Residuals ``y - X beta``.
    sample_weight : array-like of shape (n,), optional
        Non-negative weights; the median becomes a weighted median that matches repeating
        each residual ``sample_weight`` times. Zero-weight residuals are ignored.
    center : {"median", "zero"}, default="median"
        What the absolute deviations are measured from. ``"median"`` gives the textbook MAD:
        the spread of the bulk of the residuals, whatever their offset. ``"zero"`` measures
        how far the residuals are from 0, where the loss ``rho(r / scale)`` is centred.
        The two differ when the bulk of the residuals is offset, typically at a start pulled
        by one-sided outliers: an OLS intercept shifted by 20% of outliers at -50 leaves the
        clean residuals near +10, and the zero-centred MAD would report that shift as noise
        (a scale several times too large, under which the outliers look harmless). When the
        model has an intercept the offset is a free parameter that the robust fit removes,
        so centring at the median is right; without one the offset cannot be fitted away
        and is part of what the loss sees, so :class:`MMRobustRegressor` uses ``"zero"``.

    Returns
    -------
    float
        A positive scale. When more than half of the (weighted) residuals are exactly at the
        centre, the MAD is 0: the model fits most points exactly and the right scale is as
        small as the data resolve, so ``sqrt(eps)`` times the (normal-consistent) mean
        absolute deviation is returned instead. The scale is never below
        ``eps * max|r - center|``, so ``r / scale`` stays finite; when every residual is at the
        centre there is no information on the scale and 1.0 is returned (any positive value
        gives the same weights and loss values then).

    Examples
    --------
    >>> from mmopt.mm.robust_regression import mad_scale
    >>> r = np.array([-1.0, 0.5, 0.0, 2.0, 100.0]) + 10.0  # an offset bulk, one outlier
    >>> round(mad_scale(r), 4), round(mad_scale(r, center="zero"), 4)
    (2.2239, 15.5673)
    >>> round(mad_scale(r, sample_weight=[1, 1, 1, 0, 0]), 4)
    0.7413
    """
    r = check_array(residuals, "residuals", ndim=1)
    if sample_weight is None:
        sw = np.ones(r.size)
    else:
        sw = check_array(sample_weight, "sample_weight", ndim=1, shape=(r.size,), nonnegative=True)
    check_choice(center, "center", ("median", "zero"))
    keep = sw > 0
    if not keep.any():
        raise ValueError("sample_weight must have a positive entry; all weights are zero.")
    r, sw = r[keep], sw[keep]
    if center == "median":
        r = r - _weighted_median(r, sw)
    deviation = np.abs(r)
    largest = deviation.max()
    if largest == 0.0:
        return 1.0
    scale = _MAD_NORMAL * _weighted_median(deviation, sw)
    if scale == 0.0:
        scale = np.sqrt(np.finfo(float).eps) * _MEAN_AD_NORMAL * np.average(deviation, weights=sw)
    return float(max(scale, np.finfo(float).eps * largest))


def _solve_weighted(
    design: np.ndarray,
    residual: np.ndarray,
    weights: np.ndarray,
    penalty: np.ndarray,
    x: np.ndarray,
) -> np.ndarray:
    """Step ``d`` minimizing ``||sqrt(w) (residual - design d)||^2 + ||sqrt(pen) (x + d)||^2``.

    Solving for the step rather than the new point keeps full relative accuracy near a fixed
    point, and when the system is singular the minimum-norm step leaves the unidentified
    directions where they are instead of sending them to 0.
    """
    weighted = design * weights[:, None]
    gram = design.T @ weighted
    gram[np.diag_indices_from(gram)] += penalty
    rhs = weighted.T @ residual - penalty * x
    try:
        factor = scipy.linalg.cho_factor(gram, lower=True, check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        factor = None
    if factor is not None:
        diag = np.abs(np.diag(factor[0]))
        # A rounding error can leave a positive pivot on a singular matrix (e.g. Welsch
        # weights that underflowed, or more features than weighted samples): trust the
        # factorization only while it is reasonably conditioned.
        if diag.min() * _MAX_CHOLESKY_RATIO > diag.max():
            return scipy.linalg.cho_solve(factor, rhs, check_finite=False)
    root_w = np.sqrt(weights)
    root_pen = np.sqrt(penalty)
    matrix = np.vstack([design * root_w[:, None], np.diag(root_pen)])
    target = np.concatenate([residual * root_w, -root_pen * x])
    step = scipy.linalg.lstsq(matrix, target, check_finite=False, lapack_driver="gelsd")[0]
    return step


@dataclass(frozen=True, eq=False, repr=False)
class RobustRegressionProblem(MMProblem):
    r"""Robust linear regression at a fixed scale, as an MM problem.

    Minimizes over ``x = (coef, intercept)`` (the intercept last, only when ``fit_intercept``)

    .. math::

        F(x) = \sum_i s_i\, \rho\!\left(\frac{y_i - X_i\, \mathrm{coef} - b}{\sigma}\right)
               + \frac{\alpha}{2} \|\mathrm{coef}\|^2

    with ``s = sample_weight``, ``sigma = scale`` and ``rho`` a robust loss. The MM map ``G``
    solves the weighted ridge problem with IRLS weights ``s_i w(r_i / sigma)`` (normal
    equations by Cholesky, a minimum-norm least-squares step when they are singular).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Dense design matrix.
    y : array-like of shape (n_samples,)
        Targets.
    loss : {"huber", "cauchy", "welsch", "tukey", "l2"} or RobustLoss, default="huber"
        The robust loss (see :mod:`mmopt.losses`; any but the trimmed loss).
    c : float, optional
        The loss's tuning constant, in units of ``scale``; its 95%-efficiency default when
        None.
    scale : float, default=1.0
        Fixed positive scale of the residuals.
    fit_intercept : bool, default=True
        Fit an unpenalized intercept (the last entry of ``x``).
    alpha : float, default=0.0
        Non-negative L2 penalty on the coefficients (not on the intercept).
    sample_weight : array-like of shape (n_samples,), optional
        Non-negative weights with a positive sum; all ones when None.

    Attributes
    ----------
    rho : RobustLoss
        The loss object built from ``loss`` and ``c``.
    x0 : ndarray
        Default start: the weighted least-squares fit, ridge with penalty
        ``alpha * scale**2`` when ``alpha > 0`` (the minimizer of ``F`` for a purely
        quadratic loss).

    Notes
    -----
    All arrays are stored read-only, converted to float64 once; the caller's arrays are never
    written to. ``mm_step(x)`` returns ``(G(x), F(x))`` from one pass over the residuals.

    Examples
    --------
    >>> from mmopt.mm.robust_regression import RobustRegressionProblem
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 2))
    >>> y = X @ [1.0, -2.0] + 0.5 + 0.1 * rng.standard_normal(50)
    >>> y[:5] += 20.0  # gross outliers
    >>> problem = RobustRegressionProblem(X, y, loss="welsch", scale=0.1)
    >>> res = problem.solve(x0=RobustRegressionProblem(X, y, scale=0.1).solve().x)
    >>> np.round(res.x, 1)
    array([ 1. , -2. ,  0.5])
    """

    X: np.ndarray
    y: np.ndarray
    _: KW_ONLY
    loss: str | RobustLoss = "huber"
    c: float | None = None
    scale: float = 1.0
    fit_intercept: bool = True
    alpha: float = 0.0
    sample_weight: np.ndarray | None = None

    def __post_init__(self):
        # Frozen dataclass: the checked, converted values replace the raw ones once.
        def put(name, value):
            object.__setattr__(self, name, value)

        X = check_array(self.X, "X", ndim=2)
        n_samples = X.shape[0]
        y = check_array(self.y, "y", ndim=1)
        if y.shape[0] != n_samples:
            raise ValueError(
                f"y must have shape (n_samples,) = ({n_samples},) to match X, got {y.shape}."
            )
        rho = _irls_loss(self.loss, self.c)
        scale = check_scalar(self.scale, "scale", min_value=0.0, include_min=False)
        if not isinstance(self.fit_intercept, (bool, np.bool_)):
            raise TypeError(f"fit_intercept must be True or False, got {self.fit_intercept!r}.")
        alpha = check_scalar(self.alpha, "alpha", min_value=0.0)
        if self.sample_weight is None:
            sample_weight = readonly(np.ones(n_samples))
        else:
            sample_weight = check_array(
                self.sample_weight,
                "sample_weight",
                ndim=1,
                shape=(n_samples,),
                nonnegative=True,
            )
            if not sample_weight.sum() > 0:
                raise ValueError("sample_weight must have a positive entry; all weights are zero.")
        put("X", X)
        put("y", y)
        put("c", rho.c)
        put("scale", scale)
        put("fit_intercept", bool(self.fit_intercept))
        put("alpha", alpha)
        put("sample_weight", sample_weight)
        put("rho", rho)
        design = np.hstack([X, np.ones((n_samples, 1))]) if self.fit_intercept else X
        put("_design", readonly(np.ascontiguousarray(design)))
        if alpha > 0 and not math.isfinite(alpha * scale * scale):
            raise ValueError(
                f"alpha * scale**2 overflows (alpha={alpha!r}, scale={scale!r}); rescale y "
                "and scale."
            )
        penalty = np.full(design.shape[1], alpha * scale * scale)
        if self.fit_intercept:
            penalty[-1] = 0.0
        # The surrogate is sum s_i w_i r_i^2 / (2 scale^2) + alpha/2 ||coef||^2; multiplying
        # by scale^2 gives the weighted ridge problem with penalty alpha * scale^2.
        put("_penalty", readonly(penalty))
        zero = np.zeros(design.shape[1])
        put("x0", readonly(_solve_weighted(design, y, sample_weight, penalty, zero)))

    # ----------------------------------------------------------------------------- helpers
    @property
    def n_params(self) -> int:
        """Length of the iterate: ``n_features`` plus one with an intercept."""
        return self._design.shape[1]

    def split(self, x: ArrayLike) -> tuple[np.ndarray, float]:
        """Split an iterate into ``(coef, intercept)`` (intercept 0.0 without one)."""
        x = np.asarray(x, dtype=float)
        if self.fit_intercept:
            return x[:-1], float(x[-1])
        return x, 0.0

    def residuals(self, x: ArrayLike) -> np.ndarray:
        """Residuals ``y - X coef - intercept`` at ``x``."""
        return self.y - self._design @ np.asarray(x, dtype=float)

    def weights(self, x: ArrayLike) -> np.ndarray:
        """Robust IRLS weights ``w(r_i / scale)`` in [0, 1] at ``x`` (without sample_weight)."""
        return self.rho.weight(self.residuals(x) / self.scale)

    # ------------------------------------------------------------------------ MM protocol
    def _penalty_value(self, x) -> float:
        coef = x[:-1] if self.fit_intercept else x
        return 0.5 * self.alpha * float(coef @ coef)

    def objective(self, x: ArrayLike) -> float:
        """``F(x)``: weighted robust loss of the scaled residuals plus the ridge term."""
        x = np.asarray(x, dtype=float)
        u = self.residuals(x) / self.scale
        return float(self.sample_weight @ self.rho.rho(u)) + self._penalty_value(x)

    def surrogate_minimizer(self, x: ArrayLike) -> np.ndarray:
        """``G(x)``: the weighted ridge fit with the IRLS weights at ``x``."""
        return self.mm_step(x)[0]

    def mm_step(self, x: ArrayLike) -> tuple[np.ndarray, float]:
        """Return ``(G(x), F(x))`` from one evaluation of the residuals at ``x``."""
        x = np.asarray(x, dtype=float)
        residual = self.residuals(x)
        with np.errstate(over="ignore"):  # an absurdly small scale: inf, handled by the loss
            u = residual / self.scale
        fun = float(self.sample_weight @ self.rho.rho(u)) + self._penalty_value(x)
        weights = self.sample_weight * self.rho.weight(u)
        step = _solve_weighted(self._design, residual, weights, self._penalty, x)
        return x + step, fun

    def initial_point(self) -> np.ndarray:
        """Weighted least squares (ridge with penalty ``alpha * scale**2`` if ``alpha > 0``)."""
        return self.x0

    def __repr__(self) -> str:
        n, p = self.X.shape
        return (
            f"{type(self).__name__}(n_samples={n}, n_features={p}, loss={self.rho!r}, "
            f"scale={self.scale:.6g}, fit_intercept={self.fit_intercept}, alpha={self.alpha})"
        )


@fill_doc(SOLVER_PARAMS)
class MMRobustRegressor(
    LinearRegressorMixin, ParamsValidationMixin, RegressorMixin, BaseEstimator
):
    """Robust linear regression (Huber, Cauchy or Welsch) by IRLS accelerated with Anderson.

    Fits ``y ~ X coef + intercept`` by minimizing
    ``sum_i sw_i rho((y_i - X_i coef - intercept) / scale) + alpha / 2 ||coef||^2`` with
    :class:`RobustRegressionProblem` and :class:`mmopt.mm.MMSolver`.

    With ``scale=None`` the scale is estimated, and the fit runs in stages:

    1. ordinary (weighted) least squares, and :func:`mad_scale` of its residuals (centred at
       their median with an intercept, at zero without);
    2. a Huber fit at that scale (convex, so it needs no good start) and the MAD scale of its
       residuals, repeated from the previous Huber fit until the scale changes by less than
       1% (at most 20 passes). One pass is the textbook recipe and is all it takes with a few
       outliers; with many (30% of gross errors) the first scale is inflated by the outliers'
       pull on the least-squares start, and the passes bring it down to the noise level;
    3. the final fit with the requested loss at that scale, started from the Huber
       coefficients. The start matters for the non-convex Cauchy and Welsch losses: it puts
       them in the basin of the bulk of the data rather than one shaped by the outliers.

    With a fixed ``scale`` a non-convex loss is likewise started from a Huber fit at that
    scale.

    Parameters
    ----------
    loss : {"huber", "cauchy", "welsch", "tukey", "l2"} or RobustLoss, default="huber"
        The robust loss; see :mod:`mmopt.losses` (any loss but the trimmed one).
    c : float, optional
        Tuning constant of the loss in units of the scale; the 95%-efficiency default
        (1.345, 2.3849, 2.9846, 4.685) when None.
    scale : float, optional
        Fixed positive residual scale; estimated (see above) when None.
    alpha : float, default=0.0
        L2 penalty on the coefficients (not the intercept).
    fit_intercept : bool, default=True
        Fit an intercept.
    anderson : bool or AndersonAcceleration, default=True
        Accelerate IRLS with safeguarded Anderson acceleration (the objective still never
        increases): True for the default :class:`mmopt.AndersonAcceleration`, False for plain
        IRLS, or a configured instance (its ``memory``, ``damping`` ...); see
        :class:`mmopt.mm.MMSolver`.
    tol : float, default=1e-6
        Stopping tolerance on the relative fixed-point residual of each solve.
    max_iter : int, default=500
        Maximum number of iterations of each solve.
    %(verbose)s

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
        Coefficients.
    intercept_ : float
        Intercept (0.0 when ``fit_intercept=False``).
    scale_ : float
        The scale used by the final fit (``scale`` when given).
    n_iter_ : int
        Iterations of all the solves of the fit: the Huber passes (scale estimation, or the
        start of a non-convex loss) and the final solve.
    result_ : mmopt.Result
        The fit as one result. ``x``, ``fun``, ``status``, ``message`` and ``residual`` are
        the final solve's: ``x`` is ``coef_`` followed by ``intercept_`` (when fitted), ``fun``
        the objective above at ``scale_``. ``nit`` (equal to ``n_iter_``), ``time``,
        ``n_evaluations``, ``n_accepted`` and ``n_rejected`` (see
        :class:`mmopt.mm.MMSolver`) add up all the solves, and ``history`` runs through them
        one after the other, with two more columns: ``stage`` (0, 1, ... the solve an
        iteration belongs to; the last is the final fit) and ``scale`` (the scale of that
        solve, in the units of ``y``); ``time`` and ``n_evaluations`` count from the start
        of the fit. ``nit_per_stage`` gives the iterations of each solve.
    weights_ : ndarray of shape (n_samples,)
        Final IRLS weights ``w(r_i / scale_)`` in [0, 1], without ``sample_weight``.
    outliers_ : ndarray of bool of shape (n_samples,)
        ``|r_i| > c * scale_``: the residual lies beyond the loss's tuning constant. For Huber
        these are exactly the points in the linear part of the loss (as in
        :class:`sklearn.linear_model.HuberRegressor`); for Cauchy and Welsch, those with
        weight below 1/2 and exp(-1).
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of str
        Feature names seen in ``fit``, when ``X`` had string column names.

    See Also
    --------
    RobustRegressionProblem : the problem at a fixed scale.
    sklearn.linear_model.HuberRegressor : Huber regression with a jointly estimated scale.

    Examples
    --------
    >>> from mmopt.mm.robust_regression import MMRobustRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((100, 3))
    >>> y = X @ [1.0, 2.0, 3.0] + 0.1 * rng.standard_normal(100)
    >>> y[:20] -= 50.0  # 20% gross outliers
    >>> model = MMRobustRegressor(loss="welsch").fit(X, y)
    >>> np.round(model.coef_, 1), int(model.outliers_.sum())
    (array([1., 2., 3.]), 20)
    """

    # A sparse X reaches validate_data, whose message names it, as in fit.
    _sparse_predict_input = True
    _options = {
        "loss": Param("huber", Options(_IRLS_LOSSES), InstanceOf(RobustLoss, name="a RobustLoss"),
                      positional=True),
        "c": Param(None, None, Interval(float, 0, None, closed="neither")),
        "scale": Param(None, None, Interval(float, 0, None, closed="neither")),
        "alpha": Param(0.0, Interval(float, 0, None)),
        "fit_intercept": Param(True, bool),
        "anderson": Param(True, *ANDERSON_OPTION),
        "tol": Param(1e-6, Interval(float, 0, None)),
        "max_iter": Param(500, Interval(int, 1, None)),
        "verbose": Param(0, Interval(int, 0, None)),
    }

    def fit(
        self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None
    ) -> MMRobustRegressor:
        """Fit the robust linear model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data (dense).
        y : array-like of shape (n_samples,)
            Targets.
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weights; an integer weight is equivalent to repeating the sample.

        Returns
        -------
        self : MMRobustRegressor
            The fitted estimator.
        """
        check_input(X, "X", allow_sparse=True, ndim=2)
        check_input(y, "y")
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        rho = _irls_loss(self.loss, self.c)
        y, unit = self._normalize_targets(y)
        solver = MMSolver(
            anderson=self.anderson,
            tol=self.tol,
            max_iter=self.max_iter,
            verbose=self.verbose,
        )
        huber = rho if isinstance(rho, HuberLoss) else HuberLoss()
        # Every solve of the fit, with its scale: the reported iterations and history cover
        # them all.
        solves: list[tuple[Result, float]] = []

        def run(problem, x0=None):
            result = solver.solve(problem, x0=x0)
            solves.append((result, problem.scale))
            return result

        def problem(loss, scale):
            return RobustRegressionProblem(
                X,
                y,
                loss=loss,
                scale=scale,
                fit_intercept=self.fit_intercept,
                alpha=self.alpha,
                sample_weight=sample_weight,
            )

        if self.scale is None:
            # OLS: scale 1 and no penalty (the ridge penalty is alpha * scale^2, unknown yet).
            first = RobustRegressionProblem(
                X, y, fit_intercept=self.fit_intercept, sample_weight=sample_weight
            )
            center = "median" if self.fit_intercept else "zero"
            scale = mad_scale(
                first.residuals(first.x0), sample_weight=first.sample_weight, center=center
            )
            # Huber fit and MAD scale, alternated until the scale settles: one pass (the
            # textbook recipe) leaves the scale inflated by the outliers' pull on the OLS start
            # when they are many (30% of gross errors: 10-30 times the noise), and a
            # redescending loss at such a scale still listens to the outliers.
            x_huber = None
            for _ in range(_MAX_SCALE_PASSES):
                start = problem(huber, scale)
                x_huber = run(start, x0=x_huber).x
                previous = scale
                scale = mad_scale(
                    start.residuals(x_huber), sample_weight=start.sample_weight, center=center
                )
                if abs(scale - previous) <= _SCALE_RTOL * previous:
                    break
            final = problem(rho, scale)
            run(final, x0=x_huber)
        else:
            final = problem(rho, self.scale)
            x0 = None
            if not rho.convex:
                x0 = run(problem(huber, self.scale)).x
            run(final, x0=x0)

        result = _chain_results(solves, unit)
        coef, intercept = final.split(result.x)
        residuals = final.residuals(result.x)
        if unit != 1.0:
            # Back to the units of y (see _normalize_targets); the objective is unchanged.
            result.x = result.x * unit
        self.coef_ = np.array(coef) * unit
        self.intercept_ = float(intercept) * unit
        self.scale_ = float(final.scale) * unit
        self.n_iter_ = int(result.nit)
        self.result_ = result
        self.weights_ = final.rho.weight(residuals / final.scale)
        self.outliers_ = np.abs(residuals) > final.rho.c * final.scale
        return self

    def _normalize_targets(self, y: np.ndarray) -> tuple[np.ndarray, float]:
        """``(y / unit, unit)``, with ``unit`` a power of two when ``y`` is extreme in scale.

        Squares of targets beyond about 1e154 overflow (and below 1e-154 underflow) in the
        scale estimate and the weighted least-squares steps. Without a ridge penalty and with
        the scale estimated, the fit is equivariant (``y -> t y`` gives ``coef -> t coef``,
        ``scale -> t scale`` and the same weights), so it runs on ``y / unit`` and the results
        are scaled back; a power of two keeps the division exact. Otherwise such targets are
        an error naming ``y``.
        """
        peak = float(np.max(np.abs(y)))
        if peak == 0.0 or 1e-100 <= peak <= 1e100:
            return y, 1.0
        if self.alpha == 0 and self.scale is None:
            unit = 2.0 ** math.floor(math.log2(peak))
            return y / unit, unit
        raise ValueError(
            f"y has entries of magnitude {peak:.3g}, whose squares are out of floating-point "
            "range; rescale y (with alpha=0 and scale=None the fit rescales it itself)."
        )


def _chain_results(solves: list[tuple[Result, float]], unit: float) -> Result:
    """One result for the solves of a fit, run one after the other.

    The answer (``x``, ``fun``, ``status``, ``message``, ``residual``) is the last solve's;
    the counts and the time add up, and the history runs through all the solves, with the
    solve's index (``stage``) and scale (times ``unit``, in the units of ``y``) per iteration.
    """
    final = solves[-1][0]
    result = Result(final)
    keys = []
    for res, _ in solves:
        keys.extend(k for k in res.history if k not in keys)
    history: dict[str, list[np.ndarray]] = {k: [] for k in [*keys, "stage", "scale"]}
    elapsed = evaluations = 0.0
    for stage, (res, scale) in enumerate(solves):
        n = res.nit
        for key in keys:
            column = np.asarray(res.history.get(key, np.full(n, np.nan)), dtype=float)
            if key == "time":
                column = column + elapsed
            elif key == "n_evaluations":
                column = column + evaluations
            history[key].append(column)
        history["stage"].append(np.full(n, float(stage)))
        history["scale"].append(np.full(n, scale * unit))
        elapsed += res.time
        evaluations += res.n_evaluations
    result.history = {k: np.concatenate(v) if v else np.empty(0) for k, v in history.items()}
    result.nit = sum(res.nit for res, _ in solves)
    result.time = elapsed
    result.n_evaluations = int(evaluations)
    result.n_accepted = sum(res.n_accepted for res, _ in solves)
    result.n_rejected = sum(res.n_rejected for res, _ in solves)
    result.nit_per_stage = np.array([res.nit for res, _ in solves], dtype=int)
    return result
