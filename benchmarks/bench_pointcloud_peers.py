"""Point-cloud OT against its peers at the sizes they can do in ten minutes, both regimes.

Each solver is asked for the same L1 marginal error (``TOL``) on the same clouds: the sharp
regime's (``bench_pointcloud``: reg = 1e-5 x squared diameter, uniform weights) and the
smooth regime's (``bench_smooth_ot``: reg = 1e-3 x squared diameter, random weights). Per
peer, regime and dimension the sizes grow (``SIZES``) until a run does not reach ``TOL``
within ``BUDGET`` seconds or the next one is predicted over it (time x (n' / n)^2). Every
run is a process of its own (its peak RSS and CPU time its own, killed past twice the budget
and a minute); every solver's marginal error is computed the same way from its returned
potentials, tile by tile (``_geomloss.marginal_error``), after its timing.

- mmopt: ``pointcloud_sinkhorn(..., tol=TOL, regime=...)``.
- POT: ``ot.bregman.empirical_sinkhorn(..., isLazy=True, batchSize=500, stopThr=TOL)`` (its
  stopping test: the rows' L1 error, the columns being exact after each iteration), in
  chunks of 50 warm-started iterations so that the budget can end it.
- geomloss ``tensorized`` (torch), ``online`` and ``multiscale`` (KeOps on the CPU):
  ``SamplesLoss`` at scaling 0.9, then its own updates on at the final epsilon until its
  plan reaches ``TOL`` — a stopping test it lacks, given for free
  (``_geomloss.solve_until``: checked every 10% more updates, the checks not timed; a run
  whose error stops falling ends as stalled).

The full run takes one to two hours (``MMOPT_BENCH_PEERS_BUDGET`` sets the budget).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _geomloss
import numpy as np
from _common import markdown_table

HERE = Path(__file__).resolve().parent
TOL = 1e-6
BUDGET = float(os.environ.get("MMOPT_BENCH_PEERS_BUDGET", 600))
SIZES = {"smooth": (2000, 4000, 8000, 16_000, 32_000), "sharp": (1000, 2000, 4000, 8000)}
# The sharp regime in 3-D only: at 1000 points no peer reaches TOL within 90 s (POT) or
# 15 s (geomloss) in either dimension (bench_pointcloud), and a second dimension adds four
# ten-minute runs.
DIMS = {"smooth": (2, 3), "sharp": (3,)}
PEERS = ("POT lazy", "geomloss tensorized", "geomloss online", "geomloss multiscale")
POT_CHUNK = 50


def _clouds(regime: str, n: int, d: int):
    """``(x, y, a, b, reg)`` of the regime's benchmark section."""
    if regime == "sharp":
        import bench_pointcloud

        return bench_pointcloud._clouds(n, d)
    import bench_smooth_ot

    return bench_smooth_ot._geomloss_clouds(n, d)


def _child(kind: str, regime: str, path: str, budget: float) -> dict:
    """The child process's run (``python bench_pointcloud_peers.py child ...``)."""
    import resource
    import time

    data = np.load(path)
    x, y, a, b, reg = (data[k] for k in ("x", "y", "a", "b", "reg"))
    reg = float(reg)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    if kind == "mmopt":
        sys.path.insert(0, str(HERE.parent))
        from mmopt.ot import pointcloud_sinkhorn

        start = time.perf_counter()
        res = pointcloud_sinkhorn(x, y, a, b, reg=reg, tol=TOL, regime=regime)
        elapsed = time.perf_counter() - start
        # Our plan is exp((f_i + g_j - C_ij) / reg); marginal_error's has a_i b_j in front.
        f, g = res.f - reg * np.log(a), res.g - reg * np.log(b)
        out = {"status": f"status {res.status}",
               "iterations": sum(int(level["iterations"]) for level in res.levels)}
    else:
        import warnings

        import ot

        warnings.simplefilter("ignore")
        start = time.perf_counter()
        f = g = None
        iterations, error = 0, np.inf
        while error > TOL and time.perf_counter() - start < budget:
            f, g, log = ot.bregman.empirical_sinkhorn(
                x, y, reg, a, b, numIterMax=POT_CHUNK, stopThr=TOL, isLazy=True,
                batchSize=500, log=True, warmstart=None if f is None else (f, g))
            iterations += 10 * len(log["err"])  # its error is read every 10 iterations
            error = float(log["err"][-1])
        elapsed = time.perf_counter() - start
        # POT's plan is exp(f_i + g_j - C_ij / reg): ours with f = reg (f - log a).
        f, g = reg * (np.asarray(f) - np.log(a)), reg * (np.asarray(g) - np.log(b))
        out = {"status": "reached its stopThr" if error <= TOL
               else f"stopped at the {budget:.0f} s budget", "iterations": iterations}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.update(time=elapsed, cpu=usage.ru_utime + usage.ru_stime - cpu_start,
               peak_mb=usage.ru_maxrss / 1024,
               error=_geomloss.marginal_error(x, y, a, b, f, g, reg))
    return out


def _run(solver: str, regime: str, n: int, d: int, budget: float) -> dict:
    """One run of ``solver`` on the regime's clouds at n points in d dimensions."""
    x, y, a, b, reg = _clouds(regime, n, d)
    if solver.startswith("geomloss"):
        out = _geomloss.run_until(x, y, a, b, reg, solver.split()[1], TOL, budget)
    else:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "clouds.npz")
            np.savez(path, x=x, y=y, a=a, b=b, reg=reg)
            timeout = 2 * budget + 60
            try:
                done = subprocess.run(
                    [sys.executable, __file__, "child", "mmopt" if solver == "mmopt"
                     else "pot", regime, path, repr(budget)],
                    capture_output=True, text=True, timeout=timeout, check=True)
                out = json.loads(done.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                out = {"status": f"killed after {timeout:.0f} s"}
            except subprocess.CalledProcessError as error:
                out = {"status": "failed: " + error.stderr.strip()[-200:].replace("\n", " ")}
    out["reached"] = out.get("error", np.inf) <= TOL
    print(f"pointcloud_peers {regime} d={d} n={n} {solver}: {out}", file=sys.stderr)
    return out


def _row(regime, d, n, solver, out, ours) -> dict:
    # A run with no plan to compare (stopped before any check) has no ratio.
    ratio = None
    if np.isfinite(out.get("error", np.nan)) and np.isfinite(out.get("time", np.nan)):
        ratio = out["time"] / ours["time"]
    return {"regime": regime, "d": d, "n = m": n, "solver": solver,
            "time (s)": out.get("time"), "CPU (s)": out.get("cpu"),
            "peak RSS (MB)": out.get("peak_mb"), "iterations": out.get("iterations"),
            "marginal error": out.get("error"),
            "time / ours": "—" if solver == "mmopt" else ratio,
            "status": out.get("status")}


def _summary(regime, d, solver, runs, ours) -> str:
    """One line: the largest size the peer did to TOL within the budget, and its ratio."""
    reached = [(n, out) for n, out in runs if out.get("reached")]
    head = f"- {regime}, d = {d}, {solver}: "
    if reached:
        n, out = reached[-1]
        line = (f"reached {TOL:g} at up to n = m = {n} in {out['time']:.1f} s, "
                f"{out['time'] / ours[n]['time']:.0f}x our {ours[n]['time']:.2f} s")
        following = runs[-1][1] if runs[-1][0] != n else None
        if following is not None:
            line += f"; n = m = {runs[-1][0]}: {following.get('status')}"
        return head + line
    n, out = runs[0]
    if not np.isfinite(out.get("error", np.nan)):
        return head + f"no result at n = m = {n} ({out.get('status')})"
    return head + (f"did not reach {TOL:g} at n = m = {n} ({out.get('status')}; its error "
                   f"{out.get('error', np.nan):.1e} after {out['time']:.0f} s, ours "
                   f"{ours[n].get('error', np.nan):.1e} in {ours[n]['time']:.2f} s: the "
                   f"ratio is above {out['time'] / ours[n]['time']:.0f}x)")


def run(quick: bool = False) -> str:
    budget = 5.0 if quick else BUDGET
    sizes = {"smooth": (500,), "sharp": (500,)} if quick else SIZES
    dims = {"smooth": (2,), "sharp": (2,)} if quick else DIMS
    rows, lines = [], []
    for regime in ("smooth", "sharp"):
        for d in dims[regime]:
            ours: dict[int, dict] = {}
            for solver in PEERS:
                runs = []
                for n in sizes[regime]:
                    if runs:
                        last_n, last = runs[-1]
                        if not last.get("reached"):
                            break
                        predicted = last["time"] * (n / last_n) ** 2
                        if predicted > budget:
                            runs.append((n, {"status": f"skipped: {predicted:.0f} s predicted "
                                             f"> the {budget:.0f} s budget"}))
                            break
                    if n not in ours:
                        ours[n] = _run("mmopt", regime, n, d, budget)
                        rows.append(_row(regime, d, n, "mmopt", ours[n], ours[n]))
                    runs.append((n, _run(solver, regime, n, d, budget)))
                    rows.append(_row(regime, d, n, solver, runs[-1][1], ours[n]))
                lines.append(_summary(regime, d, solver, runs, ours))
    rows.sort(key=lambda r: (r["regime"] != "smooth", r["d"], r["n = m"], r["solver"] != "mmopt"))
    return (
        "## Point-cloud OT against POT and geomloss at their ten-minute sizes\n\n"
        f"Every solver asked for an L1 marginal error of {TOL:g} on the same clouds: "
        "`sharp` those of the sharp-plan table (reg = 1e-5 x squared diameter, uniform "
        "weights), `smooth` those of the smooth-regime table (reg = 1e-3 x squared "
        "diameter, random weights). Per peer, regime and dimension the sizes grow until a "
        f"run does not reach {TOL:g} within {budget:.0f} s (`MMOPT_BENCH_PEERS_BUDGET`) or "
        "the next one is predicted over it (time x (n' / n)^2). mmopt: "
        "`pointcloud_sinkhorn(..., tol, regime)`. POT: lazy `empirical_sinkhorn` "
        "(batchSize 500, its stopThr), in chunks of 50 warm-started iterations so the budget "
        "can end it. geomloss (float64, KeOps on the CPU, 2 threads; compilation not timed): "
        "`SamplesLoss` (backends tensorized, online, multiscale) at scaling 0.9, then its own "
        "updates on at the final epsilon, its plan's error checked every 10% more updates, "
        "the checks not timed (a stopping test it does not have, given for free; `stalled`: "
        "its error no lower than at half its updates); `iterations` are its symmetric "
        "updates. "
        "`marginal error`: every solver's returned potentials' plan, computed the same way "
        "tile by tile after the timing. Each run is a process of its own (peak RSS and CPU "
        "its own, the interpreter included).\n\n"
        + markdown_table(rows) + "\n\n" + "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    if sys.argv[1] == "child":
        print(json.dumps(_child(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))))
    else:
        print(run(quick="--quick" in sys.argv))
