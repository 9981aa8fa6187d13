"""PCA normals against the analytic normals of a sphere; KD-tree backends agree."""

import numpy as np
import pytest

from mmopt.registration import estimate_normals
from mmopt.registration._neighbors import NeighborIndex, pykdtree_available
from mmopt.registration.normals import local_geometry


def _sphere(n, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_sphere_normals_up_to_sign():
    points = _sphere(3000)
    normals = estimate_normals(points, k=12)
    cosine = np.abs(np.einsum("ij,ij->i", normals, points))
    assert np.median(cosine) > 0.999 and cosine.min() > 0.95
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0)


def test_thickness_tracks_noise():
    rng = np.random.default_rng(1)
    plane = np.c_[rng.random((4000, 2)), np.zeros(4000)]
    _, thin, _ = local_geometry(plane)
    noisy = plane + [0, 0, 1] * rng.normal(scale=0.01, size=(4000, 1))
    _, thick, _ = local_geometry(noisy)
    assert np.median(thin) < 1e-12 < 0.003 < np.median(thick) < 0.01


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="points"):
        estimate_normals(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="k must be"):
        estimate_normals(_sphere(20), k=2)


@pytest.mark.skipif(not pykdtree_available(), reason="pykdtree not installed")
def test_pykdtree_matches_scipy():
    rng = np.random.default_rng(2)
    points, queries = rng.random((2000, 3)), rng.random((500, 3))
    a = NeighborIndex(points, backend="scipy")
    b = NeighborIndex(points, backend="pykdtree")
    for bound in (np.inf, 0.03):
        da, ia = a.query(queries, bound=bound)
        db, ib = b.query(queries, bound=bound)
        np.testing.assert_allclose(da, db, rtol=1e-12)
        np.testing.assert_array_equal(ia, ib)
        assert (ia == -1).any() == np.isfinite(bound)
