"""Point-cloud OT without a cost matrix, sharp plans: pointcloud_sinkhorn at 10^4-10^5 points
(10^6 in 3-D with ``MMOPT_BENCH_POINTCLOUD_LARGE=1``), against POT's lazy
``empirical_sinkhorn`` at the sizes it can do in about two minutes.

Each case runs in its own process, so that its peak resident memory (``ru_maxrss``, the
interpreter and NumPy included) is its own; times are wall-clock seconds. The clouds: ``x``
uniform in the unit square/cube, ``y`` a smooth deformation of another uniform sample; uniform
weights; ``reg = 1e-5 x`` the squared diameter; tol = 1e-6 relative L1 marginal error for
both solvers (POT's stopping test is its rows' L1 error, its columns being exact after each
iteration, so it is the same measure). A case whose predicted peak memory exceeds
``MEMORY_BUDGET_MB`` (``predicted_pairs``) is skipped, its row saying why.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import _geomloss
import numpy as np
from _common import markdown_table

HERE = Path(__file__).resolve().parent
RELATIVE_REG = 1e-5
# The growth table: reg this many squared point spacings (PointCloudOTProblem.
# squared_spacing), so that a row keeps about the same number of pairs at every n (at a
# fixed reg relative to the diameter the kept pairs grow like n^2). 0.25 is the main
# table's reg at 10^5 points in 3-D.
SPACING_REG = 0.25
# Seconds POT's lazy Sinkhorn gets before its error is read off.
POT_BUDGET = 90.0
# A case is skipped (its row says why) when its predicted peak memory exceeds this (MB;
# MMOPT_BENCH_POINTCLOUD_MEMORY_MB overrides it on a larger machine): at a
# fixed reg relative to the diameter the kept pairs per row grow like n (2-D 10^5 keeps
# about 37M pairs), so `run.py --only pointcloud` stays safe to run.
MEMORY_BUDGET_MB = float(os.environ.get("MMOPT_BENCH_POINTCLOUD_MEMORY_MB", 2500))
# The 10^6-point 3-D case (MMOPT_BENCH_POINTCLOUD_LARGE=1) has a budget of its own
# (MMOPT_BENCH_POINTCLOUD_LARGE_MEMORY_MB; 6 GB predicted) and more time.
LARGE_MEMORY_BUDGET_MB = float(os.environ.get("MMOPT_BENCH_POINTCLOUD_LARGE_MEMORY_MB", 12000))
LARGE_TIMEOUT = 5400
# Peak resident memory: BASE_MB (the interpreter, NumPy, the clouds and the hierarchy) plus
# BYTES_PER_PAIR per kept pair (at the end, the pattern's int32 column indices and the
# returned plan's values and column indices, 16 bytes, the transposed pattern freed; the
# truncations' peaks are about as high). Measured: 2-D 10^5 36.8M pairs 838 MB (918
# predicted), 3-D 10^6 328M pairs 5768 MB (6007 predicted); small cases also store the
# pairs' costs (3-D 10^5: 385 MB, 308 predicted; far below the budget). KEPT_RADIUS: the
# reduced-cost radius of a row's kept pairs in units of reg (the threshold, 40, plus the
# row potential's distance to the row's best pair), fitted on the final kept pairs: 40.5
# in 2-D (10^5), 42.5 in 3-D (10^5 and 10^6).
BASE_MB = 250.0
BYTES_PER_PAIR = 18.0
KEPT_RADIUS = 43.0

_CASE = r"""
import json, os, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
n, d, relative, peer, budget = {n}, {d}, {relative}, {peer!r}, {budget}
spacings = {spacings}
rng = np.random.default_rng(0)
x = rng.random((n, d))
y = rng.random((n, d))
y = y + 0.1 * np.sin(3.0 * y[:, ::-1])
diameter2 = float(np.sum((np.maximum(x.max(0), y.max(0)) - np.minimum(x.min(0), y.min(0))) ** 2))
reg = relative * diameter2
if spacings is not None:
    from mmopt.ot import PointCloudOTProblem
    reg = spacings * PointCloudOTProblem(x, y, reg=1.0).squared_spacing()
out = {{}}
if peer == "mmopt":
    from mmopt.ot import pointcloud_sinkhorn
    start = time.perf_counter()
    res = pointcloud_sinkhorn(x, y, reg=reg, tol=1e-6, regime="sharp")
    out.update(time=time.perf_counter() - start, status=res.status, nit=res.nit,
               newton=res.n_newton, error=res.marginal_error, regime=res.regime,
               kept=res.kept, bound=res.dropped_mass_bound,
               levels=[l["n"] for l in res.levels],
               level_kept=[l["kept"] for l in res.levels],
               truncations=sum(l["truncations"] for l in res.levels), reg=reg / diameter2)
else:
    import warnings
    import ot
    warnings.simplefilter("ignore")
    a = np.full(n, 1.0 / n)
    start = time.perf_counter()
    f = g = None
    iterations, error = 0, np.inf
    # Chunks of 50 iterations, warm-started, until tol or the time budget.
    while error > 1e-6 and time.perf_counter() - start < budget:
        f, g, log = ot.bregman.empirical_sinkhorn(
            x, y, reg, a, a, numIterMax=50, stopThr=1e-6, isLazy=True, batchSize=500,
            log=True, warmstart=None if f is None else (f, g))
        iterations += 50
        error = float(log["err"][-1])
    out.update(time=time.perf_counter() - start, status=int(error > 1e-6), nit=iterations,
               newton=0, error=error, regime="POT lazy", kept=n * n, bound=0.0,
               levels=[n], level_kept=[n * n], truncations=0)
usage = resource.getrusage(resource.RUSAGE_SELF)
out["peak_mb"] = usage.ru_maxrss / 1024
out["cpu"] = usage.ru_utime + usage.ru_stime
print(json.dumps(out))
"""


def _case(n, d, peer="mmopt", timeout=1800, spacings=None):
    code = _CASE.format(root=str(HERE.parent), n=n, d=d, relative=RELATIVE_REG, peer=peer,
                        budget=POT_BUDGET, spacings=spacings)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"time": float("nan"), "status": "timeout"}
    except subprocess.CalledProcessError as error:
        return {"time": float("nan"), "status": "failed: " + error.stderr[-200:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def predicted_pairs(n, d) -> float:
    """Kept pairs of the sharp solve of the benchmark's clouds at n points: n times the
    points of ``y`` (density about n over the unit cube) within squared distance
    ``KEPT_RADIUS * reg`` of a point."""
    diameter2 = d * 1.2**2  # the clouds' bounding box: about [-0.1, 1.1]^d
    radius = math.sqrt(KEPT_RADIUS * RELATIVE_REG * diameter2)
    ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1) * radius**d
    return float(n) * n * ball


def predicted_megabytes(n, d) -> float:
    """Predicted peak resident memory of the sharp solve at n points (MB)."""
    return BASE_MB + predicted_pairs(n, d) * BYTES_PER_PAIR / 2**20


def _guarded_case(n, d, budget=MEMORY_BUDGET_MB, timeout=1800):
    """``_case(n, d)``, or a skipped row when its predicted memory exceeds the budget."""
    pairs, megabytes = predicted_pairs(n, d), predicted_megabytes(n, d)
    if megabytes > budget:
        reason = (f"skipped: about {pairs / 1e6:.0f}M kept pairs predicted, "
                  f"{megabytes:.0f} MB > the {budget:.0f} MB budget")
        print(f"pointcloud n={n} d={d}: {reason}", file=sys.stderr)
        return {"time": float("nan"), "status": reason}
    out = _case(n, d, timeout=timeout)
    out["predicted_mb"] = megabytes
    return out


def _row(n, d, solver, out):
    def listed(key):
        return " / ".join(str(v) for v in out.get(key, []))

    return {
        "n = m": n, "d": d, "solver": solver, "time (s)": out.get("time"),
        "CPU (s)": out.get("cpu"),
        "peak RSS (MB)": out.get("peak_mb"), "predicted (MB)": out.get("predicted_mb"),
        "status": out.get("status"),
        "levels (points)": listed("levels"), "kept pairs per level (max)": listed("level_kept"),
        "kept pairs (final)": out.get("kept"), "truncations": out.get("truncations"),
        "iterations (Newton)": f"{out.get('nit')} ({out.get('newton')})",
        "marginal error": out.get("error"), "dropped-mass bound": out.get("bound"),
    }


def _clouds(n, d):
    """``(x, y, a, b, reg)``: the clouds, weights and reg of ``_CASE``."""
    rng = np.random.default_rng(0)
    x = rng.random((n, d))
    y = rng.random((n, d))
    y = y + 0.1 * np.sin(3.0 * y[:, ::-1])
    both = np.vstack([x, y])
    a = np.full(n, 1.0 / n)
    return x, y, a, a, RELATIVE_REG * float(np.sum(np.ptp(both, axis=0) ** 2))


def _geomloss_section(quick: bool) -> str:
    """geomloss's CPU backends against pointcloud_sinkhorn (``_geomloss.compare``)."""
    if quick:
        budget, found = 5.0, _geomloss.compare(_clouds, _guarded_case, sizes=(500,),
                                               dims=(3,), budget=5.0)
    else:
        budget, found = _geomloss.BUDGET, _geomloss.compare(_clouds, _guarded_case, dims=(3,))
    return "\n\n" + _geomloss.section(*found, "`marginal error` above", budget,
                                       regime="sharp")


# The exactness table: both regimes against the dense solver at these sizes and regs
# (relative to the squared diameter); the smooth regime only where reg is at least
# EXACT_SMOOTH_SPACINGS squared point spacings (below, its Sinkhorn iterations at a sharp
# reg take minutes: 2-D 2000 points at 1e-4 diameter^2, 465 s; 3-D 2000 at 1e-3, 200 s;
# both exact, potentials within 2e-8 reg).
EXACT_CASES = ((2000, 2, False), (2000, 2, True), (2000, 3, False), (2000, 3, True),
               (5000, 3, True))
EXACT_REGS = (1e-1, 1e-2, 1e-3, 1e-4)
EXACT_SMOOTH_SPACINGS = 4.0
EXACT_TOL = 1e-11


def _exact_clouds(n, d, weights, seed=0):
    rng = np.random.default_rng(seed + 10 * d + weights)
    x, y = rng.random((n, d)), 0.9 * rng.random((n, d)) + 0.05
    a = rng.random(n) + 0.1 if weights else np.ones(n)
    b = rng.random(n) + 0.1 if weights else np.ones(n)
    return x, y, a / a.sum(), b / b.sum()


def exactness_rows(quick: bool = False) -> list[dict]:
    """Both regimes of pointcloud_sinkhorn (tol EXACT_TOL, default thresholds) against
    the dense solver (Sinkhorn at reg >= 1e-2 of the squared diameter, Sinkhorn-Newton-Sparse
    below, tol 1e-13) on the same clouds: the largest potential difference in units of reg
    (after the common shift (f + c, g - c) is removed) and its 99th percentile over the
    points, and the largest plan entry difference."""
    import time
    import warnings

    from mmopt.ot import (
        PointCloudOTProblem,
        pointcloud_sinkhorn,
        sinkhorn,
        sinkhorn_newton_sparse,
    )

    rows = []
    for n, d, weights in ((300, 2, True),) if quick else EXACT_CASES:
        x, y, a, b = _exact_clouds(n, d, weights)
        cost = ((x[:, None] - y[None]) ** 2).sum(-1)
        problem = PointCloudOTProblem(x, y, a, b, reg=1.0)
        diameter2 = float(np.sum(np.ptp(np.vstack([x, y]), axis=0) ** 2))
        spacing2 = problem.squared_spacing()
        for relative in EXACT_REGS:
            reg = relative * diameter2
            dense = sinkhorn if relative >= 1e-2 else sinkhorn_newton_sparse
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reference = dense(a, b, cost, reg, tol=1e-13, max_iter=100_000)
            dense_time = time.perf_counter() - start
            for regime in ("sharp", "smooth"):
                if regime == "smooth" and reg < EXACT_SMOOTH_SPACINGS * spacing2:
                    continue
                start = time.perf_counter()
                res = pointcloud_sinkhorn(x, y, a, b, reg=reg, regime=regime, tol=EXACT_TOL)
                elapsed = time.perf_counter() - start
                shift = float(np.mean(res.f - reference.f))
                gaps = np.abs(np.concatenate([res.f - shift - reference.f,
                                              res.g + shift - reference.g])) / reg
                # The smooth regime's plan is an operator (n products to make it dense):
                # its entries from the returned potentials, exp((f_i + g_j - C_ij) / reg).
                plan = res.plan.toarray() if regime == "sharp" else np.exp(
                    (res.f[:, None] + res.g[None] - cost) / reg)
                rows.append({
                    "n = m": n, "d": d, "weights": "random" if weights else "uniform",
                    "reg / diameter^2": relative, "reg / spacing^2": reg / spacing2,
                    "regime": regime, "status": res.status,
                    "marginal error": res.marginal_error,
                    "max potential gap / reg": float(gaps.max()),
                    "99% potential gap / reg": float(np.quantile(gaps, 0.99)),
                    "max plan gap": float(np.abs(plan - reference.plan).max()),
                    "time (s)": elapsed, "dense status": reference.status,
                    "dense time (s)": dense_time,
                })
    return rows


def run(quick: bool = False) -> str:
    large = os.environ.get("MMOPT_BENCH_POINTCLOUD_LARGE") == "1"
    sizes = (10_000,) if quick else (10_000, 30_000, 100_000)
    rows = []
    for d in (2, 3):
        for n in sizes:
            rows.append(_row(n, d, "pointcloud_sinkhorn", _guarded_case(n, d)))
    if large and not quick:
        rows.append(_row(1_000_000, 3, "pointcloud_sinkhorn", _guarded_case(
            1_000_000, 3, budget=LARGE_MEMORY_BUDGET_MB, timeout=LARGE_TIMEOUT)))
    # POT's lazy empirical Sinkhorn: O(n^2) per iteration, no epsilon scaling.
    ratios = []
    for n, d in ((1000, 2), (1000, 3)) if not quick else ((500, 3),):
        mine, pot = _case(n, d), _case(n, d, peer="pot")
        rows.append(_row(n, d, "pointcloud_sinkhorn", mine))
        rows.append(_row(n, d, f"POT empirical_sinkhorn(isLazy=True), {POT_BUDGET:.0f} s "
                               "budget", pot))
        reached = pot.get("status") == 0
        ratios.append(
            f"- n = m = {n}, d = {d}: POT "
            + (f"reached 1e-6 in {pot['time']:.1f} s, {pot['time'] / mine['time']:.0f}x "
               "pointcloud_sinkhorn's time" if reached else
               f"stopped at its {POT_BUDGET:.0f} s budget with marginal error "
               f"{pot.get('error', float('nan')):.2g} after {pot.get('nit')} iterations "
               f"(pointcloud_sinkhorn: {mine['error']:.2g} in {mine['time']:.2f} s; the "
               f"ratio is above {pot['time'] / mine['time']:.0f}x)")
        )
    note = ("" if large or quick else
            "\n\nThe 10^6-point 3-D case runs with `MMOPT_BENCH_POINTCLOUD_LARGE=1` "
            "(not in this run).")
    growth = []
    for n in (3_000,) if quick else (10_000, 30_000, 100_000, 300_000) + (
            (1_000_000,) if large else ()):
        out = _case(n, 3, timeout=LARGE_TIMEOUT, spacings=SPACING_REG)
        growth.append(dict(_row(n, 3, "pointcloud_sinkhorn", out),
                           **{"reg / diameter^2": out.get("reg")}))
    geomloss = _geomloss_section(quick)
    # Last, in this process: the cases above run in processes of their own, whose peak
    # RSS (ru_maxrss counts the pages a child shares with its parent until it execs)
    # would include the dense matrices this table leaves behind.
    exact = exactness_rows(quick)
    worst = max(exact, key=lambda row: row["max potential gap / reg"])
    over = [row for row in exact if row["max potential gap / reg"] > 1e-6]
    exact_note = (
        f"- Largest gaps: potentials {worst['max potential gap / reg']:.2g} reg (n = m = "
        f"{worst['n = m']}, d = {worst['d']}, {worst['weights']} weights, reg "
        f"{worst['reg / diameter^2']:g} diameter^2, {worst['regime']}), plan "
        f"{max(row['max plan gap'] for row in exact):.2g}; every status "
        f"{'0' if all(row['status'] == 0 for row in exact) else 'NOT 0'}."
    )
    if over:
        exact_note += (
            f"\n- Above 1e-6 reg: {len(over)} row(s), their 99th percentile at most "
            f"{max(row['99% potential gap / reg'] for row in over):.2g} reg: a point whose "
            "plan row is nearly one entry is tied to the others by a tiny share of its "
            "mass (3-D 2000 uniform at 1e-4: the worst point's second entry holds 5.6e-7 "
            "of its row), so a 1e-11 marginal error leaves its offset loose by that much; "
            "the plans agree to the digits above."
        )
    return (
        "## Point-cloud OT without a cost matrix, sharp plans (pointcloud_sinkhorn)\n\n"
        f"reg = {RELATIVE_REG:g} x squared diameter, tol = 1e-6 relative L1 marginal error, "
        "uniform weights; each case in its own process (peak RSS its own, interpreter "
        "included); `CPU (s)` the process's user + system time (all threads, data "
        "generation included); regime \"sharp\" forced (at 10^5 in 2-D this reg is about "
        "9 squared spacings, which \"auto\" also sends to the sharp regime since it "
        "takes it up to 20). `levels` are the "
        "hierarchy's "
        "cloud sizes (coarse to fine), `kept pairs per level` the most pairs a level's "
        "truncation kept, `marginal error` the returned plan's L1 error, `dropped-mass "
        "bound` the certified mass of the pairs left out. A case whose predicted peak memory "
        f"exceeds {MEMORY_BUDGET_MB:.0f} MB (`MMOPT_BENCH_POINTCLOUD_MEMORY_MB`) is skipped.\n\n"
        + markdown_table(rows) + "\n\n" + "\n".join(ratios) + note
        + "\n\n### Exactness against the dense solver (both regimes)\n\n"
        f"Both regimes (`regime` forced) at tol = {EXACT_TOL:g} and their default "
        "thresholds, against the dense solver on the same clouds (`sinkhorn` at reg >= "
        "1e-2 x squared diameter, `sinkhorn_newton_sparse` below, tol 1e-13): x uniform in "
        "the unit square/cube, y uniform in [0.05, 0.95]^d, weights uniform or uniform in "
        "[0.1, 1.1], normalized. `max potential gap / reg`: the largest |f_i - f_i^dense| "
        "and |g_j - g_j^dense| after the common shift (f + c, g - c) is removed, in units "
        "of reg; `99%` its 99th percentile over the points; `max plan gap` the largest "
        "entry difference (the smooth regime's plan, an operator, made dense from its "
        "potentials). The smooth regime runs where reg is at least "
        f"{EXACT_SMOOTH_SPACINGS:g} squared point spacings (below, plain Sinkhorn at a sharp "
        "reg takes minutes: 2-D 2000 points at 1e-4 diameter^2 465 s, 3-D at 1e-3 200 s, "
        "both within 2e-8 reg of the dense potentials).\n\n"
        + markdown_table(exact) + "\n\n" + exact_note
        + "\n\n### Growth at a fixed number of kept pairs per point (3-D)\n\n"
        f"reg = {SPACING_REG:g} x the clouds' squared point spacing "
        "(`PointCloudOTProblem.squared_spacing`), the same clouds, tol and regime as above: "
        "a row keeps about the same number of pairs at every n, where at a fixed reg "
        "relative to the diameter (above) the kept pairs grow like n^2.\n\n"
        + markdown_table(growth)
        + geomloss
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
