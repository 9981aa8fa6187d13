"""NeighborIndex against a brute-force NumPy search."""

import pickle

import numpy as np
import pytest

from mmopt.registration._neighbors import NeighborIndex, pykdtree_available

BACKENDS = ["scipy"] + (["pykdtree"] if pykdtree_available() else [])


def _brute(points, x, k):
    d = np.sqrt(((x[:, None, :] - points[None, :, :]) ** 2).sum(axis=2))
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_query_matches_brute_force(backend, k, n_threads):
    rng = np.random.default_rng(k)
    points = rng.normal(size=(300, 3))
    x = rng.normal(size=(5000, 3))  # above the one-thread row limit with k = 1
    x_before = x.copy()
    dist, idx = NeighborIndex(points, backend=backend).query(x, k=k, n_threads=n_threads)
    ref_dist, ref_idx = _brute(points, x, k)
    if k == 1:
        dist, idx = dist[:, None], idx[:, None]
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(idx, ref_idx)  # continuous random points: no ties
    np.testing.assert_array_equal(x, x_before)
    assert idx.dtype == np.intp


@pytest.mark.parametrize("backend", BACKENDS)
def test_bounded_query_marks_missing_neighbours(backend):
    rng = np.random.default_rng(3)
    points = rng.uniform(size=(200, 3))
    x = np.vstack([rng.uniform(size=(50, 3)), rng.uniform(size=(10, 3)) + 10.0])
    bound = 0.15
    dist, idx = NeighborIndex(points, backend=backend).query(x, k=3, bound=bound)
    ref_dist, ref_idx = _brute(points, x, 3)
    inside = ref_dist < bound
    np.testing.assert_allclose(dist[inside], ref_dist[inside], rtol=1e-12)
    np.testing.assert_array_equal(idx[inside], ref_idx[inside])
    assert np.all(np.isinf(dist[~inside])) and np.all(idx[~inside] == -1)
    assert np.all(idx[50:] == -1)  # the far rows have no neighbour within the bound


def test_bad_options_are_named():
    points = np.zeros((4, 3))
    with pytest.raises(ValueError, match="neighbors"):
        NeighborIndex(points, backend="brute")
    with pytest.raises((ValueError, TypeError), match="n_threads"):
        NeighborIndex(points).query(points, n_threads=0)
    if not pykdtree_available():
        with pytest.raises(ImportError, match="pykdtree"):
            NeighborIndex(points, backend="pykdtree")


@pytest.mark.parametrize("backend", ["scipy", "pykdtree", "auto"])
def test_an_index_pickles_and_answers_the_same(backend):
    # joblib and Dask send the shared target's index to workers; pykdtree's tree itself does
    # not pickle, so the index carries its points and is built again.
    if backend == "pykdtree" and not pykdtree_available():
        pytest.skip("pykdtree is not installed")
    rng = np.random.default_rng(3)
    points, queries = rng.random((500, 3)), rng.random((50, 3))
    index = NeighborIndex(points, backend=backend)
    copy = pickle.loads(pickle.dumps(index))
    assert copy.backend == index.backend
    answers = zip(copy.query(queries, k=3, bound=0.2), index.query(queries, k=3, bound=0.2))
    for got, expected in answers:
        np.testing.assert_array_equal(got, expected)


def test_pykdtree_threads_are_bounded_by_n_threads_and_restored():
    if not pykdtree_available():
        pytest.skip("pykdtree is not installed")
    from mmopt.registration._neighbors import _pykdtree_threads

    rng = np.random.default_rng(4)
    points, queries = rng.random((3000, 3)), rng.random((3000, 3))
    index = NeighborIndex(points, backend="pykdtree")
    pool = _pykdtree_threads()
    before = [info["num_threads"] for info in pool.info()]
    seen = []
    real_query = index._tree.query

    def spy(*args, **kwargs):
        seen.append([info["num_threads"] for info in pool.info()])
        return real_query(*args, **kwargs)

    index._tree = type("Spy", (), {"query": staticmethod(spy)})()
    one = index.query(queries, n_threads=1)
    two = index.query(queries, n_threads=2)
    assert all(n == 1 for n in seen[0]) and all(n <= 2 for n in seen[1])
    assert [info["num_threads"] for info in pool.info()] == before
    for got, expected in zip(one, two):
        np.testing.assert_array_equal(got, expected)
