"""Sinkhorn between point clouds in the smooth regime (squared Euclidean cost, d <= 3): the
potentials live on a regular grid and each half-iteration is a Gaussian transform on it."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from mmopt._core.exceptions import ConvergenceWarning
from mmopt._core.threads import effective_n_threads
from mmopt._core.validation import check_array
from mmopt.ot._gauss_grid import GaussGrid, SmoothRegimeNotApplicable
from mmopt.ot.problem import check_n_threads

__all__ = ["SmoothRegimeNotApplicable", "SmoothSinkhornOutput", "smooth_sinkhorn"]

# Epsilon scaling: reg from the clouds' squared diameter down to the target, halved per level,
# one Sinkhorn iteration per level (the potentials of a level start the next).
_EPS_FACTOR = 0.5
# Lagrange order of the per-iteration marginal-error check (confirmed at the grid's order).
_CHECK_ORDER = 4
# Entries of a c-transform onto grid nodes (warm start) evaluated per block.
_BLOCK_ENTRIES = 1 << 20


class _Relaxation:
    """The over-relaxation factor from the plain iteration's observed linear rate."""

    WINDOW = 10
    MAX_OMEGA = 1.8
    START_ERROR = 0.1

    def __init__(self):
        self.errors = []
        self.omega = 1.0
        self.switch_error = None
        self.failed = False

    def update(self, error: float) -> float:
        if self.failed:
            return 1.0
        if self.switch_error is not None:
            if error > 10.0 * self.switch_error:
                self.failed, self.omega = True, 1.0
            return self.omega
        if error < self.START_ERROR:
            self.errors.append(error)
        if len(self.errors) > self.WINDOW:
            rate = (self.errors[-1] / self.errors[-1 - self.WINDOW]) ** (1.0 / self.WINDOW)
            if 0.0 < rate < 1.0:
                self.omega = min(self.MAX_OMEGA, 2.0 / (1.0 + np.sqrt(1.0 - rate)))
                self.switch_error = error
        return self.omega


class SmoothSinkhornOutput(NamedTuple):
    """What :func:`smooth_sinkhorn` returns.

    ``f``, ``g``: the potentials at the points (the plan is ``exp((f_i + g_j - C_ij) / reg)``,
    as for :func:`mmopt.ot.sinkhorn`); ``n_iter``: iterations at the target ``reg``;
    ``marginal_error``: the last L1 marginal error of the grid model; ``history``: that error
    per iteration; ``converged``: whether it reached ``tol``; ``grid_shape``: the grid used;
    ``interrupted``: whether a ``KeyboardInterrupt`` ended the solve; ``reg_reached``: the
    ``reg`` of the returned potentials (the last completed epsilon-scaling level's when
    interrupted before the target).
    """

    f: np.ndarray
    g: np.ndarray
    n_iter: int
    marginal_error: float
    history: np.ndarray
    converged: bool
    grid_shape: tuple
    interrupted: bool = False
    reg_reached: float = np.nan


def smooth_sinkhorn(
    x,
    y,
    a,
    b,
    reg: float,
    *,
    tol: float = 1e-6,
    max_iter: int = 5000,
    f_init=None,
    g_init=None,
    eps_scaling: bool = True,
    overrelaxation: bool = True,
    n_threads: int | None = None,
    callback: Callable[[int, float], object] | None = None,
    progress: bool = False,
) -> SmoothSinkhornOutput:
    r"""Entropic OT between point clouds with the squared Euclidean cost, for smooth plans.

    Sinkhorn's updates in the log domain, ``f_i = reg log a_i - reg log sum_j exp((g_j -
    |x_i - y_j|^2) / reg)`` (and likewise ``g``), written with smooth potentials:
    ``f_i = reg log a_i + F(x_i)``, ``g_j = reg log b_j + G(y_j)``, where

    .. math::

        F(x) = -\mathrm{reg} \log \sum_j b_j e^{(G(y_j) - |x - y_j|^2)/\mathrm{reg}}

    is defined for every ``x`` (and ``G`` likewise). ``F`` and ``G`` are kept at the nodes of
    a regular grid of spacing ``h`` and the measures ``a``, ``b`` are projected onto it by
    tensor Lagrange weights of order ``q`` (``sum_j b_j phi(y_j) ~ sum_Y B_Y phi(Y)`` for
    every smooth ``phi``). One half-iteration is then ``F(X) = -reg log sum_Y B_Y
    exp((G(Y) - |X - Y|^2) / reg)``, a Gaussian convolution on the grid, separable along the
    axes and done in the log domain with signs (the projected weights are signed), so that
    the exponents' range (``diam^2 / reg`` and beyond) never overflows. The potentials at the
    points are Lagrange interpolants of the grid's. The cost per iteration is
    ``O(G^(d+1) d + (n + m) q^d)`` for ``G`` nodes per axis, independent of ``n m``.

    Parameters
    ----------
    x, y : array of shape (n, d), (m, d)
        The clouds, ``d <= 3``.
    a, b : array of shape (n,), (m,)
        Non-negative weights of equal total mass.
    reg : float
        Entropic regularization (positive).
    tol : float, default=1e-6
        Stop when the L1 marginal error (of the grid model) is at most ``tol``; also sets
        the grid's accuracy (spacing and order, ``_gauss_grid._ACCURACY``).
    max_iter : int, default=5000
        Iterations at the target ``reg``; a :class:`mmopt.ConvergenceWarning` when reached.
    f_init, g_init : array, optional
        Warm start: the potentials at the points. With ``g_init`` the first update is that of
        ``f`` (``f_init`` is then unused, as in Sinkhorn's first half-iteration); with only
        ``f_init`` the first update is that of ``g``. Carried onto the grid by one exact
        c-transform, ``O((n or m) x nodes)``. Disables epsilon scaling.
    eps_scaling : bool, default=True
        Start at ``reg`` = the squared diameter of the clouds' bounding box, halve it per
        level with one iteration each, then iterate at the target ``reg``.
    overrelaxation : bool, default=True
        Once the error's linear rate ``r`` is measured (over 10 plain iterations, when the
        error is below 0.1), over-relax both updates, ``F <- F + w (F_new - F)``, with
        ``w = 2 / (1 + sqrt(1 - r))`` (at most 1.8); back to plain iterations for good if the
        error grows tenfold.
    n_threads : int, optional
        Threads of the kernels; all available CPUs when None.
    callback : callable, optional
        ``callback(n_iter, marginal_error)`` after each iteration at the target ``reg``;
        raising ``StopIteration`` stops.
    progress : bool, default=False
        A tqdm bar over the epsilon-scaling levels and the iterations (the level's ``reg``
        and the marginal error as its postfix).

    Returns
    -------
    SmoothSinkhornOutput

    Raises
    ------
    SmoothRegimeNotApplicable
        When ``d > 3``, the grid ``reg`` needs is too large, or the grid model loses
        positivity (``reg`` too small for the clouds' sampling): the caller falls back to
        the online dense kernel.

    Notes
    -----
    The convolution on the grid is exact up to rounding (each axis by blocks of matrix
    products with a per-line, per-block log shift, ``_gauss_grid.stabilized_convolve``), so
    the grid model's error comes only from projecting the measures and interpolating the
    potentials. Spreading is the adjoint of interpolation: the model's sum at a node ``X``
    differs from the points' sum by ``sum_j b_j (I_q phi_X - phi_X)(y_j)``, the Lagrange
    interpolation error of the summand ``phi_X(y) = exp((G(y) - |X - y|^2) / reg)``. When
    ``G`` is affine (a translation's potential) the summand is a Gaussian of variance
    ``reg / 2`` and :func:`mmopt.ot._gauss_grid.gaussian_interpolation_bound` bounds that
    error rigorously (Lagrange remainder and Cramer's inequality for Hermite functions): at
    the spacing and order used for ``tol >= 1e-7`` (``h = sqrt(reg / 2) / 4``, ``q = 10``)
    it is ``4.7e-7 d`` times ``sum(b)`` times the summand's peak, checked against the dense
    sum in the tests. For a general ``G`` the summand is a Gaussian times
    ``exp((G - affine) / reg)``, whose curvature (the transport map's expansion) changes
    its width: the table of spacings and orders (``_gauss_grid._ACCURACY``) was measured on
    such problems, not derived, and strongly expanding or contracting maps need a finer
    grid than it gives. :class:`mmopt.ot.PointCloudSinkhorn` therefore measures the exact
    marginal error of the result (up to ``10^8`` pairs) and finishes with the online kernel
    when the grid left it above ``tol``. The per-iteration check interpolates the change of
    the potentials at order 4 and confirms it at the grid's order before stopping.

    A ``KeyboardInterrupt`` (Ctrl-C, or raised by ``callback``) during the solve returns the
    potentials of the last completed level or iteration, with ``interrupted=True`` and
    their ``reg`` as ``reg_reached``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.random((300, 2)), rng.random((300, 2)) + 0.2
    >>> w = np.full(300, 1 / 300)
    >>> out = smooth_sinkhorn(x, y, w, w, reg=0.05)
    >>> bool(out.converged), out.marginal_error <= 1e-6
    (True, True)

    References
    ----------
    .. [1] J. Solomon et al., "Convolutional Wasserstein distances: efficient optimal
       transportation on geometric domains", ACM Trans. Graph. 34(4), 2015.
    .. [2] J. Feydy, "Geometric data analysis, beyond convolutions", PhD thesis, 2020
       (log-domain, epsilon-scaled Sinkhorn on point clouds).
    """
    x, y, a, b, reg = _check_inputs(x, y, a, b, reg)
    threads = effective_n_threads(check_n_threads(n_threads))
    grid = GaussGrid.covering(np.vstack([x, y]), reg, tol)
    x_grid, y_grid = grid.coordinates(x), grid.coordinates(y)
    a_grid, b_grid = grid.spread(x_grid, a), grid.spread(y_grid, b)
    # The nodes the points' interpolation reads (zero-mass points included).
    a_active = grid.spread(x_grid, np.ones(x.shape[0])) != 0.0
    b_active = grid.spread(y_grid, np.ones(y.shape[0])) != 0.0
    log_a_grid, sign_a = _log_abs(a_grid), np.sign(a_grid)
    log_b_grid, sign_b = _log_abs(b_grid), np.sign(b_grid)

    def f_update(G, eps):
        log_abs, sign = grid.log_convolve(log_b_grid + G / eps, sign_b, eps, threads)
        _check_positive(sign, a_active, "row")
        return -eps * np.where(a_active, log_abs, 0.0)

    def g_update(F, eps):
        log_abs, sign = grid.log_convolve(log_a_grid + F / eps, sign_a, eps, threads)
        _check_positive(sign, b_active, "column")
        return -eps * np.where(b_active, log_abs, 0.0)

    G = np.zeros(grid.shape)
    if g_init is not None or f_init is not None:
        eps_scaling = False
        if g_init is not None:
            F = _grid_ctransform(grid, y, _check_potential(g_init, y, "g_init"), b, reg)
            G = g_update(F, reg)
        else:
            G = _grid_ctransform(grid, x, _check_potential(f_init, x, "f_init"), a, reg)

    def marginal_error_of(F, F_exact, G, G_exact, omega, order=None):
        """The model's L1 marginal error at the iterate ``(F, G)``: rows
        ``a exp((F - F_exact) / reg)``, and the columns ``b exp((G - G_exact) / reg)`` when
        over-relaxed (exact otherwise)."""
        error = _marginal(grid, F, F_exact, x_grid, a, reg, threads, order)
        if omega != 1.0:
            error += _marginal(grid, G, G_exact, y_grid, b, reg, threads, order)
        return error

    bar = _progress_bar(progress)
    # The reg of the potentials G (and of F once the target's iterations run).
    done = reg
    F = None
    history = []
    n_iter, converged, interrupted = 0, False, False
    try:
        if eps_scaling:
            diam2 = float(np.sum((np.ptp(np.vstack([x, y]), axis=0)) ** 2))
            eps, done = diam2, diam2
            while eps > reg:
                G, done = g_update(f_update(G, eps), eps), eps
                _tick(bar, eps, np.nan)
                eps *= _EPS_FACTOR
            done = reg
        n_iter, converged, F, G = _iterate(f_update, g_update, G, reg, tol, max_iter, history,
                                           overrelaxation, callback, bar, marginal_error_of)
    except _Interrupted as stop:
        interrupted = True
        n_iter, F, G = stop.n_iter, stop.F, stop.G
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    if F is None:
        # Interrupted during the epsilon scaling: the row update of the last level's G.
        F = f_update(G, done)
    if not converged and not interrupted:
        warnings.warn(
            f"smooth_sinkhorn did not reach tol={tol:.3g} in {n_iter} iterations "
            f"(marginal error {history[-1] if history else np.nan:.3g})",
            ConvergenceWarning,
            stacklevel=2,
        )
    f = _point_potential(grid, F, x_grid, a, done, threads)
    g = _point_potential(grid, G, y_grid, b, done, threads)
    return SmoothSinkhornOutput(
        f, g, n_iter, history[-1] if history else np.nan, np.asarray(history), converged,
        grid.shape[: x.shape[1]], interrupted, done,
    )


class _Interrupted(Exception):
    """A KeyboardInterrupt in the iterations at the target reg, with the last iterate."""

    def __init__(self, n_iter, F, G):
        super().__init__()
        self.n_iter, self.F, self.G = n_iter, F, G


def _iterate(f_update, g_update, G, reg, tol, max_iter, history, overrelaxation, callback,
             bar, marginal_error_of):
    """Sinkhorn iterations at ``reg`` from ``G``: ``(n_iter, converged, F, G)``."""
    n_iter, converged = 0, False
    relax = _Relaxation() if overrelaxation else None
    omega = 1.0
    F = f_update(G, reg)
    try:
        while n_iter < max_iter:
            G_exact = g_update(F, reg)
            G_next = G + omega * (G_exact - G)
            # The iterate (F, G_next): its columns are b exp((G_next - G_exact) / reg), its
            # rows a exp((F - F_exact) / reg) with F_exact the row update (needed next
            # anyway). The check interpolates the (smooth, small) change at a low order;
            # below tol it is confirmed at the grid's order.
            F_exact = f_update(G_next, reg)
            error = marginal_error_of(F, F_exact, G_next, G_exact, omega, _CHECK_ORDER)
            if error <= tol:
                error = marginal_error_of(F, F_exact, G_next, G_exact, omega)
            G = G_next
            n_iter += 1
            history.append(error)
            _tick(bar, reg, error)
            if not np.isfinite(error):
                raise SmoothRegimeNotApplicable("the grid model's potentials are not finite")
            if error <= tol:
                converged = True
                break
            if relax is not None:
                omega = relax.update(error)
            F = F + omega * (F_exact - F)
            if callback is not None:
                try:
                    callback(n_iter, error)
                except StopIteration:
                    break
    except KeyboardInterrupt:
        raise _Interrupted(n_iter, F, G) from None
    return n_iter, converged, F, G


def _marginal(grid, values, exact, coords, weights, reg, threads, order):
    """L1 error of the marginal ``weights exp((values - exact) / reg)`` at the points."""
    change = grid.interpolate((values - exact) / reg, coords, threads, order)
    return float(np.abs(weights * np.expm1(change)).sum())


def _progress_bar(progress):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc="smooth_sinkhorn", leave=False, file=sys.stderr)


def _tick(bar, eps, error):
    if bar is not None:
        bar.update(1)
        bar.set_postfix(reg=f"{eps:.3g}", error=f"{error:.2e}")


def _check_inputs(x, y, a, b, reg):
    x = check_array(x, "x", ndim=2)
    y = check_array(y, "y", ndim=2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}."
        )
    a = check_array(a, "a", ndim=1, nonnegative=True)
    b = check_array(b, "b", ndim=1, nonnegative=True)
    for name, w, pts in (("a", a, x), ("b", b, y)):
        if w.shape[0] != pts.shape[0]:
            raise ValueError(
                f"{name} must have one weight per point: {w.shape[0]} != {pts.shape[0]}."
            )
    if not np.isclose(a.sum(), b.sum(), rtol=1e-9, atol=0.0) or a.sum() <= 0:
        raise ValueError(
            f"a and b must have the same positive mass, got {a.sum()} and {b.sum()}."
        )
    if not (np.isfinite(reg) and reg > 0):
        raise ValueError(f"reg must be a positive finite number, got {reg!r}.")
    return x, y, a, b, float(reg)


def _check_potential(values, points, name):
    values = check_array(values, name, ndim=1)
    if values.shape[0] != points.shape[0]:
        raise ValueError(
            f"{name} must have one value per point: {values.shape[0]} != {points.shape[0]}."
        )
    return values


def _log_abs(values):
    with np.errstate(divide="ignore"):
        return np.log(np.abs(values))


def _check_positive(sign, active, side):
    if not (sign[active] > 0).all():
        raise SmoothRegimeNotApplicable(
            f"the grid transform's {side} sums lost positivity: reg is too small for the "
            "clouds' sampling or the grid"
        )


def _point_potential(grid, values, coords, weights, reg, threads):
    """``reg log w + interpolant`` (``reg log 1`` for points of zero weight, the potential of
    a unit mass placed there, as the dense solver gives)."""
    with np.errstate(divide="ignore"):
        log_w = np.where(weights > 0, np.log(np.where(weights > 0, weights, 1.0)), 0.0)
    return reg * log_w + grid.interpolate(values, coords, threads)


def _grid_ctransform(grid, points, potential, weights, reg):
    """The smooth potential of the other side at the grid nodes, from point potentials:
    ``-reg log sum_i exp((potential_i - |X - p_i|^2) / reg)`` (exact, blockwise)."""
    dim = points.shape[1]
    axes = [grid.origin[k] + grid.step * np.arange(grid.shape[k]) for k in range(dim)]
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, dim)
    keep = weights > 0
    points, potential = points[keep], potential[keep]
    out = np.empty(nodes.shape[0])
    block = max(1, _BLOCK_ENTRIES // points.shape[0])
    for start in range(0, nodes.shape[0], block):
        chunk = nodes[start : start + block]
        sq = ((chunk[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
        t = (potential[None, :] - sq) / reg
        top = t.max(axis=1)
        out[start : start + block] = -reg * (top + np.log(np.exp(t - top[:, None]).sum(axis=1)))
    return out.reshape(grid.shape)
