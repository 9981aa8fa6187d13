"""The OT family's Cython kernels against plain NumPy references."""

import numpy as np
import pytest
from scipy.special import logsumexp

from mmopt.ot._kernels import (
    dense_plan,
    log_half_step,
    plan_marginals,
    plan_row_sums,
    sparsify_plan,
)
from mmopt_ext import _sinkhorn

EXP_PATHS = _sinkhorn.exp_paths()


@pytest.fixture(params=EXP_PATHS)
def exp_path(request):
    """Run the test once per SIMD ``exp`` path this machine can run (scalar always)."""
    _sinkhorn.select_exp_path(request.param)
    yield request.param
    _sinkhorn.select_exp_path(None)


def test_exp_paths():
    assert EXP_PATHS[0] == "scalar"
    assert _sinkhorn.exp_path() == EXP_PATHS[-1]  # the fastest one by default
    with pytest.raises(ValueError, match="not available|avx"):
        _sinkhorn.select_exp_path("avx1024")


@pytest.mark.parametrize("reg", [1.0, 1e-3])
def test_exp_is_accurate_over_the_clamped_range(exp_path, reg):
    # Exponents across [-699, 699] (dense_plan sets 0 / inf beyond +-700), dense near 0 and
    # at the AVX-512 path's table breakpoints (it splits 16 log2(e) t into integer and
    # fraction).
    breakpoints = np.log(2.0) / 16 * np.arange(-64, 65)
    t = np.concatenate([
        np.arange(-699 * 1024, 699 * 1024 + 1, 997) / 1024.0,
        np.arange(-4096, 4097) / 1024.0,
        breakpoints, np.nextafter(breakpoints, -np.inf), np.nextafter(breakpoints, np.inf),
    ])
    C = (-t * reg)[None, :]
    out = dense_plan(C, np.zeros(1), np.zeros(t.size), reg, n_threads=1)[0]
    # The argument -C / reg is rounded (relative ~2e-16, an error of |t| 2e-16 in exp(t)).
    relative_error = np.abs(out - np.exp(t)) / np.exp(t)
    assert np.all(relative_error <= 4e-16 * np.abs(t) + 2e-15)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_potentials_behave_like_scalar_exp(exp_path, bad):
    # A NaN potential must not vanish in a clamp (x86 min/max drop a NaN first operand):
    # every path gives what plain exp gives. -inf is a column of zero mass.
    C = np.random.default_rng(3).random((3, 21))
    g = np.zeros(21)
    g[5] = bad
    log_a = np.log(np.full(3, 1 / 3))
    f_new, row_mass = log_half_step(C, g, np.zeros(3), log_a, 0.1, n_threads=1)
    plan = dense_plan(C, np.zeros(3), g, 0.1, n_threads=1)
    with np.errstate(invalid="ignore", over="ignore"):
        expected_plan = np.exp((g[None, :] - C) / 0.1)
        expected_f = 0.1 * (log_a - logsumexp((g[None, :] - C) / 0.1, axis=1))
    if np.isnan(bad) or bad > 0:
        assert np.isnan(f_new).all() and np.isnan(row_mass).all()
    else:
        np.testing.assert_allclose(f_new, expected_f, rtol=1e-12)
    np.testing.assert_array_equal(np.isnan(plan), np.isnan(expected_plan))
    np.testing.assert_allclose(plan[:, 5], expected_plan[:, 5])


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (40, 70), (7, 33)])
@pytest.mark.parametrize("reg", [1.0, 1e-2, 1e-4])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_log_half_step_matches_numpy(exp_path, shape, reg, n_threads):
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    C = rng.random(shape)
    # Potentials of the size reg * O(1), as in a solve (larger ones overflow the plan itself).
    g, f_old = reg * rng.standard_normal(shape[1]), reg * rng.standard_normal(shape[0])
    log_a = np.log(rng.dirichlet(np.ones(shape[0])))
    f_new, row_mass = log_half_step(C, g, f_old, log_a, reg, n_threads=n_threads)
    lse = logsumexp((g[None, :] - C) / reg, axis=1)
    np.testing.assert_allclose(f_new, reg * (log_a - lse), rtol=1e-12, atol=1e-12 * reg)
    expected_mass = np.exp(logsumexp((f_old[:, None] + g[None, :] - C) / reg, axis=1))
    np.testing.assert_allclose(row_mass, expected_mass, rtol=1e-10)


@pytest.mark.parametrize("offset", [-900.0, -300.0, 0.0, 300.0, 900.0])
def test_log_half_step_far_from_balanced(exp_path, offset):
    # Row potentials far off (the plan's rows sum to e^offset): the one-pass sum leaves its
    # safe range and the row is redone with its largest exponent as the shift.
    rng = np.random.default_rng(5)
    C, reg = rng.random((6, 50)), 1e-2
    g, f_old = np.zeros(50), np.full(6, offset * reg)
    log_a = np.log(np.full(6, 1 / 6))
    f_new, row_mass = log_half_step(C, g, f_old, log_a, reg)
    lse = logsumexp(-C / reg, axis=1)
    np.testing.assert_allclose(f_new, reg * (log_a - lse), rtol=1e-12)
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(row_mass, np.exp(offset + lse), rtol=1e-10)


def test_thread_count_does_not_change_the_result():
    rng = np.random.default_rng(0)
    C = rng.random((300, 200))
    args = (C, rng.random(200), rng.random(300), np.log(np.full(300, 1 / 300)), 1e-3)
    one, two = log_half_step(*args, n_threads=1), log_half_step(*args, n_threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


@pytest.mark.parametrize("reg", [1.0, 1e-2, 1e-4])
def test_plan_marginals_match_numpy(exp_path, reg):
    rng = np.random.default_rng(1)
    C = rng.random((30, 45))
    f, g = reg * rng.standard_normal(30), reg * rng.standard_normal(45)
    # Two rows far off: one whose entries all underflow, one whose sum overflows.
    f[0], f[1] = -2000 * reg, 800 * reg
    rows, cols = plan_marginals(C, C.T.copy(), f, g, reg, n_threads=2)
    log_plan = (f[:, None] + g[None, :] - C) / reg
    with np.errstate(over="ignore", under="ignore"):
        np.testing.assert_allclose(rows, np.exp(logsumexp(log_plan, axis=1)), rtol=1e-10)
        np.testing.assert_allclose(cols, np.exp(logsumexp(log_plan, axis=0)), rtol=1e-10)
    assert rows[0] == 0.0 and rows[1] == np.inf
    np.testing.assert_array_equal(plan_row_sums(C, f, g, reg), rows)


def _sparsified(plan, row_budget, col_budget):
    """Sparsify a given plan: with f = g = 0 and reg = 1, C = -log(plan)."""
    n, m = plan.shape
    C = -np.log(plan)
    return sparsify_plan(C, np.zeros(n), np.zeros(m), 1.0, plan.sum(1), plan.sum(0),
                         row_budget, col_budget).toarray()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparsify_drops_at_most_the_budget_per_row_and_column(exp_path, seed):
    rng = np.random.default_rng(seed)
    plan = rng.random((20, 30)) ** 4
    budget = 0.05
    S = _sparsified(plan, budget, budget)
    kept = S > 0
    # Kept entries carry the plan's values (up to the exp's rounding).
    np.testing.assert_allclose(S[kept], plan[kept], rtol=1e-13)
    dropped = np.where(kept, 0.0, plan)
    # An entry is dropped only when both its row and its column drop it, so each row's and
    # each column's dropped mass stays within the budget.
    assert (dropped.sum(axis=1) <= budget * (1 + 1e-12)).all()
    assert (dropped.sum(axis=0) <= budget * (1 + 1e-12)).all()
    assert kept.sum() < plan.size  # it does drop something
    # The largest entry of every row survives.
    assert kept[np.arange(20), plan.argmax(axis=1)].all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparsify_keeps_what_the_sorted_rule_keeps(exp_path, seed):
    # The binned O(nm) selection drops a subset of what the exact rule (sort each row and
    # column, drop the smallest entries while their total stays within the budget) drops.
    rng = np.random.default_rng(seed)
    plan = np.exp(5 * rng.normal(size=(40, 50)))
    plan /= plan.sum()
    budget = 0.02 / 40
    exact_keep = np.zeros(plan.shape, dtype=bool)
    for axis in (1, 0):
        values = plan if axis == 1 else plan.T
        order = np.argsort(values, axis=1)
        cumulative = np.cumsum(np.take_along_axis(values, order, axis=1), axis=1)
        kept = np.zeros(values.shape, dtype=bool)
        np.put_along_axis(kept, order, cumulative > budget, axis=1)
        exact_keep |= kept if axis == 1 else kept.T
    ours = _sparsified(plan, budget, budget) > 0
    assert np.all(ours[exact_keep])
    assert ours.sum() < plan.size


def test_sparsify_with_a_zero_budget_keeps_every_significant_entry():
    rng = np.random.default_rng(3)
    plan = rng.random((15, 25)) + 0.01
    np.testing.assert_allclose(_sparsified(plan, 0.0, 0.0), plan, rtol=1e-13)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (9, 17), (40, 70), (103, 61)])
@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("omega", [1.0, 1.6])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scaling_iteration_matches_numpy(exp_path, shape, blocks, omega, dtype):
    # One fused sweep (K v and K^T u in one pass, row error on the way; over-relaxed when
    # omega != 1) against NumPy's two matrix-vector products; shapes with row blocks and
    # SIMD lanes left over. A float32 K is swept in float64 arithmetic: the reference is
    # the float64 sweep of the same (rounded) entries.
    n, m = shape
    rng = np.random.default_rng(n * 31 + m)
    K = (rng.random(shape) ** 3).astype(dtype)
    a, b = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m))
    u0, v0 = rng.random(n) + 0.5, rng.random(m) + 0.5
    u, v = u0.copy(), v0.copy()
    error, within, column_error, mass = _sinkhorn.scaling_iteration(
        K, a, b, u, v, np.empty((blocks, m)), 1e20, 2, omega
    )
    K = K.astype(np.float64)
    Kv = K @ v0
    u_ref = u0 ** (1 - omega) * (a / Kv) ** omega
    KTu = K.T @ u_ref
    v_ref = v0 ** (1 - omega) * (b / KTu) ** omega
    np.testing.assert_allclose(u, u_ref, rtol=1e-13)
    np.testing.assert_allclose(v, v_ref, rtol=1e-13)
    assert error == pytest.approx(np.abs(u0 * Kv - a).sum(), rel=1e-12, abs=1e-16)
    plan = u_ref[:, None] * K * v_ref[None, :]
    assert column_error == pytest.approx(np.abs(plan.sum(0) - b).sum(), rel=1e-10, abs=1e-15)
    assert mass == pytest.approx(plan.sum(), rel=1e-13)
    assert within


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (40, 70), (103, 61)])
def test_dense_plan_writes_a_float32_copy_without_subnormals(exp_path, shape):
    # The copy the float32 sweeps read: the plan rounded to float32, entries below float32's
    # smallest normal number 0 (exponents spread over float32's underflow).
    rng = np.random.default_rng(shape[0])
    C = rng.random(shape) * 120.0
    f, g = rng.standard_normal(shape[0]), rng.standard_normal(shape[1])
    out, single = np.empty(shape), np.full(shape, np.nan, dtype=np.float32)
    _sinkhorn.dense_plan(C, f, g, 1.0, out, 2, -700.0, single)
    tiny = np.finfo(np.float32).tiny
    np.testing.assert_array_equal(single, np.where(out >= tiny, out, 0.0).astype(np.float32))
    np.testing.assert_allclose(out, np.exp(f[:, None] + g[None, :] - C), rtol=1e-13)
    assert not ((single > 0) & (single < tiny)).any()


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (40, 70), (103, 61)])
@pytest.mark.parametrize("n_threads", [1, 3])
def test_scaled_plan_matches_numpy(exp_path, shape, n_threads):
    rng = np.random.default_rng(shape[1])
    K, C = rng.random(shape), rng.random(shape)
    u, v = rng.random(shape[0]) + 0.5, rng.random(shape[1]) + 0.5
    plan = K * u[:, None] * v[None, :]
    rows, cols, cost = _sinkhorn.scaled_plan(K, C, u, v, n_threads)
    np.testing.assert_allclose(K, plan, rtol=1e-15)
    np.testing.assert_allclose(rows, plan.sum(1), rtol=1e-13)
    np.testing.assert_allclose(cols, plan.sum(0), rtol=1e-13)
    assert cost == pytest.approx(float((C * plan).sum()), rel=1e-13)


def test_scaling_iteration_flags_scalings_out_of_range():
    K = np.array([[1.0, 0.0], [0.0, 0.0]])  # the second row underflowed entirely
    a = b = np.array([0.5, 0.5])
    u, v = np.ones(2), np.ones(2)
    with np.errstate(all="ignore"):
        out = _sinkhorn.scaling_iteration(K, a, b, u, v, np.empty((1, 2)), 1e20, 1)
    assert not out[1] and np.isinf(u[1])
    u, v = np.ones(2), np.ones(2)
    out = _sinkhorn.scaling_iteration(np.eye(2) * 1e-30, a, b, u, v, np.empty((1, 2)), 1e20, 1)
    assert not out[1] and u[0] == pytest.approx(0.5e30)  # finite, out of [1e-20, 1e20]


_ENV_SCRIPT = """
import sys
import numpy as np
from mmopt_ext import _pointcloud, _sinkhorn
from mmopt.ot import sinkhorn
from mmopt.ot._kernels import dense_plan
rng = np.random.default_rng(0)
C = rng.random((40, 33))
f, g = rng.standard_normal(40) * 0.1, rng.standard_normal(33) * 0.1
exact = np.exp((f[:, None] + g[None, :] - C) / 1e-2)
error = float(np.abs(dense_plan(C, f, g, 1e-2) / exact - 1).max())
res = sinkhorn([], [], C, 1e-2, method="log", tol=1e-12)
np.save(sys.argv[1], res.plan)
print(_sinkhorn.exp_path(), _pointcloud.exp_path(), error)
"""


@pytest.mark.parametrize("name", [p for p in EXP_PATHS if p != "scalar"] + ["bogus"])
def test_environment_variable_selects_the_exp_path(tmp_path, name):
    """MMOPT_EXP_PATH (read at import) runs every kernel on the named path (e.g. AVX2 on an
    AVX-512 CPU): exp against NumPy and the plan against the default path's."""
    import os
    import subprocess
    import sys

    from mmopt.ot import sinkhorn

    env = dict(os.environ, MMOPT_EXP_PATH=name)
    out = subprocess.run(
        [sys.executable, "-c", _ENV_SCRIPT, str(tmp_path / "plan.npy")],
        env=env, capture_output=True, text=True, check=True,
    )
    sink_path, cloud_path, error = out.stdout.split()
    expected = EXP_PATHS[-1] if name == "bogus" else name
    assert sink_path == cloud_path == expected
    assert ("RuntimeWarning" in out.stderr) == (name == "bogus")
    assert float(error) < 1e-13
    C = np.random.default_rng(0).random((40, 33))
    reference = sinkhorn([], [], C, 1e-2, method="log", tol=1e-12).plan
    assert np.abs(np.load(tmp_path / "plan.npy") - reference).max() < 1e-14
