"""Smooth-regime point-cloud Sinkhorn (grid Gaussian transform) and LazyPlan, against dense
NumPy references and the dense solver."""

import itertools
import sys
import warnings

import numpy as np
import pytest
from scipy.special import logsumexp

from mmopt import ConvergenceWarning
from mmopt.ot import LazyPlan, sinkhorn
from mmopt.ot import lazy_plan as lazy_plan_module
from mmopt.ot._gauss_grid import GaussGrid, SmoothRegimeNotApplicable
from mmopt.ot._smooth import smooth_sinkhorn
from mmopt_ext._gauss_grid import lagrange_interp, lagrange_spread, stabilized_convolve


# ---------------------------------------------------------------- NumPy references
def _lagrange_ref(t, q):
    """Base node and the q Lagrange weights of each coordinate (plain loops)."""
    base = np.floor(t).astype(int) - (q // 2 - 1)
    u = t - base
    w = np.ones((t.size, q))
    for k in range(q):
        for j in range(q):
            if j != k:
                w[:, k] *= (u - j) / (k - j)
    return base, w


def _stencil_ref(coords, q):
    """(node index tuples, weights) of every stencil offset, for all points."""
    d = coords.shape[1]
    bw = [_lagrange_ref(coords[:, k], q) for k in range(d)]
    for off in itertools.product(range(q), repeat=d):
        idx = tuple(bw[k][0] + off[k] for k in range(d)) + (0,) * (3 - d)
        w = np.prod([bw[k][1][:, off[k]] for k in range(d)], axis=0)
        yield idx, w


def _dense_cost(x, y):
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(axis=-1)


@pytest.mark.parametrize("d, q", [(1, 6), (2, 8), (3, 6)])
def test_spread_and_interp_match_numpy(d, q):
    rng = np.random.default_rng(d)
    coords = np.ascontiguousarray(rng.uniform(q, 20 - q, size=(200, d)))
    values = rng.normal(size=200)
    shape = (20,) * d + (1,) * (3 - d)
    grid = np.zeros(shape)
    lagrange_spread(coords, values, q, grid)
    ref = np.zeros(shape)
    for idx, w in _stencil_ref(coords, q):
        np.add.at(ref, idx, values * w)
    np.testing.assert_allclose(grid, ref, rtol=1e-12, atol=1e-12)

    field = rng.normal(size=shape)
    out = np.empty(200)
    lagrange_interp(field, coords, q, out, 2)
    expected = sum(w * field[idx] for idx, w in _stencil_ref(coords, q))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    # Lagrange interpolation of order q reproduces polynomials of degree < q.
    axes = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    poly = sum(0.01 * (k + 1) * axes[k] ** (q - 1) for k in range(d))
    lagrange_interp(np.ascontiguousarray(poly), coords, q, out, 1)
    exact = sum(0.01 * (k + 1) * coords[:, k] ** (q - 1) for k in range(d))
    np.testing.assert_allclose(out, exact, rtol=1e-9)


@pytest.mark.parametrize(
    "axis, shape, c",
    [(0, (9, 7, 8), 0.37), (1, (9, 7, 8), 0.37), (2, (9, 7, 8), 0.37),
     # Lines of 60 and 50 nodes: several output blocks (c B L <= 300), a whole zero line.
     (0, (60, 5, 3), 0.2), (1, (4, 50, 1), 0.5), (2, (3, 2, 60), 0.2),
     # Long lines with one-node blocks (c L > 300): more blocks than a line's work buffer
     # once held (a write past its end crashed 2-D clouds at reg 1e-5 diam^2).
     (0, (400, 2, 1), 0.5), (1, (2, 300, 1), 2.0)],
)
def test_stabilized_convolve_matches_numpy(axis, shape, c):
    rng = np.random.default_rng(axis)
    log_abs = rng.normal(scale=300.0, size=shape)  # a dynamic range of e^±900
    # A smooth part with the slopes of a transport potential (the maxima far from X).
    coord = np.indices(shape)[axis].astype(float)
    log_abs += 4.0 * coord * np.sin(np.arange(np.prod(shape)).reshape(shape))
    sign = np.sign(rng.normal(size=shape))
    sign[0, 0, :3] = 0.0
    line = [0, 0, 0]
    line[axis] = slice(None)
    sign[tuple(line)] = 0.0
    out_log, out_sign = np.empty(shape), np.empty(shape)
    stabilized_convolve(log_abs, sign, axis, c, out_log, out_sign, 2)

    la = np.moveaxis(np.where(sign == 0, -np.inf, log_abs), axis, -1)
    sg = np.moveaxis(sign, axis, -1)
    idx = np.arange(shape[axis])
    terms = la[..., None, :] - c * (idx[:, None] - idx[None, :]) ** 2
    ref, ref_sign = logsumexp(
        terms, axis=-1, b=np.broadcast_to(sg[..., None, :], terms.shape), return_sign=True
    )
    ref, ref_sign = np.moveaxis(ref, -1, axis), np.moveaxis(ref_sign, -1, axis)
    np.testing.assert_array_equal(out_sign, ref_sign)
    # log |sum| to 1e-9 wherever the sum is not a cancellation far below its terms.
    top = np.moveaxis(terms.max(axis=-1), -1, axis)
    safe = ref > top - 10
    np.testing.assert_allclose(out_log[safe], ref[safe], rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(2))
def test_grid_transform_vs_dense_logsumexp(seed):
    """The grid's softmin of a smooth potential with a large dynamic range, at the points,
    against a dense log-sum-exp: error of log(row sum) below 1e-6.

    The potential is a c-transform of perturbed optimal potentials of shifted clouds (the
    potentials the iteration meets): ``G(y) = -reg log sum_i a_i exp((F_i - |x_i - y|^2)
    / reg)``, with ``|G| / reg`` in the hundreds."""
    rng = np.random.default_rng(seed)
    n, m = 200, 250
    x, y = rng.random((n, 2)), rng.random((m, 2)) * 0.8 + [1.0, 0.5]
    a = np.full(n, 1.0 / n)
    b = rng.uniform(0.5, 1.5, m)
    b /= b.sum()
    reg = 0.02
    ref = sinkhorn(a, b, _dense_cost(x, y), reg, tol=1e-10, max_iter=100000)
    F = ref.f - reg * np.log(a) + reg * rng.uniform(-1, 1) * np.sin(3 * x @ rng.normal(size=2))

    def G_of(pts):
        return -reg * logsumexp((F[None, :] - _dense_cost(pts, x)) / reg, b=a[None, :], axis=1)

    grid = GaussGrid.covering(np.vstack([x, y]), reg, tol=1e-8)
    axes = [grid.origin[k] + grid.step * np.arange(grid.shape[k]) for k in range(2)]
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 2)
    G_grid = G_of(nodes).reshape(grid.shape)
    xg, yg = grid.coordinates(x), grid.coordinates(y)
    assert np.ptp(G_grid[grid.spread(yg, b) != 0]) / reg > 100
    B = grid.spread(yg, b)
    with np.errstate(divide="ignore"):
        log_b = np.log(np.abs(B))
    log_abs, sign = grid.log_convolve(log_b + G_grid / reg, np.sign(B), reg, 1)
    assert (sign[grid.spread(xg, a) != 0] > 0).all()
    approx = grid.interpolate(log_abs, xg, 1)
    exact = logsumexp((G_of(y)[None, :] - _dense_cost(x, y)) / reg, b=b[None, :], axis=1)
    assert np.abs(approx - exact).max() < 1e-6


def _problem(d, n, seed, uniform):
    rng = np.random.default_rng(seed)
    x = rng.random((n, d))
    y = rng.random((n, d)) * 0.8 + 0.3
    a = np.full(n, 1.0 / n)
    b = np.full(n, 1.0 / n) if uniform else rng.uniform(0.5, 1.5, n)
    return x, y, a, b / b.sum()


@pytest.mark.parametrize(
    "d, reg_factor, uniform",
    [(2, 1e-1, True), (2, 1e-2, False), (3, 1e-1, False)],
)
def test_smooth_sinkhorn_matches_dense(d, reg_factor, uniform):
    x, y, a, b = _problem(d, 400, 7, uniform)
    C = _dense_cost(x, y)
    reg = reg_factor * C.max()
    ref = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100000)
    out = smooth_sinkhorn(x, y, a, b, reg, tol=1e-9)
    assert out.converged and out.marginal_error <= 1e-9
    assert out.history.size == out.n_iter
    shift = np.mean(out.f - ref.f)  # potentials are defined up to (f + c, g - c)
    assert np.abs(out.f - ref.f - shift).max() <= 1e-6 * reg
    assert np.abs(out.g - ref.g + shift).max() <= 1e-6 * reg
    plan = LazyPlan(x, y, out.f, out.g, reg).toarray()
    assert np.abs(plan - ref.plan).max() <= 1e-8


def test_smooth_sinkhorn_warm_start_zero_mass_and_stop():
    x, y, a, b = _problem(2, 300, 3, False)
    a = a.copy()
    a[:10] = 0.0
    a /= a.sum()
    reg = 0.1
    x_before = x.copy()
    out = smooth_sinkhorn(x, y, a, b, reg, tol=1e-9)
    np.testing.assert_array_equal(x, x_before)
    assert np.isfinite(out.f).all()
    # Rows of zero mass get the potential of a unit mass placed there (as the dense solver).
    plan = LazyPlan(x, y, out.f, out.g, reg)
    np.testing.assert_allclose(plan.sum(axis=1)[:10], 1.0, rtol=1e-6)
    np.testing.assert_allclose(plan.sum(axis=1)[10:], a[10:], rtol=1e-6)
    # From its own answer, a warm start converges at once to the same potentials.
    warm = smooth_sinkhorn(x, y, a, b, reg, tol=1e-9, g_init=out.g)
    assert warm.n_iter <= 2
    np.testing.assert_allclose(warm.f[10:], out.f[10:], atol=1e-8 * reg)
    warm_f = smooth_sinkhorn(x, y, a, b, reg, tol=1e-9, f_init=out.f)
    assert warm_f.n_iter <= 2
    with pytest.warns(ConvergenceWarning):
        short = smooth_sinkhorn(x, y, a, b, 1e-2, max_iter=2, eps_scaling=False)
    assert not short.converged and short.n_iter == 2

    def stop(n_iter, error):
        raise StopIteration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        stopped = smooth_sinkhorn(x, y, a, b, 1e-2, callback=stop, eps_scaling=False)
    assert stopped.n_iter == 1


def test_smooth_sinkhorn_bad_input():
    x, y, a, b = _problem(2, 20, 0, True)
    with pytest.raises(ValueError, match="same dimension"):
        smooth_sinkhorn(x, y[:, :1], a, b, 0.1)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="x"):
        smooth_sinkhorn(bad, y, a, b, 0.1)
    with pytest.raises(ValueError, match="x"):
        smooth_sinkhorn(np.empty((0, 2)), y, a, b, 0.1)
    with pytest.raises(ValueError, match="same positive mass"):
        smooth_sinkhorn(x, y, a, 2 * b, 0.1)
    with pytest.raises(ValueError, match="one weight per point"):
        smooth_sinkhorn(x, y, a[:-1], b, 0.1)
    with pytest.raises(ValueError, match="reg"):
        smooth_sinkhorn(x, y, a, b, -1.0)
    with pytest.raises(ValueError, match="g_init"):
        smooth_sinkhorn(x, y, a, b, 0.1, g_init=np.zeros(3))
    # Not applicable: the caller falls back to the dense kernel.
    rng = np.random.default_rng(0)
    with pytest.raises(SmoothRegimeNotApplicable, match="dimension"):
        smooth_sinkhorn(rng.random((20, 4)), rng.random((20, 4)), a, b, 0.1)
    with pytest.raises(SmoothRegimeNotApplicable, match="grid"):
        smooth_sinkhorn(x * 1e4, y * 1e4, a, b, 1e-3)


def test_lazy_plan_matches_dense():
    rng = np.random.default_rng(5)
    x, y = rng.random((70, 3)), rng.random((50, 3))
    f, g = rng.normal(size=70), rng.normal(size=50)
    a, b = rng.random(70), rng.random(50)
    reg = 0.3
    dense = np.exp((f[:, None] + g[None, :] - _dense_cost(x, y)) / reg)
    weighted = dense * a[:, None] * b[None, :]
    old = lazy_plan_module._TILE_ENTRIES
    lazy_plan_module._TILE_ENTRIES = 500  # several tiles of 10 rows
    try:
        for plan, ref in ((LazyPlan(x, y, f, g, reg), dense),
                          (LazyPlan(x, y, f, g, reg, a=a, b=b), weighted)):
            v, u, V = rng.normal(size=50), rng.normal(size=70), rng.normal(size=(50, 3))
            np.testing.assert_allclose(plan.matvec(v), ref @ v, rtol=1e-12)
            np.testing.assert_allclose(plan.matvec(V), ref @ V, rtol=1e-12)
            np.testing.assert_allclose(plan.rmatvec(u), ref.T @ u, rtol=1e-12)
            op = plan.aslinearoperator()
            np.testing.assert_allclose(op @ v, ref @ v, rtol=1e-12)
            np.testing.assert_allclose(op.H @ u, ref.T @ u, rtol=1e-12)
            np.testing.assert_allclose(plan.sum(axis=0), ref.sum(axis=0), rtol=1e-12)
            np.testing.assert_allclose(plan.sum(axis=1), ref.sum(axis=1), rtol=1e-12)
            assert plan.sum() == pytest.approx(ref.sum(), rel=1e-12)
            np.testing.assert_allclose(plan.row(3), ref[3], rtol=1e-12)
            np.testing.assert_allclose(plan.rows([5, 0, 69] * 9), ref[[5, 0, 69] * 9], rtol=1e-12)
            np.testing.assert_allclose(plan.toarray(), ref, rtol=1e-12)
    finally:
        lazy_plan_module._TILE_ENTRIES = old


def test_lazy_plan_bad_input(monkeypatch):
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="same dimension"):
        LazyPlan(x, np.zeros((3, 3)), np.zeros(4), np.zeros(3), 1.0)
    with pytest.raises(ValueError, match="f"):
        LazyPlan(x, x, np.zeros(3), np.zeros(4), 1.0)
    with pytest.raises(ValueError, match="reg"):
        LazyPlan(x, x, np.zeros(4), np.zeros(4), 0.0)
    plan = LazyPlan(x, x, np.zeros(4), np.zeros(4), 1.0)
    with pytest.raises(ValueError, match="v must have 4"):
        plan.matvec(np.ones(3))
    with pytest.raises(IndexError):
        plan.row(4)
    with pytest.raises(ValueError, match="axis"):
        plan.sum(axis=2)
    monkeypatch.setattr(lazy_plan_module, "_MAX_DENSE_ENTRIES", 10)
    with pytest.raises(MemoryError, match="matvec"):
        plan.toarray()


def test_smooth_sinkhorn_keyboard_interrupt_returns_last_iterate():
    x, y, a, b = _problem(2, 300, 4, False)
    reg = 0.01

    def interrupt(n_iter, error):
        if n_iter == 3:
            raise KeyboardInterrupt

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # an interrupt does not warn
        out = smooth_sinkhorn(x, y, a, b, reg, callback=interrupt, eps_scaling=False)
    assert out.interrupted and not out.converged and out.n_iter == 3
    assert out.reg_reached == reg
    assert np.isfinite(out.f).all() and np.isfinite(out.g).all()
    # The iterate of the third iteration: its rows are a's (F is a row update of an earlier
    # G, up to the over-relaxation) and its marginal error is the recorded one's order.
    plan = LazyPlan(x, y, out.f, out.g, reg)
    error = np.abs(plan.sum(axis=1) - a).sum() + np.abs(plan.sum(axis=0) - b).sum()
    assert 1e-6 < error < 10 * out.history[-1] + 1e-3


def test_smooth_sinkhorn_interrupt_during_eps_scaling(monkeypatch):
    """Ctrl-C in the epsilon scaling returns the last completed level's potentials, at its
    reg: G of that level and F its exact row update (rows equal to a)."""
    x, y, a, b = _problem(2, 300, 5, True)
    calls = [0]
    original = GaussGrid.log_convolve

    def convolve(self, *args):
        calls[0] += 1
        if calls[0] == 5:  # the third level's first transform: two levels completed
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(GaussGrid, "log_convolve", convolve)
    out = smooth_sinkhorn(x, y, a, b, 0.01)
    monkeypatch.undo()
    diam2 = float(np.sum(np.ptp(np.vstack([x, y]), axis=0) ** 2))
    assert out.interrupted and out.n_iter == 0
    assert out.reg_reached == pytest.approx(diam2 / 2)
    plan = LazyPlan(x, y, out.f, out.g, out.reg_reached)
    np.testing.assert_allclose(plan.sum(axis=1), a, rtol=1e-6)


def test_pointcloud_sinkhorn_smooth_interrupt_and_progress(monkeypatch, capsys):
    from mmopt.ot import PointCloudOTProblem, PointCloudSinkhorn

    # The grid, on clouds small enough for the dense solve but for the patched limit.
    monkeypatch.setattr(sys.modules["mmopt.ot.pointcloud"], "_DENSE_MAX_PAIRS", 0)
    x, y, a, b = _problem(2, 300, 6, False)
    problem = PointCloudOTProblem(x, y, a, b, reg=0.01)
    full = PointCloudSinkhorn(regime="smooth", verbose=1).solve(problem)
    assert full.success and full.reg_reached == 0.01
    assert "smooth_sinkhorn" in capsys.readouterr().err  # the grid solve's tqdm bar
    calls = [0]
    original = GaussGrid.log_convolve

    def convolve(self, *args):
        calls[0] += 1
        if calls[0] == 7:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(GaussGrid, "log_convolve", convolve)
    res = PointCloudSinkhorn(regime="smooth").solve(problem)
    assert full.levels[-1]["kernel"] == "grid"
    assert res.status == 3 and not res.success
    assert res.reg_reached > problem.reg and res.levels[-1]["reg_end"] == res.reg_reached
    assert np.isfinite(res.f).all() and np.isfinite(res.g).all()
    # Its reported marginal error is that of the returned potentials at reg_reached.
    plan = LazyPlan(x, y, res.f, res.g, res.reg_reached)
    error = np.abs(plan.sum(axis=1) - a).sum() + np.abs(plan.sum(axis=0) - b).sum()
    assert res.marginal_error == pytest.approx(error, rel=1e-6)


@pytest.mark.parametrize("d", [2, 3])
def test_grid_transform_error_within_the_gaussian_bound(d):
    """For an affine potential ``G(y) = s . y`` (a translation's), the grid transform
    ``sum_Y B_Y exp((G(Y) - |X - Y|^2) / reg)`` differs from the exact
    ``Phi(X) = sum_j b_j exp((G(y_j) - |X - y_j|^2) / reg)`` by at most
    ``gaussian_interpolation_bound(...) * sum(b) * max_y exp((G(y) - |X - y|^2) / reg)`` at
    every node (the documented bound; checked against the dense sum)."""
    from mmopt.ot._gauss_grid import gaussian_interpolation_bound

    rng = np.random.default_rng(d)
    m, reg = (400, 0.02) if d == 2 else (150, 0.05)
    y = rng.random((m, d))
    b = rng.uniform(0.5, 1.5, m)
    s = rng.normal(size=d) * 0.3
    grid = GaussGrid.covering(y, reg, tol=1e-6)
    coords = grid.coordinates(y)
    B = grid.spread(coords, b)
    axes = [grid.origin[k] + grid.step * np.arange(grid.shape[k]) for k in range(d)]
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d)
    with np.errstate(divide="ignore"):
        log_B = np.log(np.abs(B))
    G_nodes = (nodes @ s).reshape(grid.shape)
    log_abs, sign = grid.log_convolve(log_B + G_nodes / reg, np.sign(B), reg, 1)
    approx = (sign * np.exp(log_abs)).ravel()
    exact = (b[None, :] * np.exp((y @ s)[None, :] / reg - _dense_cost(nodes, y) / reg)).sum(1)
    scale = np.exp((nodes @ s + s @ s / 4) / reg) * b.sum()  # sum(b) max_y of the summand
    bound = gaussian_interpolation_bound(grid.step, reg, grid.order, d)
    assert bound < 1e-5  # the design point of tol = 1e-6 (spacing sqrt(reg / 2) / 4, q = 10)
    ratio = np.abs(approx - exact) / scale
    assert ratio.max() <= bound
    assert ratio.max() > 1e-4 * bound  # the bound is not vacuous by orders of magnitude
