"""Input hardening of the OT family (issue 13): bad inputs raise errors naming the argument,
valid but extreme inputs end quickly and honestly, inputs are never modified."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmopt import ConvergenceWarning
from mmopt.datasets import make_ot_problem
from mmopt.ot import (
    OTMapping,
    OTProblem,
    exact_ot,
    sinkhorn,
    sinkhorn_newton_sparse,
    sparsity_constrained_ot,
)

# Every public OT entry point that takes (a, b, C), with its other arguments fixed.
ENTRY_POINTS = {
    "sinkhorn": lambda a, b, C, **kw: sinkhorn(a, b, C, 0.1, **kw),
    "sinkhorn_newton_sparse": lambda a, b, C, **kw: sinkhorn_newton_sparse(a, b, C, 0.1, **kw),
    "sparsity_constrained_ot": lambda a, b, C, **kw: sparsity_constrained_ot(
        a, b, C, 2, 0.1, **kw
    ),
    "exact_ot": lambda a, b, C, **kw: exact_ot(a, b, C),
    "OTProblem": lambda a, b, C, **kw: OTProblem(a, b, C, 0.1),
}
ITERATIVE = ("sinkhorn", "sinkhorn_newton_sparse", "sparsity_constrained_ot")


def _valid(n=2, m=3, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.random(n) + 0.1, rng.random(m) + 0.1
    return a / a.sum(), b / b.sum(), rng.random((n, m))


def _bad_value(fuzz, kind, size):
    """The bad array ``kind`` (the ones of one dimension get ``size`` entries when their
    kind allows it, so that only the badness is wrong)."""
    value = fuzz.BAD_ARRAYS[kind]
    if kind in ("nan", "inf"):
        value = np.resize(np.asarray(value, dtype=float), size)
        value[0] = 0.5
    return value


# ------------------------------------------------------------------------ bad arrays
@settings(max_examples=40, deadline=None)
@given(
    func=st.sampled_from(sorted(ENTRY_POINTS)),
    argument=st.sampled_from(["a", "b", "C"]),
    kind=st.sampled_from(["ragged", "string", "object", "complex", "nan", "inf", "empty",
                          "none"]),
)
def test_bad_arrays_raise_naming_the_argument(fuzz, func, argument, kind):
    a, b, C = _valid()
    if argument in ("a", "b") and kind in ("empty", "none"):
        return  # documented: an empty or None histogram means uniform
    args = {"a": a, "b": b, "C": C}
    size = {"a": 2, "b": 3, "C": 3}[argument]
    bad = _bad_value(fuzz, kind, size)
    if argument == "C" and kind in ("nan", "inf"):
        bad = np.array(C)
        bad[1, 2] = np.nan if kind == "nan" else np.inf
    args[argument] = bad
    fuzz.raises_naming(ENTRY_POINTS[func], argument, args["a"], args["b"], args["C"])


@pytest.mark.parametrize("func", sorted(ENTRY_POINTS))
@pytest.mark.parametrize(
    "argument, value",
    [("a", [0.5, 0.25, 0.25]), ("b", [0.5, 0.5]), ("C", np.ones(3)), ("C", np.ones((2, 3, 1))),
     ("a", [-0.5, 1.5]), ("b", [0.0, 0.0, 0.0]), ("a", [[0.5, 0.5]])],
)
def test_bad_shapes_and_masses_raise_naming_the_argument(fuzz, func, argument, value):
    a, b, C = _valid()
    args = {"a": a, "b": b, "C": C, argument: value}
    fuzz.raises_naming(ENTRY_POINTS[func], argument, args["a"], args["b"], args["C"])


def test_unequal_masses_name_both(fuzz):
    a, b, C = _valid()
    error = fuzz.raises_naming(exact_ot, "a", a, 2 * b, C)
    assert "b" in str(error)


@pytest.mark.parametrize("reg", [0.0, -1.0, np.nan, np.inf, "0.1", None, [0.1]])
def test_bad_reg_is_named(fuzz, reg):
    a, b, C = _valid()
    fuzz.raises_naming(sinkhorn, "reg", a, b, C, reg)
    fuzz.raises_naming(sinkhorn_newton_sparse, "reg", a, b, C, reg)
    fuzz.raises_naming(sparsity_constrained_ot, "reg", a, b, C, 2, reg)
    fuzz.raises_naming(OTProblem, "reg", a, b, C, reg)


# The scikit-learn convention of mmopt._core.threads: -1 is all CPUs, -k counts back.
@pytest.mark.parametrize("n_threads", [0, -10_000, 1.5, True, "2"])
@pytest.mark.parametrize("func", ITERATIVE)
def test_bad_n_threads_is_named(fuzz, func, n_threads):
    # On main, 0 was the only value refused: -5 (and True) ran silently on one thread.
    a, b, C = _valid()
    fuzz.raises_naming(ENTRY_POINTS[func], "n_threads", a, b, C, n_threads=n_threads)


@pytest.mark.parametrize("k", [0, -1, 1.5, "2", True])
def test_bad_k_is_named(fuzz, k):
    a, b, C = _valid()
    fuzz.raises_naming(sparsity_constrained_ot, "k", a, b, C, k, 0.1)


@settings(max_examples=25, deadline=None)
@given(func=st.sampled_from(ITERATIVE), kind=st.sampled_from(
    ["ragged", "string", "object", "complex", "nan", "inf", "empty"]))
def test_bad_x0_is_named(fuzz, func, kind):
    a, b, C = _valid()
    size = 2 if func == "sparsity_constrained_ot" else 5
    fuzz.raises_naming(ENTRY_POINTS[func], "x0", a, b, C, x0=_bad_value(fuzz, kind, size))


# ----------------------------------------------------------------------------- OTMapping
def _samples(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((8, 2)), rng.random((6, 2)) + 1.0


@settings(max_examples=25, deadline=None)
@given(
    argument=st.sampled_from(["X", "y", "sample_weight", "target_weight"]),
    kind=st.sampled_from(["ragged", "string", "object", "complex", "nan", "inf", "empty"]),
)
def test_mapping_bad_arrays_are_named(fuzz, argument, kind):
    X, Y = _samples()
    args = {"X": X, "y": Y, "sample_weight": None, "target_weight": None}
    args[argument] = _bad_value(fuzz, kind, {"X": 2, "y": 2, "sample_weight": 8,
                                             "target_weight": 6}[argument])
    fuzz.raises_naming(OTMapping().fit, argument, **args)


@pytest.mark.parametrize(
    "option, value",
    [("solver_options", 3), ("solver_options", [("tol", 1e-3)]), ("reg", 0.0),
     ("solver", "lp"), ("metric", "no-such-metric"), ("metric", 3), ("normalize_cost", "yes")],
)
def test_mapping_bad_options_are_named(fuzz, option, value):
    X, Y = _samples()
    fuzz.raises_naming(OTMapping(**{option: value}).fit, option, X, Y)


def test_mapping_solver_options_are_checked_by_the_solver(fuzz):
    X, Y = _samples()
    fuzz.raises_naming(OTMapping(solver_options={"n_threads": 0}).fit, "n_threads", X, Y)


@pytest.mark.parametrize("scale", [1e300, 1e-300])
def test_mapping_of_extreme_samples(scale):
    # The normalised cost of a common scaling of both samples is the cost of the samples:
    # on main X * 1e300 failed with an error about C.
    X, Y = _samples()
    reference = OTMapping().fit(X, Y)
    mapping = OTMapping().fit(X * scale, Y * scale)
    np.testing.assert_allclose(mapping.plan_, reference.plan_, rtol=1e-9, atol=1e-15)
    moved = OTMapping().fit(X * 1e300, Y)  # extreme against ordinary: still finite
    assert np.isfinite(moved.plan_).all() and np.isfinite(moved.cost_).all()


def test_mapping_overflowing_unnormalised_cost_names_x(fuzz):
    X, Y = _samples()
    error = fuzz.raises_naming(OTMapping(normalize_cost=False).fit, "X", X * 1e300, Y)
    assert "C" not in str(error).split(":")[0]


# ----------------------------------------------------------------------- make_ot_problem
@pytest.mark.parametrize(
    "option, value",
    [("n_source", 0), ("n_source", -3), ("n_source", 2.5), ("n_source", "5"),
     ("n_target", 0), ("n_features", 0), ("shift", np.nan), ("shift", 1e300),
     ("weights", "zipf"), ("metric", "no-such-metric"), ("metric", 3),
     ("random_state", "seed"), ("normalize_cost", "yes"), ("return_points", 2)],
)
def test_make_ot_problem_bad_options_are_named(fuzz, option, value):
    fuzz.raises_naming(make_ot_problem, option, **{"n_source": 5, option: value})


# ------------------------------------------------------------- valid but extreme inputs
SCALES = [1e-300, 1e-150, 1.0, 1e150, 1e300]


# The cheap entry points, run in this process over random scales (the others run in a
# subprocess below).
EXTREME = {
    "sinkhorn": lambda a, b, C, reg: sinkhorn(a, b, C, reg, max_iter=200),
    "exact_ot": lambda a, b, C, reg: exact_ot(a, b, C),
    "OTProblem": lambda a, b, C, reg: OTProblem(a, b, C, reg),
}


@settings(max_examples=30, deadline=None)
@given(
    func=st.sampled_from(sorted(EXTREME)),
    mass=st.sampled_from(SCALES),
    cost=st.sampled_from(SCALES),
    reg=st.sampled_from([1e-300, 1e-8, 0.1, 1e300]),
)
def test_extreme_scales_end_honestly(fuzz, func, mass, cost, reg):
    # A clear ValueError naming an argument, or a result whose status tells the truth; no
    # NumPy warning either way, and the inputs unchanged.
    a, b, C = _valid(4, 5)
    a, b, C = a * mass, b * mass, C * cost
    before = fuzz.snapshot(a, b, C)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.simplefilter("ignore", ConvergenceWarning)
            result = EXTREME[func](a, b, C, reg)
    except ValueError as error:
        assert any(name in str(error) for name in ("reg", "C", "a", "b")), error
    else:
        if func != "OTProblem":
            fuzz.assert_honest(result)
            if result.status == 0:
                assert np.isfinite(result.plan).all() and np.isfinite(result.x).all()
    fuzz.assert_unchanged(before, a, b, C)


def test_every_entry_point_on_extreme_scales_in_a_subprocess(fuzz):
    # All solvers over a grid of scales, isolated: a crash or a hang fails this test only.
    fuzz.run_isolated(
        """
        import math, time, warnings
        import numpy as np
        from mmopt import ConvergenceWarning
        from mmopt.ot import (exact_ot, sinkhorn, sinkhorn_newton_sparse,
                              sparsity_constrained_ot)
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ConvergenceWarning)
        rng = np.random.default_rng(0)
        a, b, C = rng.random(6) + 0.1, rng.random(5) + 0.1, rng.random((6, 5))
        a, b = a / a.sum(), b / b.sum()
        funcs = {
            "sinkhorn": lambda a, b, C, r: sinkhorn(a, b, C, r, max_iter=200),
            "sns": lambda a, b, C, r: sinkhorn_newton_sparse(a, b, C, r, max_iter=200),
            "sparse": lambda a, b, C, r: sparsity_constrained_ot(
                a, b, C, 2, r, max_iter=100),
            "dual": lambda a, b, C, r: sparsity_constrained_ot(
                a, b, C, 2, r, max_iter=100, formulation="dual"),
            "exact": lambda a, b, C, r: exact_ot(a, b, C),
        }
        def finite(value):
            if hasattr(value, "toarray"):
                value = value.toarray()
            if isinstance(value, float):
                return math.isfinite(value)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                return bool(np.isfinite(value).all())
            return True
        for name, func in funcs.items():
            for mass in (1e-300, 1.0, 1e300):
                for cost in (1e-300, 1.0, 1e300):
                    for reg in (1e-300, 0.1, 1e300):
                        start = time.perf_counter()
                        try:
                            res = func(a * mass, b * mass, C * cost, reg)
                        except ValueError as error:
                            assert any(k in str(error) for k in ("reg", "C", "a", "b")), error
                            continue
                        seconds = time.perf_counter() - start
                        assert seconds < 10, (name, mass, cost, reg, seconds)
                        if res.status in (0, 4):
                            bad = [k for k, v in res.items() if k != "history"
                                   and not finite(v)]
                            assert not bad, (name, mass, cost, reg, res.status, bad)
        print("ok")
        """,
        timeout=240,
    )


# ----------------------------------------------------------------- inputs never modified
@pytest.mark.parametrize("func", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("layout", ["readonly", "fortran", "float32", "int"])
def test_inputs_are_never_modified(fuzz, func, layout):
    a, b, C = _valid(4, 5)
    if layout == "readonly":
        for array in (a, b, C):
            array.flags.writeable = False
    elif layout == "fortran":
        C = np.asfortranarray(C)
    elif layout == "float32":
        a, b, C = a.astype(np.float32), b.astype(np.float32), C.astype(np.float32)
    else:
        a, b, C = np.array([1, 1, 2, 0]), np.array([1, 1, 1, 1, 0]), np.arange(20).reshape(4, 5)
    before = fuzz.snapshot(a, b, C)
    x0 = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if func in ITERATIVE:
            x0 = np.zeros(4 if func == "sparsity_constrained_ot" else 9)
            x0.flags.writeable = False
            before_x0 = fuzz.snapshot(x0)
            ENTRY_POINTS[func](a, b, C, x0=x0)
            fuzz.assert_unchanged(before_x0, x0)
        else:
            ENTRY_POINTS[func](a, b, C)
    fuzz.assert_unchanged(before, a, b, C)


def test_mapping_and_generator_inputs_are_never_modified(fuzz):
    X, Y = _samples()
    w = np.full(8, 2.0)
    before = fuzz.snapshot(X, Y, w)
    mapping = OTMapping().fit(X, Y, sample_weight=w)
    mapping.transform(X)
    mapping.inverse_transform(Y)
    fuzz.assert_unchanged(before, X, Y, w)
    # make_ot_problem: the same seed gives the same problem (no hidden state).
    first, second = make_ot_problem(6, random_state=3), make_ot_problem(6, random_state=3)
    for one, other in zip(first, second, strict=True):
        np.testing.assert_array_equal(one, other)
    assert all(math.isclose(float(p.sum()), 1.0) for p in first[:2])


# ------------------------------------------------- the findings of issue 13, one by one
def _cost(n=3, m=4, seed=1):
    rng = np.random.default_rng(seed)
    x, y = rng.random((n, 2)), rng.random((m, 2))
    return ((x[:, None] - y[None]) ** 2).sum(-1)


@pytest.mark.parametrize("solve", [sinkhorn, sinkhorn_newton_sparse])
def test_zero_mass_row_gets_the_soft_c_transform(solve):
    # On main f[0] was -inf (in x as well).
    C, reg = _cost(), 0.1
    res = solve([0.0, 0.5, 0.5], [], C, reg, tol=1e-12)
    assert np.isfinite(res.x).all() and np.isfinite(res.f).all()
    expected = -reg * np.log(np.sum(np.exp((res.g - C[0]) / reg)))
    assert res.f[0] == pytest.approx(expected, rel=1e-12)
    assert (res.plan[0] == 0).all() and res.success


def test_sparsity_constrained_zero_mass_rows_and_columns_get_the_c_transform():
    # On main their potentials were NaN.
    C = _cost(4, 5)
    a, b = np.array([0.0, 0.3, 0.3, 0.4]), np.array([0.25, 0.25, 0.0, 0.25, 0.25])
    res = sparsity_constrained_ot(a, b, C, 2, 0.5, formulation="dual", tol=1e-10)
    assert np.isfinite(res.x).all()
    rows, cols = [1, 2, 3], [0, 1, 3, 4]
    assert res.f[0] == pytest.approx(np.min(C[0, cols] - res.g[cols]), rel=1e-12)
    assert res.g[2] == pytest.approx(np.min(C[rows, 2] - res.f[rows]), rel=1e-12)
    semi = sparsity_constrained_ot(a, b, C, 5, 0.5, tol=1e-10)
    assert np.isfinite(semi.f).all()
    # The semi-dual's implied column potentials reproduce its plan on the support.
    plan = semi.plan.toarray()
    i, j = np.nonzero(plan)
    g = {col: 0.5 * plan[r, col] - semi.f[r] + C[r, col] for r, col in zip(i, j)}
    for r, col in zip(i, j):
        assert plan[r, col] == pytest.approx((semi.f[r] + g[col] - C[r, col]) / 0.5, abs=1e-9)


@pytest.mark.parametrize("mass, cost", [(1e-300, 1.0), (1e300, 1.0), (1.0, 1e300),
                                        (1.0, 1e-300), (1e-300, 1e-300)])
def test_exact_ot_keeps_the_plan_at_extreme_scales(mass, cost):
    # On main 1e-300 masses gave success with an all-zero plan, 1e300 a HiGHS RuntimeError.
    rng = np.random.default_rng(2)
    a, b = rng.random(5) + 0.1, rng.random(6) + 0.1
    a, b, C = a / a.sum(), b / b.sum(), rng.random((5, 6))
    reference = exact_ot(a, b, C)
    res = exact_ot(a * mass, b * mass, C * cost)
    assert res.success
    np.testing.assert_allclose(res.plan / mass, reference.plan, atol=1e-12)
    # (1e-300 * 1e-300 underflows to 0 in float64, as the true cost does)
    assert res.fun == pytest.approx(reference.fun * mass * cost, rel=1e-9)
    assert res.marginal_error <= 1e-9 * mass
    # Optimal potentials in the units of C: dual feasible, tight on the plan's support.
    slack = (C - res.f[:, None] / cost - res.g[None, :] / cost)
    assert slack.min() >= -1e-9
    assert np.abs(slack[res.plan > 0]).max() <= 1e-9


def test_exact_ot_overflowing_cost_is_a_clear_error(fuzz):
    a, b, C = _valid(4, 5)
    fuzz.raises_naming(exact_ot, "C", a * 1e300, b * 1e300, C * 1e300)


def test_huge_warm_start_gives_the_cold_answer():
    # On main: method="scaling" returned status 4 with an all-inf plan, the log domain ran
    # max_iter iterations without moving.
    C = _cost(5, 6)
    for method in ("log", "scaling"):
        cold = sinkhorn([], [], C, 0.1, method=method, tol=1e-12)
        warm = sinkhorn([], [], C, 0.1, method=method, tol=1e-12, x0=np.full(11, 1e300))
        assert warm.success and np.isfinite(warm.x).all()
        np.testing.assert_allclose(warm.plan, cold.plan, atol=1e-11)


def test_scaling_domain_with_an_underflowing_kernel_row(fuzz):
    # exp(-C[0] / reg) underflows: plain scaling gave status 4 with fun and residual inf (on
    # main before issue 13); the stabilized (absorbing) scaling domain now solves it, as the
    # log domain does.
    C = _cost(5, 6)
    C[0] += 100.0
    res = sinkhorn([], [], C, 0.1, method="scaling")
    fuzz.assert_honest(res)
    assert res.success
    reference = sinkhorn([], [], C, 0.1, method="log")
    np.testing.assert_allclose(res.plan, reference.plan, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_low_precision_normalised_histograms_are_accepted(dtype):
    # On main float32 histograms normalised in float32 failed "unequal total mass".
    rng = np.random.default_rng(3)
    a, b = rng.random(300).astype(dtype), rng.random(200).astype(dtype)
    a, b = a / a.sum(), b / b.sum()
    assert float(a.astype(float).sum()) != float(b.astype(float).sum())
    C = rng.random((300, 200))
    res = sinkhorn(a, b, C, 0.1)
    assert res.success
    np.testing.assert_allclose(res.plan.sum(1), a.astype(float), rtol=1e-6)
    assert res.plan.sum() == pytest.approx(float(a.astype(float).sum()), rel=1e-12)
    with pytest.raises(ValueError, match="same total mass"):
        sinkhorn(a.astype(float), b.astype(float) * 1.01, C, 0.1)


def test_reg_too_small_for_the_cost_is_named(fuzz):
    fuzz.raises_naming(sinkhorn, "reg", [], [], _cost() * 1e300, 0.1)


def test_ot_demo_and_examples_leak_no_numpy_warning():
    # On main the demo's polished sparsity-constrained solve printed "overflow encountered
    # in divide". (The examples/plot_ot_*.py scripts run in tests/test_docs_examples.py.)
    from mmopt.ot import _demo

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ConvergenceWarning)
        rows, files = _demo.run(None, quick=True)
    assert len(rows) == 4 and files == []
