"""The shipped scan pair and the synthetic registration generator."""

import ast
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from mmopt.datasets import load_scan_pair, make_registration_clouds, make_registration_problem
from mmopt.registration import RegistrationProblem


def test_scan_pair_contents_and_reference_direction():
    data = load_scan_pair()
    assert data.source.shape == (14806, 3) and data.target.shape == (15446, 3)
    assert data.source_normals.shape == data.source.shape
    np.testing.assert_allclose(np.linalg.norm(data.target_normals, axis=1), 1.0, atol=1e-4)
    assert "MIT" in data.DESCR
    # The reference maps source onto target (target ~= R source + t): about 69% of the moved
    # source lies within 0.01 of the target, and almost none with the inverse.
    M = data.reference_transform
    tree = cKDTree(data.target)
    forward, _ = tree.query(data.source @ M[:3, :3].T + M[:3, 3])
    Minv = np.linalg.inv(M)
    backward, _ = tree.query(data.source @ Minv[:3, :3].T + Minv[:3, 3])
    assert 0.65 < np.mean(forward < 0.01) < 0.73
    assert np.mean(backward < 0.01) < 0.05
    # A fresh copy each call.
    data.source[0] = 0.0
    assert not np.array_equal(load_scan_pair().source[0], data.source[0])


def test_license_ships_with_the_data():
    from importlib import resources

    folder = resources.files("mmopt.datasets").joinpath("data/scan_pair")
    assert "MIT" in folder.joinpath("LICENSE.Fast-Robust-ICP").read_text()


def test_generator_exact_without_noise():
    points = np.random.default_rng(0).random((500, 3))
    problem, T = make_registration_problem(
        points, rotation_deg=40, translation=0.2, noise=0.0, outlier_fraction=0.0, overlap=1.0,
        random_state=0,
    )
    assert isinstance(problem, RegistrationProblem)
    R, t = T[:3, :3], T[:3, 3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.degrees(np.arccos((np.trace(R) - 1) / 2)) == pytest.approx(40)
    assert np.linalg.norm(t) == pytest.approx(0.2 * np.linalg.norm(np.ptp(points, axis=0)))
    np.testing.assert_allclose(problem.source @ R.T + t, problem.target, atol=1e-12)


def test_generator_crop_outliers_noise_and_seed():
    points = np.random.default_rng(1).random((1000, 3))
    problem, T = make_registration_problem(
        points, noise=0.01, outlier_fraction=0.2, overlap=0.6, random_state=3
    )
    assert problem.target.shape[0] == 800  # ranks >= 0.2
    n_inliers = 800  # ranks < 0.8
    assert problem.source.shape[0] == n_inliers + 200  # outliers make 20% of the source
    again, T2 = make_registration_problem(
        points, noise=0.01, outlier_fraction=0.2, overlap=0.6, random_state=3
    )
    np.testing.assert_array_equal(again.source, problem.source)
    np.testing.assert_array_equal(T, T2)


@pytest.mark.parametrize(
    "option, value", [("rotation_deg", 200.0), ("noise", -1.0), ("outlier_fraction", 1.0),
                      ("overlap", 0.0)],
)
def test_generator_bad_options(option, value):
    with pytest.raises(ValueError, match=option):
        make_registration_problem(np.random.default_rng(0).random((50, 3)), **{option: value})


def test_clouds_are_arrays_and_the_problem_is_built_from_them():
    points = np.random.default_rng(2).random((400, 3))
    source, target, T = make_registration_clouds(points, random_state=5)
    assert isinstance(source, np.ndarray) and isinstance(target, np.ndarray)
    problem, T2 = make_registration_problem(points, random_state=5)
    np.testing.assert_array_equal(problem.source, source)
    np.testing.assert_array_equal(problem.target, target)
    np.testing.assert_array_equal(T, T2)


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_clouds_of_extreme_extent_keep_their_diagonal(scale):
    # The translation is a fraction of the bounding-box diagonal, computed without
    # overflow or underflow: with no noise its length is that fraction of the true diagonal.
    points = np.random.default_rng(3).random((300, 3))
    _, _, T = make_registration_clouds(points * scale, translation=0.1, noise=0.0,
                                       outlier_fraction=0.0, random_state=0)
    diagonal = np.linalg.norm(np.ptp(points, axis=0)) * scale
    assert np.linalg.norm(T[:3, 3] / scale) == pytest.approx(0.1 * diagonal / scale, rel=1e-12)


def test_no_family_imports_the_data_layer():
    # mmopt.datasets sits above the families (its generators return their problems): no
    # family module imports it, at module level or inside a function.
    import mmopt

    families = ("mm", "ot", "registration", "bilevel", "bcd", "_core")
    root = Path(mmopt.__file__).parent
    for family in families:
        for path in (root / family).glob("*.py"):
            # The demos (run by the CLI), and the deprecated mmopt.bcd.datasets alias.
            if path.name == "_demo.py" or (family, path.name) == ("bcd", "datasets.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                for name in names:
                    assert not name.startswith("mmopt.datasets"), (family, path.name, name)
