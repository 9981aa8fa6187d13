"""Point-cloud OT: kernels against NumPy, solves against the dense Sinkhorn, the truncation
bound, bad input."""

import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import logsumexp

import mmopt
from mmopt.ot import (
    LazyPlan,
    PointCloudOTProblem,
    PointCloudSinkhorn,
    pointcloud_sinkhorn,
    sinkhorn,
    sinkhorn_newton_sparse,
)
from mmopt.ot._cloud_kernels import online_softmin, pair_costs, sparse_softmin
from mmopt.ot._truncation import SpatialTree, grid_hierarchy, kept_pairs, spatial_order


def _cost(x, y, p=2.0):
    distance = np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1))
    return distance**p


def _clouds(n, m, d, seed=0, weights=False):
    rng = np.random.default_rng(seed)
    x, y = rng.random((n, d)), 0.9 * rng.random((m, d)) + 0.05
    if not weights:
        return x, y, None, None
    a, b = rng.random(n) + 0.1, rng.random(m) + 0.1
    return x, y, a / a.sum(), b / b.sum()


# --------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("d", [1, 2, 3, 5])
@pytest.mark.parametrize("kind, p", [(0, 2.0), (1, 1.0), (2, 1.5)])
def test_online_softmin_matches_numpy(d, kind, p):
    rng = np.random.default_rng(d)
    x, y = rng.random((37, d)), rng.random((1100, d))  # more columns than one block
    g, f_old = 0.1 * rng.normal(size=1100), 0.1 * rng.normal(size=37)
    log_a, reg = np.log(rng.random(37)), 1e-3
    f, mass = online_softmin(x, y, g, f_old, log_a, reg, kind, p, 2)
    lse = logsumexp((g - _cost(x, y, p)) / reg, axis=1)
    np.testing.assert_allclose(f, reg * (log_a - lse), rtol=0, atol=1e-13)
    np.testing.assert_allclose(mass, np.exp(f_old / reg + lse), rtol=1e-12)


def test_sparse_kernels_match_numpy():
    rng = np.random.default_rng(1)
    x, y = rng.random((40, 3)), rng.random((50, 3))
    keep = rng.random((40, 50)) < 0.2
    keep[3] = False  # an empty row
    rows, cols = np.nonzero(keep)
    indptr = np.concatenate([[0], np.cumsum(keep.sum(1))])
    cost = pair_costs(x, y, indptr, cols, 1, 1.0, 2)
    np.testing.assert_allclose(cost, _cost(x, y, 1.0)[rows, cols], rtol=1e-14)
    g, f_old, log_a = rng.normal(size=50), rng.normal(size=40), np.log(rng.random(40))
    f, mass = sparse_softmin(indptr, cols, cost, g, f_old, log_a, 0.05, 2)
    exponent = np.full((40, 50), -np.inf)
    exponent[rows, cols] = (g[cols] - cost) / 0.05
    with np.errstate(divide="ignore"):
        lse = logsumexp(exponent, axis=1)
    full = np.isfinite(lse)
    np.testing.assert_allclose(f[full], (0.05 * (log_a - lse))[full], atol=1e-13)
    np.testing.assert_allclose(mass[full], np.exp(f_old / 0.05 + lse)[full], rtol=1e-12)
    assert f[3] == np.inf and mass[3] == 0.0


@pytest.mark.parametrize("d, n, m, threads", [(2, 120, 90, 1), (3, 700, 650, 1),
                                               (3, 1500, 1400, 2), (1, 40, 45, 1)])
def test_kept_pairs_is_exactly_the_rule(d, n, m, threads):
    rng = np.random.default_rng(2)
    x, y = rng.random((n, d)), rng.random((m, d))
    # Potentials with a large smooth part (as after a deformation), and noise.
    phi = 0.3 * np.sin(3.0 * x[:, 0]) + 0.02 * rng.normal(size=n)
    psi = -0.3 * np.sin(3.0 * y[:, 0]) + 0.02 * rng.normal(size=m)
    phi[0] = -1.0  # a row no pair meets: it keeps its best ones
    phi[1] = -np.inf  # only the rule of the row's best
    # Rows just below their best (the search at phi + threshold meets pairs, none at or
    # below phi: the row is searched again from its best) and just above it.
    best = (_cost(x, y) - psi).min(1)
    phi[2::7] = best[2::7] - 0.004
    phi[3::7] = best[3::7] + 0.001
    indptr, indices, cost, phi_eff = kept_pairs(x, y, phi, psi, 0.01, n_threads=threads)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    kept = np.zeros((n, m), dtype=bool)
    kept[rows, indices] = True
    assert kept.sum() == indices.size  # no pair twice
    np.testing.assert_allclose(cost, _cost(x, y)[rows, indices], rtol=1e-12, atol=1e-15)
    shifted = _cost(x, y) - psi
    np.testing.assert_allclose(phi_eff, np.maximum(phi, shifted.min(1)), atol=1e-14)
    assert (shifted - phi_eff[:, None] > 0.01)[~kept].all()  # the certificate
    rule = (shifted - phi[:, None] <= 0.01) | (shifted <= shifted.min(1, keepdims=True) + 0.01)
    assert (kept[rule]).all() and kept[0].any() and kept[1].any()
    assert kept.sum(0).min() > 0  # no empty column


@pytest.mark.parametrize("d", [2, 3])
def test_extrapolated_potentials_are_the_dense_half_step(d):
    # A new level's potentials: one Sinkhorn half-step against the coarser level's clusters,
    # checked against logsumexp over every cluster (the truncation at 40 reg drops terms of
    # relative size below e^-40).
    from mmopt.ot.pointcloud import _extrapolate

    rng = np.random.default_rng(5)
    n, m, reg = 1500, 1200, 1e-3
    x, y = rng.random((n, d)), rng.random((m, d))
    a, b = rng.random(n) + 0.5, rng.random(m) + 0.5
    a, b = a / a.sum(), b / b.sum()
    coarse, fine = grid_hierarchy(x, a, y, b, max_coarse=200)[-2:]
    f = 0.1 * np.sin(3.0 * coarse.x[:, 0]) + reg * coarse.log_a
    g = -0.1 * np.sin(3.0 * coarse.y[:, 0]) + reg * coarse.log_b
    f_new, g_new = _extrapolate(coarse, fine, f, g, reg, 40.0 * reg, 1)
    expected_f = reg * fine.log_a - reg * logsumexp((g - _cost(fine.x, coarse.y)) / reg, axis=1)
    expected_g = reg * fine.log_b - reg * logsumexp((f - _cost(fine.y, coarse.x)) / reg, axis=1)
    np.testing.assert_allclose(f_new, expected_f, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g_new, expected_g, rtol=0, atol=1e-12)


def _nodes(tree):
    """Each node of a SpatialTree with the slice of ``tree.points`` below it."""
    for node in range(2 * tree.first_leaf + 1):
        leftmost, rightmost = node, node
        while leftmost < tree.first_leaf:
            leftmost, rightmost = 2 * leftmost + 1, 2 * rightmost + 2
        yield node, slice(tree.start[leftmost], tree.start[rightmost + 1])


def test_spatial_tree_is_balanced_and_covers_its_points():
    rng = np.random.default_rng(3)
    points = rng.random((1000, 3))
    tree = SpatialTree(points)
    assert np.array_equal(np.sort(tree.order), np.arange(1000))
    sizes = np.diff(tree.start[tree.first_leaf:])
    assert sizes.min() >= 16 and sizes.max() <= 32
    for leaf in range(tree.first_leaf, 2 * tree.first_leaf + 1):
        inside = tree.points[tree.start[leaf]:tree.start[leaf + 1]]
        assert (inside >= tree.lo[leaf]).all() and (inside <= tree.hi[leaf]).all()
        # Every ancestor's box holds the leaf's box.
        node = leaf
        while node > 0:
            node = (node - 1) // 2
            assert (tree.lo[node] <= tree.lo[leaf]).all()
            assert (tree.hi[node] >= tree.hi[leaf]).all()
    # The nodes' affine bounds of psi hold at every point below them, and are tight at one
    # (the offset is the largest residual); for an affine psi the slope is psi's own.
    points = tree.points
    for psi, exact in ((rng.normal(size=1000), False),
                       (0.7 - 1.3 * tree.points[np.argsort(tree.order), 0], True)):
        shift, offset = tree.node_affine(psi)
        values = psi[tree.order]
        for node, below in _nodes(tree):
            bound = 2.0 * points[below] @ shift[node] + offset[node] - shift[node] @ shift[node]
            gap = bound - values[below]
            assert gap.min() >= -1e-12 and gap.min() <= 1e-12
            if exact:
                np.testing.assert_allclose(2.0 * shift[node], [-1.3, 0.0, 0.0],
                                           atol=1e-6)
                assert gap.max() <= 1e-9


@pytest.mark.parametrize("d", [1, 2, 3])
def test_node_affine_slopes_are_the_least_squares_fits(d):
    # The slopes merged up from the leaves' centred moments against NumPy's least squares
    # over each node's points (psi smooth plus noise, a cloud with a dense blob).
    rng = np.random.default_rng(20 + d)
    points = np.vstack([rng.random((700, d)), 0.5 + 0.01 * rng.normal(size=(300, d))])
    tree = SpatialTree(points)
    psi = np.sin(3.0 * points[:, 0]) + points[:, -1] ** 2 + 0.01 * rng.normal(size=1000)
    shift, offset = tree.node_affine(psi)
    values = psi[tree.order]
    for node, below in _nodes(tree):
        inside, value = tree.points[below], values[below]
        slope = np.linalg.lstsq(inside - inside.mean(0), value - value.mean(), rcond=None)[0]
        np.testing.assert_allclose(2.0 * shift[node], slope, rtol=1e-6, atol=1e-8)
        residual = value - 2.0 * inside @ shift[node]
        np.testing.assert_allclose(offset[node] - shift[node] @ shift[node],
                                   residual.max(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_kept_pairs_of_many_units_match_brute_force(threads):
    # Many units of the search (64 rows each, appended in row order as they finish, two
    # threads finishing them out of order) and more pairs than its first output capacity
    # (8 a row, grown by realloc). Against
    # the rule by brute force, block by block; the order within a row is the search's
    # (the tree's leaves last to first, each leaf's points in tree order); one and two
    # threads give the same arrays.
    rng = np.random.default_rng(21)
    n, m, reg = 9000, 6000, 1e-4
    x = np.vstack([rng.random((n - 2000, 3)), 0.3 + 0.02 * rng.random((2000, 3))])
    y = rng.random((m, 3))
    b = rng.uniform(0.5, 1.5, size=m)
    b /= b.sum()
    psi = 0.05 * np.sin(3.0 * y[:, 0]) + reg * rng.normal(size=m)
    phi = np.full(n, -np.inf)
    phi[::2] = 0.1 * rng.random(n // 2) - 0.05
    out = kept_pairs(x, y, phi, psi, 40 * reg, n_threads=threads, b=b, reg=reg)
    indptr, indices, cost, phi_eff, dropped = out
    assert indices.size > 8 * n and indptr[-1] == indices.size
    single = kept_pairs(x, y, phi, psi, 40 * reg, n_threads=1, b=b, reg=reg)
    for mine, reference in zip(out, single):
        np.testing.assert_array_equal(mine, reference)
    tree = SpatialTree(y)
    position = np.argsort(tree.order)
    leaf = np.searchsorted(tree.leaf_starts, position, side="right") - 1
    search_order = position - 2 * m * leaf  # ascending within a leaf, leaves descending
    for first in range(0, n, 1500):
        rows = slice(first, first + 1500)
        shifted = _cost(x[rows], y) - psi
        best = shifted.min(1)
        np.testing.assert_allclose(phi_eff[rows], np.maximum(phi[rows], best), rtol=0,
                                   atol=1e-14)
        rule = (shifted - phi[rows, None] <= 40 * reg) | (shifted <= best[:, None] + 40 * reg)
        left_out = (b * np.exp(-np.where(rule, np.inf, shifted - phi_eff[rows, None])
                               / reg)).sum(1)
        assert (dropped[rows] >= left_out * (1 - 1e-9)).all()
        for i in range(first, min(n, first + 1500)):
            columns = indices[indptr[i]:indptr[i + 1]]
            own = rule[i - first]
            # The columns a row keeps for an empty column come after its own.
            np.testing.assert_array_equal(np.sort(columns[:own.sum()]), np.flatnonzero(own))
            assert (np.diff(search_order[columns[:own.sum()]]) > 0).all()
            np.testing.assert_allclose(cost[indptr[i]:indptr[i + 1]],
                                       _cost(x[i:i + 1], y[columns])[0], rtol=1e-12,
                                       atol=1e-15)


def test_grid_hierarchy_is_nested_and_keeps_mass():
    x, y, a, b = _clouds(3000, 2500, 2, weights=True)
    levels = grid_hierarchy(x, a, y, b, max_coarse=100, growth=4.0)
    assert len(levels) >= 3 and len(levels[0].x) <= 100
    for coarse, fine in zip(levels[:-1], levels[1:]):
        np.testing.assert_allclose(coarse.a.sum(), 1.0)
        # Points together in a fine cluster are together in its coarse cluster.
        pairs = np.unique(np.stack([fine.x_label, coarse.x_label]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1]
        np.testing.assert_allclose(np.bincount(coarse.x_label, a), coarse.a)


# ------------------------------------------------------------- against the dense Sinkhorn
def _check_against_dense(res, x, y, a, b, reg, cost_p=2.0):
    # Small reg: Sinkhorn-Newton-Sparse on the dense cost (its own Newton code, not
    # pointcloud_sinkhorn's) reaches 1e-13 in a fraction of plain Sinkhorn's time.
    solver = sinkhorn if reg >= 1e-2 else sinkhorn_newton_sparse
    reference = solver(a, b, _cost(x, y, cost_p), reg, tol=1e-13, max_iter=50_000)
    # Potentials are defined up to (f + c, g - c).
    shift = np.mean(res.f - reference.f)
    np.testing.assert_allclose(res.f - shift, reference.f, rtol=0, atol=1e-6 * reg)
    np.testing.assert_allclose(res.g + shift, reference.g, rtol=0, atol=1e-6 * reg)
    plan = res.plan.toarray() if hasattr(res.plan, "toarray") else res.plan @ np.eye(len(y))
    np.testing.assert_allclose(plan, reference.plan, rtol=0, atol=1e-8)
    np.testing.assert_allclose(res.transport_cost, reference.transport_cost, rtol=1e-6)


@pytest.mark.parametrize(
    "d, weights, relative_reg",
    [(2, False, 1e-1), (2, True, 1e-2), (3, False, 1e-3), (3, True, 1e-3), (2, False, 1e-4)],
)
def test_sharp_regime_matches_dense_sinkhorn(d, weights, relative_reg):
    x, y, a, b = _clouds(300, 260, d, seed=d, weights=weights)
    reg = relative_reg * d  # the squared diameter of the unit cube
    res = pointcloud_sinkhorn(x, y, a, b, reg=reg, regime="sharp", tol=1e-11,
                              max_coarse=120)
    assert res.success and res.regime == "sharp"
    assert res.dropped_mass_bound < 1e-12
    assert res.marginal_error < 1e-10
    _check_against_dense(res, x, y, a, b, reg)


@pytest.mark.parametrize("d", [2, 3])
def test_sharp_regime_with_indices_only_pairs_matches_dense_sinkhorn(d, monkeypatch):
    # Above _STORED_COST_MAX_PAIRS the kept pairs are indices only and every kernel
    # recomputes the costs: forced here, the same potentials and plan as the dense solver.
    from mmopt.ot import pointcloud as module

    monkeypatch.setattr(module, "_STORED_COST_MAX_PAIRS", 0)
    x, y, a, b = _clouds(300, 260, d, seed=d + 5, weights=True)
    reg = 1e-3 * d
    res = pointcloud_sinkhorn(x, y, a, b, reg=reg, regime="sharp", tol=1e-11,
                              max_coarse=120)
    assert res.success and res.n_newton > 0 and res.marginal_error < 1e-10
    _check_against_dense(res, x, y, a, b, reg)


@pytest.mark.parametrize("d", [2, 3])
def test_sharp_regime_with_zero_mass_points_matches_dense_sinkhorn(d):
    # The solve runs on the points of positive mass in Z order: its plan and potentials
    # are mapped back through a subset and a permutation of both clouds.
    x, y, a, b = _clouds(280, 250, d, seed=d + 9, weights=True)
    a, b = a.copy(), b.copy()
    a[[0, 7, 100]], b[[3, 249]] = 0.0, 0.0
    a, b = a / a.sum(), b / b.sum()
    reg = 1e-3 * d
    res = pointcloud_sinkhorn(x, y, a, b, reg=reg, regime="sharp", tol=1e-11,
                              max_coarse=120)
    assert res.success and res.marginal_error < 1e-10
    plan = res.plan.toarray()
    assert plan[[0, 7, 100]].sum() == 0.0 and plan[:, [3, 249]].sum() == 0.0
    keep_x, keep_y = a > 0, b > 0
    reference = sinkhorn_newton_sparse(a[keep_x], b[keep_y], _cost(x[keep_x], y[keep_y]),
                                       reg, tol=1e-13, max_iter=50_000)
    np.testing.assert_allclose(plan[np.ix_(keep_x, keep_y)], reference.plan, rtol=0,
                               atol=1e-8)
    shift = np.mean(res.f[keep_x] - reference.f)
    np.testing.assert_allclose(res.f[keep_x] - shift, reference.f, rtol=0, atol=1e-6 * reg)
    np.testing.assert_allclose(res.g[keep_y] + shift, reference.g, rtol=0, atol=1e-6 * reg)


def test_spatial_order_is_a_permutation_that_keeps_neighbours_near():
    rng = np.random.default_rng(3)
    points = rng.random((4000, 3))
    order = spatial_order(points)
    np.testing.assert_array_equal(np.sort(order), np.arange(4000))
    # Consecutive points along the curve are close: mean step far below random order's.
    step = np.linalg.norm(np.diff(points[order], axis=0), axis=1).mean()
    assert step < 0.25 * np.linalg.norm(np.diff(points, axis=0), axis=1).mean()
    np.testing.assert_array_equal(spatial_order(np.ones((5, 2))), np.arange(5))
    assert spatial_order(np.zeros((0, 3))).size == 0


def test_smooth_regime_matches_dense_sinkhorn_for_other_costs(monkeypatch):
    # The online kernel (other costs), on clouds small enough for the dense solve but for
    # the patched limit.
    monkeypatch.setattr(sys.modules["mmopt.ot.pointcloud"], "_DENSE_MAX_PAIRS", 0)
    x, y, a, b = _clouds(150, 120, 3, weights=True)
    res = pointcloud_sinkhorn(x, y, a, b, reg=0.05, cost=1.5, regime="smooth", tol=1e-12)
    assert res.success and res.regime == "smooth" and res.dropped_mass_bound == 0.0
    _check_against_dense(res, x, y, a, b, 0.05, cost_p=1.5)
    # The plan operator's transpose.
    u = np.random.default_rng(0).normal(size=150)
    dense = sinkhorn(a, b, _cost(x, y, 1.5), 0.05, tol=1e-13).plan
    np.testing.assert_allclose(res.plan.rmatvec(u), dense.T @ u, atol=1e-9)


def test_truncation_bound_holds_for_the_exact_dropped_mass():
    x, y, _, _ = _clouds(200, 220, 2, seed=5)
    reg = 2e-3
    # A low threshold, so that the dropped mass is not negligible.
    res = pointcloud_sinkhorn(x, y, reg=reg, regime="sharp", truncation=4.0, tol=1e-9)
    full = np.exp((res.f[:, None] + res.g[None] - _cost(x, y)) / reg)
    kept = res.plan.toarray() > 0
    dropped = float(full[~kept].sum())
    assert 0.0 < dropped <= res.dropped_mass_bound
    assert res.transport_cost_error_bound >= float((full * _cost(x, y))[~kept].sum())


@pytest.mark.parametrize("d", [2, 3])
def test_pattern_margin_certifies_the_dropped_mass_after_the_potentials_move(d):
    # The margin's soft maxima of the potentials' rises, checked against the exact mass of
    # the dropped pairs (dense NumPy) when one point moved far and the others a little:
    # the bound holds, and it is much tighter than the largest rises' sum.
    from mmopt.ot._truncation import CloudLevel
    from mmopt.ot.pointcloud import _Pattern

    x, y, a, b = _clouds(120, 100, d, seed=d, weights=True)
    level = CloudLevel(x, a, y, b, np.arange(120), np.arange(100), 0.0)
    rng = np.random.default_rng(d)
    reg = 2e-3
    phi0, psi0 = 0.01 * rng.normal(size=120), 0.01 * rng.normal(size=100)
    pattern = _Pattern(level, phi0, psi0, reg, 12 * reg, 1)
    cost = _cost(x, y)
    kept = np.zeros((120, 100), dtype=bool)
    kept[np.repeat(np.arange(120), np.diff(pattern.indptr)), pattern.indices] = True
    assert 0 < kept.sum() < kept.size
    phi = pattern.phi0 + reg * rng.uniform(-3.0, 1.0, size=120)
    psi = psi0 + reg * rng.uniform(-1.0, 2.0, size=100)
    phi[7] += 6 * reg
    margin = pattern.margin(phi, psi, reg)
    largest = pattern.threshold - np.max(phi - pattern.phi0) - np.max(psi - psi0)
    assert margin > largest + reg
    entries = a[:, None] * b[None] * np.exp((phi[:, None] + psi[None] - cost) / reg)
    dropped = float(entries[~kept].sum())
    assert 0.0 < dropped <= np.exp(-margin / reg)
    expected = reg * (np.log(a @ np.exp((phi - pattern.phi0) / reg))
                      + np.log(b @ np.exp((psi - psi0) / reg)))
    # At least the soft-max bound's margin (the row bound's, when larger, certified above).
    assert margin >= pattern.threshold - expected - 1e-12 * reg
    # A smaller reg than the truncation's: the bound still holds.
    smaller = 0.7 * reg
    entries = a[:, None] * b[None] * np.exp((phi[:, None] + psi[None] - cost) / smaller)
    assert float(entries[~kept].sum()) <= np.exp(-pattern.margin(phi, psi, smaller) / smaller)


@pytest.mark.parametrize("d, threads", [(2, 1), (3, 2)])
def test_kept_pairs_row_dropped_bounds_the_exact_dropped_sums(d, threads):
    # kept_pairs' per-row bound of sum_j b_j exp(-(C_ij - phi_eff_i - psi_j) / reg) over the
    # pairs left out, against the dense sums: an upper bound, and within a modest factor
    # (it counts skipped tree nodes at their bound).
    rng = np.random.default_rng(10 + d)
    n, m, reg = 1300, 1200, 1e-3
    x, y = rng.random((n, d)), rng.random((m, d))
    b = rng.uniform(0.5, 1.5, size=m)
    b /= b.sum()
    phi = 0.3 * np.sin(3.0 * x[:, 0]) + reg * rng.normal(size=n)
    psi = -0.3 * np.sin(3.0 * y[:, 0]) + reg * rng.normal(size=m)
    phi[5] = -np.inf
    indptr, indices, cost, phi_eff, dropped = kept_pairs(x, y, phi, psi, 8 * reg,
                                                         n_threads=threads, b=b, reg=reg)
    kept = np.zeros((n, m), dtype=bool)
    kept[np.repeat(np.arange(n), np.diff(indptr)), indices] = True
    terms = b[None] * np.exp(-(_cost(x, y) - phi_eff[:, None] - psi[None]) / reg)
    exact = np.where(kept, 0.0, terms).sum(1)
    assert (exact > 0).all() and (dropped >= exact * (1 - 1e-12)).all()
    assert np.median(dropped / exact) < 20.0


@pytest.mark.parametrize("d", [2, 3])
def test_multilevel_newton_direction_solves_the_newton_system(d, monkeypatch):
    # The algebraic-multigrid-preconditioned CG against a dense solve of the same shifted
    # Hessian [[diag(r), S / reg], [S^T / reg, diag(c)]]; a small coarsest size, so that
    # the V-cycle recurses through several levels.
    from mmopt.ot import pointcloud as module

    monkeypatch.setattr(module, "_COARSEST_MAX", 100)

    x, y, a, b = _clouds(700, 650, d, seed=d, weights=True)
    reg = 1e-3
    keep = _cost(x, y) < np.quantile(_cost(x, y), 0.01)
    rng = np.random.default_rng(d)
    S = (keep * rng.random(keep.shape) * 1e-3).astype(float)
    diagonal = np.concatenate([S.sum(1), S.sum(0)]) / reg + 1e-3
    grad = rng.normal(size=1350)
    grad -= grad.mean()
    found = module._multilevel_direction(diagonal, sp.csr_matrix(S), grad, reg, 1e-14)
    H = np.block([[np.diag(diagonal[:700]), S / reg], [S.T / reg, np.diag(diagonal[700:])]])
    exact = np.linalg.solve(H, -grad)
    assert found.cg_converged and 0 < found.cg_iterations < 100
    assert np.linalg.norm(H @ found.d + grad) <= 1e-7 * np.linalg.norm(grad)
    np.testing.assert_allclose(found.d, exact, rtol=0, atol=1e-6 * np.abs(exact).max())


@pytest.mark.parametrize("seed", [0, 1])
def test_multilevel_newton_direction_on_a_nearly_singular_laplacian(seed, monkeypatch):
    # A late Newton system: the plan nearly a map (one strong entry per row, weak ones to
    # the neighbours) and a diagonal exceeding the row sums by 1e-8 relative, so that the
    # Laplacian is nearly singular. The multigrid CG must reach the dense solve's direction
    # and take far fewer iterations than Jacobi-preconditioned CG.
    from scipy.sparse.linalg import cg

    from mmopt.ot import pointcloud as module

    monkeypatch.setattr(module, "_COARSEST_MAX", 100)
    n, reg = 800, 1e-2
    rng = np.random.default_rng(seed)
    x = rng.random((n, 2))
    y = x[rng.permutation(n)] + 1e-3 * rng.normal(size=(n, 2))
    cost = _cost(x, y)
    near = cost < np.sort(cost, axis=1)[:, [8]]
    S = np.where(near, np.exp(-(cost - cost.min(1, keepdims=True)) / 1e-4), 0.0)
    S = np.where(S > 1e-12, S, 0.0) / n
    diagonal = np.concatenate([S.sum(1), S.sum(0)]) / reg * (1 + 1e-8)
    grad = rng.normal(size=2 * n) * diagonal
    grad[:n] -= grad[:n].mean()
    grad[n:] -= grad[n:].mean()
    H = np.block([[np.diag(diagonal[:n]), S / reg], [S.T / reg, np.diag(diagonal[n:])]])
    exact = np.linalg.solve(H, -grad)
    relative_error = 1e-10  # rtol 1e-5
    found = module._multilevel_direction(diagonal, sp.csr_matrix(S), grad, reg, relative_error)
    assert found.cg_converged
    assert np.linalg.norm(H @ found.d + grad) <= 1e-5 * np.linalg.norm(grad)
    iterations = []
    cg(sp.csr_matrix(H), -grad, rtol=1e-5, maxiter=1000, M=sp.diags_array(1.0 / diagonal),
       callback=lambda _: iterations.append(1))
    assert 4 * found.cg_iterations < len(iterations)
    # Errors along the near-null direction are not determined by a residual test; the
    # rest of the direction is.
    null = np.concatenate([np.ones(n), -np.ones(n)]) / np.sqrt(2 * n)
    error = found.d - exact
    error -= (error @ null) * null
    assert np.linalg.norm(error) <= 1e-2 * np.linalg.norm(exact)


def test_strongest_couplings_against_numpy_argmax():
    # Each row's and column's largest positive entry against NumPy's argmax of the dense
    # matrix (distinct values, so no ties), -1 for an empty or non-positive line.
    from mmopt_ext._pointcloud import strongest_couplings

    rng = np.random.default_rng(5)
    n, m = 50, 60
    dense = np.where(rng.random((n, m)) < 0.2, rng.random((n, m)) - 0.2, 0.0)
    dense[3] = 0.0  # an empty row
    dense[:, 7] = np.where(dense[:, 7] != 0.0, -1.0, 0.0)  # a column without positives
    A = sp.csr_matrix(dense)
    rows, cols = strongest_couplings(A.indptr.astype(np.int64), A.indices, A.data, m)
    expected_rows = np.where(dense.max(1) > 0, dense.argmax(1), -1)
    expected_cols = np.where(dense.max(0) > 0, dense.argmax(0), -1)
    assert rows[3] == -1 and cols[7] == -1
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(cols, expected_cols)


def test_sharp_regime_with_multilevel_newton_matches_dense_sinkhorn(monkeypatch):
    # The Newton steps use the multigrid CG (here through several coarse levels); the
    # potentials match the dense solver's.
    from mmopt.ot import pointcloud as module

    monkeypatch.setattr(module, "_COARSEST_MAX", 100)
    calls = []
    original = module._multilevel_direction
    monkeypatch.setattr(module, "_multilevel_direction",
                        lambda *args: calls.append(1) or original(*args))
    x, y, a, b = _clouds(400, 380, 3, seed=3, weights=True)
    reg = 1e-3 * 3
    res = pointcloud_sinkhorn(x, y, a, b, reg=reg, regime="sharp", tol=1e-11, max_coarse=60)
    assert res.success and res.n_newton > 0 and len(res.levels) >= 3 and calls
    assert res.marginal_error < 1e-10
    _check_against_dense(res, x, y, a, b, reg)


def test_margin_floor_at_the_default_tol_bounds_the_returned_plan():
    # At tol = 1e-6 the pairs may drift to a margin of 20 reg during the solve; the
    # returned plan's dropped mass stays certified below tol / 100 and is exact.
    x, y, a, b = _clouds(400, 380, 3, seed=7, weights=True)
    reg = 3e-4
    res = pointcloud_sinkhorn(x, y, a, b, reg=reg, regime="sharp", max_coarse=60)
    assert res.success and len(res.levels) >= 2 and res.n_newton > 0
    assert res.dropped_mass_bound <= 1e-8
    full = np.exp((res.f[:, None] + res.g[None] - _cost(x, y)) / reg)
    kept = res.plan.toarray() > 0
    assert float(full[~kept].sum()) <= res.dropped_mass_bound
    rows, cols = res.plan.toarray().sum(1), res.plan.toarray().sum(0)
    assert np.abs(rows - a).sum() + np.abs(cols - b).sum() <= 1e-6


def _deformed_clouds(n, d, seed):
    # Uniform points against a smoothly deformed cloud, random weights, at a reg of a
    # quarter of the squared point spacing: a nearly one-to-one plan whose damped Newton
    # steps move clusters of matched pairs by tens of reg.
    rng = np.random.default_rng(seed)
    x, y = rng.random((n, d)), rng.random((n - 20, d))
    y = y + 0.1 * np.sin(3.0 * y[:, ::-1])
    a, b = rng.random(n) + 0.5, rng.random(n - 20) + 0.5
    a, b = a / a.sum(), b / b.sum()
    reg = 0.25 * PointCloudOTProblem(x, y, reg=1.0).squared_spacing()
    return x, y, a, b, reg


def _level_potentials(state):
    level = state.run.levels[state.level]
    return state.f - state.reg * level.log_a, state.g - state.reg * level.log_b


def _blobs_to_shell(n, d, seed):
    # Gaussian blobs to a thin spherical shell, random weights: clusters of matched pairs
    # weakly coupled to each other, which the unbalanced masses must cross.
    rng = np.random.default_rng(seed)
    centers = rng.random((4, d))
    x = centers[rng.integers(0, 4, n)] + 0.08 * rng.standard_normal((n, d))
    u = rng.standard_normal((n, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    y = 0.5 + (0.4 + 0.02 * rng.standard_normal((n, 1))) * u
    a, b = rng.random(n) + 0.1, rng.random(n) + 0.1
    return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("seed", [1, 2])
def test_newton_steps_follow_the_epsilon_scaling(seed):
    # Each epsilon-scaling step is brought to 1e-3 by Newton steps before reg shrinks, so
    # the problem's reg starts near its solution. Newton only at the problem's reg (from
    # the 0.1 error a Sinkhorn-only step leaves) took 118 and 226 Newton steps here
    # (188 and 384 iterations).
    x, y, a, b = _blobs_to_shell(1000, 2, seed)
    reg = 0.25 * PointCloudOTProblem(x, y, reg=1.0).squared_spacing()
    res = pointcloud_sinkhorn(x, y, a, b, reg=reg, regime="sharp", tol=1e-9)
    assert res.success and res.marginal_error <= 2e-9
    newton, intermediate = res.history["newton"] == 1, res.history["intermediate"] == 1
    assert (newton & intermediate).any() and (newton & ~intermediate).any()
    # Every epsilon-scaling step that took Newton steps ended at 1e-3.
    levels, regs = res.history["level"], res.history["reg"]
    for stage in {(lv, r) for lv, r, s in zip(levels, regs, newton & intermediate) if s}:
        last = np.flatnonzero((levels == stage[0]) & (regs == stage[1]))[-1]
        assert res.history["residual"][last] <= 1e-3
    assert res.n_newton < 80 and res.nit < 150
    # Against Sinkhorn-Newton-Sparse on the dense cost. The weakly coupled clusters leave
    # their potentials' offsets loosely determined by a 1e-9 marginal error (5e-6 reg
    # measured), the plan and the cost are not.
    reference = sinkhorn_newton_sparse(a, b, _cost(x, y), reg, tol=1e-13, max_iter=50_000)
    shift = np.mean(res.f - reference.f)
    np.testing.assert_allclose(res.f - shift, reference.f, rtol=0, atol=1e-4 * reg)
    np.testing.assert_allclose(res.plan.toarray(), reference.plan, rtol=0, atol=1e-8)
    np.testing.assert_allclose(res.transport_cost, reference.transport_cost, rtol=1e-8)


def _stage_ends(res):
    """The last iterate's index of each epsilon-scaling step (level, reg) of a solve."""
    keys = list(zip(res.history["level"], res.history["reg"]))
    return {key: i for i, key in enumerate(keys)}


def test_a_step_past_its_newton_attempts_moves_on_at_sinkhorns_switch_tol(monkeypatch):
    from mmopt.ot import pointcloud as module

    monkeypatch.setattr(module, "_STAGE_NEWTON_MAX", 1)
    x, y, a, b = _blobs_to_shell(1000, 2, 2)
    reg = 0.25 * PointCloudOTProblem(x, y, reg=1.0).squared_spacing()
    res = pointcloud_sinkhorn(x, y, a, b, reg=reg, regime="sharp", tol=1e-9)
    assert res.success and res.marginal_error <= 2e-9
    newton, intermediate = res.history["newton"] == 1, res.history["intermediate"] == 1
    ends = [i for (level, r), i in _stage_ends(res).items()
            if intermediate[i] and newton[res.history["reg"] == r].any()]
    # Steps that took Newton steps, left past the cap between 1e-3 and 0.1.
    assert ends and any(1e-3 < res.history["residual"][i] <= 0.1 for i in ends)


def test_newton_steps_move_no_potential_past_the_threshold(monkeypatch):
    # Two clusters on each side whose masses differ: where the kept pairs leave out the
    # pairs across, the restricted dual is unbounded along the clusters' opposite shifts.
    # Newton steps only at the problem's reg (switch_tol=0.1) moved potentials by up to
    # 118 reg here; each step is held to the truncation threshold (40 reg).
    from mmopt.ot import pointcloud as module

    moves, original = [], module._newton_step

    def recorded(problem, state, pattern, level, max_move):
        out = original(problem, state, pattern, level, max_move)
        if out is not None:
            moves.append(max(np.abs(out.f - state.f).max(), np.abs(out.g - state.g).max())
                         / state.reg)
        return out

    monkeypatch.setattr(module, "_newton_step", recorded)
    rng = np.random.default_rng(1)
    centers = np.repeat([[0.0, 0.0], [1.0, 0.0]], 200, axis=0)
    x = centers + 0.02 * rng.standard_normal((400, 2))
    y = centers + 0.02 * rng.standard_normal((400, 2))
    a, b = np.full(400, 1 / 400), np.repeat([0.6 / 200, 0.4 / 200], 200)
    reg = 1e-4
    res = pointcloud_sinkhorn(x, y, a, b, reg=reg, regime="sharp", tol=1e-9,
                              switch_tol=0.1)
    assert res.success and moves and max(moves) <= 40.0 * (1 + 1e-9)
    reference = sinkhorn_newton_sparse(a, b, _cost(x, y), reg, tol=1e-13, max_iter=50_000)
    np.testing.assert_allclose(res.plan.toarray(), reference.plan, rtol=0, atol=1e-8)


def test_a_tol_below_the_rounding_floor_ends_as_stalled():
    # 1000-point blobs at 0.25 squared spacings: the marginal error stops near 1e-10, so
    # tol = 1e-10 ran to max_iter (10000 iterations) before the stall test.
    x, y, a, b = _blobs_to_shell(1000, 2, 1)
    reg = 0.25 * PointCloudOTProblem(x, y, reg=1.0).squared_spacing()
    with pytest.warns(mmopt.ConvergenceWarning, match="Stalled"):
        res = pointcloud_sinkhorn(x, y, a, b, reg=reg, regime="sharp", tol=1e-10)
    assert res.status == 5 and res.nit < 1000
    assert np.isfinite(res.x).all() and res.marginal_error < 1e-9


def test_switch_tol_none_is_sinkhorns_without_newton():
    # Without Newton steps the epsilon-scaling steps move on at 0.1, as before.
    x, y, a, b = _blobs_to_shell(600, 2, 0)
    reg = 0.25 * PointCloudOTProblem(x, y, reg=1.0).squared_spacing()
    problem = PointCloudOTProblem(x, y, a, b, reg=reg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mmopt.ConvergenceWarning)  # stopped at max_iter
        default = PointCloudSinkhorn(regime="sharp", newton=False, max_iter=300).solve(problem)
        explicit = PointCloudSinkhorn(regime="sharp", newton=False, max_iter=300,
                                      switch_tol=0.1).solve(problem)
    assert default.nit == explicit.nit and default.n_newton == 0
    np.testing.assert_array_equal(default.f, explicit.f)


def test_relaxed_phase_keeps_the_pairs_down_to_a_negative_margin(monkeypatch):
    # While the error is above 1e-3 at the problem's reg, a Newton step that leaves the
    # margin between -1 and +1/4 of the threshold does not re-select the pairs (it did
    # below +1/4 before); the solve still matches the dense solver.
    from mmopt.ot import pointcloud as module

    steps = []  # (pattern, residual before the step, margin after / threshold)
    original = module._newton_step

    def recording(problem, state, pattern, level, max_move):
        new = original(problem, state, pattern, level, max_move)
        if new is not None:
            margin = pattern.margin(*_level_potentials(new), state.reg)
            steps.append((pattern, state.residual, margin / pattern.threshold))
        return new

    monkeypatch.setattr(module, "_newton_step", recording)
    x, y, a, b, reg = _deformed_clouds(800, 3, seed=0)
    res = pointcloud_sinkhorn(x, y, a, b, reg=reg, regime="sharp", tol=1e-11, max_coarse=60)
    assert res.success and res.marginal_error < 1e-10
    kept_through = [
        step for step, after in zip(steps, steps[1:])
        if step[1] > module._RELAXED_ABOVE and -1.0 <= step[2] < module._COARSE_MARGIN
        and after[0] is step[0]
    ]
    assert kept_through
    _check_against_dense(res, x, y, a, b, reg)


def test_an_iterate_at_tol_with_an_eroded_margin_does_not_end_the_solve(monkeypatch):
    # At a loose tol the solve reaches tol while the error is above 1e-3, where the margin
    # may have fallen below the final floor: such an iterate's error is the kept pairs'
    # only, so it must not end the solve before the pairs are re-selected.
    from mmopt.ot import pointcloud as module

    ends, held = [], []
    original = module.PointCloudSinkhorn._step

    def recording(self, problem, state):
        new = original(self, problem, state)
        run = new.run
        at_reg = new.level == len(run.levels) - 1 and new.reg == problem.reg
        if at_reg and run.pattern is not None:  # None on entering the level
            margin = run.pattern.margin(*_level_potentials(new), new.reg)
            eroded = margin < self._final_floor(new.reg)
            if new.residual <= self.tol:
                (held if new.intermediate else ends).append(eroded)
        return new

    monkeypatch.setattr(module.PointCloudSinkhorn, "_step", recording)
    x, y, a, b, reg = _deformed_clouds(800, 3, seed=0)
    tol = 1e-2
    res = pointcloud_sinkhorn(x, y, a, b, reg=reg, regime="sharp", tol=tol, max_coarse=60)
    assert res.success and any(held)  # the rule was exercised
    assert ends and not any(ends)
    assert res.marginal_error <= tol
    assert res.dropped_mass_bound <= tol / 100


def test_zero_mass_points_and_delegation():
    x, y, a, b = _clouds(60, 50, 2, weights=True)
    a = a.copy()
    a[:5] = 0.0
    a /= a.sum()
    res = sinkhorn(a, b, x=x, y=y, reg=1e-2, tol=1e-11)
    assert res.solver == "pointcloud_sinkhorn" and np.isfinite(res.f).all()
    assert abs(res.plan[:5].sum()) == 0.0
    reference = sinkhorn(a, b, _cost(x, y), 1e-2, tol=1e-13)
    shift = np.mean(res.g - reference.g)
    np.testing.assert_allclose(res.f + shift, reference.f, atol=1e-8)
    sns = sinkhorn_newton_sparse(a, b, x=x, y=y, reg=1e-2)
    assert sns.solver == "pointcloud_sinkhorn" and sns.success


def test_stopped_in_the_epsilon_scaling_returns_finest_potentials():
    x, y, _, _ = _clouds(400, 400, 2)

    def stop(intermediate):
        if intermediate.nit == 3:
            raise StopIteration

    res = PointCloudSinkhorn(regime="sharp", max_coarse=50, callback=stop).solve(
        PointCloudOTProblem(x, y, reg=1e-4)
    )
    assert res.status == 2 and res.f.shape == (400,) and np.isfinite(res.x).all()
    assert res.reg_reached > 1e-4 and np.isfinite(res.fun)
    assert res.history["level"].size == 3


# -------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"y": np.zeros((5, 3))}, "dimension of x"),
        ({"x": np.full((4, 2), np.nan)}, "x"),
        ({"x": np.zeros((0, 2))}, "x"),
        ({"b": -np.ones(5) / 5}, "b"),
        ({"a": np.ones(3)}, "a must have one entry per point of x"),
        ({"a": np.ones(4)}, "same total mass"),
        ({"reg": -1.0}, "reg"),
        ({"cost": "cosine"}, "cost"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = {"x": np.zeros((4, 2)), "y": np.ones((5, 2)), "reg": 0.1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PointCloudOTProblem(**args)


def test_sharp_regime_needs_the_squared_cost_and_inputs_are_not_modified():
    x, y, a, b = _clouds(30, 30, 2, weights=True)
    with pytest.raises(ValueError, match="cost"):
        pointcloud_sinkhorn(x, y, reg=0.1, cost="euclidean", regime="sharp")
    copies = [v.copy() for v in (x, y, a, b)]
    pointcloud_sinkhorn(x, y, a, b, reg=0.01)
    for before, after in zip(copies, (x, y, a, b)):
        np.testing.assert_array_equal(before, after)


def test_ot_mapping_uses_point_clouds_above_its_size_threshold():
    from mmopt.ot import OTMapping

    x, y, _, _ = _clouds(200, 150, 2, seed=7)
    large = OTMapping(reg=1e-3, max_dense_pairs=100, solver_options={"tol": 1e-10}).fit(x, y)
    assert large.cost_ is None and large.result_.solver == "pointcloud_sinkhorn"
    # The dense problem it solves: the cost relative to the bounding box's diagonal.
    scale = PointCloudOTProblem(x, y, reg=1.0).cost_scale
    plan = sinkhorn([], [], _cost(x, y) / scale, 1e-3, tol=1e-13).plan
    expected = plan @ y / plan.sum(1, keepdims=True)
    np.testing.assert_allclose(large.transform(x), expected, atol=1e-6)
    assert large.inverse_transform(y).shape == y.shape


def test_smooth_regime_uses_the_grid_and_matches_dense_sinkhorn(monkeypatch):
    # Squared Euclidean in 2-D at a reg far above the squared spacing: the grid Gaussian
    # transform solves it (few steps), then the exact marginal error is checked (clouds
    # small enough for the dense solve but for the patched limit).
    monkeypatch.setattr(sys.modules["mmopt.ot.pointcloud"], "_DENSE_MAX_PAIRS", 0)
    rng = np.random.default_rng(3)
    x, y = rng.random((300, 2)), rng.random((280, 2)) * 0.8 + 0.1
    b = rng.random(280)
    b /= b.sum()
    a = np.full(300, 1 / 300)
    reg = 1e-2
    res = pointcloud_sinkhorn(x, y, a, b, reg=reg, regime="smooth", tol=1e-8)
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    ref = sinkhorn(a, b, C, reg, tol=1e-11)
    assert res.status == 0 and res.nit < 20 and res.marginal_error <= 1e-8
    np.testing.assert_allclose(res.plan @ np.eye(280), ref.plan, atol=1e-9)


def test_smooth_regime_takes_the_online_kernel_where_the_grid_costs_more(monkeypatch):
    # 3-D at a reg whose grid has far more convolution terms than the clouds have pairs
    # (small clouds above the dense limit): every pair through the online kernel, exact;
    # the grid went on every such problem before (3-D 2000 points of the smooth_ot
    # benchmark: 25 s on a 117^3 grid).
    module = sys.modules["mmopt.ot.pointcloud"]
    monkeypatch.setattr(module, "_DENSE_MAX_PAIRS", 0)
    x, y, a, b = _clouds(400, 350, 3, seed=4, weights=True)
    reg = 2e-3
    assert not module._grid_pays_off(x, y, reg, 5e-7)
    res = pointcloud_sinkhorn(x, y, a, b, reg=reg, regime="smooth", tol=1e-6)
    assert res.success and res.levels[-1]["kernel"] == "online"
    plan = LazyPlan(x, y, res.f, res.g, reg)
    error = np.abs(plan.sum(axis=1) - a).sum() + np.abs(plan.sum(axis=0) - b).sum()
    assert error <= 1e-6 and res.marginal_error == pytest.approx(error, rel=1e-3, abs=1e-9)
    # Many pairs, the same grid: the grid.
    assert module._grid_pays_off(np.tile(x, (40, 1)), np.tile(y, (40, 1)), reg, 5e-7)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean", 1.5])
def test_smooth_regime_solves_small_clouds_densely_to_tol(d, cost):
    # Clouds of at most 2^20 pairs take the dense cost and Sinkhorn-Newton-Sparse: at a reg
    # far below the squared spacing (where the grid's cost does not shrink with the clouds
    # and plain Sinkhorn takes thousands of iterations) the solve meets tol, checked
    # against NumPy's plan of the returned potentials and a log-domain dense reference.
    x, y, a, b = _clouds(90, 70, d, seed=d, weights=True)
    reg = 1e-3 * d
    res = pointcloud_sinkhorn(x, y, a, b, reg=reg, cost=cost, regime="smooth", tol=1e-9)
    assert res.success and res.levels[-1]["kernel"] == "dense"
    assert res.nit <= 3 and res.levels[-1]["iterations"] < 2000
    p = {"sqeuclidean": 2.0, "euclidean": 1.0}.get(cost, cost)
    C = np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1)) ** p
    plan = np.exp((res.f[:, None] + res.g[None, :] - C) / reg)
    error = np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum()
    assert error <= 1e-9 * (1 + 1e-6)
    assert res.marginal_error == pytest.approx(error, rel=1e-4, abs=1e-13)
    assert res.transport_cost == pytest.approx(float((C * plan).sum()), rel=1e-9)


def test_auto_regime_follows_each_clouds_own_spacing_not_their_distance():
    # Two clouds far apart: the distance between them says nothing about how many points
    # a row of the plan spreads over once transported. A reg far above the clouds' squared
    # spacing is smooth however far apart they are, and one far below it is sharp.
    rng = np.random.default_rng(5)
    x = rng.random((400, 2))
    y = rng.random((380, 2)) + 3.0
    problem = PointCloudOTProblem(x, y, reg=1.0)
    spacing = problem.squared_spacing()
    own = min(np.median(np.sort(((c[:, None] - c[None]) ** 2).sum(-1), axis=1)[:, 1])
              for c in (x, y))
    assert spacing == pytest.approx(own)
    assert PointCloudSinkhorn()._choose_regime(PointCloudOTProblem(x, y, reg=1e-1)) == "smooth"
    assert PointCloudSinkhorn()._choose_regime(
        PointCloudOTProblem(x, y, reg=spacing)) == "sharp"


@pytest.mark.parametrize("d, threads", [(2, 1), (3, 2), (3, 3)])
def test_significant_pairs_and_transpose_match_numpy(d, threads):
    # The Newton Hessian's entries straight from an indices-only pattern (the costs
    # recomputed) against the dense plan filtered in NumPy, and the counting-sort
    # transpose against SciPy's.
    from mmopt_ext._pointcloud import csr_transpose, significant_pairs

    rng = np.random.default_rng(20 + d)
    n, m, reg = 60, 70, 0.05
    x, y = rng.random((n, d)), rng.random((m, d))
    keep = rng.random((n, m)) < 0.3
    keep[4] = False  # an empty row
    keep[:, 5] = False  # an empty column
    indptr = np.concatenate([[0], np.cumsum(keep.sum(1))]).astype(np.int64)
    indices = np.nonzero(keep)[1].astype(np.int32)
    f, g = 0.1 * rng.normal(size=n), 0.1 * rng.normal(size=m)
    plan = np.where(keep, np.exp((f[:, None] + g[None] - _cost(x, y)) / reg), 0.0)
    row, col = plan.sum(1), plan.sum(0)
    ratio = 1e-2
    with np.errstate(divide="ignore"):
        out = significant_pairs(indptr, indices, x, y, f, g, np.log(row), np.log(col), reg,
                                np.log(ratio), threads)
    found = sp.csr_matrix((out[2], out[1], out[0]), shape=(n, m)).toarray()
    expected = np.where(plan >= ratio * np.minimum(row[:, None], col[None]), plan, 0.0)
    expected[~keep] = 0.0
    assert 0 < np.count_nonzero(expected) < keep.sum()
    np.testing.assert_allclose(found, expected, rtol=1e-13, atol=0)
    values = rng.random(indices.size)
    t_indptr, t_indices, t_values = csr_transpose(indptr, indices, m, values, threads)
    transposed = sp.csr_matrix((values, indices, indptr), shape=(n, m)).T.tocsr()
    transposed.sort_indices()
    np.testing.assert_array_equal(t_indptr, transposed.indptr)
    np.testing.assert_array_equal(t_indices, transposed.indices)
    np.testing.assert_array_equal(t_values, transposed.data)
    assert csr_transpose(indptr, indices, m)[2] is None


def _random_pattern(rng, n, m, density):
    """A random compressed-row pattern with an empty row (4) and an empty column (5)."""
    keep = rng.random((n, m)) < density
    keep[4] = False
    keep[:, 5] = False
    indptr = np.concatenate([[0], np.cumsum(keep.sum(1))]).astype(np.int64)
    return keep, indptr, np.nonzero(keep)[1].astype(np.int32)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("stored", [False, True])
def test_pair_marginals_match_the_dense_plan_sums(threads, stored):
    # One pass for the kept plan's row and column sums (the line search's trials) against
    # the dense plan restricted to the pattern, summed by NumPy; the row sums are
    # sparse_softmin's to the bit.
    from mmopt_ext._pointcloud import pair_marginals, sparse_softmin

    rng = np.random.default_rng(30 + threads)
    n, m, reg = 80, 90, 0.05
    x, y = rng.random((n, 3)), rng.random((m, 3))
    keep, indptr, indices = _random_pattern(rng, n, m, 0.3)
    f, g = 0.1 * rng.normal(size=n), 0.1 * rng.normal(size=m)
    cost = _cost(x, y)
    plan = np.where(keep, np.exp((f[:, None] + g[None] - cost) / reg), 0.0)
    pair_cost = cost[keep] if stored else None
    row, col = np.full(n, np.nan), np.full(m, np.nan)
    pair_marginals(indptr, indices, pair_cost, x, y, f, g, reg, row, col, threads)
    np.testing.assert_allclose(row, plan.sum(1), rtol=1e-13, atol=0)
    np.testing.assert_allclose(col, plan.sum(0), rtol=1e-13, atol=0)
    assert row[4] == 0.0 and col[5] == 0.0
    _, softmin_row = np.empty(n), np.empty(n)
    sparse_softmin(indptr, indices, pair_cost, x, y, g, f, np.zeros(n), reg, _, softmin_row,
                   threads)
    np.testing.assert_array_equal(row, softmin_row)
    with pytest.raises(ValueError, match="x and y"):
        pair_marginals(indptr, indices, None, None, None, f, g, reg, row, col, threads)


def test_bipartite_matvec_is_scipys_product():
    # The Newton Hessian's product in one pass over S, against SciPy's two products: the
    # same arithmetic, so the same vector to the bit.
    from mmopt.ot.pointcloud import _Bipartite

    rng = np.random.default_rng(40)
    n, m = 70, 50
    keep, indptr, indices = _random_pattern(rng, n, m, 0.2)
    S = sp.csr_matrix((rng.random(indices.size), indices, indptr), shape=(n, m))
    diagonal, v, scale = rng.random(n + m) + 1.0, rng.normal(size=n + m), 7.5
    expected = diagonal * v
    expected[:n] += scale * (S @ v[n:])
    expected[n:] += scale * (S.T @ v[:n])
    H = _Bipartite(diagonal, S, scale)
    np.testing.assert_array_equal(H @ v, expected)
    np.testing.assert_array_equal(H @ v, expected)  # its work array reused


def test_coarse_operator_is_the_galerkin_product():
    # The multigrid's coarse operators by one sparse accumulator per aggregate, against
    # SciPy's P^T A P: the bipartite first level (S and S^T, a weight, the aggregated
    # diagonal) and a plain symmetric level; aggregates mixing rows and columns, an
    # aggregate with no entries.
    from mmopt.ot.pointcloud import _coarse_operator

    rng = np.random.default_rng(50)
    n, m, count = 40, 30, 12
    keep, indptr, indices = _random_pattern(rng, n, m, 0.2)
    S = sp.csr_matrix((rng.random(indices.size), indices, indptr), shape=(n, m))
    labels = rng.integers(0, count - 1, n + m)  # aggregate count - 1 stays empty
    P = sp.csr_matrix((np.ones(n + m), (np.arange(n + m), labels)), shape=(n + m, count))
    diagonal, weight = rng.random(n + m), -3.0
    full = sp.bmat([[sp.diags_array(diagonal[:n]), weight * S],
                    [weight * S.T, sp.diags_array(diagonal[n:])]]).tocsr()
    expected = (P.T @ full @ P).toarray()
    found = _coarse_operator(S, labels, count, weight,
                             np.bincount(labels, weights=diagonal, minlength=count))
    np.testing.assert_allclose(found.toarray(), expected, rtol=1e-14, atol=1e-14)
    coarser = rng.integers(0, 5, count)
    Q = sp.csr_matrix((np.ones(count), (np.arange(count), coarser)), shape=(count, 5))
    np.testing.assert_allclose(_coarse_operator(found, coarser, 5).toarray(),
                               (Q.T @ found @ Q).toarray(), rtol=1e-14, atol=1e-14)
