"""ICP's symmetric point-to-plane metric, checked against independent references."""

import numpy as np
import pytest

from mmopt.datasets import load_scan_pair, make_registration_problem
from mmopt.registration import ICP, RegistrationProblem, icp
from mmopt.registration.se3 import rotation_angle, se3_exp
from mmopt.registration.symmetric import symmetric_jacobian, symmetric_residuals


def test_jacobian_matches_finite_differences():
    rng = np.random.default_rng(0)
    X, Q = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    Np = rng.normal(size=(7, 3))
    Np /= np.linalg.norm(Np, axis=1)[:, None]
    Nq = rng.normal(size=(7, 3))
    Nq /= np.linalg.norm(Nq, axis=1)[:, None]

    def residuals(delta):
        D = se3_exp(delta)
        return symmetric_residuals(X @ D[:3, :3].T + D[:3, 3], Q, Np @ D[:3, :3].T, Nq)

    h = 1e-6
    numeric = np.stack(
        [(residuals(h * e) - residuals(-h * e)) / (2 * h) for e in np.eye(6)], axis=1
    )
    np.testing.assert_allclose(symmetric_jacobian(X, Q, Np, Nq), numeric, atol=1e-8)


def test_residual_vanishes_on_a_common_circle():
    # p and q on the unit circle with their outward normals: the symmetric residual is 0
    # (the point-to-plane one is not).
    p, q = np.array([[1.0, 0.0, 0.0]]), np.array([[np.cos(0.4), np.sin(0.4), 0.0]])
    assert abs(symmetric_residuals(p, q, p, q)[0]) < 1e-15
    assert abs(np.sum((p - q) * q)) > 1e-2


@pytest.fixture(scope="module")
def scan():
    return load_scan_pair()


@pytest.mark.parametrize("given_normals", [True, False])
def test_recovers_a_known_motion(scan, given_normals):
    points = scan.source[::6]
    problem, T = make_registration_problem(points, rotation_deg=15, translation=0.05,
                                           noise=0.0, outlier_fraction=0.0, overlap=1.0,
                                           random_state=2)
    if given_normals:
        # The generator's target is T applied to the points: its normals are R n.
        normals = scan.source_normals[::6]
        problem = RegistrationProblem(problem.source, problem.target,
                                      source_normals=normals,
                                      target_normals=normals @ T[:3, :3].T)
    res = ICP(metric="symmetric").solve(problem)
    assert res.success
    assert np.degrees(rotation_angle(res.rotation.T @ T[:3, :3])) < 0.05
    np.testing.assert_allclose(res.translation, T[:3, 3], atol=1e-3)
    fun, stage = res.history["fun"], res.history["stage"]
    same = stage[1:] == stage[:-1]
    assert np.all(np.diff(fun)[same] <= 1e-9 * fun[1:][same])


def test_real_pair_matches_the_reference(scan):
    res = icp(scan.source[::2], scan.target, target_normals=scan.target_normals,
              source_normals=scan.source_normals[::2], metric="symmetric")
    reference = scan.reference_transform
    assert np.degrees(rotation_angle(res.rotation.T @ reference[:3, :3])) < 0.1
    np.testing.assert_allclose(res.translation, reference[:3, 3], atol=2e-3)


def test_too_few_source_points_for_normals():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(8, 3))
    with pytest.raises(ValueError, match="source_normals"):
        icp(source, rng.normal(size=(50, 3)), metric="symmetric")
