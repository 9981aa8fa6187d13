import sys
import warnings

import numpy as np
import pytest
from scipy.special import logsumexp

import mmopt
from mmopt import ConvergenceWarning
from mmopt.ot import OTProblem, Sinkhorn, exact_ot, sinkhorn, sinkhorn_newton_sparse


def _clouds(seed, n=30, m=40, shift=0.0):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 2)), rng.standard_normal((m, 2)) + shift
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    return rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m)), C / C.max()


def _reference_log_sinkhorn(a, b, C, reg, n_iter):
    """Textbook log-domain Sinkhorn with scipy's logsumexp: shares no code with mmopt."""
    f, g = np.zeros(len(a)), np.zeros(len(b))
    for _ in range(n_iter):
        f = reg * np.log(a) - reg * logsumexp((g[None, :] - C) / reg, axis=1)
        g = reg * np.log(b) - reg * logsumexp((f[:, None] - C) / reg, axis=0)
    return np.exp((f[:, None] + g[None, :] - C) / reg)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("reg", [1e-1, 1e-2])
@pytest.mark.parametrize("method", ["log", "scaling"])
def test_plan_matches_a_reference_implementation(seed, reg, method):
    a, b, C = _clouds(seed)
    res = sinkhorn(a, b, C, reg, method=method, tol=1e-13, max_iter=50_000)
    assert res.success and res.method == method
    reference = _reference_log_sinkhorn(a, b, C, reg, n_iter=res.nit + 200)
    np.testing.assert_allclose(res.plan, reference, atol=1e-10)


@pytest.mark.parametrize("seed", [2, 3, 4])
@pytest.mark.parametrize("reg", [5e-2, 1e-2])
def test_plan_matches_pot_sinkhorn_log(seed, reg):
    # POT is an optional benchmark extra: where installed, our log-domain plan equals its.
    pot = pytest.importorskip("ot")
    a, b, C = _clouds(seed, n=25 + seed, m=33, shift=0.5 * seed)
    res = sinkhorn(a, b, C, reg, method="log", tol=1e-13, max_iter=100_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pot.sinkhorn(a, b, C, reg, method="sinkhorn_log", stopThr=1e-14,
                           numItermax=100_000)
    np.testing.assert_allclose(res.plan, ref, atol=1e-8, rtol=0)


@pytest.mark.parametrize("reg", [1e-2, 1e-3, 1e-4])
def test_log_domain_is_stable_at_small_reg(reg):
    a, b, C = _clouds(2, n=20, m=20, shift=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = sinkhorn(a, b, C, reg, method="log", max_iter=2000, tol=1e-9)
    assert np.isfinite(res.plan).all() and np.isfinite(res.f).all()
    # Whether or not 2000 iterations converge, the columns are exact after each iteration.
    np.testing.assert_allclose(res.plan.sum(axis=0), b, atol=1e-12)
    assert res.status in (0, 1)


def test_optimality_conditions_of_the_entropic_problem():
    a, b, C = _clouds(3)
    reg = 5e-2
    res = sinkhorn(a, b, C, reg, tol=1e-12)
    P = res.plan
    np.testing.assert_allclose(P.sum(1), a, atol=1e-11)
    np.testing.assert_allclose(P.sum(0), b, atol=1e-11)
    # Stationarity: log P = (f + g - C) / reg; strong duality: dual value = primal value.
    np.testing.assert_allclose(reg * np.log(P), res.f[:, None] + res.g[None, :] - C, atol=1e-9)
    assert res.fun == pytest.approx(res.objective, rel=1e-9)
    assert res.transport_cost == pytest.approx(float((C * P).sum()), rel=1e-12)
    # The primal objective straight from the plan's entries.
    primal = float((C * P).sum() + reg * (P * (np.log(P) - 1.0)).sum())
    assert res.objective == pytest.approx(primal, rel=1e-10)


@pytest.mark.parametrize("method", ["log", "scaling"])
def test_objective_and_plan_with_zero_masses(method):
    a, b, C = _clouds(8, n=12, m=9)
    a[[2, 5]], b[4] = 0.0, 0.0
    a, b = a / a.sum(), b / b.sum()
    reg = 0.1
    res = sinkhorn(a, b, C, reg, tol=1e-12, method=method)
    P = res.plan
    positive = P > 0
    primal = float((C * P).sum() + reg * (P[positive] * (np.log(P[positive]) - 1.0)).sum())
    assert res.objective == pytest.approx(primal, rel=1e-10)
    assert res.marginal_error == pytest.approx(
        np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum(), abs=1e-15
    )


def test_cost_approaches_exact_ot_as_reg_vanishes():
    a, b, C = _clouds(4, n=25, m=25)
    exact = exact_ot(a, b, C).fun
    gaps = []
    for reg in (1e-1, 1e-2, 1e-3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = sinkhorn(a, b, C, reg, tol=1e-8, max_iter=50_000)
        gaps.append(res.transport_cost - exact)
    assert all(gap >= -1e-8 for gap in gaps)
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-2 * max(exact, 1e-12) + 1e-3


def test_auto_uses_the_stabilized_scaling_domain_at_any_reg():
    a, b, C = _clouds(5)
    for reg in (1.0, 1e-3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = sinkhorn(a, b, C, reg, max_iter=5)
        assert res.method == "scaling"


@pytest.mark.parametrize("reg", [1e-2, 1e-3, 1e-4])
def test_scaling_and_log_domains_agree_at_small_reg(reg):
    # At 1e-4 the first sweep from zero potentials underflows (exp(-C / reg) has rows of
    # zeros): it is redone in the log domain, and absorption keeps the kernel finite after.
    a, b, C = _clouds(9, n=25, m=20, shift=0.5)
    options = {"tol": 1e-11, "max_iter": 100_000}
    plain = sinkhorn(a, b, C, reg, method="scaling", overrelaxation=False, **options)
    log = sinkhorn(a, b, C, reg, method="log", **options)
    relaxed = sinkhorn(a, b, C, reg, **options)
    assert plain.success and log.success and relaxed.success
    assert relaxed.method == "scaling"
    np.testing.assert_allclose(plain.plan, log.plan, atol=1e-11, rtol=0)
    np.testing.assert_allclose(relaxed.plan, log.plan, atol=1e-11, rtol=0)
    # Plain scaling and log: the same iterates (up to rounding), the same potentials.
    np.testing.assert_allclose(plain.f, log.f, atol=1e-9 * reg + 1e-13)
    assert abs(plain.nit - log.nit) <= 1
    # Over-relaxation: the same fixed point in fewer iterations where Sinkhorn is slow.
    assert relaxed.marginal_error <= 1e-11
    if reg <= 1e-3:
        assert relaxed.nit < plain.nit / 2


@pytest.mark.parametrize("seed", range(6))
def test_overrelaxation_returns_an_iterate_within_tol(seed):
    # The relaxed iteration is not monotone: the solve returns the iterate whose own error
    # (rows and columns) met tol, and Result.marginal_error, computed on the plan, says so.
    rng = np.random.default_rng(seed)
    n, m = rng.integers(5, 60, size=2)
    a, b = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m))
    C = rng.random((n, m)) ** rng.uniform(0.5, 3)
    for reg in (3e-2, 3e-3, 5e-4):
        res = sinkhorn(a, b, C, reg, tol=1e-9, max_iter=100_000)
        assert res.success and res.marginal_error <= 1e-9 * (1 + 1e-6)
        assert res.residual <= 1e-9
        P = res.plan
        assert np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum() <= 1e-9 * (1 + 1e-6)
        assert res.fun == pytest.approx(res.objective, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_relaxed_solve_plan_is_the_returned_potentials_plan_without_an_exp_pass(
    monkeypatch, seed
):
    # An over-relaxed solve returns the iterate before its last sweep; its plan is built from
    # that iterate's scalings on the same kernel (no exp per entry): it must be the plan of
    # the returned potentials, exp((f_i + g_j - C_ij) / reg), computed here by NumPy.
    module = sys.modules["mmopt.ot.sinkhorn"]
    calls = []
    dense_plan = module.dense_plan
    monkeypatch.setattr(
        module, "dense_plan", lambda *a, **k: calls.append(1) or dense_plan(*a, **k)
    )
    rng = np.random.default_rng(seed)
    n, m = 80, 70
    a, b = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m))
    C = rng.random((n, m))
    reg = 1e-2
    res = sinkhorn(a, b, C, reg, tol=1e-10, method="scaling")
    assert res.success and res.method == "scaling"
    expected = np.exp((res.f[:, None] + res.g[None, :] - C) / reg)
    np.testing.assert_allclose(res.plan, expected, rtol=1e-11, atol=1e-300)
    assert calls == []  # the scalings' plan, not a recomputed exp


def test_plan_built_in_the_kernel_memory_is_owned_by_the_result():
    # The scaling domain builds the final plan in its kernel's memory: the run must not use
    # that memory again, so a second solve by the same solver object (and the result's
    # other fields) leave the first result's plan untouched; checked against NumPy's plan of
    # the returned potentials.
    a, b, C = _clouds(5, n=60, m=50)
    solver = Sinkhorn(method="scaling", tol=1e-11)
    first = solver.solve(OTProblem(a, b, C, 1e-2))
    kept = first.plan.copy()
    a2, b2, C2 = _clouds(6, n=60, m=50)
    second = solver.solve(OTProblem(a2, b2, C2, 1e-2))
    np.testing.assert_array_equal(first.plan, kept)
    assert not np.shares_memory(first.plan, second.plan)
    for res, (a_, b_, C_) in ((first, (a, b, C)), (second, (a2, b2, C2))):
        expected = np.exp((res.f[:, None] + res.g[None, :] - C_) / 1e-2)
        np.testing.assert_allclose(res.plan, expected, rtol=1e-11, atol=1e-300)
        error = np.abs(expected.sum(1) - a_).sum() + np.abs(expected.sum(0) - b_).sum()
        assert res.marginal_error == pytest.approx(error, rel=1e-3, abs=1e-15)


def _spy_on_sweeps(monkeypatch):
    """Record, for each scaling-domain sweep, whether it read the float32 copy of the
    kernel, the incoming potentials and the L1 error it reported for them."""
    module = sys.modules["mmopt.ot.sinkhorn"]
    sweeps = []
    step = module._scaling_step

    def spy(run, reg, f, g, relax):
        single = run.scaling.K32 is not None
        out = step(run, reg, f, g, relax)
        if out is not None:
            sweeps.append((single, f.copy(), g.copy(), out[2]))
        return out

    monkeypatch.setattr(module, "_scaling_step", spy)
    return module, sweeps


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("reg", [1e-1, 1e-2, 1e-3])
def test_float32_sweeps_never_report_less_than_the_true_error(monkeypatch, seed, reg):
    # Kernels from 2^18 entries are swept in a float32 copy while the error is large: the
    # error such a sweep reports (with the copy's rounding margin) must bound the true L1
    # marginal error of its incoming potentials' plan, computed here by NumPy from the
    # potentials; and the solve's answer must be the float64 sweeps' answer.
    module, sweeps = _spy_on_sweeps(monkeypatch)
    rng = np.random.default_rng(seed)
    n, m = 600, 500
    x, y = rng.standard_normal((n, 3)), rng.standard_normal((m, 3)) * 0.8 + 0.3
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    C /= C.max()
    a, b = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m))
    res = sinkhorn(a, b, C, reg, tol=1e-9, n_threads=2)
    assert res.success and res.method == "scaling"
    float32 = sum(single for single, *_ in sweeps)
    assert 0 < float32 < len(sweeps)  # the copy served the first sweeps, K the last ones
    checked = 0
    for single, f, g, error in sweeps[1:]:  # (the start's columns are not known exact)
        if not single:
            continue
        plan = np.exp((f[:, None] + g[None, :] - C) / reg)
        true = np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum()
        assert error >= true * (1 - 1e-9) - 1e-14
        checked += 1
    assert checked > 0
    monkeypatch.setattr(module, "_SINGLE_MIN_ENTRIES", np.inf)  # float64 sweeps only
    reference = sinkhorn(a, b, C, reg, tol=1e-9, n_threads=2)
    assert reference.success
    np.testing.assert_allclose(res.plan, reference.plan, rtol=0, atol=2e-9)
    expected = np.exp((res.f[:, None] + res.g[None, :] - C) / reg)
    error = np.abs(expected.sum(1) - a).sum() + np.abs(expected.sum(0) - b).sum()
    assert error <= 1e-9 * (1 + 1e-6)


@pytest.mark.parametrize("tol", [1e-4, 1e-6, 1e-9])
def test_float32_phase_on_small_problems_keeps_every_tol(monkeypatch, tol):
    # The phase forced on small kernels (any size), histograms of another mass and with
    # empty bins: the answer meets tol exactly as a float64-only solve does.
    module, sweeps = _spy_on_sweeps(monkeypatch)
    monkeypatch.setattr(module, "_SINGLE_MIN_ENTRIES", 1)
    for seed in range(4):
        a, b, C = _clouds(20 + seed, n=37, m=29, shift=0.5)
        a, b = 3.0 * a, 3.0 * b
        a[seed] = 0.0
        b *= a.sum() / b.sum()
        sweeps.clear()
        res = sinkhorn(a, b, C, 3e-3, tol=tol)
        assert res.success and any(single for single, *_ in sweeps)
        P = res.plan
        error = np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum()
        assert error <= tol * a.sum() * (1 + 1e-6)
        assert res.marginal_error == pytest.approx(error, rel=1e-6, abs=1e-15)


def test_frequent_absorptions_move_auto_to_the_log_domain(monkeypatch):
    # With scalings bounded to [1/1.5, 1.5] nearly every iteration absorbs (recomputes the
    # kernel): "auto" moves to the log domain and says so; "scaling" stays.
    module = sys.modules["mmopt.ot.sinkhorn"]  # (mmopt.ot.sinkhorn is also the function)
    monkeypatch.setattr(module, "_BOUND", 1.5)
    a, b, C = _clouds(10)
    auto = sinkhorn(a, b, C, 1e-2, tol=1e-11)
    forced = sinkhorn(a, b, C, 1e-2, tol=1e-11, method="scaling")
    reference = sinkhorn(a, b, C, 1e-2, tol=1e-11, method="log")
    assert auto.method == "log" and forced.method == "scaling"
    for res in (auto, forced):
        assert res.success
        np.testing.assert_allclose(res.plan, reference.plan, atol=1e-12, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("reg", [5e-2, 1e-2, 3e-3])
def test_plan_matches_pot_default_sinkhorn(seed, reg):
    # POT's default ot.sinkhorn (scaling domain, no stabilization) iterates the same
    # scalings from u = v = 1: the plans agree once both have converged.
    pot = pytest.importorskip("ot")
    a, b, C = _clouds(seed + 20, n=30 + seed, m=26, shift=0.3 * seed)
    res = sinkhorn(a, b, C, reg, tol=1e-13, max_iter=200_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pot.sinkhorn(a, b, C, reg, stopThr=1e-15, numItermax=200_000)
    assert res.method == "scaling"
    np.testing.assert_allclose(res.plan, ref, atol=1e-8, rtol=0)
    assert np.abs(res.plan - ref).max() < 1e-11


def test_warm_start_from_the_solution_stops_at_once():
    a, b, C = _clouds(6)
    first = sinkhorn(a, b, C, 1e-2, tol=1e-12)
    again = sinkhorn(a, b, C, 1e-2, tol=1e-12, x0=first.x)
    assert again.nit <= 2
    np.testing.assert_allclose(again.plan, first.plan, atol=1e-12)


def test_zero_masses_get_empty_rows_and_columns():
    a, b, C = _clouds(7, n=6, m=5)
    a[2] = 0.0
    a /= a.sum()
    b[0] = 0.0
    b /= b.sum()
    res = sinkhorn(a, b, C, 0.05, tol=1e-12)
    assert (res.plan[2] == 0).all() and (res.plan[:, 0] == 0).all()
    assert res.marginal_error < 1e-10
    # Zero-mass rows and columns get the soft c-transform of the other side (finite x).
    assert np.isfinite(res.x).all()
    rows, cols = np.flatnonzero(a > 0), np.flatnonzero(b > 0)
    f_2 = -0.05 * logsumexp((res.g[cols] - C[2, cols]) / 0.05)
    g_0 = -0.05 * logsumexp((res.f[rows] - C[rows, 0]) / 0.05)
    np.testing.assert_allclose([res.f[2], res.g[0]], [f_2, g_0], rtol=1e-12)


def test_inputs_are_not_modified():
    a, b, C = _clouds(8)
    copies = a.copy(), b.copy(), C.copy()
    sinkhorn(a, b, C, 1e-2)
    for original, copy in zip((a, b, C), copies):
        np.testing.assert_array_equal(original, copy)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"reg": 0.0}, ValueError, "reg must be > 0"),
        ({"reg": -1.0}, ValueError, "reg must be > 0"),
        ({"C": np.ones((3, 4))}, ValueError, "a must have one entry per row"),
        ({"b": [0.2, 0.2]}, ValueError, "same total mass"),
        ({"C": [[0.0, np.nan], [1.0, 0.0]]}, ValueError, "C must not contain NaN"),
        ({"a": [-0.5, 1.5]}, ValueError, "a must be non-negative"),
    ],
)
def test_problem_validation(kwargs, error, match):
    args = {"a": [0.5, 0.5], "b": [0.5, 0.5], "C": [[0.0, 1.0], [1.0, 0.0]], "reg": 0.1}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        OTProblem(**args)


def test_bad_options_and_x0():
    problem = OTProblem([], [], np.ones((3, 2)), 0.1)
    with pytest.raises(ValueError, match="method must be one of"):
        mmopt.solve(problem, method="newton")
    with pytest.raises(ValueError, match=r"x0 must have shape \(5,\)"):
        mmopt.solve(problem, x0=np.zeros(4))
    with pytest.raises(TypeError, match="n_threads"):
        Sinkhorn(n_threads=1.5).solve(problem)
    with pytest.raises(TypeError, match="overrelaxation"):
        Sinkhorn(overrelaxation="yes").solve(problem)


@pytest.mark.parametrize("solver", [sinkhorn, sinkhorn_newton_sparse])
@pytest.mark.parametrize("scale", [1e-250, 1e-10, 1e6])
def test_tol_is_relative_to_the_total_mass(solver, scale):
    # tol was an absolute L1 error: at masses of 1e-10 the second iteration met it with a
    # relative marginal error of 0.7, and below 1e-200 the scaling domain's kernel floor
    # (absolute) cut the plan itself.
    rng = np.random.default_rng(0)
    x, y = rng.random((20, 2)), rng.random((25, 2))
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    a, b = rng.random(20) + 0.1, rng.random(25) + 0.1
    a, b = a / a.sum(), b / b.sum()
    reference = solver(a, b, C, reg=1e-2, tol=1e-9)
    res = solver(a * scale, b * scale, C, reg=1e-2, tol=1e-9)
    assert res.status == 0 and res.residual <= 1e-9
    assert res.marginal_error / scale <= 1e-8
    np.testing.assert_allclose(res.plan / scale, reference.plan, rtol=0, atol=1e-8)


def test_ragged_b_is_named_not_taken_for_a_batch():
    # np.ndim of a ragged list raises NumPy's "inhomogeneous shape" error, which does not
    # say which argument is wrong; the histogram check names b.
    with pytest.raises(ValueError, match=r"\bb\b"):
        sinkhorn(np.array([0.5, 0.5]), [[1.0, 2.0], [3.0]], np.ones((2, 3)), 0.1)
