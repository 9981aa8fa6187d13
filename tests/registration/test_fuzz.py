"""Property-based fuzzing of every public registration entry point (issue 13).

Bad inputs raise ValueError/TypeError naming the argument; valid but extreme inputs (1e300,
1e-300) end quickly with finite results or a non-zero status whose fields are finite; inputs
are never modified; corrupted files give errors naming the file. Cases that could crash or
hang the interpreter run in a subprocess (``fuzz.run_isolated``).
"""

import time
import warnings

import numpy as np
import pytest
from _helpers import fuzz_settings
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from mmopt.datasets import load_scan_pair, make_registration_problem
from mmopt.registration import (
    ICPRegistration,
    RegistrationProblem,
    estimate_normals,
    icp,
    read_point_cloud,
    se3_exp,
    se3_log,
    weighted_kabsch,
    write_point_cloud,
)
from mmopt.registration.se3 import so3_exp

# Derandomized like every other fuzz module, so a failure reproduces.
FAST = fuzz_settings(25, suppress_health_check=[HealthCheck.function_scoped_fixture])
SCALES = [1e-300, 1e-150, 1e-8, 1.0, 1e8, 1e150, 1e300]


def _cloud(n=120, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3)) * [3.0, 2.0, 1.0]


def _moved(points, angle=0.2):
    return points @ so3_exp([0.1, 0.0, angle]).T + [0.3, -0.1, 0.2]


# Clouds of shape (n, 3) that are wrong in one way each (the 1-D BAD_ARRAYS also apply).
def _bad_clouds():
    base = _cloud(10)
    nan, inf = base.copy(), base.copy()
    nan[3, 1], inf[0, 0] = np.nan, -np.inf
    line = np.outer(np.arange(5.0), [1.0, 2.0, 3.0])
    return {
        "nan_point": nan,
        "inf_point": inf,
        "complex": base.astype(complex),
        "object": base.astype(object).tolist() + [["a", "b", "c"]],
        "two_columns": base[:, :2],
        "four_columns": np.c_[base, base[:, 0]],
        "two_points": base[:2],
        "collinear": line,
        "three_d": base[None],
        "sparse_like": _SparseLike(),
    }


class _SparseLike:
    """Looks like a scipy sparse matrix (has toarray)."""

    def toarray(self):
        return _cloud(10)


BAD_CLOUDS = _bad_clouds()


def _bad_value(fuzz, name):
    return BAD_CLOUDS[name] if name in BAD_CLOUDS else fuzz.BAD_ARRAYS[name]


def bad_cloud_names(*, allow_none=False):
    names = sorted(BAD_CLOUDS) + [n for n in ("ragged", "string", "object", "complex", "nan",
                                               "inf", "empty", "none")]
    if allow_none:
        names.remove("none")
    return st.sampled_from(names)


# ------------------------------------------------------------------ bad arrays, named
ENTRY_POINTS = {
    # name -> (callable taking the bad value, the argument name, whether None is valid)
    "icp.source": (lambda v: icp(v, _cloud()), "source", False),
    "icp.target": (lambda v: icp(_cloud(), v), "target", False),
    "problem.target_normals": (
        lambda v: RegistrationProblem(_cloud(), _cloud(), target_normals=v), "target_normals",
        True,
    ),
    "problem.source_normals": (
        lambda v: RegistrationProblem(_cloud(), _cloud(), source_normals=v), "source_normals",
        True,
    ),
    "estimator.X": (lambda v: ICPRegistration().fit(v, _cloud()), "X", False),
    "estimator.y": (lambda v: ICPRegistration().fit(_cloud(), v), "y", False),
    "estimate_normals.points": (lambda v: estimate_normals(v), "points", False),
    "weighted_kabsch.source": (lambda v: weighted_kabsch(v, _cloud(10)), "source", False),
    "weighted_kabsch.target": (lambda v: weighted_kabsch(_cloud(10), v), "target", False),
    "make_registration_problem.points": (
        lambda v: make_registration_problem(v, random_state=0), "points", True,
    ),
}


@FAST
@given(entry=st.sampled_from(sorted(ENTRY_POINTS)), bad=bad_cloud_names())
def test_bad_clouds_raise_naming_the_argument(fuzz, entry, bad):
    func, name, none_ok = ENTRY_POINTS[entry]
    if bad == "none" and none_ok:
        return
    if bad == "collinear" and entry.startswith(
        ("problem.", "weighted_kabsch", "make_registration_problem")
    ):
        return  # normals, Kabsch pairs and noisy generator input may be collinear
    if bad in ("two_points", "collinear") and entry == "estimate_normals.points":
        return  # collinear points have normals (any perpendicular); 2 points are refused
    fuzz.raises_naming(func, name, _bad_value(fuzz, bad))


@FAST
@given(bad=st.sampled_from(sorted(BAD_CLOUDS) + ["ragged", "string", "none", "empty"]))
def test_estimator_transform_names_x(fuzz, bad):
    reg = ICPRegistration(loss="l2").fit(_cloud(), _moved(_cloud()))
    if bad in ("two_points", "collinear"):
        return  # any (k, 3) points can be moved
    fuzz.raises_naming(reg.transform, "X", _bad_value(fuzz, bad))


@FAST
@given(bad=st.sampled_from(["ragged", "string", "object", "complex", "nan", "inf", "empty",
                            "none", "five", "matrix"]))
def test_se3_helpers_name_their_argument(fuzz, bad):
    extra = {"five": np.zeros(5), "matrix": np.eye(3)}
    value = extra.get(bad, fuzz.BAD_ARRAYS.get(bad))
    fuzz.raises_naming(se3_exp, "twist", value)
    fuzz.raises_naming(se3_log, "T", value)


@FAST
@given(bad=st.sampled_from(["ragged", "string", "complex", "nan", "inf", "empty", "negative",
                            "short", "zero"]))
def test_kabsch_weights_are_checked(fuzz, bad):
    extra = {"negative": -np.ones(10), "short": np.ones(9), "zero": np.zeros(10)}
    value = extra.get(bad, fuzz.BAD_ARRAYS.get(bad))
    fuzz.raises_naming(weighted_kabsch, "weights", _cloud(10), _cloud(10), value)


@FAST
@given(bad=bad_cloud_names(allow_none=True), which=st.sampled_from(["points", "normals"]))
def test_write_point_cloud_names_the_argument(fuzz, tmp_path, bad, which):
    if bad in ("two_points", "collinear") or (which == "normals" and bad == "none"):
        return  # any number of points can be written
    value = _bad_value(fuzz, bad)
    if which == "points":
        fuzz.raises_naming(write_point_cloud, "points", tmp_path / "c.xyz", value)
    else:
        fuzz.raises_naming(write_point_cloud, "normals", tmp_path / "c.xyz", _cloud(10), value)


BAD_OPTIONS = [
    ("metric", "bogus"), ("metric", 3), ("loss", "bogus"), ("loss", None),
    ("loss", 1.0), ("schedule", 0.01), ("schedule", "auto"), ("stage_criteria", 1e-3),
    ("init", "bogus"), ("init", np.eye(3)), ("init", 2 * np.eye(4)),
    ("init", np.full((4, 4), np.nan)), ("init", [[1.0, 2.0], [3.0]]),
    ("similarity", "yes"), ("anderson", 1), ("scale_bounds", (2.0, 3.0)),
    ("scale_bounds", "ab"), ("anderson", 0), ("anderson", None),
    ("normals_k", 2), ("normals_k", 2.5), ("refine", "bogus"), ("refine_k", 2),
    ("inlier_threshold", 0.0), ("neighbors", "bogus"), ("n_threads", 0),
    ("n_threads", -5), ("n_threads", 1.5), ("tol", -1.0), ("tol", np.nan),
    ("max_iter", 0), ("verbose", -1), ("callback", 3),
]


@FAST
@given(option=st.sampled_from(BAD_OPTIONS))
def test_bad_options_raise_naming_the_option(fuzz, option):
    name, value = option
    fuzz.raises_naming(icp, name, _cloud(), _moved(_cloud()), **{name: value})


@FAST
@given(bad=st.sampled_from(["ragged", "string", "nan", "empty", "shape", "reflection"]))
def test_bad_x0_names_x0(fuzz, bad):
    extra = {"shape": np.eye(3), "reflection": np.diag([1.0, 1.0, -1.0, 1.0])}
    value = extra.get(bad, fuzz.BAD_ARRAYS.get(bad))
    fuzz.raises_naming(icp, "x0", _cloud(), _moved(_cloud()), x0=value)


@FAST
@given(option=st.sampled_from([
    ("rotation_deg", -1.0), ("rotation_deg", 181.0), ("translation", -1.0),
    ("noise", -1.0), ("noise", np.nan), ("outlier_fraction", 1.0), ("overlap", 0.0),
    ("overlap", 1.5), ("noise", 1e308), ("translation", 1e308),
]))
def test_make_registration_problem_options_are_named(fuzz, option):
    name, value = option
    fuzz.raises_naming(make_registration_problem, name, _cloud(200), random_state=0,
                       **{name: value})


# -------------------------------------------------------------- extreme but valid inputs
def _assert_finite_result(fuzz, res):
    fuzz.assert_honest(res)
    for key in ("transform", "rotation", "translation"):
        assert np.all(np.isfinite(res[key])), key
    assert np.isfinite(res.fun)


@FAST
@given(
    scale=st.sampled_from(SCALES),
    offset=st.sampled_from([0.0, 1.0, -1e3]),
    loss=st.sampled_from(["welsch", "l2", "huber", "cauchy", "tukey", "trimmed"]),
    metric=st.sampled_from(["point_to_point", "point_to_plane", "hybrid"]),
    anderson=st.booleans(),
)
def test_extreme_scales_end_quickly_and_honestly(fuzz, scale, offset, loss, metric, anderson):
    source = (_cloud() + offset) * scale
    target = (_moved(_cloud()) + offset) * scale
    before = fuzz.snapshot(source, target)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no NumPy warning leaks out
        warnings.filterwarnings("ignore", category=UserWarning)
        try:
            res = icp(source, target, loss=loss, metric=metric, anderson=anderson,
                      max_iter=300)
        except ValueError as error:
            # The only refusal: an energy in squared data units that overflows.
            assert scale > 1e150 and loss in ("l2", "trimmed"), error
            assert "source and target" in str(error)
            return
    assert time.perf_counter() - start < 10.0
    fuzz.assert_unchanged(before, source, target)
    _assert_finite_result(fuzz, res)
    reference = icp(_cloud() + offset, _moved(_cloud()) + offset, loss=loss, metric=metric,
                    anderson=anderson, max_iter=300)
    # Scale-free in normalized coordinates: the same rotation at every scale.
    assert np.allclose(res.rotation, reference.rotation, atol=1e-6)


@FAST
@given(scale=st.sampled_from(SCALES), k=st.integers(3, 20))
def test_estimate_normals_any_scale(fuzz, scale, k):
    points = _cloud(60) * scale
    before = fuzz.snapshot(points)
    normals = estimate_normals(points, k=k)
    fuzz.assert_unchanged(before, points)
    assert normals.shape == (60, 3)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0)
    reference = estimate_normals(_cloud(60), k=k)
    assert np.allclose(np.abs(np.sum(normals * reference, axis=1)), 1.0, atol=1e-6)


@FAST
@given(
    scale=st.sampled_from(SCALES),
    weights=st.one_of(st.none(), st.lists(st.floats(0.0, 1e3), min_size=12, max_size=12)),
    similarity=st.booleans(),
)
def test_weighted_kabsch_any_scale(fuzz, scale, weights, similarity):
    if weights is not None and not sum(weights) > 0:
        return
    p = _cloud(12) * scale
    q = _moved(_cloud(12)) * scale
    w = None if weights is None else np.array(weights)
    before = fuzz.snapshot(p, q, w)
    T = weighted_kabsch(p, q, w, similarity=similarity)
    fuzz.assert_unchanged(before, p, q, w)
    assert np.all(np.isfinite(T))
    R = T[:3, :3] / np.cbrt(np.linalg.det(T[:3, :3]))
    assert np.allclose(R.T @ R, np.eye(3), atol=1e-9)


@FAST
@given(twist=st.lists(st.floats(-1e300, 1e300, allow_nan=False), min_size=6, max_size=6))
def test_se3_exp_of_any_finite_twist_is_a_rigid_transform(twist):
    T = se3_exp(twist)
    R = T[:3, :3]
    assert np.all(np.isfinite(R))
    assert np.allclose(R.T @ R, np.eye(3), atol=1e-9) and np.linalg.det(R) > 0
    # The translation may overflow only when the twist's translation is near the limit.
    if max(abs(t) for t in twist[3:]) < 1e200:
        assert np.all(np.isfinite(T))
        assert np.all(np.isfinite(se3_log(T)))


@FAST
@given(
    scale=st.sampled_from([1e-300, 1.0, 1e300]),
    noise=st.sampled_from([0.0, 0.01]),
    outliers=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_make_registration_problem_any_scale(fuzz, scale, noise, outliers, seed):
    points = _cloud(300) * scale
    before = fuzz.snapshot(points)
    problem, T = make_registration_problem(points, noise=noise, outlier_fraction=outliers,
                                           random_state=seed)
    fuzz.assert_unchanged(before, points)
    assert np.all(np.isfinite(problem.source)) and np.all(np.isfinite(problem.target))
    assert np.all(np.isfinite(T))


def test_estimator_and_problem_never_modify_inputs(fuzz):
    X, y = _cloud(), _moved(_cloud())
    normals = estimate_normals(y)
    before = fuzz.snapshot(X, y, normals)
    reg = ICPRegistration(metric="point_to_plane").fit(X, y, target_normals=normals)
    reg.transform(X)
    RegistrationProblem(X, y, target_normals=normals, source_normals=normals[:0].tolist()
                        or None).solve(max_iter=20)
    fuzz.assert_unchanged(before, X, y, normals)


def test_scan_pair_loader_is_fresh_each_time():
    a = load_scan_pair()
    a.source[:] = 0.0
    assert np.any(load_scan_pair().source != 0.0)


# ---------------------------------------------------------------------------- files
def _valid_ply(tmp_path, binary):
    path = tmp_path / ("b.ply" if binary else "a.ply")
    write_point_cloud(path, _cloud(6), estimate_normals(_cloud(6), k=5), binary=binary)
    return path


@FAST
@given(
    binary=st.booleans(),
    mutation=st.sampled_from(["truncate", "flip", "insert", "delete"]),
    position=st.floats(0.0, 1.0),
    byte=st.integers(0, 255),
)
def test_corrupted_ply_gives_finite_points_or_an_error_naming_the_file(
    tmp_path, binary, mutation, position, byte
):
    pytest.importorskip("plyfile")
    data = bytearray(_valid_ply(tmp_path, binary).read_bytes())
    i = min(int(position * len(data)), len(data) - 1)
    if mutation == "truncate":
        data = data[:i]
    elif mutation == "flip":
        data[i] = byte
    elif mutation == "insert":
        data.insert(i, byte)
    else:
        del data[i]
    path = tmp_path / "corrupt.ply"
    path.write_bytes(bytes(data))
    try:
        points, normals = read_point_cloud(path)
    except ValueError as error:
        assert "corrupt.ply" in str(error)
        return
    assert points.ndim == 2 and points.shape[1] == 3 and points.shape[0] >= 1
    assert np.all(np.isfinite(points))
    assert normals is None or normals.shape == points.shape


@FAST
@given(content=st.binary(max_size=200), suffix=st.sampled_from([".xyz", ".npy", ".ply"]))
def test_arbitrary_bytes_give_an_error_naming_the_file(tmp_path, content, suffix):
    if suffix == ".ply":
        pytest.importorskip("plyfile")
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(content)
    try:
        points, _ = read_point_cloud(path)
    except ValueError as error:
        assert f"junk{suffix}" in str(error)
        return
    assert np.all(np.isfinite(points)) and points.shape[1] == 3


def test_ply_headers_with_absurd_counts_end_quickly(fuzz, tmp_path):
    pytest.importorskip("plyfile")
    # Huge or negative vertex counts could allocate without bound or loop: in a subprocess.
    fuzz.run_isolated(
        f"""
        from pathlib import Path
        from mmopt.registration import read_point_cloud
        folder = Path({str(tmp_path)!r})
        for fmt in ("ascii 1.0", "binary_little_endian 1.0"):
            for count in ("99999999999999", "-3", "1e9", "18446744073709551617", "3 3"):
                path = folder / "absurd.ply"
                header = ("ply\\nformat " + fmt + "\\nelement vertex " + count
                          + "\\nproperty float x\\nproperty float y\\nproperty float z\\n"
                          "end_header\\n")
                path.write_bytes(header.encode() + b"0 0 0\\n1 0 0\\n0 1 0\\n")
                try:
                    read_point_cloud(path)
                except ValueError as error:
                    assert "absurd.ply" in str(error), error
        """,
        timeout=60,
    )


# ----------------------------------------------------------------- isolated, risky runs
def test_risky_solves_in_a_subprocess(fuzz):
    # Degenerate-but-valid geometry, extreme scales and shared instances from threads: any
    # crash (the shared-state segfault of issue 13) or hang fails this test only.
    fuzz.run_isolated(
        """
        import warnings
        from concurrent.futures import ThreadPoolExecutor
        import numpy as np
        from mmopt.registration import ICP, RegistrationProblem, icp

        warnings.simplefilter("ignore")
        rng = np.random.default_rng(0)
        S = rng.normal(size=(150, 3)) * [3.0, 2.0, 1.0]
        plane = np.c_[rng.random((150, 2)), np.zeros(150)]
        dup = np.repeat(S[:10], 15, axis=0)
        cases = [(S * 1e300, (S + 0.1) * 1e300), (S * 1e-300, (S + 0.1) * 1e-300),
                 (plane, plane + 0.01), (dup, dup + 0.05), (S, S[:5] + 0.2), (S[:3], S)]
        for source, target in cases:
            for metric in ("point_to_point", "point_to_plane", "hybrid"):
                try:
                    res = icp(source, target, metric=metric, normals_k=3, max_iter=200)
                except ValueError:
                    continue
                assert res.status in (0, 1, 4), res.status
                assert np.all(np.isfinite(res.transform))
        solver = ICP(max_iter=200)
        problems = [RegistrationProblem(S, S @ np.diag([1, -1, -1.0]) + s) for s in range(3)]
        expected = [solver.solve(p).transform for p in problems]
        with ThreadPoolExecutor(3) as pool:
            for _ in range(3):
                got = list(pool.map(lambda p: solver.solve(p).transform, problems * 2))
                assert all(np.array_equal(g, expected[i % 3]) for i, g in enumerate(got))
        print("ok")
        """,
        timeout=120,
    )
