"""Progressive partial optimal transport (P²OT): imbalance-aware pseudo-labels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mmopt._core._docstrings import SOLVER_PARAMS, fill_doc, references
from mmopt._core.registry import register_solver, solve
from mmopt._core.result import Result
from mmopt._core.solver import Solver, SolverState
from mmopt._core.threads import effective_n_threads
from mmopt._core.validation import check_array, check_scalar, readonly
from mmopt.ot._kernels import dense_plan, log_half_step
from mmopt.ot._support import OT_PARAMS, SCALING_OPTIONS, kl, logsumexp
from mmopt.ot.problem import CostMatrixProblem

__all__ = ["P2OTProblem", "ProgressivePartialOT", "progressive_partial_ot", "rho_schedule"]


@dataclass(frozen=True, repr=False)
@fill_doc(OT_PARAMS)
class P2OTProblem(CostMatrixProblem):
    r"""The P²OT problem of Zhang et al.: partial OT with a KL-relaxed cluster marginal.

    For a cost ``C`` (n samples x k clusters), find the plan ``Q`` and the slack
    ``xi = a - Q 1`` (the mass of each sample left untransported: the papers' virtual
    column, of cost 0) minimizing

    .. math::

        \langle Q, C \rangle + \mathrm{reg} \Big(\sum_{ij} Q_{ij} \log Q_{ij}
        + \sum_i \xi_i \log \xi_i\Big) + \gamma\, \mathrm{KL}(Q^\top 1 \,\|\, \rho M \pi)

    subject to ``Q >= 0``, ``Q 1 + xi = a`` (so ``Q 1 <= a``) and ``1^T Q 1 = rho M``, where
    ``M = sum(a)`` and ``pi`` is the cluster prior (uniform by default). This is the problem
    the papers' scaling algorithm solves (the entropy covers the virtual column too, as in
    their augmented formulation). The plan is
    ``Q_ij = exp((f_i + g_j - C_ij) / reg)`` and ``xi_i = exp((f_i + h) / reg)``.

    Parameters
    ----------
    C : array-like of shape (n, k)
        Finite cost (``-log softmax(logits)`` in the papers).
    rho : float
        Fraction of the mass to transport, in ``(0, 1]``.
    gamma : float
        Strength of the KL relaxation of the cluster marginal (> 0; ``inf`` makes it exact).
    %(entropic_reg)s
    prior : array-like of shape (k,), optional
        Cluster prior ``pi`` (non-negative, normalized here); uniform when None.
    a : array-like of shape (n,), optional
        Sample masses; ``1/n`` each when None.

    Examples
    --------
    >>> from mmopt.ot import P2OTProblem
    >>> P2OTProblem(np.ones((4, 2)), rho=0.5, gamma=1.0, reg=0.1)
    P2OTProblem(n=4, k=2, rho=0.5, gamma=1, reg=0.1)
    """

    C: np.ndarray
    rho: float
    gamma: float = 1.0
    reg: float = 0.1
    prior: np.ndarray | None = None
    a: np.ndarray | None = None

    default_solver = "p2ot"
    _plan_axes = ("n", "k")
    _repr_fields = ("rho", "gamma", "reg")

    def __post_init__(self):
        C = check_array(self.C, "C", ndim=2)
        n, k = C.shape
        rho = check_scalar(self.rho, "rho", min_value=0.0, max_value=1.0, include_min=False)
        gamma = self.gamma
        if not (isinstance(gamma, (int, float, np.integer, np.floating))
                and not isinstance(gamma, bool)):
            raise TypeError(f"gamma must be a real number, got {gamma!r}.")
        gamma = float(gamma)
        if math.isnan(gamma) or not gamma > 0:
            raise ValueError(f"gamma must be > 0 (inf for an exact marginal), got {gamma!r}.")
        reg = check_scalar(self.reg, "reg", min_value=0.0, include_min=False)
        if self.prior is None:
            prior = readonly(np.full(k, 1.0 / k))
        else:
            prior = check_array(self.prior, "prior", ndim=1, nonnegative=True)
            if prior.shape[0] != k:
                raise ValueError(
                    f"prior must have one entry per column of C ({k}), got {prior.shape[0]}."
                )
            if not prior.sum() > 0:
                raise ValueError("prior must have a positive total.")
            prior = readonly(prior / prior.sum())
        if self.a is None:
            a = readonly(np.full(n, 1.0 / n))
        else:
            a = check_array(self.a, "a", ndim=1, nonnegative=True)
            if a.shape[0] != n:
                raise ValueError(f"a must have one entry per row of C ({n}), got {a.shape[0]}.")
            if not a.min() > 0:
                raise ValueError("a must be positive.")
        self._set_fields(C=C, rho=rho, gamma=gamma, reg=reg, prior=prior, a=a)

    def objective(self, Q) -> float:
        """The P²OT objective of a plan ``Q`` (slack ``a - Q 1``); ``inf`` if infeasible."""
        Q = np.asarray(Q, dtype=float)
        xi = self.a - Q.sum(axis=1)
        if Q.min() < 0 or xi.min() < -1e-12:
            return math.inf
        xi = np.maximum(xi, 0.0)
        value = float(np.vdot(Q, self.C)) + self.reg * (_xlogx(Q) + _xlogx(xi))
        q = Q.sum(axis=0)
        target = self.rho * float(self.a.sum()) * self.prior
        if math.isinf(self.gamma):
            return value if np.allclose(q, target, atol=1e-9) else math.inf
        return value + self.gamma * kl(q, target)


def _xlogx(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.where(x > 0, x * np.log(x), 0.0).sum())


class _Run:
    def __init__(self, problem: P2OTProblem, n_threads):
        self.C = np.ascontiguousarray(problem.C)
        self.Ct = np.ascontiguousarray(problem.C.T)
        self.reg = problem.reg
        self.gamma = problem.gamma
        self.a = np.asarray(problem.a)
        self.log_a = np.log(self.a)
        total = float(self.a.sum())
        self.real_mass = problem.rho * total
        self.virtual_mass = total - self.real_mass
        self.beta = self.real_mass * np.asarray(problem.prior)
        with np.errstate(divide="ignore"):
            self.log_beta = np.log(self.beta)
        self.fi = 1.0 if math.isinf(self.gamma) else self.gamma / (self.gamma + self.reg)
        self.threads = effective_n_threads(n_threads, size=self.Ct.size)

    def translation(self, g):
        """Best shift ``lam`` along ``(f + lam, g - lam, h - lam)`` (plan unchanged)."""
        if math.isinf(self.gamma):
            return 0.0
        keep = self.beta > 0
        log_B = logsumexp(self.log_beta[keep] - g[keep] / self.gamma)
        return self.gamma * (math.log(self.real_mass) - log_B)

    def dual(self, f, g, h):
        # The primal's entropy is sum x log x (no -x): with the total mass fixed the dual's
        # -reg sum(Q) and +reg sum(a) cancel.
        value = float(self.a @ f)
        if self.virtual_mass > 0:
            value += self.virtual_mass * h
        keep = self.beta > 0
        if math.isinf(self.gamma):
            value += float(self.beta[keep] @ g[keep])
        else:
            value -= self.gamma * float(self.beta[keep] @ np.expm1(-g[keep] / self.gamma))
        return value


@dataclass
class _P2OTState(SolverState):
    f: np.ndarray | None = None
    g: np.ndarray | None = None
    h: float = 0.0  # potential of the virtual column
    run: _Run | None = None


@register_solver
@fill_doc(SOLVER_PARAMS, OT_PARAMS, references("zhang2024p2ot", "zhang2024sp2ot", "chizat2018"))
class ProgressivePartialOT(Solver):
    r"""Scaling algorithm of P²OT with an implicit virtual column, in the log domain.

    Block coordinate ascent on the dual of :class:`P2OTProblem` (potentials ``f`` of the
    samples, ``g`` of the clusters, ``h`` of the virtual column of cost 0 and mass
    ``(1 - rho) M``): the rows are scaled to sum to ``a`` over the real columns plus the
    virtual one, the virtual column to its mass, the real columns towards ``rho M pi`` with
    the exponent ``gamma / (gamma + reg)`` of the KL relaxation:

    .. math::

        f_i = \mathrm{reg}\Big(\log a_i - \log\big(\textstyle\sum_j
        e^{(g_j - C_{ij})/\mathrm{reg}} + e^{h/\mathrm{reg}}\big)\Big),\quad
        g_j = \tfrac{\gamma}{\gamma + \mathrm{reg}}\,\mathrm{reg}
        \Big(\log (\rho M \pi_j) - \log \textstyle\sum_i e^{(f_i - C_{ij})/\mathrm{reg}}\Big).

    The virtual column is one scalar potential, never a column of the cost. Each iteration
    also takes the exact best step along ``(f + lam, g - lam, h - lam)``, which leaves the
    plan unchanged (translation invariance): the dual increases at every block.

    Parameters
    ----------
    tol : float, default=1e-9
        Stop when the rows' L1 error ``||Q 1 + xi - a||_1`` (the other blocks are exactly
        optimal after each iteration) is at most ``tol``; lagged by one iteration.
    %(scaling_options)s

    Notes
    -----
    ``Result.x`` is ``concat(f, g, [h])``, ``fun`` the dual objective (maximized). Extra
    fields: ``plan`` (n, k), ``slack`` (``xi = a - Q 1``, the virtual column),
    ``transported`` (``Q 1 / a``, each sample's transported fraction: the confidence of
    its pseudo-label), ``transported_mass``, ``cluster_marginal`` (``Q^T 1``), ``f``,
    ``g``, ``h``, ``objective`` (the primal objective), ``row_error``.

    %(references)s

    Examples
    --------
    >>> from mmopt.ot import P2OTProblem, ProgressivePartialOT
    >>> C = -np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]))
    >>> res = ProgressivePartialOT().solve(P2OTProblem(C, rho=0.5))
    >>> round(res.transported_mass, 6), bool(np.all(res.plan.sum(1) <= 1 / 3))
    (0.5, True)
    """

    name = "p2ot"
    problem_types = (P2OTProblem,)
    maximize = True

    _options = {
        **SCALING_OPTIONS,
    }

    def _init_state(self, problem, x0):
        run = _Run(problem, self.n_threads)
        n, k = problem.shape
        if x0 is None:
            f, g, h = np.zeros(n), np.zeros(k), 0.0
        else:
            x0 = check_array(x0, "x0", ndim=1)
            if x0.shape != (n + k + 1,):
                raise ValueError(
                    f"x0 must have shape ({n + k + 1},) = (n + k + 1,), got {x0.shape}."
                )
            f, g, h = np.array(x0[:n]), np.array(x0[n:n + k]), float(x0[-1])
        return _P2OTState(x=np.concatenate([f, g, [h]]), fun=-np.inf, f=f, g=g, h=h, run=run)

    def _step(self, problem, state):
        run, reg = state.run, state.run.reg
        lam = run.translation(state.g)
        f_old, g, h = state.f + lam, state.g - lam, state.h - lam
        # Row update over the real columns (kernel) and the virtual one (one scalar).
        f, row_mass = _row_update(run, f_old, g, h)
        residual = float(np.abs(row_mass - run.a).sum())
        # Real columns: the KL-relaxed scaling; clusters of zero prior get no mass.
        hc, _ = log_half_step(run.Ct, f, g, run.log_beta, reg, n_threads=run.threads)
        g = run.fi * hc
        if run.virtual_mass > 0:
            h = reg * (math.log(run.virtual_mass) - logsumexp(f / reg))
        else:
            h = -np.inf
        fun = run.dual(f, g, h)
        h_x = h if math.isfinite(h) else 0.0
        return _P2OTState(
            x=np.concatenate([f, np.where(np.isfinite(g), g, 0.0), [h_x]]), fun=fun,
            residual=residual, f=f, g=g, h=h, run=run, record={"translation": lam},
        )

    def _result_fields(self, problem, state):
        run, reg = state.run, state.run.reg
        g, h = state.g, state.h
        # One more row update makes Q 1 + xi = a hold to rounding, so Q 1 <= a exactly (the
        # papers' hard constraint); the columns then move by at most the row error.
        f = _row_update(run, state.f, g, h)[0]
        plan = dense_plan(run.C, f, g, reg, n_threads=run.threads)
        if run.virtual_mass > 0:
            slack = np.exp((f + h) / reg)
        else:
            slack = np.zeros_like(f)
        rows = plan.sum(axis=1)
        return {
            "plan": plan,
            "slack": slack,
            "transported": rows / run.a,
            "transported_mass": float(rows.sum()),
            "cluster_marginal": plan.sum(axis=0),
            "f": f,
            "g": g,
            "h": h,
            "objective": problem.objective(plan),
            "row_error": float(np.abs(rows + slack - run.a).sum()),
        }


def _row_update(run, f_old, g, h):
    """Rows scaled to sum to ``a`` over the real columns and the virtual one; also the row
    sums at ``f_old``."""
    reg = run.reg
    hr, real_mass = log_half_step(run.C, g, f_old, run.log_a, reg, n_threads=run.threads)
    if run.virtual_mass <= 0:
        return hr, real_mass
    L = run.log_a - hr / reg  # log sum_j exp((g_j - C_ij) / reg)
    row_mass = real_mass + np.exp((f_old + h) / reg)
    return reg * (run.log_a - np.logaddexp(L, h / reg)), row_mass


@fill_doc(references("zhang2024p2ot"))
def rho_schedule(t, total, rho0=0.1):
    r"""The papers' progressive mass: ``rho_t = rho_0 + (1 - rho_0) exp(-5 (1 - t/T)^2)``.

    Parameters
    ----------
    t : int or array-like
        Training iteration(s), ``0 <= t <= total``.
    total : int
        The number ``T`` of training iterations (> 0).
    rho0 : float, default=0.1
        Initial fraction, in ``(0, 1]``.

    Returns
    -------
    float or ndarray
        ``rho_t``, rising from about ``rho_0`` to 1.

    %(references)s

    Examples
    --------
    >>> from mmopt.ot import rho_schedule
    >>> round(rho_schedule(0, 100), 4), rho_schedule(100, 100)
    (0.1061, 1.0)
    """
    total = check_scalar(total, "total", kind=int, min_value=1)
    rho0 = check_scalar(rho0, "rho0", min_value=0.0, max_value=1.0, include_min=False)
    t_arr = np.asarray(t, dtype=float)
    if not np.all(np.isfinite(t_arr)) or t_arr.min() < 0 or t_arr.max() > total:
        raise ValueError(f"t must lie in [0, total] = [0, {total}].")
    out = rho0 + (1.0 - rho0) * np.exp(-5.0 * (1.0 - t_arr / total) ** 2)
    return float(out) if out.ndim == 0 else out


def progressive_partial_ot(C, rho, gamma=1.0, reg=0.1, prior=None, **options) -> Result:
    r"""Solve the P²OT problem (see :class:`P2OTProblem`) for pseudo-labels.

    Finds the plan ``Q`` (n samples x k clusters) minimizing

    .. math::

        \langle Q, C \rangle + \mathrm{reg}\,\big(\langle Q, \log Q \rangle
        + \langle \xi, \log \xi \rangle\big)
        + \gamma\, \mathrm{KL}(Q^\top 1 \,\|\, \rho \pi)
        \quad \text{s.t.}\quad Q 1 + \xi = a,\ 1^\top Q 1 = \rho,

    (``a = 1/n``; ``xi`` is the untransported mass, the papers' virtual column), by the
    scaling algorithm of :class:`ProgressivePartialOT`. Only a fraction ``rho`` of the mass
    is transported: the samples the plan is most confident about. The papers' references:
    :class:`ProgressivePartialOT`.

    Parameters
    ----------
    C : array-like of shape (n, k)
        Cost, e.g. ``-log softmax(logits)``.
    rho : float
        Transported fraction, in ``(0, 1]``.
    gamma : float, default=1.0
        KL relaxation of the cluster marginal (> 0).
    reg : float, default=0.1
        Entropic regularization (> 0).
    prior : array-like of shape (k,), optional
        Cluster prior; uniform when None.
    **options
        ``a`` (sample masses), ``x0`` (warm-start potentials ``concat(f, g, [h])``) and the
        options of :class:`ProgressivePartialOT`.

    Returns
    -------
    Result
        With ``plan``, ``slack``, ``transported``, ``transported_mass``,
        ``cluster_marginal``, ``objective``.

    Examples
    --------
    >>> from mmopt.ot import progressive_partial_ot
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(size=(50, 3))
    >>> C = -(logits - np.log(np.exp(logits).sum(1, keepdims=True)))
    >>> res = progressive_partial_ot(C, rho=0.3)
    >>> round(res.transported_mass, 6), bool(np.all(res.plan.sum(1) <= 1 / 50))
    (0.3, True)
    """
    x0 = options.pop("x0", None)
    a = options.pop("a", None)
    problem = P2OTProblem(C, rho, gamma, reg, prior, a)
    return solve(problem, ProgressivePartialOT, x0=x0, **options)
