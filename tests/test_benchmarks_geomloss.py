"""benchmarks/_geomloss.py: geomloss's blur and potentials in our convention, the tiled
marginal error of a plan, and the count of geomloss's updates (geomloss itself is optional:
the tests that run it are skipped without it)."""

import numpy as np
import pytest
from _helpers import load_repo_script


def _module():
    return load_repo_script("benchmarks/_geomloss.py", "_mmopt_bench_geomloss")


def _problem(n, m, d, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.random((n, d)), rng.random((m, d)) + 0.2
    a, b = rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, m)
    return x, y, a / a.sum(), b / b.sum()


def _dense_plan(x, y, a, b, f, g, reg):
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return a[:, None] * b[None, :] * np.exp((f[:, None] + g[None, :] - cost) / reg)


def _reference_potentials(x, y, a, b, reg, iterations=3000):
    """Log-domain alternating Sinkhorn on the dense cost |x - y|^2, potentials in the
    convention P = a b^T exp((f + g - C) / reg)."""
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    f, g = np.zeros(len(x)), np.zeros(len(y))

    def softmin(h, weights, matrix):
        z = (h[None, :] - matrix) / reg + np.log(weights)[None, :]
        top = z.max(axis=1)
        return -reg * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))

    for _ in range(iterations):
        f = softmin(g, b, cost)
        g = softmin(f, a, cost.T)
    return f, g


@pytest.mark.parametrize(("n", "m", "d", "tile"), [(7, 13, 2, 50), (20, 9, 3, 2**21)])
def test_marginal_error_matches_the_dense_plan(n, m, d, tile):
    bench = _module()
    x, y, a, b = _problem(n, m, d, seed=n)
    rng = np.random.default_rng(1)
    reg = 0.3
    f, g = rng.normal(scale=0.1, size=n), rng.normal(scale=0.1, size=m)
    plan = _dense_plan(x, y, a, b, f, g, reg)
    expected = np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum()
    inputs = [v.copy() for v in (x, y, a, b, f, g)]
    got = bench.marginal_error(x, y, a, b, f, g, reg, tile_entries=tile)
    assert got == pytest.approx(expected, rel=1e-12)
    for before, after in zip(inputs, (x, y, a, b, f, g)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("reg", [0.05, 0.5])
def test_geomloss_blur_and_potentials_give_our_plan(reg, monkeypatch):
    pytest.importorskip("geomloss")
    torch = pytest.importorskip("torch")
    from geomloss import SamplesLoss
    from geomloss._legacy import sinkhorn_samples

    bench = _module()
    x, y, a, b = _problem(15, 11, 2, seed=3)
    # _extend_schedule patches geomloss's module: monkeypatch restores it after the test.
    monkeypatch.setattr(sinkhorn_samples, "scaling_parameters",
                        sinkhorn_samples.scaling_parameters)
    # Run geomloss's updates to convergence at the final epsilon, so that its plan is the
    # solution's and not the schedule's approximation.
    bench._extend_schedule(3000)
    loss = SamplesLoss("sinkhorn", p=2, blur=bench.geomloss_blur(reg), scaling=0.9,
                       debias=False, potentials=True, backend="tensorized")
    F, G = loss(*(torch.from_numpy(v) for v in (a, x, b, y)))
    f, g = bench.our_potentials(F, G)
    f_ref, g_ref = _reference_potentials(x, y, a, b, reg)
    np.testing.assert_allclose(_dense_plan(x, y, a, b, f, g, reg),
                               _dense_plan(x, y, a, b, f_ref, g_ref, reg), atol=1e-12)
    # The potentials are unique up to a constant moved from one to the other.
    shift = np.mean(f - f_ref)
    np.testing.assert_allclose(f - shift, f_ref, atol=1e-9 * reg)
    np.testing.assert_allclose(g + shift, g_ref, atol=1e-9 * reg)
    assert bench.marginal_error(x, y, a, b, f, g, reg) < 1e-10


def test_update_count_follows_geomloss_schedule():
    pytest.importorskip("geomloss")
    from geomloss._legacy.sinkhorn_divergence import epsilon_schedule

    bench = _module()
    for diameter, blur, scaling in [(1.5, 0.01, 0.5), (2.0, 0.003, 0.9), (1.0, 0.1, 0.99)]:
        # One update per epsilon, plus the first (before the loop) and the last.
        expected = len(epsilon_schedule(2, diameter, blur, scaling)) + 2
        assert bench.geomloss_iterations(diameter, blur, scaling) == expected


def _fake_runs(bench, monkeypatch, seconds_per_update, error_of):
    """Replace geomloss's process by a run taking ``seconds_per_update`` per update, its error
    ``error_of(scaling, extra)``; returns the list of settings run."""
    ran = []

    def run(path, backend, scaling, extra, timeout):
        ran.append((scaling, extra))
        x = np.load(path)["x"]
        blur = bench.geomloss_blur(float(np.load(path)["reg"]))
        updates = bench.geomloss_iterations(bench._diameter(x, x), blur, scaling) + extra
        return {"time": seconds_per_update * updates, "cpu": 0.0, "peak_mb": 0.0,
                "iterations": updates, "error": error_of(scaling, extra), "status": "ran"}

    monkeypatch.setattr(bench, "_run", run)
    monkeypatch.setattr(bench, "available", lambda backend: None)
    return ran


def test_sweep_stops_at_the_target_or_the_budget(monkeypatch):
    bench = _module()
    x = np.random.default_rng(0).random((10, 2))
    a = np.full(10, 0.1)
    settings = [(0.5, 0), (0.9, 0), (0.9, 100), (0.9, 1000), (0.9, 10_000)]
    error = {setting: 10.0 ** -k for k, setting in enumerate(settings)}
    ran = _fake_runs(bench, monkeypatch, 1.0 / 100, lambda s, e: error[(s, e)])
    # The per-update time is learned at the first run (updates / 100 seconds each).
    runs, rate = bench.sweep(x, x, a, a, 1e-3, 1e-2 + 1e-9, "online", None, 1e9, settings)
    assert ran == settings[:3] and runs[-1]["error"] <= 1e-2 + 1e-9
    assert rate == pytest.approx(0.01 / 100)
    # A budget the 1000-update setting exceeds: a skipped row, nothing more run.
    ran.clear()
    runs, _ = bench.sweep(x, x, a, a, 1e-3, 0.0, "online", None, 5.0, settings)
    assert ran == settings[:3] and runs[-1]["status"].startswith("skipped")


def test_compare_without_geomloss_runs_nothing(monkeypatch):
    bench = _module()
    monkeypatch.setattr(bench, "available", lambda backend: "torch not installed")

    def never(*args):
        raise AssertionError("ran without geomloss")

    table, lines = bench.compare(never, never, sizes=(10,), dims=(2,))
    assert table == "" and "torch not installed" in lines
    assert "torch not installed" in bench.section(table, lines, "ours", regime="sharp")


def _until(bench, backend, tmp_path, monkeypatch, reg, target):
    """solve_until on a small problem, geomloss's module restored after it; returns the
    result and the clouds' path."""
    from geomloss._legacy import sinkhorn_samples

    originals = {name: getattr(sinkhorn_samples, name)
                 for name in ("scaling_parameters", "sinkhorn_loop")}
    for name, value in originals.items():  # monkeypatch restores them after the test too
        monkeypatch.setattr(sinkhorn_samples, name, value)
    x, y, a, b = _problem(150, 120, 2, seed=5)
    path = str(tmp_path / "clouds.npz")
    np.savez(path, x=x, y=y, a=a, b=b, reg=reg)
    out = bench.solve_until(path, backend, target, 120.0)
    for name, value in originals.items():
        setattr(sinkhorn_samples, name, value)
    return out, path


@pytest.mark.parametrize("backend", ["tensorized", "online"])
def test_solve_until_reads_the_iterate_it_checks(backend, tmp_path, monkeypatch):
    """solve_until's error is that of the iterate geomloss holds (decoded from its softmin's
    arguments): the potentials geomloss returns after as many updates (its last one a full
    update more) have the same error to a few percent."""
    if backend != "tensorized":
        pytest.importorskip("pykeops")
    pytest.importorskip("geomloss")
    bench = _module()
    out, path = _until(bench, backend, tmp_path, monkeypatch, reg=0.05, target=1e-7)
    assert out["status"] == "reached" and out["error"] <= 1e-7
    assert out["iterations"] > out["scheduled"] and out["time"] > 0
    returned = bench._solve(path, backend, 0.9, out["iterations"] - out["scheduled"] - 1)
    assert returned["error"] == pytest.approx(out["error"], rel=0.1)


def test_solve_until_says_when_multiscale_stays_coarse(tmp_path, monkeypatch):
    """At a reg above the clusters' scale geomloss's multiscale backend would run the extra
    updates on the clusters: solve_until stops at once and says so."""
    pytest.importorskip("pykeops")
    pytest.importorskip("geomloss")
    bench = _module()
    out, _ = _until(bench, "multiscale", tmp_path, monkeypatch, reg=0.05, target=1e-7)
    assert out["status"].startswith("stopped") and "coarse level" in out["status"]
    assert out["iterations"] == out["scheduled"]
