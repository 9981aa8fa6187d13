"""Point-cloud OT without a cost matrix: pointcloud_sinkhorn at 10^4-10^5 points, against
POT's lazy empirical_sinkhorn where it finishes.

Each case runs in its own process, so that its peak resident memory (``ru_maxrss``) is its
own. The clouds: ``x`` uniform in the unit square/cube, ``y`` a smooth deformation of
another uniform sample; uniform weights; ``reg`` relative to the squared diameter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _common import markdown_table

HERE = Path(__file__).resolve().parent

_CASE = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
from mmopt.ot import pointcloud_sinkhorn
n, d, relative, peer = {n}, {d}, {relative}, {peer!r}
rng = np.random.default_rng(0)
x = rng.random((n, d))
y = rng.random((n, d))
y = y + 0.1 * np.sin(3.0 * y[:, ::-1])
diameter2 = float(np.sum((np.maximum(x.max(0), y.max(0)) - np.minimum(x.min(0), y.min(0))) ** 2))
reg = relative * diameter2
out = {{}}
if peer == "mmopt":
    start = time.perf_counter()
    res = pointcloud_sinkhorn(x, y, reg=reg, tol=1e-6)
    out.update(time=time.perf_counter() - start, status=res.status, nit=res.nit,
               newton=res.n_newton, error=res.marginal_error, regime=res.regime,
               kept=res.kept if res.regime == "sharp" else n * n,
               bound=res.dropped_mass_bound)
else:
    import ot
    start = time.perf_counter()
    f, g = ot.bregman.empirical_sinkhorn(x, y, reg, numIterMax={budget}, stopThr=1e-6,
                                         isLazy=True, batchSize=1000)
    elapsed = time.perf_counter() - start
    # Its marginal error, from its log-potentials, by blocks.
    rows = np.zeros(n)
    cols = np.zeros(n)
    for s in range(0, n, 1000):
        C = ((x[s:s + 1000, None] - y[None]) ** 2).sum(-1)
        P = np.exp(f[s:s + 1000, None] + g[None] - C / reg)
        rows[s:s + 1000] = P.sum(1)
        cols += P.sum(0)
    out.update(time=elapsed, status=-1, nit={budget}, newton=0,
               error=float(np.abs(rows - 1 / n).sum() + np.abs(cols - 1 / n).sum()),
               regime="POT lazy", kept=n * n, bound=0.0)
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def _case(n, d, relative, peer="mmopt", budget=1000, timeout=1800):
    code = _CASE.format(root=str(HERE.parent), n=n, d=d, relative=relative, peer=peer,
                        budget=budget)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"time": float("nan"), "status": "timeout"}
    except subprocess.CalledProcessError as error:
        return {"time": float("nan"), "status": "failed: " + error.stderr[-200:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> str:
    sizes = (10_000,) if quick else (10_000, 100_000)
    rows = []
    for n in sizes:
        for d in (2, 3):
            out = _case(n, d, 1e-5)
            rows.append({"n = m": n, "d": d, "reg / diam^2": 1e-5, "solver": "pointcloud_sinkhorn",
                         **out})
    # POT's lazy empirical Sinkhorn: O(n^2) per iteration, at a size it can do.
    for d in (2,):
        n = 2000
        for peer in ("mmopt", "pot"):
            out = _case(n, d, 1e-3, peer=peer, budget=1000)
            rows.append({"n = m": n, "d": d, "reg / diam^2": 1e-3,
                         "solver": "pointcloud_sinkhorn" if peer == "mmopt" else
                         "POT empirical_sinkhorn(isLazy=True), 1000 iterations", **out})
    return (
        "## Point-cloud OT without a cost matrix (pointcloud_sinkhorn)\n\n"
        "Each case in its own process (peak RSS its own); tol = 1e-6 relative L1 marginal "
        "error; `error` is the returned plan's L1 marginal error (kept pairs), `bound` the "
        "certified dropped mass, `kept` the kept pairs at the last truncation.\n\n"
        + markdown_table(rows)
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
