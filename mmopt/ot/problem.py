"""The optimal transport problem: two histograms, a cost matrix, a regularization."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmopt._core.problem import Problem
from mmopt._core.registry import solve
from mmopt._core.threads import check_n_threads
from mmopt._core.validation import check_array, check_scalar, readonly

__all__ = ["OTProblem", "check_histograms", "check_n_threads", "solve_ot"]

# Relative tolerance on the equality of the two total masses (float64 histograms).
_MASS_RTOL = 1e-9


def _mass_rtol(values, size: int) -> float:
    """Tolerance on the equality of total masses for histograms given as ``values``.

    Histograms normalised in a lower precision (float32, float16) sum to 1 only up to that
    precision's rounding, about ``eps`` per entry at worst: the tolerance follows it.
    """
    rtol = _MASS_RTOL
    for value in values:
        dtype = getattr(value, "dtype", None)
        if dtype is not None and np.issubdtype(dtype, np.floating):
            rtol = max(rtol, float(np.finfo(dtype).eps) * max(size, 1))
    return rtol


def check_histograms(a, b, C):
    """Validate ``(a, b, C)``; empty (or None) ``a``/``b`` mean uniform (as in POT).

    Returns read-only float64 arrays. Raises ``ValueError`` naming the argument for wrong
    shapes, NaN or infinite entries, negative masses, zero or overflowing total mass, or
    unequal total masses. Histograms given in a lower precision (float32, float16) may
    differ in total mass by that precision's rounding: ``b`` is then rescaled to the mass
    of ``a`` in float64.

    Examples
    --------
    >>> from mmopt.ot.problem import check_histograms
    >>> a, b, C = check_histograms([], [0.5, 0.5], [[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    >>> a
    array([0.33333333, 0.33333333, 0.33333333])
    """
    a_in, b_in = a, b
    C = check_array(C, "C", ndim=2)
    n, m = C.shape
    a = _histogram(a, "a", n, "rows")
    b = _histogram(b, "b", m, "columns")
    mass_a, mass_b = float(a.sum()), float(b.sum())
    difference = abs(mass_a - mass_b)
    if difference > _MASS_RTOL * max(mass_a, mass_b):
        if difference > _mass_rtol((a_in, b_in), max(n, m)) * max(mass_a, mass_b):
            raise ValueError(
                f"a and b must have the same total mass; got sum(a)={mass_a!r} and "
                f"sum(b)={mass_b!r}."
            )
        b = readonly(b * (mass_a / mass_b))
    return a, b, C


def _is_empty(value) -> bool:
    if value is None:
        return True
    try:
        return np.size(value) == 0
    except ValueError:  # a ragged list: check_array names the argument
        return False


def _histogram(value, name, size, axis):
    if _is_empty(value):
        return readonly(np.full(size, 1.0 / size))
    hist = check_array(value, name, ndim=1, nonnegative=True)
    if hist.shape[0] != size:
        raise ValueError(
            f"{name} must have one entry per {axis[:-1]} of C ({size}), got {hist.shape[0]}."
        )
    with np.errstate(over="ignore"):  # an overflowing total is reported below
        total = float(hist.sum())
    if not total > 0:
        raise ValueError(f"{name} must have a positive total mass.")
    if not np.isfinite(total):
        raise ValueError(
            f"the total mass of {name} overflows float64 (its entries sum beyond 1.8e308); "
            "rescale the histograms."
        )
    return hist


def _repr_value(value) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(f"{v:g}" for v in value) + ")"
    return f"{value:g}"


class CostMatrixProblem(Problem):
    """What the OT problems on a dense cost matrix ``C`` share: the plan has ``C``'s shape,
    and the repr gives the plan's sizes (named by ``_plan_axes``) and the scalar parameters
    named by ``_repr_fields``. Subclasses are frozen dataclasses declared with
    ``repr=False``, so that this repr is kept."""

    _plan_axes: tuple[str, str] = ("n", "m")
    _repr_fields: tuple[str, ...] = ("reg",)

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of the plan, that of ``C``."""
        return self.C.shape

    def __repr__(self) -> str:
        sizes = [f"{axis}={size}" for axis, size in zip(self._plan_axes, self.C.shape)]
        fields = [f"{name}={_repr_value(getattr(self, name))}" for name in self._repr_fields]
        return f"{type(self).__name__}({', '.join(sizes + fields)})"


@dataclass(frozen=True, repr=False)
class OTProblem(CostMatrixProblem):
    r"""Entropic optimal transport between histograms ``a`` and ``b`` for the cost ``C``.

    .. math::

        \min_{P \ge 0,\ P 1 = a,\ P^\top 1 = b} \langle C, P \rangle
        + \mathrm{reg} \sum_{ij} P_{ij} (\log P_{ij} - 1),

    solved through its dual in the potentials ``f`` (rows) and ``g`` (columns), with
    ``P_ij = exp((f_i + g_j - C_ij) / reg)``.

    Parameters
    ----------
    a : array-like of shape (n,)
        Non-negative source histogram; empty (or None) means uniform.
    b : array-like of shape (m,)
        Non-negative target histogram with the same total mass (up to the rounding of the
        histograms' precision); empty (or None) means uniform.
    C : array-like of shape (n, m)
        Finite cost matrix.
    reg : float
        Entropic regularization strength (> 0), in the units of ``C``.

    Examples
    --------
    >>> from mmopt.ot import OTProblem
    >>> problem = OTProblem([], [], np.array([[0.0, 1.0], [1.0, 0.0]]), reg=0.1)
    >>> res = problem.solve(tol=1e-10)
    >>> np.round(res.plan, 4)
    array([[0.5, 0. ],
           [0. , 0.5]])
    """

    a: np.ndarray
    b: np.ndarray
    C: np.ndarray
    reg: float

    default_solver = "sinkhorn"

    def __post_init__(self):
        a, b, C = check_histograms(self.a, self.b, self.C)
        reg = check_scalar(self.reg, "reg", min_value=0.0, include_min=False)
        self._set_fields(a=a, b=b, C=C, reg=reg)

    def plan(self, f, g) -> np.ndarray:
        """The plan ``exp((f_i + g_j - C_ij) / reg)`` of potentials ``f``, ``g``."""
        with np.errstate(under="ignore"):
            return np.exp((np.asarray(f)[:, None] + np.asarray(g)[None, :] - self.C) / self.reg)


def solve_ot(a, b, C, reg, solver: str, options: dict):
    """The body of the one-call functions of balanced entropic OT (``sinkhorn``,
    ``sinkhorn_newton_sparse``): ``OTProblem(a, b, C, reg)`` solved by the registered
    ``solver`` with ``options`` (``x0`` among them), or, with point clouds ``x=``/``y=``
    in ``options`` instead of ``C``, :func:`~mmopt.ot.pointcloud_sinkhorn`'s solve."""
    if C is None and ("x" in options or "y" in options):
        from mmopt.ot.pointcloud import pointcloud_sinkhorn

        return pointcloud_sinkhorn(
            options.pop("x", None), options.pop("y", None), a, b, reg=reg, **options
        )
    x0 = options.pop("x0", None)
    return solve(OTProblem(a, b, C, reg), solver, x0=x0, **options)
