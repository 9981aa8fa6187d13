"""benchmarks/bench_pointcloud_peers.py: every solver's error read in one convention, and the
sizes growing until a peer misses the tolerance or its budget."""

import numpy as np
import pytest
from _helpers import REPOSITORY, load_repo_script


def _bench(monkeypatch):
    # The script imports its siblings (_geomloss, _common) as run.py's folder provides them.
    monkeypatch.syspath_prepend(str(REPOSITORY / "benchmarks"))
    return load_repo_script("benchmarks/bench_pointcloud_peers.py",
                            "_mmopt_bench_pointcloud_peers")


def test_every_solver_error_is_the_plan_error_of_its_potentials(tmp_path, monkeypatch):
    """Ours and POT's potentials converted to one convention: a converged run's error is
    at the tolerance (a wrong conversion gives an error of order 1)."""
    bench = _bench(monkeypatch)
    x, y, a, b, _ = bench._clouds("smooth", 300, 2)
    path = str(tmp_path / "clouds.npz")
    np.savez(path, x=x, y=y, a=a, b=b, reg=0.05)
    ours = bench._child("mmopt", "smooth", path, 60.0)
    assert ours["status"] == "status 0" and 0 < ours["error"] <= bench.TOL
    pytest.importorskip("ot")
    pot = bench._child("pot", "smooth", path, 60.0)
    assert pot["status"] == "reached its stopThr"
    # POT's test reads its rows' error, its columns exact after each iteration.
    assert 0 < pot["error"] <= 1.01 * bench.TOL


def test_sizes_grow_until_a_run_misses_the_tolerance_or_the_budget(monkeypatch):
    bench = _bench(monkeypatch)
    ran = []

    def run(solver, regime, n, d, budget):
        ran.append((solver, regime, n))
        if solver == "mmopt":
            return {"time": 1e-6 * n, "error": 1e-7, "reached": True, "status": "status 0"}
        seconds = {"POT lazy": 1e-5, "geomloss online": 1e-7}.get(solver, 1e-6) * n**2
        reached = solver != "geomloss multiscale" and seconds <= budget
        return {"time": min(seconds, budget), "error": 1e-7 if reached else 1e-2,
                "reached": reached, "status": "reached" if reached else "budget"}

    monkeypatch.setattr(bench, "_run", run)
    monkeypatch.setattr(bench, "SIZES", {"smooth": (1000, 2000, 4000, 8000), "sharp": (1000,)})
    monkeypatch.setattr(bench, "DIMS", {"smooth": (2,), "sharp": (3,)})
    monkeypatch.setattr(bench, "BUDGET", 600.0)
    text = bench.run()
    smooth = [n for solver, regime, n in ran if solver == "POT lazy" and regime == "smooth"]
    # POT: 10 s at 1000, 40 at 2000, 160 at 4000; 640 predicted at 8000: not run.
    assert smooth == [1000, 2000, 4000]
    assert "skipped: 640 s predicted > the 600 s budget" in text
    assert "smooth, d = 2, POT lazy: reached 1e-06 at up to n = m = 4000" in text
    # geomloss online: 6.4 s at 8000, the last size.
    assert [n for s, r, n in ran if s == "geomloss online" and r == "smooth"] == [
        1000, 2000, 4000, 8000]
    # A run that misses the tolerance ends its sizes.
    assert [n for s, r, n in ran if s == "geomloss multiscale" and r == "smooth"] == [1000]
    assert "did not reach 1e-06 at n = m = 1000" in text
    # Ours runs once per size and dimension.
    ours = [(r, n) for s, r, n in ran if s == "mmopt"]
    assert len(ours) == len(set(ours)) == 5
