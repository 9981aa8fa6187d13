r"""Reduction of a union of mixtures of experts to ``K`` experts by transportation divergence.

Given ``M`` local mixtures of experts (each fitted on one shard of the data, with weight
:math:`\lambda_m`) and support points :math:`x_s` (with weights :math:`\omega_s`), their union
is a mixture of ``L = K M`` experts ``l`` with gate masses
:math:`a_{sl} = \omega_s \lambda_{m(l)} \pi_l(x_s)` at the support points. The reduced experts
:math:`\theta = (\beta_k, \sigma_k^2)_{k \le K}` minimize the transportation divergence

.. math::

    D(\theta) = \sum_{s, l} a_{sl} \min_k \mathrm{KL}\big(N(x_s^\top \beta_l, \sigma_l^2)
    \,\|\, N(x_s^\top \beta_k, \sigma_k^2)\big),

with :math:`\mathrm{KL} = \tfrac12 [\log(\sigma_k^2 / \sigma_l^2) + (\sigma_l^2 +
(x_s^\top(\beta_l - \beta_k))^2) / \sigma_k^2 - 1]`: each local expert at each support point
sends its whole gate mass to one reduced expert (with free reduced weights, the optimal
transportation plan is this hard assignment).

MM: at :math:`\theta_t`, fixing the assignment :math:`k_t(s, l)` gives a surrogate
:math:`Q(\theta \mid \theta_t) = \sum a_{sl} \mathrm{KL}_{s l k_t(s, l)}(\theta) \ge D(\theta)`
with equality at :math:`\theta_t` (the plan step). Its minimizer (the expert step) splits by
reduced expert ``k`` with transported mass :math:`T_{sl} = a_{sl} [k_t(s, l) = k]`. Since
:math:`\sigma_k^2` does not depend on ``s``, :math:`\beta_k` minimizes
:math:`\sum T_{sl} (x_s^\top \beta_l - x_s^\top \beta_k)^2` whatever :math:`\sigma_k^2`:
weighted least squares of the local means on the support points. Setting the derivative in
:math:`\sigma_k^2` of :math:`\tfrac12 \sum T_{sl} [\log \sigma_k^2 + (\sigma_l^2 +
(x_s^\top(\beta_l - \beta_k))^2) / \sigma_k^2]` to zero gives

.. math::

    \sigma_k^2 = \frac{\sum_{s,l} T_{sl} \big(\sigma_l^2 + (x_s^\top(\beta_l - \beta_k))^2
    \big)}{\sum_{s,l} T_{sl}},

the unique minimizer (the function is decreasing then increasing in :math:`\sigma_k^2`).
The divergence therefore never increases. The gates come last: the multinomial-logistic fit
on the support points with targets :math:`\sum_l T_{sl}` per reduced expert.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from mmopt._core.result import Result
from mmopt._core.validation import check_array, check_scalar
from mmopt.mm.moe import MixtureOfExperts, _design, fit_gates, log_softmax
from mmopt.mm.problem import MMProblem
from mmopt.mm.solver import MMSolver

__all__ = ["MixtureReductionProblem", "aggregate_mixtures"]

_TINY_VARIANCE = 1e-300


def _local_parameters(models: Sequence) -> tuple[list, np.ndarray, np.ndarray, list[int]]:
    """Gates per model, the stacked experts (L, p) and variances (L,), and expert counts."""
    if isinstance(models, MixtureOfExperts) or not hasattr(models, "__len__"):
        raise TypeError("models must be a sequence of fitted MixtureOfExperts.")
    if len(models) == 0:
        raise ValueError("models must hold at least one fitted MixtureOfExperts.")
    gates, experts, variances, counts = [], [], [], []
    n_features = None
    for i, model in enumerate(models):
        if not isinstance(model, MixtureOfExperts):
            raise TypeError(
                f"models[{i}] must be a fitted MixtureOfExperts, got {type(model).__name__}."
            )
        check_is_fitted(model)
        if n_features is None:
            n_features = model.n_features_in_
        elif model.n_features_in_ != n_features:
            raise ValueError(
                f"models[{i}] has {model.n_features_in_} features; models[0] has {n_features}."
            )
        W, B, v = model._parameters()
        gates.append(W)
        experts.append(B)
        variances.append(v)
        counts.append(B.shape[0])
    return gates, np.vstack(experts), np.concatenate(variances), counts


class MixtureReductionProblem(MMProblem):
    r"""Reduce a weighted union of mixtures of experts to ``n_experts`` experts (MM).

    The iterate packs the reduced experts ``B`` (n_experts, n_features + 1; intercept first)
    and their variances (n_experts,). ``F`` is the transportation divergence ``D`` of the
    module's docstring; ``G`` is one plan step and one expert step.

    Parameters
    ----------
    models : sequence of fitted MixtureOfExperts
        The local mixtures.
    support : array-like of shape (n_support, n_features)
        Support points.
    n_experts : int
        Number of reduced experts ``K``.
    weights : array-like of shape (n_models,), optional
        Model weights ``lambda_m`` (the shard sizes, say); normalized to sum to one. Equal
        when None.
    support_weight : array-like of shape (n_support,), optional
        Weights ``omega_s`` of the support points; normalized. Equal when None.
    random_state : int, RandomState instance or None, default=None
        Seed of the k-means initialization over the local experts.

    Examples
    --------
    >>> from mmopt.datasets import make_moe_regression
    >>> from mmopt.mm import MixtureOfExperts, MixtureReductionProblem
    >>> X, y, _ = make_moe_regression(600, 1, 2, random_state=0)
    >>> local = MixtureOfExperts(2, n_init=1, random_state=0).fit(X, y)
    >>> problem = MixtureReductionProblem([local], X[:100], n_experts=2, random_state=0)
    >>> res = problem.solve(anderson=False, stopping="objective")
    >>> bool(abs(res.fun) < 1e-12)  # one model: the reduction is the model itself
    True
    """

    def __init__(self, models, support, n_experts: int, *, weights=None,
                 support_weight=None, random_state=None):
        gates, experts, variances, counts = _local_parameters(models)
        self.n_experts = check_scalar(n_experts, "n_experts", kind=int, min_value=1)
        support = check_array(support, "support", ndim=2)
        n_features = experts.shape[1] - 1
        if support.shape[1] != n_features:
            raise ValueError(
                f"support must have {n_features} columns like the models, got "
                f"{support.shape[1]}."
            )
        self.Z = _design(support)
        n_models = len(gates)
        lam = np.full(n_models, 1.0 / n_models) if weights is None else check_array(
            weights, "weights", ndim=1, shape=(n_models,), nonnegative=True)
        if lam.sum() <= 0:
            raise ValueError("weights must have a positive sum.")
        lam = lam / lam.sum()
        omega = np.full(len(support), 1.0 / len(support)) if support_weight is None else \
            check_array(support_weight, "support_weight", ndim=1, shape=(len(support),),
                        nonnegative=True)
        if omega.sum() <= 0:
            raise ValueError("support_weight must have a positive sum.")
        omega = omega / omega.sum()
        # Gate mass a_sl = omega_s lambda_m pi_l(x_s) of every local expert at every point.
        self.mass = np.hstack([
            omega[:, None] * lam_m * np.exp(log_softmax(self.Z @ W.T, axis=1))
            for lam_m, W in zip(lam, gates)
        ])
        self.local_experts = experts
        self.local_variances = np.maximum(variances, _TINY_VARIANCE)
        self.local_means = self.Z @ experts.T
        self.counts = counts
        self.random_state = random_state
        self.x0 = self._kmeans_start()

    def unpack(self, x):
        """``(B, variances)`` from a packed iterate."""
        K, p = self.n_experts, self.Z.shape[1]
        return x[: K * p].reshape(K, p), x[K * p:]

    def _kmeans_start(self):
        """Reduced experts from weighted k-means over the local experts' parameters."""
        K = self.n_experts
        features = np.column_stack([self.local_experts, np.sqrt(self.local_variances)])
        weight = self.mass.sum(axis=0)
        # Experts equal to about nine digits (noise-free data: every shard fits the same
        # line) are one cluster, not several that k-means could not tell apart.
        scale = max(float(np.abs(features).max()), np.finfo(float).tiny)
        n_distinct = len(np.unique(np.round(features / scale, 9), axis=0))
        rng = check_random_state(self.random_state)
        kmeans = KMeans(min(K, n_distinct), n_init=10, random_state=rng.randint(2**31 - 1))
        labels = kmeans.fit(features, sample_weight=weight + 1e-12).labels_
        # k-means may still leave a cluster empty (distinct but nearly equal experts): the
        # reduced experts then repeat the non-empty clusters, as when there are fewer than K.
        clusters = np.unique(labels)
        B = np.empty((K, self.Z.shape[1]))
        v = np.empty(K)
        for k in range(K):
            members = labels == clusters[k % len(clusters)]
            # Relative weights, so that clusters of massless experts average without
            # underflowing to a zero variance.
            w = weight[members]
            w = w / w.sum() if w.sum() > 0 else np.ones(len(w))
            B[k] = np.average(self.local_experts[members], axis=0, weights=w)
            v[k] = np.average(self.local_variances[members], weights=w)
        return np.concatenate([B.ravel(), np.maximum(v, _TINY_VARIANCE)])

    def kl_divergences(self, x) -> np.ndarray:
        """``KL(local expert l || reduced expert k)`` at each support point: (n_s, L, K)."""
        B, v = self.unpack(x)
        reduced = self.Z @ B.T
        gap = self.local_means[:, :, None] - reduced[:, None, :]
        vl = self.local_variances[None, :, None]
        return 0.5 * (np.log(v / vl) + (vl + gap**2) / v - 1.0)

    def assignment(self, x) -> np.ndarray:
        """The plan step: the reduced expert each local expert sends its mass to, (n_s, L)."""
        return np.argmin(self.kl_divergences(x), axis=2)

    def objective(self, x) -> float:
        return float(np.sum(self.mass * self.kl_divergences(x).min(axis=2)))

    def surrogate_minimizer(self, x):
        return self.mm_step(x)[0]

    def mm_step(self, x):
        kl = self.kl_divergences(x)
        assign = np.argmin(kl, axis=2)
        fun = float(np.sum(self.mass * np.take_along_axis(kl, assign[:, :, None], 2)[..., 0]))
        return self._expert_step(x, assign), fun

    def _expert_step(self, x, assign):
        B, v = self.unpack(x)
        B, v = B.copy(), v.copy()
        for k in range(self.n_experts):
            T = np.where(assign == k, self.mass, 0.0)
            t = T.sum(axis=1)
            total = float(t.sum())
            if total <= 0:
                continue  # no mass: nothing moves this expert
            target = (T * self.local_means).sum(axis=1) / np.where(t > 0, t, 1.0)
            root = np.sqrt(t)
            B[k] = np.linalg.lstsq(self.Z * root[:, None], target * root, rcond=None)[0]
            gap = self.local_means - (self.Z @ B[k])[:, None]
            # The weighted mean of vl + gap^2 about the heaviest local expert's variance:
            # exactly that variance when all the mass comes from it (one shard: the reduced
            # expert is the local one, whose gaps are rounding errors), so the divergence is
            # exactly zero there instead of a rounding error of either sign.
            base = self.local_variances[np.argmax(T.sum(axis=0))]
            v[k] = base + float(np.sum(T * ((self.local_variances - base) + gap**2))) / total
        return np.concatenate([B.ravel(), np.maximum(v, _TINY_VARIANCE)])

    def gate_targets(self, x) -> np.ndarray:
        """Mass each reduced expert receives at each support point, (n_s, K)."""
        assign = self.assignment(x)
        out = np.zeros((self.Z.shape[0], self.n_experts))
        for k in range(self.n_experts):
            out[:, k] = np.where(assign == k, self.mass, 0.0).sum(axis=1)
        return out

    def project(self, x):
        out = np.array(x, dtype=float)
        K, p = self.n_experts, self.Z.shape[1]
        out[K * p:] = np.maximum(out[K * p:], _TINY_VARIANCE)
        return out

    def initial_point(self):
        return self.x0

    def model(self, x) -> MixtureOfExperts:
        """The reduced model: experts from ``x``, gates fitted on the support points."""
        B, v = self.unpack(x)
        W = fit_gates(self.Z, self.gate_targets(x), np.zeros_like(B), tol=1e-12)
        model = MixtureOfExperts(self.n_experts)
        model.n_features_in_ = self.Z.shape[1] - 1
        model._set_parameters(W, B, v)
        return model

    def __repr__(self) -> str:
        return (f"MixtureReductionProblem(n_local_experts={self.local_experts.shape[0]}, "
                f"n_experts={self.n_experts}, n_support={self.Z.shape[0]})")


def aggregate_mixtures(models, support, weights=None, *, n_experts: int | None = None,
                       support_weight=None, tol: float = 1e-6, max_iter: int = 200,
                       random_state=None, **options) -> Result:
    """Reduce the weighted union of local mixtures of experts to one mixture of ``K``.

    Minimizes the transportation divergence between the union (``K x M`` experts, model
    ``m`` weighted by ``weights[m]``) and a ``K``-expert mixture at the support points, by MM
    (:class:`MixtureReductionProblem` on :class:`~mmopt.mm.MMSolver`) from a k-means start
    over the local experts, until the relative change of the divergence is at most ``tol``;
    then fits the gates by multinomial logistic regression on the support points, with the
    mass the plan sends to each reduced expert as targets.

    Parameters
    ----------
    models : sequence of fitted MixtureOfExperts
        The local models.
    support : array-like of shape (n_support, n_features) or sequence of such arrays
        Support points (a sequence, one array per model, is stacked).
    weights : array-like of shape (n_models,), optional
        Model weights (shard sizes); equal when None.
    n_experts : int, optional
        ``K``; the first model's number of experts when None.
    support_weight : array-like of shape (n_support,), optional
        Weights of the support points; equal when None.
    tol : float, default=1e-6
        Relative change of the divergence that stops MM.
    max_iter : int, default=200
        Maximum MM iterations.
    random_state : int, RandomState instance or None, default=None
        Seed of the k-means initialization.
    **options
        Other :class:`~mmopt.mm.MMSolver` options (``anderson=True``, ``callback``, ...).

    Returns
    -------
    Result
        ``fun`` is the divergence, ``x`` the packed reduced experts; extra fields ``model``
        (the reduced :class:`MixtureOfExperts`), ``assignment`` (n_support, K x M), the
        reduced expert each local expert sends its mass to at each support point, and
        ``problem``.

    Examples
    --------
    >>> from mmopt.datasets import make_moe_regression
    >>> from mmopt.mm import MixtureOfExperts, aggregate_mixtures
    >>> X, y, _ = make_moe_regression(2000, 1, 2, noise=0.2, random_state=0)
    >>> shards = np.array_split(np.arange(2000), 2)
    >>> local = [MixtureOfExperts(2, n_init=1, random_state=0).fit(X[i], y[i]) for i in shards]
    >>> res = aggregate_mixtures(local, X[::10], weights=[1000, 1000], random_state=0)
    >>> res.model.coef_.shape, bool(res.fun < 0.05)
    ((2, 1), True)
    """
    if isinstance(support, list | tuple):
        support = np.vstack([check_array(s, f"support[{i}]", ndim=2)
                             for i, s in enumerate(support)])
    if n_experts is None:
        n_experts = _local_parameters(models)[3][0]
    problem = MixtureReductionProblem(models, support, n_experts, weights=weights,
                                      support_weight=support_weight,
                                      random_state=random_state)
    options.setdefault("anderson", False)
    solver = MMSolver(stopping="objective", tol=tol, max_iter=max_iter, **options)
    result = solver.solve(problem)
    result.model = problem.model(result.x)
    result.assignment = problem.assignment(result.x)
    result.problem = problem
    return result
