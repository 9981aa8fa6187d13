"""SP²OT: semantic-regularized progressive partial OT, by majorization-minimization.

The outer iteration is an :class:`mmopt.mm.MMProblem` solved on the shared MM loop
(:class:`mmopt.mm.MMSolver`: history, callbacks and safeguarded Anderson acceleration);
each MM step solves one P²OT problem (:mod:`mmopt.ot.p2ot`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

from mmopt._core._docstrings import fill_doc, references
from mmopt._core.linesearch import armijo, backtracking
from mmopt._core.mm import MMProblem, MMSolver
from mmopt._core.params import Param
from mmopt._core.registry import solve
from mmopt._core.result import Result
from mmopt._core.validation import check_array, check_scalar
from mmopt.ot.p2ot import P2OTProblem, ProgressivePartialOT

__all__ = ["SP2OT", "SP2OTProblem", "semantic_graph", "sp2ot_pseudo_labels"]


@fill_doc(references("zhang2024sp2ot"))
def semantic_graph(features, n_neighbors: int = 20, sigma: float | None = None):
    r"""Sparse semantic affinity ``S`` of the samples: a Gaussian kernel on the neighbours.

    .. math::

        S_{ij} = \exp\!\big(-\|x_i - x_j\|^2 / (2 \sigma^2)\big)

    for the ``n_neighbors`` nearest neighbours ``j`` of each sample ``i`` (scikit-learn's
    :class:`~sklearn.neighbors.NearestNeighbors`), zero elsewhere and on the diagonal. Not
    symmetric in general (``j`` may be a neighbour of ``i`` and not the reverse).

    Parameters
    ----------
    features : array-like of shape (n, d)
        Sample features.
    n_neighbors : int, default=20
        Neighbours per row (at most ``n - 1``).
    sigma : float, optional
        Kernel width; the median distance to the neighbours when None.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n, n)

    %(references)s

    Examples
    --------
    >>> from mmopt.ot import semantic_graph
    >>> S = semantic_graph(np.array([[0.0], [1.0], [3.0]]), n_neighbors=1)
    >>> S.toarray().round(3)
    array([[0.   , 0.607, 0.   ],
           [0.607, 0.   , 0.   ],
           [0.   , 0.135, 0.   ]])
    """
    X = check_array(features, "features", ndim=2)
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"features must have at least 2 samples, got {n}.")
    n_neighbors = check_scalar(n_neighbors, "n_neighbors", kind=int, min_value=1)
    k = min(n_neighbors, n - 1)
    distances, indices = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
    # Drop each point itself (the first neighbour, or wherever duplicates put it).
    own = indices == np.arange(n)[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(n), drop] = False
    distances = distances[keep].reshape(n, k)
    indices = indices[keep].reshape(n, k)
    if sigma is None:
        sigma = float(np.median(distances))
        if not sigma > 0:
            sigma = 1.0
    sigma = check_scalar(sigma, "sigma", min_value=0.0, include_min=False)
    values = np.exp(-(distances**2) / (2.0 * sigma**2))
    S = sp.csr_matrix(
        (values.ravel(), indices.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n)
    )
    S.sum_duplicates()
    return S


@fill_doc(references("zhang2024sp2ot", "zhang2024p2ot"))
class SP2OTProblem(MMProblem):
    r"""SP²OT as majorization-minimization over the plan ``Q`` (n samples x k clusters).

    Minimizes the P²OT objective (:class:`P2OTProblem`) minus a semantic reward,

    .. math::

        F(Q) = \langle Q, C \rangle - \lambda \langle S, Q Q^\top \rangle
        + \mathrm{reg}\,\big(\langle Q, \log Q\rangle + \langle \xi, \log \xi \rangle\big)
        + \gamma\, \mathrm{KL}(Q^\top 1 \,\|\, \rho \pi),

    over the P²OT constraints (``xi = a - Q 1 >= 0``, ``1^T Q 1 = rho``). The quadratic
    term is linearized at ``Q_t``: with ``C_t = C - lambda (S + S^T) Q_t``,
    ``Q_{t+1} = P2OT(C_t)``. When ``-<S, D D^T> <= 0`` for all ``D`` (``S`` positive
    semi-definite as a quadratic form) the linearization majorizes ``F`` and ``F``
    decreases; ``S`` need not be, so each step is safeguarded: if
    ``F(Q_{t+1}) > F(Q_t)`` the step is halved along the segment ``[Q_t, Q_{t+1}]``
    (feasible, as the constraint set is convex) until ``F`` does not increase. Along that
    segment ``F`` starts downhill (its slope at ``Q_t`` is the surrogate's, which
    ``Q_{t+1}`` minimizes), so the halving ends. ``F`` therefore never increases.

    Each inner P²OT solve is warm-started from potentials fitted to ``Q_t`` (the inner
    problem changes little between MM steps). Iterates are ``Q.ravel()``.

    Parameters
    ----------
    C : array-like of shape (n, k)
        Cost, e.g. ``-log softmax(logits)``.
    S : sparse matrix or array of shape (n, n)
        Semantic affinity (e.g. :func:`semantic_graph`); any real entries.
    rho : float
        Transported fraction, in ``(0, 1]``.
    lam : float, optional
        Weight ``lambda >= 0`` of the semantic term; ``1000 (1 - rho)`` (the papers') when
        None.
    gamma, reg, prior, a
        As in :class:`P2OTProblem` (defaults 1, 0.1, uniform, ``1/n``).
    inner_tol : float, default=1e-9
        Tolerance of each P²OT solve.
    inner_max_iter : int, default=10000
        Iteration limit of each P²OT solve.
    safeguard : bool, default=True
        Halve steps that increase ``F`` (off only to study the plain linearization).

    %(references)s

    Examples
    --------
    >>> from mmopt.mm import MMSolver
    >>> from mmopt.ot import SP2OTProblem, semantic_graph
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 2))
    >>> C = -np.log(np.full((60, 3), 1 / 3)) + 0.1 * rng.random((60, 3))
    >>> problem = SP2OTProblem(C, semantic_graph(X, 5), rho=0.5, lam=10.0)
    >>> res = MMSolver(anderson=False, stopping="objective", tol=1e-8).solve(problem)
    >>> bool(np.all(np.diff(res.history["fun"]) <= 1e-12))
    True
    """

    default_solver = "mm"

    def __init__(self, C, S, rho, *, lam=None, gamma=1.0, reg=0.1, prior=None, a=None,
                 inner_tol=1e-9, inner_max_iter=10_000, safeguard=True):
        self.p2ot = P2OTProblem(C, rho, gamma, reg, prior, a)
        n, k = self.p2ot.shape
        if sp.issparse(S):
            if S.shape != (n, n):
                raise ValueError(f"S must have shape ({n}, {n}), got {S.shape}.")
            S = sp.csr_matrix(S, dtype=float, copy=True)
            if not np.all(np.isfinite(S.data)):
                raise ValueError("S must not contain NaN or infinite values.")
        else:
            S = sp.csr_matrix(check_array(S, "S", shape=(n, n)))
        self.S = S
        self.S_sym = (S + S.T).tocsr()
        if lam is None:
            lam = 1000.0 * (1.0 - self.p2ot.rho)
        self.lam = check_scalar(lam, "lam", min_value=0.0)
        self.inner_tol = check_scalar(inner_tol, "inner_tol", min_value=0.0)
        self.inner_max_iter = check_scalar(inner_max_iter, "inner_max_iter", kind=int,
                                           min_value=1)
        if not isinstance(safeguard, (bool, np.bool_)):
            raise TypeError(f"safeguard must be True or False, got {safeguard!r}.")
        self.safeguard = bool(safeguard)
        self.shape = (n, k)
        self.x0 = self._inner(self.p2ot.C, None).ravel()
        self.x0.flags.writeable = False

    # ------------------------------------------------------------------------- objective
    def objective(self, x) -> float:
        Q = np.asarray(x, dtype=float).reshape(self.shape)
        base = self.p2ot.objective(Q)
        if not math.isfinite(base):
            return math.inf
        return base - self.lam * float(np.vdot(self.S @ Q, Q))

    # ------------------------------------------------------------------------- the step
    def _inner(self, cost, Q_t):
        """P²OT with the cost ``cost``, warm-started from potentials fitted to ``Q_t``."""
        problem = P2OTProblem(cost, self.p2ot.rho, self.p2ot.gamma, self.p2ot.reg,
                              self.p2ot.prior, self.p2ot.a)
        x0 = None if Q_t is None else self._warm_start(cost, Q_t)
        res = ProgressivePartialOT(
            tol=self.inner_tol, max_iter=self.inner_max_iter, n_threads=1
        ).solve(problem, x0=x0)
        return res.plan

    def _warm_start(self, cost, Q):
        """Potentials ``(f, g, h)`` with ``exp((f_i + g_j - cost_ij)/reg)`` close to ``Q``.

        ``h = 0`` (the direction ``(f + c, g - c, h - c)`` leaves the plan alone), ``f``
        from the slack ``xi = exp((f + h) / reg)`` and ``g`` the Q-weighted fit of the rest
        over the rows whose slack is resolved (an almost fully transported row's slack has
        lost its digits). The solver's first row update depends on ``g`` and ``h`` only.
        """
        reg, a = self.p2ot.reg, self.p2ot.a
        if self.p2ot.rho >= 1.0:
            return None
        xi = a - Q.sum(axis=1)
        resolved = xi > 1e-9 * a
        if not resolved.any():
            return None
        f = reg * np.log(np.where(resolved, xi, 1.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            fit = np.where(Q > 0, reg * np.log(Q) + cost - f[:, None], 0.0)
        weight = Q * resolved[:, None]
        total = weight.sum(axis=0)
        if not total.min() > 0:
            return None
        g = (weight * fit).sum(axis=0) / total
        x0 = np.concatenate([f, g, [0.0]])
        return x0 if np.all(np.isfinite(x0)) else None

    def _step(self, Q_t, F_t):
        cost = self.p2ot.C - self.lam * (self.S_sym @ Q_t)
        Q_new = self._inner(cost, Q_t)
        F_new = self.objective(Q_new)
        if not self.safeguard:
            return Q_new, F_new, 0
        rounding = 1e-13 * max(abs(F_t), 1.0)
        direction = Q_new - Q_t

        def trial(step):
            if step == 1.0:
                return Q_new, F_new
            Q = Q_t + step * direction
            return Q, self.objective(Q)

        # The step along [Q_t, Q_new] is halved until F does not increase (60 halvings).
        found = backtracking(trial, armijo(F_t, 0.0, c1=0.0, rounding=rounding,
                                           value=lambda t: t[1]), max_trials=61)
        halvings = found.n_trials - 1
        if not found.success:
            return Q_t, F_t, halvings
        return (*found.trial, halvings)

    def mm_step(self, x):
        Q_t = np.asarray(x, dtype=float).reshape(self.shape)
        F_t = self.objective(Q_t)
        Q_new, _, _ = self._step(Q_t, F_t)
        return Q_new.ravel(), F_t

    def surrogate_minimizer(self, x):
        return self.mm_step(x)[0]

    def safeguarded_step(self, x):
        """One MM step from ``x``: ``(Q_new.ravel(), F(Q_new), halvings)``."""
        Q_t = np.asarray(x, dtype=float).reshape(self.shape)
        Q_new, F_new, halvings = self._step(Q_t, self.objective(Q_t))
        return Q_new.ravel(), F_new, halvings

    def project(self, x):
        """A feasible plan near an extrapolated (Anderson) point: clip at 0, shrink rows
        above ``a``, then scale down (or fill the rows' slack in proportion) to the mass
        ``rho M``."""
        Q = np.maximum(np.asarray(x, dtype=float).reshape(self.shape), 0.0)
        a = self.p2ot.a
        target = self.p2ot.rho * float(a.sum())
        rows = Q.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            shrink = np.where(rows > a, a / rows, 1.0)
        Q *= shrink[:, None]
        rows = Q.sum(axis=1)
        total = float(rows.sum())
        if total >= target:
            Q *= target / total
        else:
            slack = a - rows
            share = (target - total) / float(slack.sum())
            with np.errstate(divide="ignore", invalid="ignore"):
                profile = np.where(rows[:, None] > 0, Q / rows[:, None],
                                   self.p2ot.prior[None, :])
            Q += (share * slack)[:, None] * profile
        return Q.ravel()

    def initial_point(self):
        return self.x0

    def __repr__(self) -> str:
        n, k = self.shape
        return f"SP2OTProblem(n={n}, k={k}, rho={self.p2ot.rho:g}, lam={self.lam:g})"


@fill_doc(references("zhang2024sp2ot"))
class SP2OT(MMSolver):
    """The MM solver of SP²OT: :class:`mmopt.mm.MMSolver` with the papers' defaults.

    Solves :class:`SP2OTProblem` on the shared MM loop: stop when the relative change of
    ``F`` is below ``tol`` (``stopping="objective"``) or after ``max_iter`` (100) steps;
    Anderson acceleration off by default (it took more steps on the pseudo-label problems
    measured in the user guide; with ``anderson=True`` an extrapolated plan is mapped back
    to the constraints and kept only if it lowers ``F``). Every option is
    :class:`mmopt.mm.MMSolver`'s; it is not a separate registered solver (``mmopt.solve``
    on an :class:`SP2OTProblem` uses ``"mm"``).

    %(references)s

    Examples
    --------
    >>> from mmopt.ot import SP2OT, SP2OTProblem, semantic_graph
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 2))
    >>> C = 1.0 + 0.1 * rng.random((40, 3))
    >>> res = SP2OT().solve(SP2OTProblem(C, semantic_graph(X, 5), rho=0.5, lam=5.0))
    >>> bool(res.success), res.x.reshape(40, 3).sum().round(6)
    (True, np.float64(0.5))
    """

    name = "sp2ot"
    problem_types = (SP2OTProblem,)

    _options = {
        "anderson": Param(False),
        "stopping": Param("objective"),
        "max_iter": Param(100),
    }


def _log_softmax_cost(logits):
    Z = check_array(logits, "logits", ndim=2)
    shifted = Z - Z.max(axis=1, keepdims=True)
    return -(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))


def sp2ot_pseudo_labels(
    logits,
    features,
    rho: float,
    *,
    lam: float | None = None,
    gamma: float = 1.0,
    reg: float = 0.1,
    prior=None,
    n_neighbors: int = 20,
    sigma: float | None = None,
    threshold: float = 0.5,
    **options,
) -> Result:
    r"""Imbalance-aware pseudo-labels by SP²OT (see :class:`SP2OTProblem`).

    Builds ``C = -log softmax(logits)`` and the sparse semantic graph ``S`` of the
    features (:func:`semantic_graph`), then runs the safeguarded MM of SP²OT on the shared
    MM loop (:class:`mmopt.mm.MMSolver`; ``anderson=True`` tries safeguarded Anderson
    extrapolation of the plan). Framework-agnostic: a PyTorch user passes
    ``logits.detach().numpy()`` and ``features.detach().numpy()`` per batch. The papers'
    references: :class:`SP2OTProblem`.

    Parameters
    ----------
    logits : array-like of shape (n, k)
        Model outputs (before the softmax).
    features : array-like of shape (n, d)
        Sample features for the semantic graph.
    rho : float
        Transported fraction, in ``(0, 1]`` (see :func:`rho_schedule`).
    lam : float, optional
        Semantic weight; ``1000 (1 - rho)`` when None.
    gamma, reg : float, default=1.0, 0.1
        KL relaxation of the cluster marginal and entropic regularization.
    prior : array-like of shape (k,), optional
        Cluster prior; uniform when None.
    n_neighbors : int, default=20
        Neighbours per sample in ``S``.
    sigma : float, optional
        Kernel width of ``S``; median neighbour distance when None.
    threshold : float, default=0.5
        A sample's pseudo-label is trusted (``mask``) when at least this fraction of its
        mass is transported.
    **options
        Options of :class:`SP2OT` (those of :class:`mmopt.mm.MMSolver`, with the papers'
        defaults ``stopping="objective"``, ``tol=1e-6``, ``max_iter=100``).

    Returns
    -------
    Result
        The MM result (``x`` the flattened plan, ``fun`` = ``F``, ``history``) plus
        ``plan`` (n, k), ``labels`` (row-wise argmax), ``confidence`` (transported fraction
        ``Q 1 / a``), ``mask`` (``confidence >= threshold``).

    Examples
    --------
    >>> from mmopt.ot import sp2ot_pseudo_labels
    >>> rng = np.random.default_rng(0)
    >>> features = np.vstack([rng.normal(0, 1, (40, 2)), rng.normal(6, 1, (10, 2))])
    >>> logits = np.c_[-features[:, 0], features[:, 0] - 3.0]
    >>> truth = np.repeat([0, 1], [40, 10])
    >>> res = sp2ot_pseudo_labels(logits, features, rho=0.5, lam=1.0, n_neighbors=5)
    >>> float(res.mask.mean()), float((res.labels == truth)[res.mask].mean())
    (0.48, 1.0)
    """
    C = _log_softmax_cost(logits)
    X = check_array(features, "features", ndim=2)
    if X.shape[0] != C.shape[0]:
        raise ValueError(
            f"features must have one row per row of logits ({C.shape[0]}), got {X.shape[0]}."
        )
    threshold = check_scalar(threshold, "threshold", min_value=0.0, max_value=1.0)
    S = semantic_graph(X, n_neighbors, sigma)
    problem = SP2OTProblem(C, S, rho, lam=lam, gamma=gamma, reg=reg, prior=prior)
    res = solve(problem, SP2OT, **options)
    plan = np.asarray(res.x).reshape(problem.shape)
    confidence = plan.sum(axis=1) / problem.p2ot.a
    res.update(
        plan=plan,
        labels=plan.argmax(axis=1),
        confidence=confidence,
        mask=confidence >= threshold,
    )
    return res
