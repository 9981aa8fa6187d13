"""RegistrationProblem validation: clear errors naming the argument; inputs untouched."""

import pickle

import numpy as np
import pytest

from mmopt.registration import NonRigidRegistrationProblem, RegistrationProblem, icp
from mmopt.registration.problem import check_rigid_transform

rng = np.random.default_rng(0)
GOOD = rng.random((20, 3))


@pytest.mark.parametrize(
    "source, target, match",
    [
        (np.r_[GOOD[:-1], [[np.nan, 0, 0]]], GOOD, "source must not contain NaN"),
        (GOOD, np.r_[GOOD[:-1], [[np.inf, 0, 0]]], "target must not contain NaN"),
        (GOOD[:, :2], GOOD, r"source must have shape \(n, 3\)"),
        (GOOD, GOOD.ravel(), "target must be 2-dimensional"),
        (GOOD[:2], GOOD, "source must hold at least 3 points"),
        (GOOD, np.outer(np.arange(5.0), [1.0, 2.0, 3.0]), "target: the points are collinear"),
        (np.ones((4, 3)), GOOD, "source: the points are collinear"),
    ],
)
def test_bad_clouds(source, target, match):
    with pytest.raises(ValueError, match=match):
        RegistrationProblem(source, target)


def test_bad_normals():
    with pytest.raises(ValueError, match=r"target_normals must have shape \(20, 3\)"):
        RegistrationProblem(GOOD, GOOD, target_normals=np.ones((19, 3)))
    with pytest.raises(ValueError, match="source_normals must have shape"):
        RegistrationProblem(GOOD, GOOD, source_normals=np.ones((20, 2)))
    with pytest.raises(ValueError, match="target_normals must not contain zero"):
        RegistrationProblem(GOOD, GOOD, target_normals=np.zeros((20, 3)))
    with pytest.raises(TypeError, match="target_normals must be an array of real"):
        RegistrationProblem(GOOD, GOOD, target_normals=[["a", "b", "c"]] * 20)


def test_inputs_not_mutated_and_read_only():
    source, target = GOOD.copy(), GOOD.copy() + 0.1
    normals = rng.normal(size=(20, 3))
    kept = normals.copy()
    problem = RegistrationProblem(source, target, target_normals=normals)
    np.testing.assert_array_equal(normals, kept)
    np.testing.assert_allclose(np.linalg.norm(problem.target_normals, axis=1), 1.0)
    assert not problem.source.flags.writeable
    icp(source, target)
    np.testing.assert_array_equal(source, GOOD)
    assert source.flags.writeable


def test_pickle_roundtrip_after_solve():
    problem = RegistrationProblem(GOOD, GOOD + 0.05)
    first = problem.solve(loss="l2")
    again = pickle.loads(pickle.dumps(problem)).solve(loss="l2")
    np.testing.assert_allclose(first.transform, again.transform)


@pytest.mark.parametrize(
    "T, match",
    [
        (np.eye(3), r"shape \(4, 4\)"),
        (np.diag([1.0, 1.0, 1.0, 2.0]), "last row"),
        (np.diag([2.0, 1.0, 1.0, 1.0]), "must be a rotation"),
        (np.diag([-1.0, 1.0, 1.0, 1.0]), "determinant"),
    ],
)
def test_non_rigid_init_is_rejected(T, match):
    with pytest.raises(ValueError, match=match):
        check_rigid_transform(T, "init")
    with pytest.raises(ValueError, match="init"):
        icp(GOOD, GOOD, init=T)


def test_similarity_init_accepts_scaled_rotation():
    T = np.diag([2.0, 2.0, 2.0, 1.0])
    check_rigid_transform(T, "init", similarity=True)
    with pytest.raises(ValueError, match="rotation times a positive scale"):
        check_rigid_transform(np.diag([2.0, 1.0, 1.0, 1.0]), "init", similarity=True)


@pytest.mark.parametrize("cls", [RegistrationProblem, NonRigidRegistrationProblem])
def test_both_problems_memoize_once_across_threads_and_pickle_without_the_memo(cls):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    problem = cls(rng.random((30, 3)), rng.random((40, 3)))
    calls, gate = [], threading.Event()

    def build():
        calls.append(1)
        gate.wait(0.05)  # a slow build: the other threads arrive while it runs
        return object()

    with ThreadPoolExecutor(8) as pool:
        values = list(pool.map(lambda _: problem.cached("k", build), range(16)))
    assert len(calls) == 1 and all(v is values[0] for v in values)
    copy = pickle.loads(pickle.dumps(problem))
    assert copy._cache == {} and copy.scale == problem.scale
    np.testing.assert_array_equal(copy.source, problem.source)



def test_memo_builds_different_entries_at_the_same_time():
    # Each entry has its own lock: a build that waits for another key's build (asked for on
    # another thread while it runs) sees it finish, and a build may ask for other entries.
    # Behind one lock the other key would wait for this build: it would time out.
    import threading

    problem = RegistrationProblem(GOOD, GOOD + 1.0)
    started, other_built, seen = threading.Event(), threading.Event(), []

    def slow():
        started.set()
        seen.append(other_built.wait(10))
        return problem.cached("inner", lambda: "inner")

    def other():
        other_built.set()
        return "other"

    worker = threading.Thread(target=lambda: problem.cached("slow", slow))
    worker.start()
    assert started.wait(10)
    assert problem.cached("other", other) == "other"
    worker.join(10)
    assert seen == [True]
    assert problem.cached("slow", lambda: "rebuilt") == "inner"
    assert problem._cache.keys() == {"slow", "inner", "other"}
