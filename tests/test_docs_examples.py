"""The gallery examples run standalone, and the geometric median example is right."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("plot_*.py"))

# Examples are small: one BLAS/OpenMP thread keeps them quick on a busy machine. The checkout
# under test comes first on the path: the subprocess runs from a temporary directory, where
# an installed mmopt (another checkout) would otherwise be imported instead.
_ENV = {
    **os.environ,
    "MPLBACKEND": "Agg",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    ),
}

# Runs a script (argv[1]) or ``mmopt demo`` (argv[1] == "demo") with every warning an error,
# but for mmopt's ConvergenceWarning (a documented outcome: the example shows its status),
# third-party deprecations, and matplotlib's note that the Agg backend cannot show figures.
# A NumPy RuntimeWarning (overflow, division by zero ...) leaking out of a solver on a valid
# problem fails the run (issue 13).
_STRICT_RUNNER = """
import runpy, sys, warnings
warnings.simplefilter("error")
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
warnings.filterwarnings("ignore", message=".*non-interactive.*cannot be shown")
import mmopt
warnings.filterwarnings("ignore", category=mmopt.ConvergenceWarning)
target = sys.argv[1]
if target == "demo":
    from mmopt.cli import main
    sys.exit(main(["demo", *sys.argv[2:]]))
sys.argv = [target]
runpy.run_path(target, run_name="__main__")
"""


def _run_strict(args, cwd):
    return subprocess.run(
        [sys.executable, "-c", _STRICT_RUNNER, *args],
        cwd=cwd,
        env=_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(not EXAMPLES, reason="no examples/ next to the tests (installed package)")
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_standalone_without_warnings(path, tmp_path):
    out = _run_strict([str(path)], tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]


def test_demo_runs_without_warnings(tmp_path):
    # The first thing a newcomer runs: no NumPy warning may reach the terminal (issue 13).
    out = _run_strict(["demo", "--quick", "--output-dir", str(tmp_path / "out")], tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "Warning" not in out.stderr, out.stderr[-4000:]


@pytest.fixture
def geometric_median():
    path = EXAMPLES_DIR / "plot_mm_geometric_median.py"
    if not path.exists():
        pytest.skip("geometric median example not present")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    namespace = runpy.run_path(str(path), run_name="example")
    yield namespace
    plt.close("all")


def test_geometric_median_example_reaches_the_median(geometric_median):
    ns = geometric_median
    points, f_star = ns["points"], ns["f_star"]
    for name in ("MM (Weiszfeld)", "MM + Anderson"):
        res = ns["runs"][name]
        assert res.status == 0
        assert res.fun <= f_star + 1e-10
        # First-order optimality away from the data: the unit vectors from the points cancel.
        units = (res.x - points) / np.linalg.norm(res.x - points, axis=1)[:, None]
        assert np.linalg.norm(units.sum(axis=0)) < 1e-6
    assert ns["runs"]["MM + Anderson"].nit < ns["runs"]["MM (Weiszfeld)"].nit
    # The capped-weight patch reports convergence at the (non-optimal) data point it starts
    # from: the failure the exact surrogate minimizer avoids.
    capped = ns["runs"]["capped weights"]
    assert capped.status == 0
    assert capped.fun - f_star > 0.1


def test_weiszfeld_map_at_a_data_point(geometric_median):
    ns = geometric_median
    G, F = ns["surrogate_minimizer"], ns["objective"]
    # At a data point that is not the median the exact surrogate minimizer moves downhill
    # (the plain Weiszfeld weights would divide by zero there).
    start = ns["start"]
    step = G(start.copy())
    assert np.all(np.isfinite(step))
    assert F(step) < F(start)
    # The median is a fixed point of the map.
    median = ns["runs"]["MM + Anderson"].x
    np.testing.assert_allclose(G(median), median, atol=1e-8)
