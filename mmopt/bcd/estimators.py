"""scikit-learn estimators built on the BCD family's solvers."""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from mmopt._core.linear_model import LinearClassifierMixin, LinearRegressorMixin
from mmopt._core.params import Interval, Options, Param, ParamsValidationMixin
from mmopt._core.validation import check_input
from mmopt.bcd.cd import CoordinateDescent
from mmopt.bcd.datafits import LabelPropagationQuadratic, LeastSquares, Logistic, Multinomial
from mmopt.bcd.penalties import L1, L2, ElasticNet, L1Positive
from mmopt.bcd.problem import BCDProblem
from mmopt.bcd.solver import PARTITIONS, SELECTIONS, UPDATES, BlockCoordinateDescent, _IndexBlocks

__all__ = ["BCDLasso", "BCDElasticNet", "BCDLogisticRegression", "BCDLabelPropagation"]

# float32 data stay float32 (the compiled coordinate descent runs in either precision).
_FLOATS = [np.float64, np.float32]
_POSITIVE = [Interval(float, 0, None, closed="neither")]
_NON_NEGATIVE = [Interval(float, 0, None)]
# The options of the regression and classification estimators that CoordinateDescent takes.
_COMMON = {
    "tol": Param(1e-6, *_NON_NEGATIVE),
    "max_iter": Param(100, Interval(int, 1, None)),
    "verbose": Param(0, Interval(int, 0, None)),
}


def _check_Xy(X, y, *, numeric_y: bool = True) -> None:
    """:func:`~mmopt._core.validation.check_input` on both (``X`` dense or sparse), and one
    target per row of ``X``."""
    check_input(X, "X", allow_sparse=True, ndim=2)
    check_input(y, "y", numeric=numeric_y)
    # (np.asarray rather than np.shape: array-likes need not support NumPy's functions)
    n = X.shape[0] if sp.issparse(X) else np.asarray(X).shape[0]
    targets = np.asarray(y)
    m = targets.shape[0] if targets.ndim else None
    if m is not None and n != m:
        raise ValueError(
            f"y must have one entry per row of X (inconsistent numbers of samples: {m} "
            f"targets for {n} rows)."
        )


def _check_labels(y) -> None:
    """scikit-learn's check of classification targets, its error naming ``y``."""
    try:
        check_classification_targets(y)
    except ValueError as exc:
        raise ValueError(f"y must hold class labels: {exc}") from None


class BCDElasticNet(LinearRegressorMixin, ParamsValidationMixin, RegressorMixin, BaseEstimator):
    """Elastic net by compiled coordinate descent with working sets and gap-safe screening.

    Minimizes, like :class:`sklearn.linear_model.ElasticNet`,
    ``1 / (2 n) ||y - X w - b||^2 + alpha l1_ratio ||w||_1
    + alpha (1 - l1_ratio) / 2 ||w||^2`` with :class:`~mmopt.bcd.CoordinateDescent`.

    Parameters
    ----------
    alpha : float, default=1.0
        Penalty strength (non-negative).
    l1_ratio : float, default=0.5
        Mix of L1 (1.0, the Lasso) and L2 (0.0).
    fit_intercept : bool, default=True
        Fit an unpenalized intercept (dense ``X`` is centred; sparse ``X`` gets an intercept
        coordinate updated exactly after every epoch).
    positive : bool, default=False
        Constrain the coefficients to be non-negative.
    tol : float, default=1e-6
        Duality-gap tolerance, in the units of the objective above (sklearn's ``tol`` is
        relative to ``||y||^2 / n`` instead).
    max_iter : int, default=100
        Outer working-set iterations at most.
    working_set, screening : bool, default=True
        See :class:`~mmopt.bcd.CoordinateDescent`.
    verbose : int, default=0
        Progress output of the solver.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
    intercept_ : float
    n_iter_ : int
        Outer iterations of the solve.
    dual_gap_ : float
        Duality gap at the solution (an upper bound on the objective's distance to its
        minimum). With ``l1_ratio=0`` (ridge) it is the exact Fenchel gap; with
        ``alpha=0`` (least squares without penalty, accepted as scikit-learn does; the
        optimality violation stops the solve) the only dual point formed without solving
        the problem is 0, and the gap is the objective itself.
    result_ : mmopt.Result
        The solver's result.
    n_features_in_ : int

    Examples
    --------
    >>> from mmopt.bcd import BCDElasticNet
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 5))
    >>> y = X @ [1.0, 0.0, 2.0, 0.0, 0.0] + 3.0
    >>> model = BCDElasticNet(alpha=0.01, l1_ratio=0.7).fit(X, y)
    >>> np.round(model.coef_, 1), round(model.intercept_, 1)
    (array([1., 0., 2., 0., 0.]), 3.0)
    """

    # Predictions keep a float32 X in float32 and take CSR input, like fit.
    _sparse_predict_input = _sparse_fit_input = True
    _predict_validation: ClassVar[dict] = {"dtype": _FLOATS, "accept_sparse": "csr"}
    _options = {
        "alpha": Param(1.0, *_NON_NEGATIVE, positional=True),
        "l1_ratio": Param(0.5, Interval(float, 0, 1)),
        "fit_intercept": Param(True, bool),
        "positive": Param(False, bool),
        "working_set": Param(True, bool),
        "screening": Param(True, bool),
        **_COMMON,
    }

    def _penalty(self):
        return ElasticNet(self.alpha, self.l1_ratio, positive=self.positive)

    def fit(self, X: ArrayLike, y: ArrayLike) -> BCDElasticNet:
        """Fit the model; ``X`` dense or sparse, ``y`` of shape (n_samples,)."""
        self._validate_params()
        _check_Xy(X, y)
        X, y = validate_data(
            self, X, y, dtype=_FLOATS, y_numeric=True, accept_sparse="csc", order="F"
        )
        penalty = self._penalty()
        intercept_coordinate = self.fit_intercept and sp.issparse(X)
        if self.fit_intercept and not sp.issparse(X):
            X_mean, y_mean = X.mean(axis=0), float(y.mean())
            Xc, yc = np.asfortranarray(X - X_mean), y - y_mean
        else:
            X_mean, y_mean, Xc, yc = np.zeros(X.shape[1]), 0.0, X, y
        solver = CoordinateDescent(
            tol=self.tol,
            max_iter=self.max_iter,
            working_set=self.working_set,
            screening=self.screening,
            fit_intercept=intercept_coordinate,
            verbose=self.verbose,
        )
        result = solver.solve(BCDProblem(LeastSquares(Xc, yc), penalty))
        self.coef_ = np.array(result.x)
        if self.fit_intercept and not sp.issparse(X):
            self.intercept_ = y_mean - float(X_mean @ self.coef_)
        else:
            self.intercept_ = float(result.intercept)
        self.n_iter_ = int(result.nit)
        self.dual_gap_ = float(result.gap)
        self.result_ = result
        return self


class BCDLasso(BCDElasticNet):
    """Lasso by compiled coordinate descent with working sets and gap-safe screening.

    Minimizes ``1 / (2 n) ||y - X w - b||^2 + alpha ||w||_1`` (scikit-learn's
    :class:`~sklearn.linear_model.Lasso` objective) to a duality gap ``<= tol``. See
    :class:`BCDElasticNet` for the parameters and attributes.

    Examples
    --------
    >>> from mmopt.bcd import BCDLasso
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 20))
    >>> y = X[:, :2] @ [2.0, -1.0]
    >>> model = BCDLasso(alpha=0.05).fit(X, y)
    >>> np.flatnonzero(model.coef_), model.dual_gap_ <= 1e-6
    (array([0, 1]), True)
    """

    # BCDElasticNet's options but l1_ratio.
    _options = {"l1_ratio": None}

    def _penalty(self):
        return L1Positive(self.alpha) if self.positive else L1(self.alpha)


class BCDLogisticRegression(
    LinearClassifierMixin, ParamsValidationMixin, ClassifierMixin, BaseEstimator
):
    """L1 or L2 logistic regression by (block) coordinate descent.

    Minimizes, like :class:`sklearn.linear_model.LogisticRegression`,
    ``C sum_i loss_i + ||w||_1`` (``penalty="l1"``) or ``C sum_i loss_i + ||w||^2 / 2``
    (``penalty="l2"``), the intercept unpenalized. Two classes: binary logistic loss by the
    compiled :class:`~mmopt.bcd.CoordinateDescent` (the intercept is updated by a Newton step
    after every epoch). More classes: the multinomial (softmax) loss by
    :class:`~mmopt.bcd.BlockCoordinateDescent`, one block per feature (its coefficients for
    all classes) with Newton updates (Armijo line search); its intercept is a constant
    feature of value ``intercept_scaling`` that is penalized like the others (as liblinear
    does), so a large ``intercept_scaling`` makes that penalty negligible.

    Parameters
    ----------
    penalty : {"l1", "l2"}, default="l2"
    C : float, default=1.0
        Inverse penalty strength (positive).
    fit_intercept : bool, default=True
    intercept_scaling : float, default=1.0
        Multinomial case only (see above).
    tol : float, default=1e-6
        Binary L1: duality gap of the mean loss; otherwise the largest optimality violation
        of the mean-loss objective.
    max_iter : int, default=100
        Outer working-set iterations (binary) or epochs over the blocks (multinomial).
    verbose : int, default=0

    Attributes
    ----------
    classes_ : ndarray
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    n_iter_ : int
    result_ : mmopt.Result

    Examples
    --------
    >>> from mmopt.bcd import BCDLogisticRegression
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 3))
    >>> y = (X[:, 0] - X[:, 1] > 0).astype(int)
    >>> model = BCDLogisticRegression(C=10.0).fit(X, y)
    >>> model.score(X, y) > 0.95
    True
    """

    # Predictions keep a float32 X in float32 and take CSR input, like fit.
    _sparse_predict_input = _sparse_fit_input = True
    _predict_validation: ClassVar[dict] = {"dtype": _FLOATS, "accept_sparse": "csr"}
    _options = {
        "penalty": Param("l2", Options({"l1", "l2"}), positional=True),
        "C": Param(1.0, *_POSITIVE),
        "fit_intercept": Param(True, bool),
        "intercept_scaling": Param(1.0, *_POSITIVE),
        **_COMMON,
    }

    def fit(self, X: ArrayLike, y: ArrayLike) -> BCDLogisticRegression:
        """Fit the model; ``X`` dense or sparse."""
        self._validate_params()
        _check_Xy(X, y, numeric_y=False)
        X, y = validate_data(self, X, y, dtype=_FLOATS, accept_sparse="csc", order="F")
        _check_labels(y)
        C, scaling = float(self.C), float(self.intercept_scaling)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        codes = encoder.transform(y)
        n = X.shape[0]
        strength = 1.0 / (C * n)  # the mean-loss objective's penalty weight
        if len(self.classes_) < 2:
            raise ValueError(
                "BCDLogisticRegression needs samples of at least 2 classes in the data; got "
                f"1 class: {self.classes_[0]!r}."
            )
        if len(self.classes_) == 2:
            penalty = L1(strength) if self.penalty == "l1" else L2(strength)
            solver = CoordinateDescent(
                tol=self.tol,
                max_iter=self.max_iter,
                fit_intercept=self.fit_intercept,
                verbose=self.verbose,
            )
            result = solver.solve(BCDProblem(Logistic(X, 2.0 * codes - 1.0), penalty))
            self.coef_ = np.array(result.x)[None, :]
            self.intercept_ = np.array([result.intercept if self.fit_intercept else 0.0])
        else:
            k = len(self.classes_)
            # The block solver works in float64 (coef_ is returned in X's precision).
            design = X.astype(np.float64, copy=False)
            if self.fit_intercept:
                ones = np.full((n, 1), scaling)
                design = (
                    sp.hstack([design, ones], format="csc")
                    if sp.issparse(design)
                    else np.hstack([design, ones])
                )
            p = design.shape[1]
            penalty = L1(strength) if self.penalty == "l1" else L2(strength)
            blocks = [np.arange(j * k, (j + 1) * k) for j in range(p)]
            solver = BlockCoordinateDescent(
                partition=blocks,
                selection="cyclic",
                update="newton",
                tol=self.tol,
                max_iter=self.max_iter * p,
                verbose=self.verbose,
            )
            result = solver.solve(BCDProblem(Multinomial(design, codes, n_classes=k), penalty))
            W = np.array(result.x).reshape(p, k)
            if self.fit_intercept:
                self.coef_ = W[:-1].T.copy()
                self.intercept_ = W[-1] * scaling
            else:
                self.coef_ = W.T.copy()
                self.intercept_ = np.zeros(k)
        self.coef_ = self.coef_.astype(X.dtype, copy=False)
        self.intercept_ = np.asarray(self.intercept_, dtype=X.dtype)
        self.n_iter_ = int(result.nit)
        self.result_ = result
        return self


class BCDLabelPropagation(ParamsValidationMixin, ClassifierMixin, BaseEstimator):
    """Graph-based semi-supervised classification by quadratic label propagation.

    Builds a symmetric k-nearest-neighbour graph (or an RBF graph), and for each class ``c``
    minimizes the :class:`~mmopt.bcd.LabelPropagationQuadratic` criterion with targets 1 on
    the labelled samples of class ``c`` and 0 on the other labelled samples, with
    :class:`~mmopt.bcd.BlockCoordinateDescent`. By default the blocks are clusters of the
    samples (k-means on ``X``, about 400 samples each) and each block is minimized exactly
    by a cached sparse factorization: block Gauss-Seidel converges at a rate set by how much
    of the graph a block spans, so few, large, well-connected blocks suit long, thin graphs
    better than small or scattered ones (see the user guide). Unlabelled samples carry the
    label ``-1``, as in :mod:`sklearn.semi_supervised`.

    Parameters
    ----------
    kernel : {"knn", "rbf"}, default="knn"
        The graph: symmetrized k-nearest-neighbour connectivity (sparse), or RBF weights
        between all pairs (a dense n x n matrix: small data only).
    n_neighbors : int, default=7
    gamma : float, default=20.0
        RBF width: weight ``exp(-gamma ||x_i - x_j||^2)``.
    label_weight : float, default=1e5
        How strongly labelled samples hold their label.
    partition : "clusters" or a partition of :class:`~mmopt.bcd.BlockCoordinateDescent`
        ``"clusters"`` (default): k-means clusters of the samples as fixed blocks; or
        ``"red-black"``, ``"greedy-tree"``, ``"variable"``, ... (see the solver).
    selection, update : default "cyclic", "exact"
        Options of :class:`~mmopt.bcd.BlockCoordinateDescent`.
    tol : float, default=1e-8
        Optimality tolerance of each class's solve: the largest gradient entry relative to
        ``label_weight`` (the initial gradient's scale).
    max_iter : int, default=10_000
        Block updates per class at most. Block coordinate descent on a graph Laplacian
        converges at a rate set by the graph's diameter: on long, thin graphs (a large
        k-nearest-neighbour graph of a curve) it may need more.

    Attributes
    ----------
    classes_ : ndarray
    label_distributions_ : ndarray of shape (n_samples, n_classes)
    transduction_ : ndarray of shape (n_samples,)
    n_iter_ : int
        Largest number of block updates over the per-class solves.

    References
    ----------
    Y. Bengio, O. Delalleau, N. Le Roux, "Label Propagation and Quadratic Criterion", in
    *Semi-Supervised Learning*, O. Chapelle, B. Schölkopf, A. Zien (eds.), MIT Press, 2006.

    J. Nutini, I. Laradji, M. Schmidt, "Let's Make Block Coordinate Descent Converge Faster:
    Faster Greedy Rules, Message-Passing, Active-Set Complexity, and Superlinear
    Convergence", Journal of Machine Learning Research 23, 2022 (block updates on this
    criterion).

    Examples
    --------
    >>> from mmopt.bcd import BCDLabelPropagation
    >>> X = np.r_[np.linspace(0, 1, 10), np.linspace(5, 6, 10)][:, None]
    >>> y = -np.ones(20, dtype=int); y[0], y[-1] = 0, 1
    >>> model = BCDLabelPropagation(n_neighbors=3).fit(X, y)
    >>> model.transduction_.tolist() == [0] * 10 + [1] * 10
    True
    """

    _options = {
        "kernel": Param("knn", Options({"knn", "rbf"}), positional=True),
        "n_neighbors": Param(7, Interval(int, 1, None)),
        "gamma": Param(20.0, *_POSITIVE),
        "label_weight": Param(1e5, *_POSITIVE),
        "partition": Param("clusters", Options({"clusters", *PARTITIONS}), _IndexBlocks()),
        "selection": Param("cyclic", Options(SELECTIONS)),
        "update": Param("exact", Options(UPDATES)),
        "tol": Param(1e-8, *_NON_NEGATIVE),
        "max_iter": Param(10_000, Interval(int, 1, None)),
    }
    # The solver's clashes between partition and selection hold here too.
    _parameter_rules: ClassVar[list] = BlockCoordinateDescent._parameter_rules

    def _graph(self, X):
        if self.kernel == "knn":
            from sklearn.neighbors import kneighbors_graph

            # n_neighbors other samples (a sample is not its own neighbour), symmetrized.
            k = min(self.n_neighbors, X.shape[0] - 1)
            W = kneighbors_graph(X * self._knn_scale, k, mode="connectivity", include_self=False)
            W = W.maximum(W.T)
        else:
            W = sp.csr_matrix(np.exp(-self.gamma * _squared_distances(X, X)))
        return W

    def fit(self, X: ArrayLike, y: ArrayLike) -> BCDLabelPropagation:
        """Fit on all samples; ``y == -1`` marks the unlabelled ones."""
        self._validate_params()
        _check_Xy(X, y, numeric_y=False)
        X, y = validate_data(self, X, y, dtype=np.float64)
        _check_labels(y)
        if X.shape[0] < 2:
            raise ValueError(
                "BCDLabelPropagation needs a graph of at least 2 samples; "
                f"got n_samples={X.shape[0]}."
            )
        labelled = y != -1
        if not labelled.any():
            raise ValueError("y must have at least one labelled sample (y != -1).")
        self.classes_ = np.unique(y[labelled])
        self._knn_scale = _distance_scale(X)
        self._nn = NearestNeighbors().fit(X * self._knn_scale)
        W = self._graph(X)
        n, k = X.shape[0], len(self.classes_)
        partition = self.partition
        if isinstance(partition, str) and partition == "clusters":
            partition = _cluster_blocks(X)
        solver = BlockCoordinateDescent(
            partition=partition,
            selection=self.selection,
            update=self.update,
            tol=self.tol * self.label_weight,
            max_iter=self.max_iter,
        )
        F = np.zeros((n, k))
        n_iter = 0
        for c, label in enumerate(self.classes_):
            targets = np.where(labelled, (y == label).astype(float), np.nan)
            datafit = LabelPropagationQuadratic(
                W, targets, label_weight=self.label_weight, ridge=1e-8
            )
            result = solver.solve(BCDProblem(datafit))
            F[:, c] = result.x
            n_iter = max(n_iter, int(result.nit))
        F = np.clip(F, 0.0, None)
        totals = F.sum(axis=1, keepdims=True)
        # A node no label reaches (an isolated component) gets the uniform distribution.
        self.label_distributions_ = np.where(
            totals > 0, F / np.where(totals > 0, totals, 1.0), 1.0 / k
        )
        self.transduction_ = self.classes_[self.label_distributions_.argmax(axis=1)]
        self.n_iter_ = n_iter
        self._X_fit = X
        return self

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities of new samples: weighted averages of their neighbours'."""
        check_is_fitted(self)
        check_input(X, "X", allow_sparse=True, ndim=2)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        if self.kernel == "knn":
            k = min(self.n_neighbors, self._X_fit.shape[0])
            idx = self._nn.kneighbors(X * self._knn_scale, k, return_distance=False)
            P = self.label_distributions_[idx].mean(axis=1)
        else:
            d2 = _squared_distances(X, self._X_fit)
            with np.errstate(invalid="ignore"):
                shifted = d2 - d2.min(axis=1, keepdims=True)
            # A sample infinitely far from every training sample (distances past float64)
            # is equally far from all of them.
            shifted[np.isnan(shifted)] = 0.0
            Wn = np.exp(-self.gamma * shifted)
            P = Wn @ self.label_distributions_
        totals = P.sum(axis=1, keepdims=True)
        return P / np.where(totals > 0, totals, 1.0)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The most probable class of each sample."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]


def _squared_distances(A, B) -> np.ndarray:
    """Pairwise squared distances; past float64's range they are infinite (weight 0)."""
    with np.errstate(over="ignore"):
        return ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)


def _distance_scale(X) -> float:
    """A power of two bringing ``X`` to unit magnitude when its squared distances could
    overflow or underflow (the nearest-neighbour graph does not change with a common scale;
    a power of two scales exactly), else 1."""
    top = float(np.abs(X).max(initial=0.0))
    if top == 0.0 or 1e-100 <= top <= 1e100:
        return 1.0
    return float(2.0 ** -np.frexp(top)[1])


# Samples per block of the default partition of BCDLabelPropagation.
_CLUSTER_SIZE = 400


def _cluster_blocks(X: np.ndarray) -> list[np.ndarray]:
    """k-means clusters of the samples as blocks (each a connected-ish piece of the graph)."""
    from sklearn.cluster import KMeans

    n_blocks = max(2, min(X.shape[0] // _CLUSTER_SIZE, 50))
    n_blocks = min(n_blocks, X.shape[0])
    with warnings.catch_warnings():
        # Duplicate samples can leave fewer distinct clusters: empty blocks are dropped.
        warnings.simplefilter("ignore")
        labels = KMeans(n_blocks, n_init=1, random_state=0).fit_predict(X)
    return [np.flatnonzero(labels == c) for c in range(n_blocks) if np.any(labels == c)]
