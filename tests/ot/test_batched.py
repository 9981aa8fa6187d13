"""Batched histograms: ``sinkhorn(a, b, C, reg)`` with ``b`` of shape (m, k)."""

import warnings

import numpy as np
import pytest

from mmopt import ConvergenceWarning
from mmopt.datasets import make_image_histograms
from mmopt.ot import _batched, sinkhorn


@pytest.fixture(autouse=True)
def _batched_machinery(monkeypatch, request):
    """These problems are small: without this, the size rule (tails and k <= 4 solved
    alone) would leave the shared-kernel paths untested. The tests of the rule opt out."""
    if not request.node.name.startswith("test_size_rule"):
        monkeypatch.setattr(_batched, "_ALONE_MAX_ENTRIES", 0)
        monkeypatch.setattr(_batched, "_SMALL_MAX_ENTRIES", 0)


def _problem(n=60, m=50, k=6, seed=0):
    """A shared cost with mixed columns: smooth, nearly sparse, with zero entries, and
    one far from the others (its mass on the targets furthest from the sources)."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 2)), rng.standard_normal((m, 2)) + 0.5
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    C /= C.max()
    a = rng.dirichlet(np.ones(n))
    columns = [rng.dirichlet(np.ones(m)) for _ in range(k - 3)]
    columns.append(rng.dirichlet(np.full(m, 0.05)))  # nearly sparse
    sparse = rng.dirichlet(np.ones(m))
    sparse[rng.choice(m, m // 3, replace=False)] = 0.0
    columns.append(sparse / sparse.sum())
    far = np.exp(8.0 * C.mean(axis=0))
    columns.append(far / far.sum())
    return a, np.stack(columns, axis=1), C


def _plan(C, f, g, reg):
    with np.errstate(under="ignore"):
        return np.exp((f[:, None] + g[None, :] - C) / reg)


@pytest.mark.parametrize("reg", [5e-2, 1e-2, 2e-3])
def test_each_column_equals_the_single_solve(reg):
    a, b, C = _problem()
    res = sinkhorn(a, b, C, reg, tol=1e-13, max_iter=100_000, return_plan=True)
    assert res.status == 0 and res.success
    k = b.shape[1]
    assert res.fun.shape == res.transport_cost.shape == res.marginal_error.shape == (k,)
    assert res.f.shape == (C.shape[0], k) and res.g.shape == (C.shape[1], k)
    assert res.plan.shape == (k, *C.shape)
    assert res.x.shape == (C.shape[0] + C.shape[1], k)
    for j in range(k):
        single = sinkhorn(a, b[:, j], C, reg, tol=1e-13, max_iter=100_000)
        assert np.abs(res.plan[j] - single.plan).max() <= 1e-10
        assert abs(res.transport_cost[j] - single.transport_cost) <= 1e-10
        assert abs(res.fun[j] - single.fun) <= 1e-10
        assert abs(res.objective[j] - single.objective) <= 1e-10
        # The potentials give the same plan (they are defined up to (f + c, g - c)).
        positive = b[:, j] > 0
        plan = _plan(C, res.f[:, j], res.g[:, j], reg)
        assert np.abs(plan[:, positive] - res.plan[j][:, positive]).max() <= 1e-12
        # Zero-mass columns: the soft c-transform of f, in the same gauge.
        shift = res.f[0, j] - single.f[0]
        np.testing.assert_allclose(res.g[~positive, j], single.g[~positive] - shift, atol=1e-9)
        assert res.marginal_error[j] <= 1e-12
        assert abs(res.marginal_error[j] - (np.abs(res.plan[j].sum(1) - a).sum()
                                            + np.abs(res.plan[j].sum(0) - b[:, j]).sum())) < 1e-14


def test_plan_only_on_request_and_inputs_untouched():
    a, b, C = _problem()
    copies = a.copy(), b.copy(), C.copy()
    res = sinkhorn(a, b, C, 1e-2)
    assert "plan" not in res
    for before, after in zip(copies, (a, b, C)):
        np.testing.assert_array_equal(before, after)
    assert res.column_status.tolist() == [0] * b.shape[1]
    assert (res.column_nit <= res.nit).all() and res.nit == res.column_nit.max()
    assert set(res.history) >= {"residual", "n_active", "time"}
    assert np.all(res.marginal_error <= 1e-9 * a.sum() * 1.01)


@pytest.mark.parametrize("reg", [2e-2, 1.5e-3])
def test_against_pot_batched(reg):
    """(At 1.5e-3, spread / reg > _LEVEL_MIN_RATIO: started from a level at 1.5e-2.)"""
    ot = pytest.importorskip("ot")
    a, b, C = _problem(k=5)
    b = b[:, :4]  # POT's plain scaling iteration needs every column of b positive
    b[b == 0] = 1e-3
    b /= b.sum(axis=0)
    costs, log = ot.sinkhorn(a, b, C, reg, stopThr=1e-14, numItermax=200_000, log=True)
    res = sinkhorn(a, b, C, reg, tol=1e-13, max_iter=200_000)
    np.testing.assert_allclose(res.transport_cost, costs, rtol=0, atol=1e-10)
    K = np.exp(-C / reg)
    for j in range(b.shape[1]):
        pot_plan = log["u"][:, j, None] * K * log["v"][:, j]
        assert np.abs(_plan(C, res.f[:, j], res.g[:, j], reg) - pot_plan).max() <= 1e-10


@pytest.mark.parametrize("reg", [1e-2, 3e-3])
def test_one_thread_shared_sweeps_of_up_to_twelve_problems(monkeypatch, reg):
    """On one thread the last _SHARED_SWEEP_MAX problems iterate on the paired one-pass
    sweep instead of GEMMs (odd and even counts): each column still equals its single
    solve (plan, cost, potentials through the plan)."""
    sizes = []
    sweep = _batched._scaling_iterations

    def counted(K, a, B, U, *args):
        sizes.append(U.shape[0])
        return sweep(K, a, B, U, *args)

    monkeypatch.setattr(_batched, "_scaling_iterations", counted)
    a, b, C = _problem(n=220, m=200, k=11, seed=4)
    res = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100_000, n_threads=1, return_plan=True)
    assert res.status == 0
    assert max(sizes) == 11 and min(sizes) >= 1
    for j in range(b.shape[1]):
        single = sinkhorn(a, b[:, j], C, reg, tol=1e-12, max_iter=100_000, n_threads=1)
        assert np.abs(res.plan[j] - single.plan).max() <= 1e-10
        assert abs(res.transport_cost[j] - single.transport_cost) <= 1e-10
        # (columns of zero mass get finite potentials, the soft c-transform: left out)
        P = _plan(C, res.f[:, j], res.g[:, j], reg)
        positive = b[:, j] > 0
        assert np.abs(P - res.plan[j])[:, positive].max() <= 1e-10


def test_problems_that_leave_the_batch(monkeypatch):
    """Problems too far from the others for one kernel (forced: a tiny range) are finished
    alone, warm-started; the fused one-problem sweeps give the same answers."""
    a, b, C = _problem(k=7, seed=3)
    reg = 3e-3
    reference = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100_000, return_plan=True)
    monkeypatch.setattr(_batched, "_MAX_LOG_BOUND", 10.0)
    monkeypatch.setattr(_batched, "_MIN_LOG_BOUND", 5.0)
    monkeypatch.setattr(_batched, "_SPREAD_SHARE", 0.2)
    split = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100_000, return_plan=True)
    monkeypatch.undo()
    monkeypatch.setattr(_batched, "_FUSED_MAX", 100)
    monkeypatch.setattr(_batched, "_SHARED_SWEEP_MAX", 100)
    fused = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100_000, return_plan=True)
    for res in (split, fused):
        assert res.status == 0
        assert np.abs(res.plan - reference.plan).max() <= 1e-10
        np.testing.assert_allclose(res.transport_cost, reference.transport_cost, atol=1e-11)


def test_log_method_and_threads():
    a, b, C = _problem(k=4)
    ref = sinkhorn(a, b, C, 1e-2, tol=1e-12, return_plan=True)
    log = sinkhorn(a, b, C, 1e-2, tol=1e-12, method="log", return_plan=True)
    assert list(log.method) == ["log"] * 4
    assert np.abs(log.plan - ref.plan).max() <= 1e-10
    two = sinkhorn(a, b, C, 1e-2, tol=1e-12, n_threads=2, return_plan=True)
    assert np.abs(two.plan - ref.plan).max() <= 1e-12


def test_max_iter_reports_per_column_status():
    a, b, C = _problem()
    with pytest.warns(ConvergenceWarning, match="columns did not converge"):
        res = sinkhorn(a, b, C, 1e-3, max_iter=5)
    assert res.status == 1 and not res.success
    assert (res.column_status == 1).all() and (res.column_nit == 5).all()
    assert np.isfinite(res.fun).all() and (res.marginal_error > 1e-9).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixed = sinkhorn(a, b, C, 1e-1, max_iter=10_000)
    assert mixed.status == 0


@pytest.mark.parametrize("seed", range(3))
def test_a_sweep_failing_at_max_iter_still_reports_finite_fields(seed):
    # At reg 1e-4 with max_iter = 2 (one epsilon-scaling level, then one iteration at reg)
    # the last sweep's scalings overflow: those problems are finished like any failed
    # sweep (alone, from zero potentials), so status 1 comes with finite fields, each the
    # exact value of the returned potentials' plan (NumPy), and no NumPy warning leaks.
    rng = np.random.default_rng(seed)
    n, k, reg = 200, 8, 1e-4
    x, y = rng.standard_normal((n, 2)), rng.standard_normal((n, 2)) + 1.0
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    C /= C.max()
    a, b = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(n), size=k).T
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.warns(ConvergenceWarning, match="columns did not converge"):
            res = sinkhorn(a, b, C, reg, max_iter=2)
    assert res.status == 1 and (res.column_status == 1).all()
    for field in ("fun", "transport_cost", "objective", "marginal_error"):
        assert np.isfinite(getattr(res, field)).all(), field
    for j in range(k):
        plan = np.exp((res.f[:, j, None] + res.g[None, :, j] - C) / reg)
        error = np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b[:, j]).sum()
        assert res.marginal_error[j] == pytest.approx(error, rel=1e-6)
        assert res.transport_cost[j] == pytest.approx(float((C * plan).sum()), rel=1e-6)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((np.ones((5, 2)) / 5, np.ones((4, 2)) / 4, np.ones((5, 4)), 0.1), {}, ValueError,
         "a must be 1-D"),
        ((None, np.ones((3, 2)) / 3, np.ones((5, 4)), 0.1), {}, ValueError,
         r"b must have shape \(m, k\) = \(4, k\)"),
        ((None, np.ones((4, 0)), np.ones((5, 4)), 0.1), {}, ValueError, "k >= 1"),
        ((None, np.c_[np.ones(4) / 4, np.ones(4) / 2], np.ones((5, 4)), 0.1), {}, ValueError,
         r"column 1 has sum\(b\[:, 1\]\)"),
        ((None, -np.ones((4, 2)), np.ones((5, 4)), 0.1), {}, ValueError, "b"),
        ((None, np.ones((4, 2)) / 4, np.ones(4), 0.1), {}, ValueError, "C"),
        ((None, np.ones((4, 2)) / 4, np.ones((5, 4)), -1.0), {}, ValueError, "reg"),
        ((None, np.ones((4, 2)) / 4, np.ones((5, 4)), 0.1), {"x0": np.zeros(9)}, ValueError,
         "x0 is not supported"),
        ((None, np.ones((4, 2)) / 4, np.ones((5, 4)), 0.1), {"callback": print}, ValueError,
         "callback is not supported"),
        ((None, np.ones((4, 2)) / 4, np.ones((5, 4)), 0.1), {"bogus": 1}, TypeError,
         "bogus"),
        ((None, np.ones(4) / 4, np.ones((5, 4)), 0.1), {"return_plan": True}, TypeError,
         "return_plan"),
    ],
)
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        sinkhorn(*args, **kwargs)


@pytest.mark.parametrize("scale", [1e-150, 1e-250])
def test_tiny_masses(scale):
    """The scalings' range narrows with the mass (so that the truncated kernel stays exact);
    below about 1e-200 the problems are solved alone."""
    a, b, C = _problem(k=3)
    res = sinkhorn(a * scale, b * scale, C, 1e-2, tol=1e-12, return_plan=True)
    assert res.status == 0
    for j in range(3):
        single = sinkhorn(a * scale, b[:, j] * scale, C, 1e-2, tol=1e-12)
        assert np.abs(res.plan[j] - single.plan).max() <= 1e-10 * scale
        assert res.method[j] == single.method


def _anderson_reference(xs, rs, memory):
    """Type-II Anderson step from iterates ``xs`` and residuals ``rs`` (oldest first), by
    least squares on the last ``memory`` differences (NumPy lstsq, no ridge)."""
    dX = np.diff(np.array(xs[-memory - 1:]), axis=0).T
    dR = np.diff(np.array(rs[-memory - 1:]), axis=0).T
    gamma = np.linalg.lstsq(dR, rs[-1], rcond=None)[0]
    return xs[-1] + rs[-1] - (dX + dR) @ gamma


def test_anderson_step_against_least_squares():
    """The mixed scalings equal a plain least-squares Anderson step (log domain) on a
    contractive affine map, before and after the memory is full; zero-mass entries stay 0."""
    rng = np.random.default_rng(4)
    c, m = 3, 12
    memory = _batched._ANDERSON_MEMORY
    A = 0.5 * rng.standard_normal((c, m, m)) / np.sqrt(m)
    shift = rng.standard_normal((c, m))
    B = rng.random((c, m))
    B[1, :3] = 0.0
    positive = B > 0
    mixer = _batched._Anderson(c)
    x = rng.standard_normal((c, m)) * positive
    V = np.where(positive, np.exp(x), 0.0)
    history = [([], []) for _ in range(c)]
    for step in range(memory + 4):
        tx = (A @ x[:, :, None])[:, :, 0] + shift
        target = np.where(positive, np.exp(tx), 0.0)
        R = np.where(positive, B / np.where(positive, target, 1.0), 1.0)
        V, column_error = mixer.step(V, target, B, R)
        np.testing.assert_allclose(column_error, np.abs(V * R - B).sum(axis=1), rtol=1e-12)
        for j in range(c):
            xs, rs = history[j]
            xs.append(x[j] * positive[j])
            rs.append((tx[j] - x[j]) * positive[j])
            expected = target[j] if step == 0 else np.where(
                positive[j], np.exp(_anderson_reference(xs, rs, memory)), 0.0)
            np.testing.assert_allclose(V[j], expected, rtol=1e-7)
        assert (V[~positive] == 0).all()
        x = np.where(positive, np.log(np.where(positive, V, 1.0)), 0.0)
    assert mixer.on.all() and (mixer.restarts == 0).all()


def test_anderson_safeguard_and_plain_iterations(monkeypatch):
    """Forced restarts at every step (no growth allowed): the problems fall back to
    over-relaxation; without over-relaxation (no mixing either): plain Sinkhorn. Both give
    the single solves' answers."""
    a, b, C = _problem(k=6, seed=5)
    reg = 5e-3
    reference = [sinkhorn(a, b[:, j], C, reg, tol=1e-12, max_iter=100_000) for j in range(6)]
    plain = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100_000, overrelaxation=False,
                     return_plan=True)
    mixed = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100_000, return_plan=True)
    restarts = []
    original = _batched._Anderson.step

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        restarts.append(self.restarts.max())
        return out

    monkeypatch.setattr(_batched, "_ANDERSON_GROWTH", 0.0)
    monkeypatch.setattr(_batched._Anderson, "step", step)
    fallback = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100_000, return_plan=True)
    assert max(restarts) == _batched._ANDERSON_MAX_RESTARTS + 1
    assert plain.nit > mixed.nit
    for res in (plain, mixed, fallback):
        assert res.status == 0
        for j in range(6):
            assert np.abs(res.plan[j] - reference[j].plan).max() <= 1e-10
            assert abs(res.transport_cost[j] - reference[j].transport_cost) <= 1e-11


@pytest.mark.parametrize("k", [1, 8, 24])
def test_image_histograms_on_a_grid(k):
    """Another problem class: k images (smooth blobs, some pixels empty) on a 12 x 12 grid,
    squared distances between pixels; each column = its single solve, and k = 1 works."""
    a, b, C = make_image_histograms(12, k, random_state=np.random.default_rng(k))
    reg = 2e-3
    res = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100_000, return_plan=True)
    assert res.status == 0 and res.plan.shape == (k, *C.shape)
    for j in range(k):
        single = sinkhorn(a, b[:, j], C, reg, tol=1e-12, max_iter=100_000)
        assert np.abs(res.plan[j] - single.plan).max() <= 1e-10
        assert abs(res.transport_cost[j] - single.transport_cost) <= 1e-11


@pytest.mark.parametrize("k", [3, 9])
def test_size_rule_small_kernels_finish_alone(k, monkeypatch):
    """Tiny kernels (the default rule): k <= 4 problems are solved one by one (the same
    iterates as separate calls), and a larger batch hands its last few problems to warm-
    started single solves; every column still equals its single solve."""
    a, b, C = _problem(k=k, seed=7)
    reg = 3e-3
    assert C.size <= _batched._ALONE_MAX_ENTRIES
    alone = []
    original = _batched._solve_alone
    monkeypatch.setattr(_batched, "_solve_alone",
                        lambda columns, shared: alone.append(dict(columns)) or original(
                            columns, shared))
    res = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100_000, return_plan=True)
    singles = [sinkhorn(a, b[:, j], C, reg, tol=1e-12, max_iter=100_000)
               for j in range(k)]
    assert res.status == 0 and len(alone) == 1
    handed = alone[0]
    if k <= _batched._FUSED_MAX:
        assert handed == dict.fromkeys(range(k))  # from scratch: the separate solves
        assert res.column_nit.tolist() == [r.nit for r in singles]
    else:
        assert 0 < len(handed) <= _batched._FUSED_MAX
        assert all(guess is not None for guess in handed.values())  # warm-started
    for j in range(k):
        assert np.abs(res.plan[j] - singles[j].plan).max() <= 1e-10
        assert abs(res.transport_cost[j] - singles[j].transport_cost) <= 1e-11


@pytest.mark.parametrize("reg", [1e-2, 1e-3])
def test_size_rule_small_kernels_hand_slow_tails_alone(reg, monkeypatch):
    """Small (not tiny) kernels: the batch runs; its last few problems go to warm-started
    single solves only after the probe iterations, and only when their largest error
    fell less than tenfold over the last half of them (slow at 1e-3, not at 1e-2)."""
    monkeypatch.setattr(_batched, "_ALONE_MAX_ENTRIES", 0)
    a, b, C = _problem(k=3, seed=7)
    assert C.size <= _batched._SMALL_MAX_ENTRIES
    handed, errors = [], []
    original, slow = _batched._solve_alone, _batched._Batch._slow
    monkeypatch.setattr(_batched, "_solve_alone",
                        lambda columns, shared: handed.append(dict(columns)) or original(
                            columns, shared))

    def spy(self, it):
        verdict = slow(self, it)
        if verdict:
            errors.append((it, list(self.largest_error)))
        return verdict

    monkeypatch.setattr(_batched._Batch, "_slow", spy)
    res = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100_000, return_plan=True)
    assert res.status == 0
    if reg == 1e-2:
        assert not handed and not errors
    else:
        assert len(handed) == 1 and set(handed[0]) == {0, 1, 2}
        assert all(guess is not None for guess in handed[0].values())
        it, trace = errors[0]
        window = _batched._PROBE_ITERATIONS // 2
        assert it >= _batched._PROBE_ITERATIONS and len(trace) == it
        assert trace[-1] > 0.1 * trace[-1 - window]
    for j in range(3):
        single = sinkhorn(a, b[:, j], C, reg, tol=1e-12, max_iter=100_000)
        assert np.abs(res.plan[j] - single.plan).max() <= 1e-10


def test_anderson_step_with_a_failed_row():
    """A problem whose sweep failed (non-finite update) takes the plain update and starts
    its memory afresh; the others keep mixing (every problem mixing, or some)."""
    rng = np.random.default_rng(8)
    c, m = 3, 10
    B = rng.random((c, m))
    for failed in (0, 2):
        mixer = _batched._Anderson(c)
        V = np.exp(rng.standard_normal((c, m)))
        for step in range(4):
            target = np.exp(0.5 * np.log(V) + rng.standard_normal((c, m)) * 0.01)
            if step == 3:
                target[failed, 0] = np.inf
            out, column_error = mixer.step(V, target, B, np.ones((c, m)))
            assert out.shape == (c, m)
            assert np.isnan(column_error[failed]) == (step == 3)
            V = out
        np.testing.assert_array_equal(out[failed], target[failed])
        others = [j for j in range(c) if j != failed]
        assert np.isfinite(out[others]).all() and not np.array_equal(out[others],
                                                                     target[others])
        assert not mixer.known[failed] and mixer.accelerator._n_cols[failed] == 0


@pytest.mark.parametrize("threads", [1, 2])
def test_mixing_passes_against_numpy(threads):
    """The compiled passes around the mixing equal their NumPy statements: zero-mass
    entries masked and the b-weighted residual (inf for a non-finite row); the mixed
    scalings kept only where extrapolated and finite, the carried log v, column errors."""
    from mmopt_ext._batched_sinkhorn import masked_residual, select_mixed

    rng = np.random.default_rng(11)
    c, m = 5, 37
    B = rng.random((c, m))
    B[1, :4] = 0.0
    positive = B > 0
    rows = np.array([4, 0, 1, 3], dtype=np.intp)  # row 2 does not mix
    X = rng.standard_normal((rows.size, m))
    LT = rng.standard_normal((rows.size, m))
    LT[3, 5] = np.nan  # problem 3's sweep failed
    X0, LT0 = X.copy(), LT.copy()
    residual = np.empty(rows.size)
    masked_residual(X, LT, B, rows, residual, threads)
    pos = positive[rows]
    np.testing.assert_array_equal(X, np.where(pos, X0, 0.0))
    np.testing.assert_array_equal(LT, np.where(pos, LT0, 0.0))
    with np.errstate(invalid="ignore"):
        expected = np.where(np.isfinite(LT).all(axis=1),
                            (B[rows] * np.abs(LT - X)).sum(axis=1), np.inf)
    np.testing.assert_allclose(residual, expected, rtol=1e-13)
    assert residual[3] == np.inf

    P = rng.standard_normal((rows.size, m))
    P[2, 7] = 800.0  # exp overflows: problem 1 keeps its plain update
    P[pos == 0] = 0.0
    with np.errstate(over="ignore"):
        E = np.exp(P)
    extrapolated = np.array([1, 0, 1, 1], dtype=np.int8)
    R = rng.random((c, m)) + 0.5
    V = rng.random((c, m))
    x_known = rng.standard_normal((c, m))
    V0, x0 = V.copy(), x_known.copy()
    errors = np.empty(rows.size)
    select_mixed(P, E, LT, extrapolated, B, R, rows, V, x_known, errors, threads)
    good = (extrapolated == 1) & np.isfinite(np.where(pos, E, 0.0)).all(axis=1)
    assert good.tolist() == [True, False, False, True]
    V_expected, x_expected = V0.copy(), x0.copy()
    V_expected[rows[good]] = np.where(pos[good], E[good], 0.0)
    x_expected[rows] = np.where(good[:, None], P, LT)
    np.testing.assert_array_equal(V, V_expected)
    np.testing.assert_array_equal(x_known, x_expected)
    np.testing.assert_allclose(
        errors, np.abs(V[rows] * R[rows] - B[rows]).sum(axis=1), rtol=1e-13)


@pytest.mark.parametrize("c", [3, 4])
@pytest.mark.parametrize("blocks", [1, 3])
def test_shared_sweep_equals_single_sweeps(blocks, c):
    """One pass over K for c problems (in pairs, an odd one alone) gives each problem
    what its own fused sweep gives, bit for bit (and NumPy's products): over-relaxed or
    not, zero-mass entries, rows not a multiple of the row blocks."""
    from mmopt_ext._sinkhorn import scaling_iteration, scaling_iterations

    rng = np.random.default_rng(12)
    n, m = 53, 41
    K = np.exp(-rng.random((n, m)) * 3)
    a = rng.dirichlet(np.ones(n))
    B = rng.dirichlet(np.ones(m), size=c)
    B[2, :5] = 0.0
    B[2] /= B[2].sum()
    U = rng.random((c, n)) + 0.5
    V = np.where(B > 0, rng.random((c, m)) + 0.5, 0.0)
    omega = np.array([1.0, 1.6, 1.0, 1.3])[:c]
    acc = np.empty((c, blocks, m))
    U1, V1 = U.copy(), V.copy()
    row_error, within, column_error, mass = scaling_iterations(
        K, a, B, U1, V1, acc, omega, 1e3, 2)
    for p in range(c):
        u, v = U[p].copy(), V[p].copy()
        single = scaling_iteration(K, a, B[p], u, v, np.empty((blocks, m)), 1e3, 1, omega[p])
        np.testing.assert_array_equal(U1[p], u)
        np.testing.assert_array_equal(V1[p], v)
        np.testing.assert_allclose([row_error[p], column_error[p], mass[p]],
                                   [single[0], single[2], single[3]], rtol=1e-12)
        assert within[p] == single[1]
        # NumPy: the row error at the incoming scalings, the relaxed updates
        s = K @ V[p]
        assert row_error[p] == pytest.approx(np.abs(U[p] * s - a).sum(), rel=1e-12)
        u_new = U[p] * (a / s / U[p]) ** omega[p]
        np.testing.assert_allclose(U1[p], u_new, rtol=1e-12)
        t = K.T @ u_new
        with np.errstate(divide="ignore", invalid="ignore"):
            v_new = np.where(B[p] > 0, V[p] * (B[p] / t / V[p]) ** omega[p], 0.0)
        np.testing.assert_allclose(V1[p], v_new, rtol=1e-12)
        np.testing.assert_allclose(acc[p].sum(axis=0), t, rtol=1e-12)


def test_epsilon_scaling_levels(monkeypatch):
    """Where spread / reg > _LEVEL_MIN_RATIO the problems are first solved at 10x reg
    (loosely), then at reg from there: the levels run, their iterations count, and every
    column still equals its single solve (and the batch without levels)."""
    C1 = np.array([[0.0, 1.0]])
    assert _batched._levels(C1, 3e-3) == []
    np.testing.assert_allclose(_batched._levels(C1, 1e-3), [1e-2])
    np.testing.assert_allclose(_batched._levels(C1, 1e-4), [1e-2, 1e-3])
    np.testing.assert_allclose(_batched._levels(C1 + 5.0, 1e-4), [1e-2, 1e-3])
    a, b, C = _problem(k=6, seed=2)
    reg = 1e-3
    regs = []
    run_groups = _batched._run_groups
    monkeypatch.setattr(_batched, "_run_groups",
                        lambda shared, warm: regs.append(shared.reg) or run_groups(shared, warm))
    res = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100_000, return_plan=True)
    assert regs == [pytest.approx(1e-2), reg]
    two = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100_000, n_threads=2, return_plan=True)
    assert two.status == 0 and np.abs(two.plan - res.plan).max() <= 1e-10
    monkeypatch.setattr(_batched, "_LEVEL_MIN_RATIO", np.inf)
    plain = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100_000, return_plan=True)
    assert res.status == plain.status == 0
    assert (res.marginal_error <= 1e-12).all()
    assert np.abs(res.plan - plain.plan).max() <= 1e-10
    for j in range(b.shape[1]):
        single = sinkhorn(a, b[:, j], C, reg, tol=1e-12, max_iter=100_000)
        assert np.abs(res.plan[j] - single.plan).max() <= 1e-10
        assert abs(res.transport_cost[j] - single.transport_cost) <= 1e-11


class _Fake:
    """What :func:`_batched._groups` reads of ``_Shared``."""

    def __init__(self, reg=1e-3, max_spread=10.0):
        self.reg, self.max_spread = reg, max_spread


def test_levels_rescale_the_entropic_terms(monkeypatch):
    """A column with weights of 1e-38 (seed 7's first): kept as they are, its potentials at
    10x reg would underflow its first sweep at reg (a failed sweep, solved alone from
    scratch); with the entropic terms rescaled no problem goes alone."""
    a, b, C = _problem(k=3, seed=7)
    assert 0 < b[:, 0].min() < 1e-30
    handed = []
    solve_alone = _batched._solve_alone
    monkeypatch.setattr(_batched, "_solve_alone",
                        lambda columns, shared: handed.append(columns) or solve_alone(
                            columns, shared))
    res = sinkhorn(a, b, C, 1e-3, tol=1e-12, max_iter=100_000, return_plan=True)
    assert res.status == 0 and not handed
    for j in range(3):
        single = sinkhorn(a, b[:, j], C, 1e-3, tol=1e-12, max_iter=100_000)
        assert np.abs(res.plan[j] - single.plan).max() <= 1e-10


def test_groups_fit_one_kernel():
    """Problems in two clusters (and one far from both) form three groups, largest last,
    each within reach (potentials at most 2 max_spread reg apart, gauge centred)."""
    rng = np.random.default_rng(0)
    shared = _Fake(reg=1e-3, max_spread=10.0)
    reach = 2 * shared.max_spread * shared.reg
    base_f, base_g = rng.standard_normal(30), rng.standard_normal(20)
    bump = np.zeros(20)
    bump[:10] = 3 * reach
    potentials = {}
    for j in range(4):
        potentials[j] = (base_f + 0.1 * reach * rng.random(30),
                         base_g + 0.1 * reach * rng.random(20))
    for j in range(4, 7):
        potentials[j] = (base_f + 0.1 * reach * rng.random(30),
                         base_g + bump + 0.1 * reach * rng.random(20))
    potentials[7] = (base_f, base_g - bump)
    potentials[2][1][3] = -np.inf  # a column of zero mass: left out of the distances
    groups = _batched._groups(potentials, shared)
    members = [sorted(columns.tolist()) for columns, _ in groups]
    assert members == [[7], [4, 5, 6], [0, 1, 2, 3]]
    for columns, (f, g) in groups:
        for c, j in enumerate(columns):
            np.testing.assert_array_equal(f[c], potentials[j][0])
            np.testing.assert_array_equal(g[c], potentials[j][1])
    assert _batched._groups({3: potentials[3]}, shared)[0][0].tolist() == [3]


def test_warm_group_measures_its_columns_first():
    """A group started from potentials whose rows are exact but columns are not (the row
    update of perturbed potentials) does not stop on its first, exact, row error."""
    a, b, C = _problem(k=2, seed=1)
    reg = 1e-2
    single = sinkhorn(a, b[:, 0], C, reg, tol=1e-12, max_iter=100_000)
    g = single.g + 1e-4 * np.random.default_rng(0).standard_normal(C.shape[1])
    with np.errstate(under="ignore"):
        f = reg * (np.log(a) - np.log(np.exp((g[None, :] - C) / reg).sum(axis=1)))
    solver = _batched.get_solver("sinkhorn", tol=1e-8)
    out = _batched._Output(*C.shape, 2, False)
    shared = _batched._Shared(a, b, C, reg, solver, 1, out)
    left, failed = _batched._Batch(shared, np.array([0]), (f[None], g[None])).run()
    assert not left and not failed and out.status[0] == 0
    assert out.marginal_error[0] <= 1e-8 * a.sum()
    assert out.nit[0] > 1
