"""Imbalanced clustering of fixed features with a prototype head and SP²OT pseudo-labels."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from mmopt._core._docstrings import fill_doc, references
from mmopt._core.exceptions import ConvergenceWarning
from mmopt._core.validation import check_choice, check_scalar
from mmopt.ot.p2ot import progressive_partial_ot, rho_schedule
from mmopt.ot.sp2ot import semantic_graph

__all__ = ["ImbalancedOTClustering"]


@fill_doc(references("zhang2024p2ot", "zhang2024sp2ot"))
class ImbalancedOTClustering(ClusterMixin, BaseEstimator):
    r"""Clustering with a prototype head trained on (S)P²OT pseudo-labels.

    The features are centered and scaled (by one common factor, or per feature with
    ``standardize=True``); the head is a linear softmax layer whose weights and
    biases come from ``k`` prototypes ``mu_j`` (logits ``-||x_i - mu_j||^2 / (2 T s)`` up to
    a per-sample constant, ``T = temperature``, ``s`` the mean squared distance of the
    samples to their nearest initial center), started from k-means (or k-means++ seeds).
    Each of ``n_rounds`` rounds

    1. takes the progressive fraction ``rho_t`` (:func:`rho_schedule`),
    2. computes pseudo-labels: the P²OT plan ``Q_t`` (:func:`progressive_partial_ot`) for
       the cost ``-log softmax(logits) - lam A (n Q_{t-1})``, where ``A = D^{-1}(S + S^T)``
       averages over the neighbours of the features' semantic graph ``S``
       (:func:`semantic_graph`, ``D`` its degrees): each sample is rewarded by ``lam``
       times its neighbours' shares of the last plan in each cluster. This is SP²OT's
       semantic term ``-lambda <S, Q Q^T>`` linearized at the last plan (one
       majorization-minimization step per round, interleaved with the head's updates as
       in the papers' training), with each sample's reward normalized by its degree so
       that it lies in ``[0, lam]`` whatever the density, and each cluster's divided by
       the mean column sum of ``A`` over its transported samples (clipped at ``lam``):
       every cluster hands out a total reward equal to its transported mass, however
       many neighbour lists its confident samples are in (without this, with few
       clusters, the one whose confident samples lie in the densest region takes all
       the mass over the rounds); ``lam=0`` gives plain P²OT,
    3. refits the prototypes to the plan: ``mu_j`` is the ``Q``-weighted mean of the
       samples (the minimizer of ``sum_ij Q_ij ||x_i - mu_j||^2``); a prototype left with
       under 1% of an equal share of the mass restarts at the sample farthest from the
       other prototypes.

    Only the transported (confident) mass trains the head, starting with a fraction
    ``rho_0`` and growing to all of it, and the cluster sizes are only KL-pulled towards the
    prior: long-tailed clusters are not forced to equal size as by balanced Sinkhorn
    pseudo-labels. The labels of the training samples are the last plan's (which uses
    the semantic graph); :meth:`predict` assigns new samples with the head alone (nearest
    prototype), so on the training samples it can differ from ``labels_`` near the
    boundaries. The semantic reward helps most with many clusters separated by
    low-density regions; with two or three overlapping clusters of different spreads, or
    small clusters hardly larger than the neighbourhoods, it can pull samples into the
    larger clusters: compare with ``lam=0`` there (see the user guide).

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters.
    n_rounds : int, default=20
        Pseudo-labelling rounds.
    rho0 : float, default=0.1
        Initial transported fraction of the schedule.
    lam : float, default=4.0
        Weight of the semantic reward (in units of the cost, nats); 0 gives P²OT
        pseudo-labels.
    gamma : float, default=0.01
        KL relaxation of the cluster sizes (small: the sizes follow the data more than the
        uniform prior; the papers' 1 suits deep training, where features adapt).
    reg : float, default=0.1
        Entropic regularization of the plans.
    temperature : float, default=0.5
        Softmax temperature of the head, relative to the data's spread ``s``.
    n_neighbors : int, default=10
        Neighbours of the semantic graph.
    standardize : bool, default=False
        Scale each feature to unit variance (for features in unrelated units). By default
        one common factor (the root mean variance) is used, which keeps the geometry of the
        features: per-feature scaling of, e.g., principal components whitens them and
        gives the low-variance (noisy) directions the weight of the leading ones.
    init : {"kmeans", "k-means++"}, default="kmeans"
        Start: the centers of a k-means fit (4 starts) or k-means++ seeds.
    random_state : int, RandomState instance or None, default=None
        Seeds the start.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample: the largest entry of its row of the last plan.
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        Centers in the input space: the plan-weighted means of the samples.
    plan_ : ndarray of shape (n_samples, n_clusters)
        The last round's pseudo-label plan.
    n_features_in_ : int
        Number of features seen in ``fit``.

    %(references)s

    Examples
    --------
    >>> from mmopt.ot import ImbalancedOTClustering
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(0, 0.5, (90, 2)), rng.normal(4, 0.5, (10, 2))])
    >>> model = ImbalancedOTClustering(n_clusters=2, random_state=0).fit(X)
    >>> sorted(np.bincount(model.labels_).tolist())
    [10, 90]
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_rounds: int = 20,
        rho0: float = 0.1,
        lam: float = 4.0,
        gamma: float = 0.01,
        reg: float = 0.1,
        temperature: float = 0.5,
        n_neighbors: int = 10,
        standardize: bool = False,
        init: str = "kmeans",
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.n_rounds = n_rounds
        self.rho0 = rho0
        self.lam = lam
        self.gamma = gamma
        self.reg = reg
        self.temperature = temperature
        self.n_neighbors = n_neighbors
        self.standardize = standardize
        self.init = init
        self.random_state = random_state

    def _embed(self, X):
        return (X - self.mean_) / self.scale_

    def _logits(self, Z):
        # -||z - mu_j||^2 / (2 T s) up to a per-sample constant: linear in z with a bias.
        logits = Z @ self.prototypes_.T - 0.5 * (self.prototypes_**2).sum(axis=1)
        return logits / (self.temperature * self.spread_)

    def fit(self, X, y=None):
        """Fit the prototypes on ``X``; ``y`` is ignored."""
        X = validate_data(self, X, dtype=np.float64)
        k = check_scalar(self.n_clusters, "n_clusters", kind=int, min_value=1)
        rounds = check_scalar(self.n_rounds, "n_rounds", kind=int, min_value=1)
        rho0 = check_scalar(self.rho0, "rho0", min_value=0.0, max_value=1.0,
                            include_min=False)
        lam = check_scalar(self.lam, "lam", min_value=0.0)
        check_scalar(self.temperature, "temperature", min_value=0.0, include_min=False)
        check_scalar(self.n_neighbors, "n_neighbors", kind=int, min_value=1)
        check_choice(self.init, "init", ("kmeans", "k-means++"))
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise TypeError(f"standardize must be True or False, got {self.standardize!r}.")
        n = X.shape[0]
        if n < max(k, 2):
            raise ValueError(f"n_samples={n} should be >= max(n_clusters={k}, 2).")
        rng = check_random_state(self.random_state)
        self.mean_ = X.mean(axis=0)
        if self.standardize:
            scale = X.std(axis=0)
        else:
            scale = np.full(X.shape[1], float(np.sqrt(X.var(axis=0).mean())))
        self.scale_ = np.where(scale > 0, scale, 1.0)
        Z = self._embed(X)
        if self.init == "kmeans":
            centers = KMeans(k, n_init=4, random_state=rng).fit(Z).cluster_centers_
        else:
            centers, _ = kmeans_plusplus(Z, k, random_state=rng)
        distances = ((Z[:, None, :] - centers[None]) ** 2).sum(-1).min(axis=1)
        spread = float(distances.mean())
        self.spread_ = spread if spread > 0 else 1.0
        self.prototypes_ = np.array(centers, dtype=float)
        walk = self._neighbour_average(Z) if lam > 0 else None
        # How many neighbour lists hear each sample's label (the column sums of the walk,
        # mean 1): samples in dense regions next to sparse ones are heard the most.
        audience = np.asarray(walk.sum(axis=0)).ravel() if walk is not None else None
        plan, x0 = None, None
        for t in range(rounds):
            rho = rho_schedule(t + 1, rounds, rho0=rho0)
            logits = self._logits(Z)
            shifted = logits - logits.max(axis=1, keepdims=True)
            C = -(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))
            if walk is not None and plan is not None:
                # The semantic term linearized at the last plan: each sample is rewarded
                # by lam times its neighbours' (transported) share in each cluster.
                C = C - lam * self._reward(walk, audience, plan)
                C -= C.min()
            # Warm start: the potentials change little from one round to the next.
            plan, x0 = self._pseudo_labels(C, rho, x0)
            self.prototypes_ = self._refit(plan, Z)
        self.plan_ = plan
        weights = plan.sum(axis=0)
        safe = np.where(weights > 0, weights, 1.0)
        self.cluster_centers_ = np.where(
            weights[:, None] > 0, (plan.T @ X) / safe[:, None], self.mean_[None, :]
        )
        self.labels_ = plan.argmax(axis=1)
        return self

    @staticmethod
    def _reward(walk, audience, plan):
        """Neighbour shares ``A (n Q)``, each cluster's divided by the mean audience of its
        transported samples (clipped to [0, 1]).

        Without the division a cluster whose confident samples sit in a dense region is
        heard by more samples than one whose confident samples are spread out (the
        ``k``-nearest-neighbour lists of a sparse region's samples point into the dense one,
        not the reverse), and with few clusters that advantage compounds over the rounds
        until the dense cluster has taken all the mass. With it every cluster hands out a
        total reward equal to its transported mass."""
        mass = plan.sum(axis=0)
        heard = (audience @ plan) / np.where(mass > 0, mass, 1.0)
        share = walk @ (plan.shape[0] * plan)
        return np.minimum(share / np.maximum(heard, 1e-3), 1.0)

    @staticmethod
    def _refit(plan, Z):
        """The plan's weighted means; a prototype left with under 1% of an equal share of
        the mass restarts at the sample farthest from the other prototypes (as k-means++
        would place it deterministically: in a region no prototype covers)."""
        weights = plan.sum(axis=0)
        k = weights.size
        safe = np.where(weights > 0, weights, 1.0)
        centers = (plan.T @ Z) / safe[:, None]
        empty = weights <= 1e-2 * max(float(weights.sum()), 1e-300) / k
        if empty.any() and not empty.all():
            far = ((Z[:, None, :] - centers[~empty][None]) ** 2).sum(-1).min(axis=1)
            for j in np.flatnonzero(empty):
                i = int(far.argmax())
                centers[j] = Z[i]
                far = np.minimum(far, ((Z - Z[i]) ** 2).sum(axis=1))
        return centers

    def _neighbour_average(self, Z):
        """Row-normalized symmetrized semantic graph ``D^-1 (S + S^T)``."""
        S = semantic_graph(Z, self.n_neighbors)
        W = (S + S.T).tocsr()
        degree = np.asarray(W.sum(axis=1)).ravel()
        return sp.diags(1.0 / np.where(degree > 0, degree, 1.0)) @ W

    def _pseudo_labels(self, C, rho, x0):
        with warnings.catch_warnings():
            # Each round's plan only needs to be good enough to move the prototypes.
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = progressive_partial_ot(C, rho, self.gamma, self.reg, tol=1e-8,
                                         max_iter=2000, x0=x0)
        return res.plan, res.x

    def predict(self, X):
        """The cluster of each sample: the head's most likely prototype."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self._logits(self._embed(X)).argmax(axis=1)
