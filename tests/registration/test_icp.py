"""The ICP solver: the shipped real pair against the official answer, Anderson against plain
iteration, the MM energy decrease, point-to-plane, the robust losses, options, diagnostics."""

import warnings

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

import mmopt
from mmopt.datasets import load_scan_pair, make_registration_problem
from mmopt.losses import TrimmedLoss
from mmopt.registration import (
    ICP,
    RegistrationProblem,
    ScaleSchedule,
    StageCriteria,
    icp,
    weighted_kabsch,
)
from mmopt.registration._neighbors import pykdtree_available
from mmopt.registration.icp import _Run, point_to_plane_jacobian
from mmopt.registration.se3 import rotation_angle, se3_exp


def _nearest_rotation(A):
    U, _, Vt = np.linalg.svd(A)
    return U @ Vt


def _rotation_error_deg(R, R_ref):
    return float(np.degrees(rotation_angle(R.T @ R_ref)))


@pytest.fixture(scope="module")
def scan():
    return load_scan_pair()


@pytest.fixture(scope="module")
def scan_problem(scan):
    return RegistrationProblem(scan.source, scan.target, target_normals=scan.target_normals)


@pytest.fixture(scope="module")
def scan_runs(scan_problem):
    # Solved once, shared by the tests below (each solve takes a few seconds).
    return {
        "centroids": ICP().solve(scan_problem),
        "identity": ICP(init="identity").solve(scan_problem),
        "plain": ICP(anderson=False).solve(scan_problem),
    }


# ------------------------------------------------------------------ the shipped real pair
@pytest.mark.parametrize("start", ["centroids", "identity"])
def test_real_pair_matches_official_answer(scan, scan_runs, start):
    res = scan_runs[start]
    ref = scan.reference_transform
    assert res.success
    assert _rotation_error_deg(res.rotation, _nearest_rotation(ref[:3, :3])) <= 0.02
    # Translation within 0.05% of the diagonal (the reference is printed to 6 digits).
    assert np.linalg.norm(res.translation - ref[:3, 3]) <= 5e-4 * 1.94
    # About 69% of the source overlaps the target (README of the data).
    assert 0.6 < res.inlier_ratio < 0.75


def test_real_pair_after_extra_60_degree_rotation(scan, scan_problem):
    # Move the source by a further 60 degrees about a random axis through its centroid: the
    # answer composes with the inverse of that motion.
    R = Rotation.from_rotvec(np.radians(60.0) * np.array([0.6, -0.48, 0.64])).as_matrix()
    c = scan.source.mean(axis=0)
    moved = (scan.source - c) @ R.T + c
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = R, c - R @ c
    expected = scan.reference_transform @ np.linalg.inv(M)
    res = icp(moved, scan.target)
    assert res.success
    assert _rotation_error_deg(res.rotation, _nearest_rotation(expected[:3, :3])) <= 0.02


def test_anderson_needs_fewer_iterations_same_energy(scan_runs):
    fast, plain = scan_runs["centroids"], scan_runs["plain"]
    assert plain.nit >= 1.8 * fast.nit
    # Same final scale, same or lower energy (up to the stopping tolerance's effect).
    assert fast.nu == pytest.approx(plain.nu)
    assert fast.fun <= plain.fun * (1 + 1e-4)
    assert fast.n_accepted > fast.n_rejected
    assert fast.acceptance_rate == pytest.approx(
        fast.n_accepted / (fast.n_accepted + fast.n_rejected)
    )


def test_diagnostics(scan_runs):
    res = scan_runs["centroids"]
    assert res.iterations_per_stage.sum() == res.nit
    assert res.n_stages == len(res.iterations_per_stage) >= 2
    # One query to start, one per iteration, one more per rejected extrapolation, and one
    # each time the subsample of the coarse stages grows (it ends as the whole source).
    assert 0 < res.n_coarse_stages < res.n_stages
    n_points = res.history["n_points"]
    assert np.all(np.diff(n_points) >= 0) and n_points[-1] == 14806
    assert 1000 <= n_points[0] <= 1100
    n_handovers = np.count_nonzero(np.diff(n_points))
    assert n_handovers >= 2
    assert res.n_queries == 1 + res.nit + res.n_rejected + n_handovers
    assert res.history["n_queries"][-1] == res.n_queries
    assert res.nu == pytest.approx(res.nu_min) and res.nu_min > 0
    np.testing.assert_allclose(res.transform[:3, :3], res.rotation)
    np.testing.assert_allclose(res.transform[:3, 3], res.translation)
    assert res.scale == pytest.approx(1.0)
    nu = res.history["nu"]
    assert np.all(np.diff(nu) <= 0) and nu[-1] == pytest.approx(res.nu)
    assert res.inlier_rmse <= res.inlier_threshold
    assert res.correspondences.shape == (14806,)


def test_energy_never_increases_within_a_stage(scan_runs):
    for res in (scan_runs["centroids"], scan_runs["plain"]):
        fun, stage = res.history["fun"], res.history["stage"]
        same = stage[1:] == stage[:-1]
        assert np.all(np.diff(fun)[same] <= 1e-9 * fun[1:][same])


@pytest.mark.parametrize("anderson", [False, True])
def test_point_to_plane_on_real_pair(scan, scan_problem, anderson):
    res = ICP(metric="point_to_plane", anderson=anderson).solve(scan_problem)
    ref = _nearest_rotation(scan.reference_transform[:3, :3])
    assert res.success and _rotation_error_deg(res.rotation, ref) <= 0.05
    fun, stage = res.history["fun"], res.history["stage"]
    same = stage[1:] == stage[:-1]
    assert np.all(np.diff(fun)[same] <= 1e-9 * fun[1:][same])


# ----------------------------------------------------------------------- synthetic cases
@pytest.fixture(scope="module")
def small_cloud(scan):
    return scan.source[::4]


def _issue_case(points, seed, *, rotation_deg=30, overlap=0.7):
    # The issue's case: 30 degrees, 10% translation, 0.5% noise, 20% outliers, 30% crop.
    return make_registration_problem(
        points, rotation_deg=rotation_deg, translation=0.1, noise=0.005, outlier_fraction=0.2,
        overlap=overlap, random_state=seed,
    )


def _errors(res, problem, T):
    diagonal = np.linalg.norm(np.ptp(problem.target, axis=0))
    return (_rotation_error_deg(res.rotation, T[:3, :3]),
            np.linalg.norm(res.translation - T[:3, 3]) / diagonal)


@pytest.mark.parametrize("seed", [0, 7])
def test_synthetic_case_meets_the_issue_target(scan, seed):
    # The issue's case at full density, defaults, from the identity. Seed 7 was the worst of
    # ten before the surface refinement (1.45 degrees, 0.69%); measured over seeds 0-9 now:
    # at most 0.36 degrees and 0.18% of the diagonal.
    problem, T = _issue_case(scan.source, seed)
    res = ICP(init="identity").solve(problem)
    rotation, translation = _errors(res, problem, T)
    assert res.success and res.refined
    assert rotation <= 0.6 and translation <= 0.002


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("cloud", ["source", "target"])
def test_synthetic_case_on_many_seeds_and_clouds(scan, cloud, seed):
    # The same case (noise, outliers and crop relative to the diagonal) cut from either
    # shipped scan at half density, which halves the time; measured at most 0.44 degrees and
    # 0.18%.
    problem, T = _issue_case(getattr(scan, cloud)[::2], seed)
    res = ICP(init="identity").solve(problem)
    rotation, translation = _errors(res, problem, T)
    assert rotation <= 0.6 and translation <= 0.002


def test_without_surface_refinement_noise_biases_the_fit(scan):
    # Why the refinement exists: nearest-point matching at nu ~ noise snaps onto single
    # noisy points, and the fit ends over a degree off, from the true transform too.
    # Measured from the true transform without it: 0.77, 0.92, 1.28 degrees (seeds 0, 1, 6).
    problem, T = _issue_case(scan.source, 6)
    res = ICP(init=T, refine=False).solve(problem)
    assert not res.refined
    assert _errors(res, problem, T)[0] > 0.6


def test_surface_refinement_skipped_on_clean_or_identical_samples(scan_runs):
    # The shipped pair: noise far below the spacing.
    assert not scan_runs["centroids"].refined
    # A moved copy of the same volume sample: its "thickness" passes for noise, but the
    # matches are exact, so there is nothing to smooth; forcing the stage shows it would hurt.
    X = np.random.default_rng(0).normal(size=(400, 3)) * [3.0, 2.0, 1.0]
    T = se3_exp([0.1, -0.2, 0.25, 0.3, 0.1, -0.2])
    problem = RegistrationProblem(X, X @ T[:3, :3].T + T[:3, 3])
    res = ICP().solve(problem)
    assert res.noise > 0.1 * res.spacing
    assert not res.refined and np.allclose(res.transform, T, atol=1e-6)
    forced = ICP(refine=True).solve(problem)
    assert forced.refined and not np.allclose(forced.transform, T, atol=1e-3)


def test_l2_anderson_reaches_plain_fixed_point(small_cloud):
    problem, _ = make_registration_problem(
        small_cloud, rotation_deg=10, translation=0.05, noise=0.0, outlier_fraction=0.0,
        overlap=1.0, random_state=0,
    )
    plain = ICP(loss="l2", anderson=False, tol=1e-9, max_iter=5000).solve(problem)
    fast = ICP(loss="l2", tol=1e-9, max_iter=5000).solve(problem)
    assert plain.success and fast.success and fast.nit < plain.nit
    np.testing.assert_allclose(fast.transform, plain.transform, atol=1e-6)
    # A fixed point of classic ICP: re-matching and refitting leaves T unchanged.
    T = fast.transform
    moved = problem.source @ T[:3, :3].T + T[:3, 3]
    _, idx = cKDTree(problem.target).query(moved)
    np.testing.assert_allclose(weighted_kabsch(problem.source, problem.target[idx]), T,
                               atol=1e-6)


@pytest.mark.parametrize("loss", ["welsch", "huber", "cauchy", "tukey", "trimmed", "l2"])
@pytest.mark.parametrize("metric", ["point_to_point", "point_to_plane", "hybrid"])
def test_every_loss_and_metric_recovers_a_clean_motion(small_cloud, loss, metric):
    problem, T = make_registration_problem(
        small_cloud, rotation_deg=10, translation=0.05, noise=0.0, outlier_fraction=0.0,
        overlap=1.0, random_state=1,
    )
    if loss == "trimmed":
        loss = TrimmedLoss(keep=0.95)
    res = ICP(loss=loss, metric=metric).solve(problem)
    assert res.success
    assert _rotation_error_deg(res.rotation, T[:3, :3]) <= 0.05


def test_robust_loss_resists_outliers_where_l2_fails(small_cloud):
    problem, T = make_registration_problem(
        small_cloud, rotation_deg=20, translation=0.05, noise=0.002, outlier_fraction=0.3,
        overlap=0.8, random_state=3,
    )
    robust = ICP().solve(problem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mmopt.ConvergenceWarning)
        plain = ICP(loss="l2").solve(problem)
    assert _rotation_error_deg(robust.rotation, T[:3, :3]) < 1.0
    assert _rotation_error_deg(plain.rotation, T[:3, :3]) > 2.0


def test_point_to_plane_jacobian_matches_finite_differences():
    rng = np.random.default_rng(0)
    X, N, Q = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)), rng.normal(size=(7, 3))

    def residuals(delta):
        D = se3_exp(delta)
        return np.einsum("ij,ij->i", N, X @ D[:3, :3].T + D[:3, 3] - Q)

    h = 1e-6
    numeric = np.stack(
        [(residuals(h * e) - residuals(-h * e)) / (2 * h) for e in np.eye(6)], axis=1
    )
    np.testing.assert_allclose(point_to_plane_jacobian(X, N), numeric, atol=1e-8)


def test_fixed_nu_runs_one_stage(small_cloud):
    problem, T = make_registration_problem(
        small_cloud, rotation_deg=5, translation=0.02, noise=0.001, outlier_fraction=0.1,
        overlap=0.9, random_state=4,
    )
    res = ICP(schedule=ScaleSchedule(nu=0.01)).solve(problem)
    assert res.n_stages == 1 and res.nu == pytest.approx(0.01)
    assert _rotation_error_deg(res.rotation, T[:3, :3]) < 0.5


def test_init_matrix_and_x0(small_cloud):
    problem, T = make_registration_problem(
        small_cloud, rotation_deg=90, translation=0.3, noise=0.0, outlier_fraction=0.0,
        overlap=1.0, random_state=5,
    )
    res = ICP(init=T, schedule=ScaleSchedule(nu=0.005)).solve(problem)
    assert res.nit <= 3 and np.allclose(res.transform, T, atol=1e-6)
    via_x0 = mmopt.solve(problem, "icp", x0=T, schedule=ScaleSchedule(nu=0.005))
    np.testing.assert_allclose(via_x0.transform, res.transform)


def test_similarity_recovers_scale(small_cloud):
    problem, T = make_registration_problem(
        small_cloud, rotation_deg=15, translation=0.05, noise=0.0, outlier_fraction=0.0,
        overlap=1.0, random_state=6,
    )
    scaled = RegistrationProblem(problem.source, 1.3 * problem.target)
    res = ICP(similarity=True).solve(scaled)
    assert res.scale == pytest.approx(1.3, rel=1e-4)
    assert _rotation_error_deg(res.rotation, T[:3, :3]) <= 0.05
    with pytest.raises(ValueError, match="similarity"):
        ICP(similarity=True, metric="point_to_plane").solve(scaled)


@pytest.mark.parametrize(
    "option, value, error",
    [("metric", "plane", ValueError), ("loss", "l1", ValueError), ("loss", 2.0, TypeError),
     ("schedule", {"nu": 1.0}, TypeError), ("stage_criteria", 1e-3, TypeError),
     ("init", "random", ValueError), ("anderson", 1, TypeError),
     ("scale_bounds", (2.0, 3.0), ValueError), ("neighbors", "faiss", ValueError),
     ("refine", "yes", ValueError), ("refine_k", 2, ValueError)],
)
def test_bad_options(small_cloud, option, value, error):
    with pytest.raises(error, match=option):
        icp(small_cloud, small_cloud, **{option: value})


@pytest.mark.parametrize(
    "options",
    [dict(neighbors="scipy", n_threads=1), dict(neighbors="scipy", n_threads=2)]
    + ([dict(neighbors="pykdtree")] if pykdtree_available() else []),
)
def test_results_do_not_depend_on_backend_or_threads(small_cloud, options):
    problem, _ = make_registration_problem(small_cloud, random_state=7)
    with warnings.catch_warnings():
        # Stopped early on purpose: 30 iterations are enough to compare the iterates.
        warnings.simplefilter("ignore", mmopt.ConvergenceWarning)
        reference = ICP(neighbors="scipy", n_threads=1, max_iter=30).solve(problem)
        res = ICP(max_iter=30, **options).solve(problem)
    np.testing.assert_array_equal(res.transform, reference.transform)


def test_no_coarse_stages(small_cloud):
    problem, T = make_registration_problem(
        small_cloud, rotation_deg=10, translation=0.05, noise=0.0, outlier_fraction=0.0,
        overlap=1.0, random_state=8,
    )
    full = ICP(schedule=ScaleSchedule(coarse_stride=1)).solve(problem)
    assert full.n_coarse_stages == 0
    assert full.n_queries == 1 + full.nit + full.n_rejected
    assert _rotation_error_deg(full.rotation, T[:3, :3]) <= 0.05


def test_stage_tol_on_real_pair(scan, scan_problem, scan_runs):
    # Converging the intermediate scales to tol (stage_tol=None) costs far more iterations
    # for the same answer as the default's loose stage_tol.
    tight = ICP(stage_criteria=StageCriteria(tol=None)).solve(scan_problem)
    default = scan_runs["centroids"]
    assert tight.n_stages == default.n_stages and tight.nit >= 2 * default.nit
    ref = _nearest_rotation(scan.reference_transform[:3, :3])
    assert _rotation_error_deg(tight.rotation, ref) <= 0.02
    assert _rotation_error_deg(tight.rotation, default.rotation) <= 0.01
    # The nu_min stage runs to tol under any stage_tol.
    assert default.residual <= 1e-5


def test_hybrid_from_identity_on_real_pair(scan, scan_problem):
    # Point-to-plane alone stalls ~60 degrees off from this start; the hybrid does not.
    res = ICP(metric="hybrid", init="identity").solve(scan_problem)
    ref = _nearest_rotation(scan.reference_transform[:3, :3])
    assert res.success and _rotation_error_deg(res.rotation, ref) <= 0.05
    stage = res.history["stage"]
    fun = res.history["fun"]
    last = stage == stage[-1]
    assert np.all(np.diff(fun[last]) <= 1e-9 * fun[last][1:])


def test_smoothed_surface_of_a_plane_is_the_plane():
    # Closed form: on a flat grid the kernel-weighted mean of any neighbourhood lies in the
    # plane and its PCA normal is the plane's, so the residual is the height above it.
    g = np.stack(np.meshgrid(np.linspace(0, 1, 41), np.linspace(0, 1, 41)), -1).reshape(-1, 2)
    target = np.c_[g, np.zeros(g.shape[0])]
    solver = ICP()
    setup = solver._make_setup(RegistrationProblem(target, target))
    heights = np.array([0.01, -0.02, 0.0, 0.005])
    points = np.c_[[[0.5, 0.5], [0.31, 0.72], [0.1, 0.9], [0.66, 0.2]], heights]
    X = (points - setup.target_centroid) / setup.scale
    _, residuals, _, _, centres, normals = solver._surface_correspond(_Run(setup), X)
    np.testing.assert_allclose(np.abs(normals[:, 2]), 1.0, atol=1e-12)
    np.testing.assert_allclose(residuals * normals[:, 2] * setup.scale, heights, atol=1e-12)
    np.testing.assert_allclose(centres[:, 2] * setup.scale + setup.target_centroid[2], 0.0,
                               atol=1e-12)
