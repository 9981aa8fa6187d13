"""The Cython moments kernel against a NumPy reference, and the fit it feeds."""

import numpy as np
import pytest

from mmopt.registration import weighted_kabsch
from mmopt.registration._kernels import (
    cached_nearest,
    nearest_candidates,
    surface_planes,
    weighted_pair_moments,
)
from mmopt.registration.kabsch import kabsch_from_moments


def _reference(P, Q, idx, w):
    keep = (idx >= 0) & (w != 0)
    p, q, ww = P[keep], Q[idx[keep]], w[keep]
    return ww.sum(), ww @ p, ww @ q, (p * ww[:, None]).T @ q, float(ww @ (p * p).sum(1))


@pytest.mark.parametrize("seed", range(4))
def test_moments_match_numpy(seed):
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(size=(500, 3)), rng.normal(size=(300, 3))
    idx = rng.integers(-1, 300, size=500)
    w = rng.random(500) * (rng.random(500) > 0.2)
    got = weighted_pair_moments(P, Q, idx, w)
    want = _reference(P, Q, idx, w)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)


def test_read_only_and_non_contiguous_inputs():
    rng = np.random.default_rng(5)
    P = np.asfortranarray(rng.normal(size=(50, 3)))
    Q = rng.normal(size=(40, 3))
    Q.flags.writeable = False
    idx = rng.integers(0, 40, size=50)
    w = rng.random(50)
    np.testing.assert_allclose(weighted_pair_moments(P, Q, idx, w)[3],
                               _reference(P, Q, idx, w)[3], rtol=1e-12)


@pytest.mark.parametrize("similarity", [False, True])
def test_fit_from_moments_matches_weighted_kabsch(similarity):
    rng = np.random.default_rng(6)
    P, Q = rng.normal(size=(200, 3)), rng.normal(size=(150, 3)) * 1.5
    idx = rng.integers(-1, 150, size=200)
    w = rng.random(200)
    total, p_sum, q_sum, cross, p_sq = weighted_pair_moments(P, Q, idx, w)
    p_bar, q_bar = p_sum / total, q_sum / total
    T = kabsch_from_moments(p_bar, q_bar, cross / total - np.outer(p_bar, q_bar),
                            p_sq / total - p_bar @ p_bar, similarity=similarity,
                            scale_bounds=(0.1, 10.0))
    keep = idx >= 0
    expected = weighted_kabsch(P[keep], Q[idx[keep]], w[keep], similarity=similarity,
                               scale_bounds=(0.1, 10.0))
    np.testing.assert_allclose(T, expected, atol=1e-10)


# ------------------------------------------------------------------ surface_planes kernel
def _planes_reference(X, Q, idx, h, taper):
    """NumPy: weighted mean, covariance, its smallest eigenvector (numpy.linalg.eigh)."""
    neighbourhoods = Q[idx]
    d2 = ((neighbourhoods - X[:, None, :]) ** 2).sum(axis=2)
    a = np.exp((d2.min(axis=1, keepdims=True) - d2) / (2.0 * h * h))
    if taper:
        a = a - a.min(axis=1, keepdims=True)
    a /= a.sum(axis=1, keepdims=True)
    centres = np.einsum("nk,nkj->nj", a, neighbourhoods)
    centred = neighbourhoods - centres[:, None, :]
    covariance = np.einsum("nk,nki,nkj->nij", a, centred, centred)
    values, vectors = np.linalg.eigh(covariance)
    normals = vectors[:, :, 0]
    residuals = np.einsum("ij,ij->i", normals, X - centres)
    nearest = idx[np.arange(len(X)), d2.argmin(axis=1)]
    return residuals, np.sqrt(d2.min(axis=1)), nearest, centres, normals, values


@pytest.mark.parametrize("taper", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_surface_planes_match_numpy(seed, taper):
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    # A curved, noisy sheet, queried near it (well-separated smallest eigenvalues).
    uv = rng.random((3000, 2)) * 2.0 - 1.0
    Q = np.c_[uv, 0.2 * uv[:, 0] ** 2 + 0.01 * rng.normal(size=3000)]
    X = Q[rng.integers(0, 3000, 400)] + 0.02 * rng.normal(size=(400, 3))
    idx = cKDTree(Q).query(X, k=24)[1]
    h = [0.02, 0.1, 1.0][seed]
    got = surface_planes(X, Q, idx, h, taper=taper, n_threads=2)
    residuals, closest, nearest, centres, normals, values = _planes_reference(X, Q, idx, h,
                                                                             taper)
    separated = values[:, 1] > 1e-6 * values[:, 2]
    sign = np.sign(np.einsum("ij,ij->i", got[4], normals))
    np.testing.assert_allclose(got[3], centres, atol=1e-12)
    np.testing.assert_allclose(got[1], closest, atol=1e-12)
    np.testing.assert_array_equal(got[2], nearest)
    np.testing.assert_allclose((got[4] * sign[:, None])[separated], normals[separated],
                               atol=1e-8)
    np.testing.assert_allclose((got[0] * sign)[separated], residuals[separated], atol=1e-10)
    assert np.allclose(np.linalg.norm(got[4], axis=1), 1.0)


def test_surface_planes_taper_is_continuous_at_the_farthest_member():
    # Two candidates for the last place, at the same distance: with the taper their weight
    # is 0, so either neighbourhood gives the same plane (a member entering or leaving
    # does not jump it); with the plain weights the two planes differ.
    rng = np.random.default_rng(4)
    Q = rng.normal(size=(40, 3)) * [1.0, 1.0, 0.1]
    X = np.array([0.05, -0.02, 0.3])
    order = np.argsort(((Q - X) ** 2).sum(axis=1))
    a, b = order[11], order[12]
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    Q[b] = X + turn @ (Q[a] - X)  # as far from X as Q[a], elsewhere
    with_a = np.r_[order[:11], a][None, :]
    with_b = np.r_[order[:11], b][None, :]
    tapered = [surface_planes(X[None], Q, i, 0.3, taper=True) for i in (with_a, with_b)]
    plain = [surface_planes(X[None], Q, i, 0.3, taper=False) for i in (with_a, with_b)]
    np.testing.assert_allclose(tapered[0][3], tapered[1][3], atol=1e-13)
    np.testing.assert_allclose(np.abs(tapered[0][0]), np.abs(tapered[1][0]), atol=1e-13)
    assert np.abs(plain[0][3] - plain[1][3]).max() > 1e-3


def test_surface_planes_thread_count_does_not_change_results():
    rng = np.random.default_rng(6)
    Q = rng.normal(size=(500, 3))
    X = rng.normal(size=(300, 3))
    idx = rng.integers(0, 500, size=(300, 10))
    one = surface_planes(X, Q, idx, 0.5, taper=True, n_threads=1)
    two = surface_planes(X, Q, idx, 0.5, taper=True, n_threads=2)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_surface_planes_reject_bad_input():
    Q = np.zeros((5, 3))
    X = np.zeros((2, 3))
    with pytest.raises(ValueError, match="idx"):
        surface_planes(X, Q, np.array([[0, 5], [1, 2]]), 1.0)
    with pytest.raises(ValueError, match="idx"):
        surface_planes(X, Q, np.zeros((3, 2), dtype=int), 1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        surface_planes(X, Q, np.zeros((2, 2), dtype=int), 0.0)
    with pytest.raises(ValueError, match="X and Q"):
        surface_planes(np.zeros((2, 2)), Q, np.zeros((2, 2), dtype=int), 1.0)


@pytest.mark.parametrize("seed", range(3))
def test_nearest_candidates_match_a_sort(seed):
    rng = np.random.default_rng(seed)
    Q = rng.normal(size=(800, 3))
    X = rng.normal(size=(200, 3))
    candidates = np.array([rng.choice(800, 12, replace=False) for _ in range(200)])
    got = nearest_candidates(X, Q, candidates, 5, n_threads=2)
    d2 = ((Q[candidates] - X[:, None, :]) ** 2).sum(axis=2)
    expected = np.take_along_axis(candidates, np.argsort(d2, axis=1, kind="stable")[:, :5], 1)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, nearest_candidates(X, Q, candidates, 5, n_threads=1))


def test_nearest_candidates_keep_the_order_of_ties_and_check_input():
    Q = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 2.0, 0], [0, 0, 0.5]])
    X = np.zeros((1, 3))
    np.testing.assert_array_equal(nearest_candidates(X, Q, [[2, 1, 0, 3]], 3), [[3, 1, 0]])
    np.testing.assert_array_equal(nearest_candidates(X, Q, [[0, 2, 1, 3]], 3), [[3, 0, 1]])
    with pytest.raises(ValueError, match="k must be"):
        nearest_candidates(X, Q, [[0, 1]], 3)
    with pytest.raises(ValueError, match="candidates"):
        nearest_candidates(X, Q, [[0, 4]], 1)
    with pytest.raises(ValueError, match="candidates"):
        nearest_candidates(X, Q, [[0], [1]], 1)


@pytest.mark.parametrize("seed", range(3))
def test_cached_nearest_matches_brute_force_or_reports_stale(seed):
    # Candidates: each origin's 6 nearest points within a bound (fewer, -1 padded, where
    # fewer lie within it); rows then move by various amounts. Every row the kernel
    # answers must hold the brute-force nearest point within the current bound, with its
    # distance to the bit; a row it calls stale must be one the candidates cannot settle.
    rng = np.random.default_rng(seed)
    Q = rng.random((600, 3))
    origin = rng.random((400, 3))
    d_all = np.sqrt(((Q[None] - origin[:, None]) ** 2).sum(axis=2))
    order = np.argsort(d_all, axis=1)[:, :6]
    d_sorted = np.take_along_axis(d_all, order, axis=1)
    query_bound = 0.06
    candidates = np.where(d_sorted < query_bound, order, -1)
    near = np.where(d_sorted[:, 0] < query_bound, d_sorted[:, 0], np.inf)
    reach = np.where(d_sorted[:, -1] < query_bound, d_sorted[:, -1], query_bound)
    X = origin + rng.normal(size=origin.shape) * rng.choice([1e-4, 3e-3, 3e-2], (400, 1))
    for bound in (np.inf, 0.05, 0.02):
        dist, idx, stale = cached_nearest(X, origin, Q, candidates, near, reach, bound)
        d_new = np.sqrt(((Q[None] - X[:, None]) ** 2).sum(axis=2))
        best = d_new.argmin(axis=1)
        best_d = d_new[np.arange(400), best]
        answered = np.setdiff1d(np.arange(400), stale)
        within = best_d[answered] < bound
        np.testing.assert_array_equal(idx[answered], np.where(within, best[answered], -1))
        np.testing.assert_array_equal(dist[answered],
                                      np.where(within, best_d[answered], np.inf))
        moved = np.linalg.norm(X - origin, axis=1)
        settled = (near + 2 * moved < reach) | (bound + moved < reach)
        assert not settled[stale].any() or np.all(
            np.abs(d_new[stale[settled[stale]]].min(axis=1) - bound) <= 1e-12 * bound)
        assert 0 < stale.size < 400


def test_cached_nearest_checks_its_input():
    Q = np.zeros((3, 3))
    X = np.zeros((2, 3))
    good = dict(origin=X, Q=Q, candidates=np.zeros((2, 2), dtype=np.intp), near=np.zeros(2),
                reach=np.ones(2), bound=1.0)
    for name, value in (("candidates", np.full((2, 2), 3)), ("origin", np.zeros((3, 3))),
                        ("near", np.zeros(3))):
        with pytest.raises(ValueError, match=name):
            cached_nearest(X, **{**good, name: value})
