"""SPARE's coarse stage on a deformation graph, checked against independent references."""

import numpy as np
import pytest
from scipy.optimize import approx_fprime
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from mmopt.registration import SPARE, DeformationGraph, NonRigidRegistrationProblem
from mmopt.registration._neighbors import NeighborIndex
from mmopt.registration.deformation_graph import (
    _energy,
    _Graph,
    _pairs,
    _system,
    blend_weights,
    farthest_point_nodes,
    run_coarse_stage,
)


def _surface(n, seed=0):
    """A curved height-field patch ``z = 0.3 sin(2x) cos(1.5y)`` and its unit normals."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-1.0, 1.0, size=(2, n))
    z = 0.3 * np.sin(2 * x) * np.cos(1.5 * y)
    normals = np.c_[-0.6 * np.cos(2 * x) * np.cos(1.5 * y),
                    0.45 * np.sin(2 * x) * np.sin(1.5 * y), np.ones(n)]
    return np.c_[x, y, z], normals / np.linalg.norm(normals, axis=1)[:, None]


def test_farthest_point_nodes_cover_and_spread():
    p, _ = _surface(500)
    nodes = farthest_point_nodes(p, 0.3)
    dist = cdist(p, p[nodes])
    assert dist.min(axis=1).max() <= 0.3          # every point near a node
    between = cdist(p[nodes], p[nodes]) + 10 * np.eye(len(nodes))
    assert between.min() > 0.3                     # no two nodes within the radius
    assert 5 < len(nodes) < 100


def test_blend_weights_match_the_formula():
    p, _ = _surface(200)
    nodes = p[farthest_point_nodes(p, 0.3)]
    W = blend_weights(p, nodes, 0.6).toarray()
    r = cdist(p, nodes)
    dense = np.where(r < 0.6, (1 - (r / 0.6) ** 2) ** 3, 0.0)
    np.testing.assert_allclose(W, dense / dense.sum(axis=1)[:, None], atol=1e-14)
    with pytest.raises(ValueError, match="no deformation-graph node"):
        blend_weights(p, nodes[:1], 0.1)


def _graph_and_pairs(seed=0):
    p, normals = _surface(300, seed)
    target = p + 0.03 * normals * np.sin(3 * p[:, :1])
    index = NeighborIndex(target, backend="scipy")
    # A point-to-point part far above its useful 3e-3, so that the checks below see it.
    graph = _Graph(p, normals, DeformationGraph(node_spacing=3.0, n_samples=200,
                                                point_weight=0.3),
                   index, nu=0.02, spacing=0.1)
    rng = np.random.default_rng(seed + 1)
    X = np.tile(np.r_[np.eye(3), np.zeros((1, 3))], (graph.m, 1))
    X = X + 0.05 * rng.normal(size=X.shape)
    return graph, X, _pairs(graph, graph.positions(X), X, True, True, target, normals)


def test_graph_setup_and_identity():
    graph, X, _ = _graph_and_pairs()
    identity = np.tile(np.r_[np.eye(3), np.zeros((1, 3))], (graph.m, 1))
    p, _ = _surface(300)
    np.testing.assert_allclose(graph.positions(identity, all_points=True), p, atol=1e-14)
    assert graph.samples.shape == (200,) and 3 < graph.m < 60


def test_gradient_by_finite_differences():
    # The surrogate touches F at X: its gradient 2 (H x - rhs) is F's gradient there.
    graph, X, pairs = _graph_and_pairs()
    H, rhs = _system(graph, X, *pairs)
    analytic = 2.0 * (H @ X.ravel() - rhs)
    numeric = approx_fprime(X.ravel(), lambda x: _energy(graph, x.reshape(-1, 3), *pairs),
                            1e-7)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-7 * np.abs(numeric).max())


def test_step_minimizes_the_surrogate_and_decreases_f():
    graph, X, pairs = _graph_and_pairs(seed=2)
    H, rhs = _system(graph, X, *pairs)
    new = np.linalg.solve(H.toarray(), rhs)            # dense reference of the sparse solve
    assert _energy(graph, new.reshape(-1, 3), *pairs) < _energy(graph, X, *pairs)


@pytest.mark.parametrize("oriented", [True, False])
def test_objective_non_increasing_in_every_coarse_iteration(oriented):
    p, normals = _surface(250)
    target = p + 0.05 * normals * np.sin(3 * p[:, :1]) + [0.02, 0.0, 0.0]
    flip = 1.0 if oriented else np.where(np.arange(250) % 2, -1.0, 1.0)[:, None]
    coarse = run_coarse_stage(p, normals, target, normals * flip, oriented=oriented,
                              reject_opposite=True, index=NeighborIndex(target),
                              options=DeformationGraph(node_spacing=4.0, tol=1e-6,
                                                       max_iter=6))
    history = coarse.history
    assert len(history["fun"]) >= 3
    assert np.all(history["fun"] <= history["energy_start"] * (1 + 1e-12))
    assert np.all(history["fun"] < history["energy_start"])
    np.testing.assert_allclose(np.linalg.det(coarse.R), 1.0, atol=1e-12)


def test_coarse_then_fine_recovers_a_rigid_motion():
    # The plane residuals see the normal part of the motion at once; the tangential part
    # only through the surface's curvature and the graph's smoothness, so both stages get
    # part of the way on this gently curved patch.
    p, normals = _surface(400)
    angle = 0.05
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                  [0, 0, 1.0]])
    shift = np.array([0.03, -0.02, 0.01])
    truth = p @ R.T + shift
    problem = NonRigidRegistrationProblem(p, truth[::-1], source_normals=normals,
                                          target_normals=(normals @ R.T)[::-1])

    def error(x, reference=truth):
        return np.sqrt(np.mean(np.sum((x - reference) ** 2, axis=1)))

    solver = SPARE(coarse=DeformationGraph(node_spacing=6.0))
    assert error(solver._init_state(problem, None).x.reshape(-1, 3)) < 0.7 * error(p)
    res = solver.solve(problem)
    assert res.success
    assert error(res.points) < 0.3 * error(p)
    # The nodes' maps, in data units, move the nodes towards their true images.
    nodes = res.nodes
    moved = np.einsum("nab,nb->na", res.node_transforms[:, :3, :3], nodes)
    moved += res.node_transforms[:, :3, 3]
    assert error(moved, nodes @ R.T + shift) < 0.7 * error(nodes, nodes @ R.T + shift)
    assert set(res.coarse_history) == {"fun", "energy_start", "residual"}


@pytest.mark.filterwarnings("ignore::mmopt.ConvergenceWarning")
def test_coarse_stage_and_distance_rejection_resist_outliers_and_missing_overlap():
    from mmopt.datasets import load_scan_pair, make_nonrigid_problem

    scan = load_scan_pair()
    data = make_nonrigid_problem(scan.source[::12], scan.source_normals[::12], kind="bumps",
                                 outlier_fraction=0.2, overlap=0.7, random_state=0)

    def error(options):
        res = SPARE(max_iter=15, **options).solve(data.problem)
        return np.sqrt(np.mean(np.sum((res.points - data.ground_truth) ** 2, axis=1)))

    plain = error({"coarse": False, "reject_distance": None})
    assert error({}) < 0.6 * plain


def test_bad_coarse_options():
    with pytest.raises(ValueError, match="node_spacing"):
        DeformationGraph(node_spacing=0.0)
    p, _ = _surface(30)
    with pytest.raises((TypeError, ValueError), match="coarse"):
        SPARE(coarse="yes").solve(NonRigidRegistrationProblem(p, p + 0.01))


def _partial_target():
    """The graph of ``_graph_and_pairs`` on a target that covers part of it, with its
    sample positions and upward target normals."""
    graph, X, _ = _graph_and_pairs()
    p, normals = _surface(300)
    target = (p + 0.03 * normals * np.sin(3 * p[:, :1]))[p[:, 0] < 0.3]
    graph.index = NeighborIndex(target, backend="scipy")
    return graph, X, graph.positions(X), target, np.tile([0.0, 0.0, 1.0], (len(target), 1))


def test_pairs_reject_far_matches_like_a_brute_force_search():
    graph, X, v, target, up = _partial_target()
    _, _, valid, _ = _pairs(graph, v, X, True, True, target, up)
    _, _, kept, _ = _pairs(graph, v, X, True, True, target, up, reject_distance=1.5)
    near = cdist(v, target).min(axis=1) <= 1.5 * graph.nu    # brute force, no KD-tree
    assert np.any(valid & ~near) and np.any(valid & near)
    np.testing.assert_array_equal(kept, valid & near)


def test_point_pairs_are_the_reciprocal_ones_like_a_brute_force_search():
    # The point-to-point part takes the valid pairs whose target point has the sample itself
    # as its closest sample; checked with dense distances, and its energy by the formula.
    graph, X, v, target, up = _partial_target()
    q, m, valid, reciprocal = _pairs(graph, v, X, True, True, target, up, reject_distance=3.0)
    closest = cdist(v, target).argmin(axis=1)
    back = cdist(target[closest], v).argmin(axis=1)
    expected = valid & (back == np.arange(len(v)))
    assert 0 < expected.sum() < valid.sum()
    np.testing.assert_array_equal(reciprocal, expected)
    assert not _pairs(graph, v, X, True, True, target, up, reject_distance=3.0,
                      point=False)[3].any()
    nu2 = graph.nu**2
    e2 = np.sum((v - target[closest]) ** 2, axis=1)
    part = np.where(expected, 2 * nu2 * (1 - np.exp(-e2 / (2 * nu2))), 0.0)
    none = np.zeros(len(v), dtype=bool)       # rejected pairs count alike in both
    np.testing.assert_allclose(
        _energy(graph, X, q, m, valid, reciprocal) - _energy(graph, X, q, m, valid, none),
        graph.mu * part.sum() / len(v), rtol=1e-10)


@pytest.mark.parametrize("point_weight", [0.0, 3e-3])
@pytest.mark.parametrize("seed", [0, 1])
def test_rejection_keeps_the_unobserved_part_from_folding_onto_the_target(seed, point_weight):
    # The target is the source lifted by 0.03, with the part x >= 0.2 missing. Without the
    # distance rejection the missing part's samples match the target's border and drag the
    # graph over it (measured: error 0.25-0.31 from a start of 0.03); with it they are left
    # to the smoothness term and follow the observed part. The point-to-point part must not
    # hold that motion back (damping the positions did: 0.005-0.013 left, h17g).
    p, normals = _surface(600, seed)
    truth = p + [0.0, 0.0, 0.03]
    keep = p[:, 0] < 0.2
    target = truth[keep]
    errors = {}
    for reject in (None, 3.0):
        coarse = run_coarse_stage(p, normals, target, normals[keep], oriented=True,
                                  reject_opposite=True, index=NeighborIndex(target),
                                  options=DeformationGraph(node_spacing=4.0,
                                                           point_weight=point_weight),
                                  reject_distance=reject)
        errors[reject] = np.sqrt(np.mean(np.sum((coarse.v - truth) ** 2, axis=1)[~keep]))
    assert errors[3.0] < 0.005 < 0.1 < errors[None]


def test_the_energy_does_not_fall_as_the_graph_leaves_the_target():
    # A rejected pair counts at the Welsch loss's ceiling 2 nu^2, its limit far away: moving
    # the whole graph off the target (re-matched at each offset) can only raise F. Counted
    # as 0, F fell to the regularizers alone once every pair was rejected, and the coarse
    # stage's history and stop could not see a sheet sliding off the data.
    graph, _, _ = _graph_and_pairs()
    p, normals = _surface(300)
    target = p + 0.003 * normals * np.sin(3 * p[:, :1])   # the identity nearly fits
    X = np.tile(np.r_[np.eye(3), np.zeros((1, 3))], (graph.m, 1))
    X = X + 1e-3 * np.random.default_rng(3).normal(size=X.shape)
    energies = []
    for offset in np.linspace(0.0, 0.5, 26):
        shifted = X.copy()
        shifted[3::4] += [0.0, 0.0, offset]            # every node's t_j
        pairs = _pairs(graph, graph.positions(shifted), shifted, True, True, target,
                       normals, reject_distance=3.0)
        energies.append(_energy(graph, shifted, *pairs))
    assert not pairs[2].any()                               # all rejected at the end
    assert np.all(np.diff(energies) >= -1e-12 * energies[-1])
    assert energies[-1] > 10.0 * energies[0]
    # Reference at the end: the ceilings per sample (plane and point-to-point parts) plus
    # the regularizers (translation-free).
    A = np.transpose(X.reshape(-1, 4, 3)[:, :3, :], (0, 2, 1))
    U, _, Vt = np.linalg.svd(A)
    R = U @ np.diag([1.0, 1.0, -1.0]) @ Vt
    R = np.where(np.linalg.det(U @ Vt)[:, None, None] > 0, U @ Vt, R)
    smooth = np.sum((graph.S @ X + graph.h) ** 2)
    expected = ((1.0 + graph.mu) * 2.0 * graph.nu**2 + graph.ws * smooth
                + graph.wr * np.sum((A - R) ** 2))
    np.testing.assert_allclose(energies[-1], expected, rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("shape", [(12, 12), (20, 15), (16, 9)])
def test_the_coarse_stage_never_ends_above_its_start(seed, shape):
    # A bent sheet with target normals off by N(0, 3e-3): the graph cannot fit the bend,
    # and the normals' noise pushed it along the sheet and off the target (30-36 times the
    # start's error), with F at its own matches ending above the start's. The step whose
    # new matches raise F is undone and the stage ends there. F is recomputed here at
    # the returned maps' own matches.
    from mmopt.registration import estimate_normals

    nx, ny = shape
    u, w = np.meshgrid(np.linspace(0, 1, nx), np.linspace(0, 1, ny))
    p = np.c_[u.ravel(), w.ravel(), np.zeros(nx * ny)]
    target = p + np.c_[np.zeros((nx * ny, 2)), 0.03 * np.sin(np.pi * u.ravel())]
    rng = np.random.default_rng(seed)
    tn = estimate_normals(target) + 3e-3 * rng.normal(size=target.shape)
    tn /= np.linalg.norm(tn, axis=1)[:, None]
    normals = np.tile([0.0, 0.0, 1.0], (nx * ny, 1))
    index = NeighborIndex(target)
    options = DeformationGraph()
    coarse = run_coarse_stage(p, normals, target, tn, oriented=False, reject_opposite=True,
                              index=index, options=options, reject_distance=3.0)
    start = coarse.history["energy_start"]
    assert np.all(np.diff(start) <= 0.0)
    spacing = float(np.mean(cKDTree(p).query(p, k=2)[0][:, 1]))
    graph = _Graph(p, normals, options, index, nu=1.0, spacing=spacing)
    graph.nu = max(float(np.median(index.query(p)[0])), 1e-6)
    X = np.concatenate([np.transpose(coarse.affines, (0, 2, 1)), coarse.shifts[:, None, :]],
                       axis=1).reshape(-1, 3)
    np.testing.assert_allclose(graph.positions(X, all_points=True), coarse.v, atol=1e-12)
    pairs = _pairs(graph, graph.positions(X), X, False, True, target, tn,
                   reject_distance=3.0)
    assert _energy(graph, X, *pairs) <= start[0]
