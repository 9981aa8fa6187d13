"""The grid Gaussian transform behind smooth-regime Sinkhorn: a regular grid over two point
clouds, Lagrange spreading/interpolation and the signed log-domain Gaussian convolution
(Python wrappers of ``mmopt_ext._gauss_grid``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmopt_ext._gauss_grid import lagrange_interp as _lagrange_interp
from mmopt_ext._gauss_grid import lagrange_spread as _lagrange_spread
from mmopt_ext._gauss_grid import stabilized_convolve as _stabilized_convolve

# Grid spacing (in units of the kernel's width sqrt(reg / 2)) and Lagrange order, by the
# smallest requested tolerance they serve. Measured, not derived (see smooth_sinkhorn's
# Notes): on 2-D clouds of 800 points at reg = 1e-2 diam^2 the largest potential error
# over reg was 3.6e-5, 9.2e-7 and 3.5e-8 for the three rows.
_ACCURACY = ((1e-5, 0.35, 8), (1e-7, 0.25, 10), (0.0, 0.2, 12))
# Refuse grids whose convolution would be too large for this regime to pay off.
_MAX_NODES = 1 << 23
_MAX_CONVOLUTION_TERMS = 2e10
# Grids with fewer nodes run the convolution on one thread (waking a team costs more).
_MIN_PARALLEL_NODES = 1 << 16


# Cramer's inequality: |He_q(z)| exp(-z^2 / 4) <= _CRAMER sqrt(q!) for every z and q.
_CRAMER = 1.0865


def gaussian_interpolation_bound(step: float, reg: float, order: int, dim: int) -> float:
    r"""Error bound of the grid transform for a Gaussian summand, relative to its peak.

    For ``phi(y) = exp(-|y - mu|^2 / reg)`` (the summand ``exp((G(y) - |X - y|^2) / reg)``
    of an affine ``G``, up to its peak value) and tensor Lagrange interpolation of order
    ``q`` on a grid of spacing ``h``: along one axis, with ``sigma^2 = reg / 2``,

    .. math::

        |I_q \phi - \phi| \le rac{h^q |\omega_q|_\infty}{q!} \max |\phi^{(q)}|
        \le K \Big(rac{h}{\sigma}\Big)^q rac{((q - 1)!!)^2}{2^q \sqrt{q!}} =: e,

    from the Lagrange remainder (``|omega_q| <= h^q ((q - 1)!!)^2 / 2^q`` on the stencil's
    central cell) and Cramer's inequality ``|He_q(z)| e^{-z^2/4} <= K sqrt(q!)``,
    ``K = 1.0865``, for ``phi^{(q)} = (-1/sigma)^q He_q(z) e^{-z^2/2}``. The tensor
    interpolant of the product over ``d`` axes is off by at most ``d e (1 + e)^(d - 1)``.
    Since spreading is the adjoint of interpolation, ``sum_Y B_Y phi(Y) - sum_j b_j
    phi(y_j) = sum_j b_j (I_q phi - phi)(y_j)``: the transform's error at a node is at most
    this bound times ``sum(b)`` times the summand's peak. At the spacing and order used for
    ``tol = 1e-6`` (``h = sigma / 4``, ``q = 10``) it is ``d x 4.7e-7``.
    """
    sigma = np.sqrt(reg / 2.0)
    q = int(order)
    double_factorial = float(np.prod(np.arange(q - 1, 0, -2, dtype=float)))
    log_e = (q * np.log(step / sigma) + 2.0 * np.log(double_factorial) - q * np.log(2.0)
             - 0.5 * float(np.sum(np.log(np.arange(2, q + 1, dtype=float)))))
    e = _CRAMER * np.exp(log_e)
    return float(dim * e * (1.0 + e) ** (dim - 1))


class SmoothRegimeNotApplicable(ValueError):
    """The grid Gaussian transform does not apply (or lost accuracy) on this problem: the
    caller should fall back to the online dense kernel."""


@dataclass(frozen=True)
class GaussGrid:
    """A regular grid of spacing ``step`` from ``origin`` with ``shape`` nodes (3-D, trailing
    axes of length 1 when d < 3), and the Lagrange order ``order`` used on it."""

    origin: np.ndarray
    step: float
    shape: tuple
    order: int

    @classmethod
    def covering(cls, points, reg: float, tol: float) -> GaussGrid:
        """The grid for the clouds ``points`` (stacked) at ``reg``, accurate to about ``tol``."""
        dim = points.shape[1]
        if not 1 <= dim <= 3:
            raise SmoothRegimeNotApplicable(
                f"the grid Gaussian transform needs dimension 1, 2 or 3, got {dim}"
            )
        spacing, order = next((s, q) for floor, s, q in _ACCURACY if tol >= floor)
        step = spacing * np.sqrt(reg / 2.0)
        lo = points.min(axis=0) - (order / 2 + 1) * step
        extent = np.ceil((points.max(axis=0) - lo) / step).astype(np.int64) + order // 2 + 2
        shape = tuple(int(s) for s in extent) + (1,) * (3 - dim)
        nodes = int(np.prod(shape))
        terms = nodes * float(sum(shape[:dim]))
        if nodes > _MAX_NODES or terms > _MAX_CONVOLUTION_TERMS:
            raise SmoothRegimeNotApplicable(
                f"reg={reg:.3g} needs a grid of {shape[:dim]} nodes (spacing {step:.3g}) "
                "for the clouds' extent: too large for the smooth regime"
            )
        return cls(np.asarray(lo, dtype=np.float64), float(step), shape, int(order))

    def coordinates(self, points):
        """Points in grid units (C-contiguous)."""
        return np.ascontiguousarray((points - self.origin) / self.step)

    def spread(self, coords, values):
        """The grid measure of point weights ``values`` (tensor Lagrange weights)."""
        grid = np.zeros(self.shape)
        _lagrange_spread(coords, np.ascontiguousarray(values, dtype=np.float64), self.order, grid)
        return grid

    def interpolate(self, grid, coords, threads: int, order: int | None = None):
        """The Lagrange interpolant of the grid values ``grid`` at ``coords`` (of the grid's
        order unless ``order`` is given)."""
        out = np.empty(coords.shape[0])
        _lagrange_interp(np.ascontiguousarray(grid), coords, order or self.order, out, threads)
        return out

    def log_convolve(self, log_abs, sign, reg: float, threads: int):
        """``sum_Y sign_Y exp(log_abs_Y - |X - Y|^2 / reg)`` at every node ``X``, as
        ``(log |.|, sign)``: one stabilized convolution (blocks of matrix products) per
        axis."""
        ratio = self.step**2 / reg
        if log_abs.size < _MIN_PARALLEL_NODES:
            threads = 1
        for axis, length in enumerate(self.shape):
            if length == 1:
                continue
            out_log, out_sign = np.empty(self.shape), np.empty(self.shape)
            _stabilized_convolve(log_abs, sign, axis, ratio, out_log, out_sign, threads)
            log_abs, sign = out_log, out_sign
        return log_abs, sign
