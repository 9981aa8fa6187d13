"""What the OT family's scaling solvers share: the support of a problem and its kernels.

:class:`Sinkhorn`, :class:`UnbalancedSinkhorn` and :class:`PartialSinkhorn` iterate on the
rows and columns of positive mass only (:class:`Support`): they read a warm start there,
and scatter their plan and potentials back to the problem's shape at the end.
:class:`ScalingRun` adds the choice between the scaling domain (BLAS products with
``exp(-C / reg)``) and the log domain (the Cython log-sum-exp kernel) and the half step in
either; the measures' checks and the divergences are here too.
"""

from __future__ import annotations

import math

import joblib
import numpy as np

from mmopt._core._docstrings import SOLVER_PARAMS
from mmopt._core.params import Interval, Param
from mmopt._core.threads import effective_n_threads
from mmopt._core.validation import check_array, readonly
from mmopt.ot._kernels import log_half_step

# Option table entries shared by the family's solvers. n_threads: None (all CPUs), a
# positive count, or a negative one counting back from the number of CPUs, which must leave
# one (-1 is all of them; see mmopt._core.threads.check_n_threads).
N_THREADS = [None, Interval(int, 1, None), Interval(int, -joblib.cpu_count(), -1)]
# The options whose defaults the scaling solvers (Sinkhorn, partial, unbalanced, P²OT) share.
SCALING_OPTIONS = {
    "tol": Param(1e-9),
    "max_iter": Param(10_000),
    "n_threads": Param(None, *N_THREADS),
}
# Docstring entries (``mmopt._core._docstrings.fill_doc``) of the family's parameters that
# mean the same in several solvers and functions.
OT_PARAMS = {
    "histograms": """\
a, b : array-like of shape (n,), (m,)
    Non-negative histograms of equal total mass; empty means uniform.""",
    "cost_or_clouds": """\
C : array-like of shape (n, m)
    Cost matrix. Omitted (None) with point clouds ``x=`` (n, d) and ``y=`` (m, d)
    instead (and optionally ``cost=``): the call is
    :func:`~mmopt.ot.pointcloud_sinkhorn`'s (no cost matrix formed; its options,
    its result fields, ``tol`` relative to the mass, sparse plan for sharp plans).""",
    "entropic_reg": """\
reg : float
    Entropic regularization (> 0).""",
    "log_n_threads": """\
n_threads : int, optional
    Threads of the log-domain kernel; all CPUs when None.""",
    "max_iter": """\
max_iter : int, default=10000
    Maximum number of iterations.""",
}
# The options the scaling solvers share after ``tol`` (SCALING_OPTIONS and the common ones).
OT_PARAMS["scaling_options"] = "\n".join(
    [OT_PARAMS["max_iter"], OT_PARAMS["log_n_threads"], SOLVER_PARAMS["callback"],
     SOLVER_PARAMS["verbose"]]
)
# The arguments of the one-call functions of balanced entropic OT, together.
OT_PARAMS["balanced_ot_args"] = "\n".join(
    OT_PARAMS[name] for name in ("histograms", "cost_or_clouds", "entropic_reg")
)
# Above this ratio of the cost's spread to reg, exp(-C / reg) comes close to underflowing:
# "auto" takes the log domain (or a stabilized one) instead of the scaling domain.
SCALING_MAX_RATIO = 100.0


def measure(value, name: str, size: int, axis: str) -> np.ndarray:
    """A non-negative measure with one entry per ``axis`` of C (uniform ``1/size`` when
    empty or None), of positive total mass; read-only float64."""
    if value is None or np.size(value) == 0:
        return readonly(np.full(size, 1.0 / size))
    hist = check_array(value, name, ndim=1, nonnegative=True)
    if hist.shape[0] != size:
        raise ValueError(
            f"{name} must have one entry per {axis} of C ({size}), got {hist.shape[0]}."
        )
    if not hist.sum() > 0:
        raise ValueError(f"{name} must have a positive total mass.")
    return hist


def kl(x, y) -> float:
    """Generalized KL divergence ``sum x log(x / y) - x + y`` (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(x > 0, x * np.log(x / y), 0.0)
    return float(terms.sum() - x.sum() + y.sum())


def logsumexp(x) -> float:
    """``log sum exp(x)`` of a vector, shifted by its largest entry (``inf``/``-inf`` kept)."""
    top = float(x.max())
    if not math.isfinite(top):
        return top
    return top + math.log(float(np.exp(x - top).sum()))


class Support:
    """A transport problem restricted to the rows and columns of positive mass.

    Attributes: ``rows``, ``cols`` (their indices), ``a``, ``b`` and ``log_a``, ``log_b``
    (their masses), ``C`` (the cost there, C-contiguous; the problem's own array when
    nothing is dropped), ``full`` (nothing dropped), ``shape`` (the problem's) and ``mass``
    (the mass the solver measures its errors against: ``sum(b)`` here, the transported
    mass of balanced OT; subclasses set their own).
    """

    def __init__(self, problem):
        self.shape = problem.C.shape
        self.rows = np.flatnonzero(problem.a > 0)
        self.cols = np.flatnonzero(problem.b > 0)
        self.a = problem.a[self.rows]
        self.b = problem.b[self.cols]
        self.full = self.rows.size == problem.a.size and self.cols.size == problem.b.size
        if self.full:  # no copy of C (the problem holds a read-only view of it)
            self.C = np.ascontiguousarray(problem.C)
        else:
            self.C = np.ascontiguousarray(problem.C[np.ix_(self.rows, self.cols)])
        self.log_a = np.log(self.a)
        self.log_b = np.log(self.b)
        self.mass = float(self.b.sum())

    def read_start(self, x0, extra: int = 0):
        """Warm-start potentials ``(f, g, rest)`` on the support from ``x0 = concat(f, g,
        rest)`` of the problem's shape (``rest`` has ``extra`` entries: the partial
        problems' multipliers); they must be finite there."""
        n, m = self.shape
        x0 = check_array(x0, "x0", ndim=1, finite=False)
        size = n + m + extra
        if x0.shape != (size,):
            what = "n + m" + (f" + {extra}" if extra else "")
            raise ValueError(f"x0 must have shape ({size},) = ({what},), got {x0.shape}.")
        f, g = np.array(x0[:n][self.rows]), np.array(x0[n:n + m][self.cols])
        rest = np.array(x0[n + m:])
        if not (np.isfinite(f).all() and np.isfinite(g).all() and np.isfinite(rest).all()):
            raise ValueError("x0 must be finite on the entries of positive mass.")
        return f, g, rest

    def plan(self, block: np.ndarray) -> np.ndarray:
        """The plan of the problem's shape from its block on the support (zeros elsewhere)."""
        if self.full:
            return block
        plan = np.zeros(self.shape)
        plan[np.ix_(self.rows, self.cols)] = block
        return plan

    def potentials(self, f, g, fill: float = -np.inf):
        """``(f, g)`` of the problem's shape from their values on the support, ``fill``
        elsewhere (no finite potential is optimal for a point of zero mass)."""
        n, m = self.shape
        f_full, g_full = np.full(n, fill), np.full(m, fill)
        f_full[self.rows], g_full[self.cols] = f, g
        return f_full, g_full


def log_ratio_sum(f, g, rows, cols, cost: float, reg: float) -> float:
    """``sum_ij P_ij log(P_ij / c_ij)`` for a plan ``P_ij = c_ij exp((f_i + g_j - C_ij) /
    reg)`` from its marginals and ``cost = <C, P>``: no logarithm of the n x m entries."""
    return (float(f @ rows + g @ cols) - cost) / reg


class ScalingRun(Support):
    """The support plus one solve's domain, threads and kernels.

    ``method`` is ``"scaling"`` (products with ``K = exp(-C / reg)``, made here) or a
    log-domain method; ``"auto"`` becomes ``"scaling"`` when ``(max C - min C) / reg <=
    100`` and ``large`` otherwise. ``Ct`` is ``C.T`` in C order.
    """

    def __init__(self, problem, method: str, n_threads, large: str = "log"):
        super().__init__(problem)
        self.reg = reg = problem.reg
        self.threads = effective_n_threads(n_threads, size=self.C.size)
        if method == "auto":
            spread = float(self.C.max() - self.C.min())
            method = "scaling" if spread / reg <= SCALING_MAX_RATIO else large
        self.method = method
        self.Ct = np.ascontiguousarray(self.C.T)
        if method == "scaling":
            with np.errstate(under="ignore"):
                self.K = np.exp(self.C * (-1.0 / reg))

    def half(self, own_old, other, log_w, transpose: bool):
        """Unrelaxed block update and the block's sums at ``(own_old, other)``.

        Returns ``(h, mass)``: ``h_i = reg (log w_i - log sum_j exp((other_j - C_ij) /
        reg))`` (rows; columns with ``transpose``), and the plan's sums along this block
        at the incoming potentials.
        """
        reg = self.reg
        if self.method != "scaling":
            C = self.Ct if transpose else self.C
            return log_half_step(C, other, own_old, log_w, reg, n_threads=self.threads)
        Kv = (self.K.T if transpose else self.K) @ np.exp(other / reg)
        with np.errstate(divide="ignore"):
            return reg * (log_w - np.log(Kv)), np.exp(own_old / reg) * Kv
