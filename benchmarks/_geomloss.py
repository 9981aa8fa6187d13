"""geomloss's CPU backends as a peer of the point-cloud solvers (bench_pointcloud,
bench_smooth_ot): the conversion between its blur and our reg, the marginal error of the plan
of its potentials, and an epsilon-scaling sweep that stops at the first ``scaling`` reaching our
marginal error, or at the time budget.

geomloss's ``SamplesLoss("sinkhorn", p=p, blur=blur)`` solves entropic OT with the cost
``|x - y|^p / p`` and ``eps = blur^p``; its plan is ``a_i b_j exp((F_i + G_j - |x_i - y_j|^p /
p) / eps)``. Multiplying exponent and potentials by ``p``: our cost ``|x - y|^p`` with ``reg = p
eps`` and potentials ``f = p F``, ``g = p G`` give the same plan (:func:`geomloss_blur`,
:func:`our_potentials`). geomloss runs a fixed epsilon-scaling schedule (from the clouds'
diameter^p down to blur^p by factors ``scaling^p``, one symmetric update per value, then one
last update) with no stopping test: its accuracy is set by ``scaling`` only.

Each geomloss run is a process of its own (``python _geomloss.py case.npz backend scaling
extra``, torch and OpenMP on ``THREADS`` threads), so that its peak memory is its own and a run
past its budget can be killed. geomloss, torch and (for the "online" and "multiscale" backends)
pykeops are optional (the ``bench`` extra); without them the section or the rows say so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# Threads of torch and of KeOps's OpenMP loops: the same as ours (the two cores).
THREADS = 2
# Seconds one geomloss run of the sweeps may take (predicted from the previous run, killed
# past twice this). The ten-minute runs are bench_pointcloud_peers's (solve_until).
BUDGET = float(os.environ.get("MMOPT_BENCH_GEOMLOSS_BUDGET", 15))
SIZES = (1000,)
BACKENDS = ("tensorized", "online", "multiscale")
# SamplesLoss has no stopping test, so no scaling reaches a 1e-6 marginal error: geomloss's
# own updates are then also run on at the final epsilon (``_extend_schedule``), ``extra`` more
# of them after a scaling-0.9 schedule, for the backends below (the dense ones compute the same
# updates; online is the faster of them here).
EXTENDED = tuple((0.9, extra) for extra in (100, 300, 1000, 3000, 10_000, 30_000, 100_000))
EXTENDED_BACKENDS = ("online",)
# The epsilon-scaling ratios tried, coarse to fine (geomloss's default is 0.5).
SCALINGS = (0.5, 0.7, 0.9, 0.95, 0.99, 0.995, 0.999)
# Dense float64 n x m matrices the tensorized backend holds at once (its C_xy, C_yx and the
# log-sum-exp temporaries), for the memory guard.
TENSORIZED_MATRICES = 4
MEMORY_BUDGET_MB = float(os.environ.get("MMOPT_BENCH_GEOMLOSS_MEMORY_MB", 4000))


def geomloss_blur(reg: float, p: float = 2.0) -> float:
    """geomloss's ``blur`` whose plan is ours at ``reg`` for the cost ``|x - y|^p``:
    geomloss's cost is ``|x - y|^p / p`` and its ``eps = blur^p``, so ``eps = reg / p``."""
    return (reg / p) ** (1.0 / p)


def our_potentials(F, G, p: float = 2.0):
    """geomloss's potentials ``(F, G)`` (any shape holding n and m values) in our convention
    ``P_ij = a_i b_j exp((f_i + g_j - |x_i - y_j|^p) / reg)``: ``(p F, p G)`` as float64
    vectors."""
    return (p * np.asarray(F, dtype=np.float64).ravel(),
            p * np.asarray(G, dtype=np.float64).ravel())


def geomloss_iterations(diameter: float, blur: float, scaling: float, p: float = 2.0) -> int:
    """Symmetric updates (each one log-sum-exp over all pairs each way) of geomloss's
    epsilon-scaling loop, its first and last updates included (``epsilon_schedule``)."""
    steps = np.arange(p * np.log(diameter), p * np.log(blur), p * np.log(scaling)).size
    return steps + 4


def marginal_error(x, y, a, b, f, g, reg: float, tile_entries: int = 2**21) -> float:
    """L1 marginal error ``|P 1 - a|_1 + |P^T 1 - b|_1`` of the plan
    ``P_ij = a_i b_j exp((f_i + g_j - |x_i - y_j|^2) / reg)``, computed over tiles of rows
    (memory O(tile_entries + n + m), never the dense plan)."""
    n, m = len(x), len(y)
    rows, cols = np.empty(n), np.zeros(m)
    y2 = np.einsum("ij,ij->i", y, y)
    log_b = g / reg + np.log(b)
    step = max(1, tile_entries // m)
    for start in range(0, n, step):
        xs = x[start:start + step]
        cost = np.einsum("ij,ij->i", xs, xs)[:, None] + y2[None, :] - 2.0 * (xs @ y.T)
        # The expansion can go below 0 by rounding: distances are nonnegative.
        np.maximum(cost, 0.0, out=cost)
        block = np.exp((f[start:start + step, None] - cost) / reg + log_b[None, :])
        block *= a[start:start + step, None]
        rows[start:start + step] = block.sum(axis=1)
        cols += block.sum(axis=0)
    return float(np.abs(rows - a).sum() + np.abs(cols - b).sum())


def _diameter(x, y) -> float:
    """The diameter geomloss's schedule starts from (``max_diameter``: the bounding box's)."""
    both = np.vstack([x, y])
    return float(np.linalg.norm(both.max(axis=0) - both.min(axis=0)))


def _compiled_loss(path: str, backend: str, scaling: float):
    """The clouds saved at ``path`` (``x, y, a, b, reg``), geomloss's float64 ``SamplesLoss``
    on them and its input tensors, its kernels compiled by a call on 16 points (KeOps
    compiles at its first call, cached on disk after: not timed)."""
    import torch
    from geomloss import SamplesLoss

    torch.set_num_threads(THREADS)
    data = np.load(path)
    x, y, a, b, reg = (data[k] for k in ("x", "y", "a", "b", "reg"))
    reg = float(reg)
    # float64 as ours: float32's log-sum-exp cannot resolve a 1e-6 marginal error.
    tensors = [torch.from_numpy(np.ascontiguousarray(v)) for v in (a, x, b, y)]
    loss = SamplesLoss("sinkhorn", p=2, blur=geomloss_blur(reg), scaling=scaling,
                       debias=False, potentials=True, backend=backend)
    loss(*(t[:16] for t in tensors))
    return x, y, a, b, reg, loss, tensors


def _solve(path: str, backend: str, scaling: float, extra: int = 0) -> dict:
    """One geomloss solve of the clouds saved at ``path`` (run in its own process), with
    ``extra`` more updates at the final epsilon than its schedule has."""
    import resource
    import time

    if extra:
        _extend_schedule(extra)
    x, y, a, b, reg, loss, tensors = _compiled_loss(path, backend, scaling)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    F, G = loss(*tensors)
    elapsed = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    f, g = our_potentials(F, G)
    return {
        "time": elapsed, "cpu": usage.ru_utime + usage.ru_stime - cpu_start,
        "peak_mb": usage.ru_maxrss / 1024,
        "iterations": geomloss_iterations(_diameter(x, y), geomloss_blur(reg), scaling)
        + extra,
        "error": marginal_error(x, y, a, b, f, g, reg),
    }


def _extend_schedule(extra: int) -> None:
    """Make geomloss's sample solvers append ``extra`` copies of the final epsilon to their
    schedule: its own updates, iterated at the target as a solver with a stopping test would
    (SamplesLoss has no option for it; its multiscale backend jumps to the fine level before
    them, at the epsilon where it would have)."""
    from geomloss._legacy import sinkhorn_samples

    schedule = sinkhorn_samples.scaling_parameters

    def extended(*args, **kwargs):
        diameter, eps, eps_list, rho = schedule(*args, **kwargs)
        return diameter, eps, list(eps_list) + [eps] * extra, rho

    sinkhorn_samples.scaling_parameters = extended


class _Stop(Exception):
    """Raised inside geomloss's loop by :func:`solve_until`'s check: the run ends here."""

    def __init__(self, **out):
        super().__init__(out.get("status"))
        self.out = out


# solve_until: the first check right after the schedule, the next ones this many times
# more updates (at least CHECK_MIN_GAP more), so the time to reach a target is overstated
# by at most 10%; a run whose error has not fallen below STALL_FACTOR times its best at
# half its updates has stalled (a floor: its KeOps backends stop near 2-4e-6 on the smooth
# clouds, 50000 updates at 400 points in 3-D; Sinkhorn's slow phase at a sharp reg still
# gains tens of percent per doubling).
CHECK_GROWTH = 1.1
CHECK_MIN_GAP = 10
STALL_FACTOR = 0.999
# Updates appended to the schedule (a list: more than any run does within its budget).
UNTIL_EXTRA = 10**6


def solve_until(path: str, backend: str, target: float, budget: float,
                scaling: float = 0.9) -> dict:
    """geomloss's own updates (after its ``scaling`` schedule, on at the final epsilon) until
    its plan's marginal error reaches ``target``, as if it had a stopping test that costs
    nothing: the error is checked every ``CHECK_GROWTH`` times more updates, the checks'
    time is not counted. Ends at the first check reaching ``target``, past ``budget``
    seconds (checks not counted), or when stalled (``STALL_FACTOR``). Runs in its own
    process (``python _geomloss.py until ...``)."""
    import resource
    import time

    import torch
    from geomloss._legacy import sinkhorn_samples

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    x, y, a, b, reg, loss, tensors = _compiled_loss(path, backend, scaling)
    schedule, loop = sinkhorn_samples.scaling_parameters, sinkhorn_samples.sinkhorn_loop
    watch = {"scheduled": 0, "checks": 0.0, "errors": {}}

    def extended(*args, **kwargs):
        diameter, eps, eps_list, rho = schedule(*args, **kwargs)
        watch["scheduled"] = len(eps_list)
        return diameter, eps, list(eps_list) + [eps] * UNTIL_EXTRA, rho

    def watched_loop(softmin, a_logs, b_logs, *args, **kwargs):
        fine_a = (a_logs[-1] if isinstance(a_logs, list) else a_logs).reshape(-1)
        fine_b = (b_logs[-1] if isinstance(b_logs, list) else b_logs).reshape(-1)
        calls, held, due = 0, None, watch["scheduled"]

        def numpy(t):
            return t.detach().cpu().numpy().reshape(-1).astype(np.float64)

        def watched(eps, cost, h):
            # sinkhorn_loop calls softmin twice to start, then twice per update: first
            # with h = log b + g / eps (the x side), then h = log a + f / eps, both of the
            # same iterate (f, g).
            nonlocal calls, held, due
            calls += 1
            update = (calls - 3) // 2
            if calls >= 3 and update >= watch["scheduled"]:
                elapsed = time.perf_counter() - watch["start"] - watch["checks"]
                # The clouds on this side (x, then y): the fine level has all the points
                # (the tensorized backend passes the dense cost, on the points as given).
                dense = torch.is_tensor(cost)
                fine = dense or cost[0].shape[-2] == (len(x) if calls % 2 == 1 else len(y))
                if not fine:
                    raise _Stop(status="stopped: its updates at the final epsilon run on "
                                "the coarse level (the jump to the fine points comes after "
                                "the last one)", iterations=update, time=elapsed)
                if elapsed > budget:
                    raise _Stop(status=f"stopped at the {budget:.0f} s budget",
                                iterations=update, time=elapsed)
                if calls % 2 == 1:
                    held = eps * (numpy(h) - numpy(fine_b))
                elif update >= due:
                    paused = time.perf_counter()
                    f = eps * (numpy(h) - numpy(fine_a))
                    # The y-side call: cost holds (y, x, ...), multiscale's points sorted
                    # by cluster as its weights and potentials are.
                    points = (x, y) if dense else (numpy(cost[1]).reshape(len(x), -1),
                                                   numpy(cost[0]).reshape(len(y), -1))
                    error = marginal_error(*points, np.exp(numpy(fine_a)),
                                          np.exp(numpy(fine_b)), *our_potentials(f, held),
                                          reg)
                    watch["checks"] += time.perf_counter() - paused
                    watch["errors"][update] = error
                    earlier = [e for k, e in watch["errors"].items() if 2 * k <= update]
                    if error <= target:
                        raise _Stop(status="reached", iterations=update, time=elapsed,
                                    error=error)
                    if earlier and error > STALL_FACTOR * min(earlier):
                        raise _Stop(status="stalled", iterations=update, time=elapsed,
                                    error=error)
                    due = max(update + CHECK_MIN_GAP, int(np.ceil(CHECK_GROWTH * update)))
            return softmin(eps, cost, h)

        return loop(watched, a_logs, b_logs, *args, **kwargs)

    sinkhorn_samples.scaling_parameters = extended
    sinkhorn_samples.sinkhorn_loop = watched_loop
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    watch["start"] = time.perf_counter()
    try:
        loss(*tensors)
        raise _Stop(status=f"ran its {UNTIL_EXTRA} extra updates", time=float("nan"))
    except _Stop as stop:
        out = stop.out
    usage = resource.getrusage(resource.RUSAGE_SELF)
    errors = watch["errors"]
    best = min(errors.values()) if errors else float("nan")
    return dict(out, error=out.get("error", best), cpu=usage.ru_utime + usage.ru_stime
                - cpu_start, check_time=watch["checks"], peak_mb=usage.ru_maxrss / 1024,
                scheduled=watch["scheduled"])


def run_until(x, y, a, b, reg: float, backend: str, target: float, budget: float) -> dict:
    """:func:`solve_until` in a process of its own (killed past twice the budget, its checks
    and a minute included), or a dict whose ``status`` says why it did not run."""
    reason = available(backend)
    if reason is not None:
        return {"status": reason}
    megabytes = predicted_mb(backend, len(x), len(y))
    if megabytes > MEMORY_BUDGET_MB:
        return {"status": f"skipped: {megabytes:.0f} MB of dense matrices predicted > "
                f"{MEMORY_BUDGET_MB:.0f} MB"}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "clouds.npz")
        np.savez(path, x=x, y=y, a=a, b=b, reg=reg)
        return _child(["until", path, backend, repr(target), repr(budget)],
                      timeout=2 * budget + 60)


def _child(arguments: list[str], timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    try:
        done = subprocess.run([sys.executable, str(HERE / "_geomloss.py"), *arguments],
                              capture_output=True, text=True, timeout=timeout, check=True,
                              env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"killed after {timeout:.0f} s"}
    except subprocess.CalledProcessError as error:
        return {"status": "failed: " + error.stderr.strip()[-200:].replace("\n", " ")}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return dict(out, status=out.get("status", "ran"))


def _run(path: str, backend: str, scaling: float, extra: int, timeout: float) -> dict:
    return _child([path, backend, repr(scaling), str(extra)], timeout)


def available(backend: str) -> str | None:
    """None where geomloss's ``backend`` is installed here, else why not (the modules are
    looked up, not imported: torch is imported only in the runs' processes)."""
    for module in ("torch", "geomloss") + (("pykeops",) if backend != "tensorized" else ()):
        if importlib.util.find_spec(module) is None:
            return f"{module} not installed"
    return None


def predicted_mb(backend: str, n: int, m: int) -> float:
    """Peak memory of a geomloss run beyond the interpreter's (the dense matrices of the
    tensorized backend; the others keep O(n + m))."""
    return TENSORIZED_MATRICES * 8.0 * n * m / 2**20 if backend == "tensorized" else 0.0


def sweep(x, y, a, b, reg: float, target: float, backend: str, seconds_per_pair_update=None,
          budget: float = BUDGET, settings=None) -> tuple[list[dict], float | None]:
    """geomloss at each ``(scaling, extra)`` of ``settings`` (default: :data:`SCALINGS`, no
    extra update), in order, until its marginal error reaches ``target`` or the next run's
    predicted time (from the last run's time per pair and update, or
    ``seconds_per_pair_update`` at the first) exceeds ``budget``.

    Returns the runs (dicts with ``scaling``, ``extra``, ``status``, and ``time``, ``cpu``,
    ``error``, ``iterations``, ``peak_mb`` where it ran; a skipped run's ``status`` says why)
    and the seconds per pair and update measured last (None if nothing ran)."""
    settings = [(scaling, 0) for scaling in SCALINGS] if settings is None else settings
    first = {"scaling": settings[0][0], "extra": settings[0][1]}
    reason = available(backend)
    if reason is not None:
        return [dict(first, status=reason)], seconds_per_pair_update
    megabytes = predicted_mb(backend, len(x), len(y))
    if megabytes > MEMORY_BUDGET_MB:
        return [dict(first, status=f"skipped: {megabytes:.0f} MB of dense matrices "
                     f"predicted > {MEMORY_BUDGET_MB:.0f} MB")], seconds_per_pair_update
    pairs = float(len(x)) * len(y)
    diameter, blur = _diameter(x, y), geomloss_blur(reg)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "clouds.npz")
        np.savez(path, x=x, y=y, a=a, b=b, reg=reg)
        for scaling, extra in settings:
            iterations = geomloss_iterations(diameter, blur, scaling) + extra
            if seconds_per_pair_update is not None:
                predicted = seconds_per_pair_update * pairs * iterations
                if predicted > budget:
                    runs.append({"scaling": scaling, "extra": extra, "status": f"skipped: "
                                 f"{predicted:.0f} s predicted > the {budget:.0f} s budget"})
                    break
            out = _run(path, backend, scaling, extra, timeout=2 * budget + 60)
            runs.append(dict(out, scaling=scaling, extra=extra))
            if out["status"] != "ran":
                break
            seconds_per_pair_update = out["time"] / (pairs * out["iterations"])
            if out["error"] <= target:
                break
    return runs, seconds_per_pair_update


def summary(runs: list[dict], mine_time: float, mine_error: float) -> str:
    """One line comparing the sweep's last run that ran with ours (time ratio)."""
    ran = [r for r in runs if r["status"] == "ran"]
    if not ran:
        return f"did not run ({runs[-1]['status']})"
    last = ran[-1]
    ratio = last["time"] / mine_time
    setting = f"scaling {last['scaling']}" + (
        f" + {last['extra']} updates at the final eps" if last["extra"] else "")
    if last["error"] <= mine_error:
        return (f"reached our marginal error ({mine_error:.1e}) at {setting} in "
                f"{last['time']:.1f} s, {ratio:.2g}x our time")
    return (f"best marginal error {last['error']:.1e} (ours {mine_error:.1e}) at {setting} "
            f"in {last['time']:.1f} s ({ratio:.2g}x our time; {runs[-1]['status']})")


def section(table: str, lines: str, ours: str, budget: float = BUDGET, *,
            regime: str) -> str:
    """The Markdown subsection of ``compare``'s output, ``ours`` naming our error and
    ``regime`` ("sharp" or "smooth") the section's plans (one heading per section)."""
    return (
        f"### geomloss (CPU) at the same reg, {regime} plans\n\n"
        "`SamplesLoss(\"sinkhorn\", p=2, blur=sqrt(reg / 2), debias=False, potentials=True)` "
        "in float64: its cost |x - y|^2 / 2 at eps = blur^2 = reg / 2 is our plan, its "
        "potentials times 2 ours. It has no stopping test: one symmetric update per epsilon "
        "from the diameter^2 down to blur^2 by factors scaling^2 (`updates`), so `scaling` is "
        "raised (" + ", ".join(map(str, SCALINGS)) + ") until its plan's L1 marginal error "
        f"(computed tile by tile) reaches ours ({ours}), or a run is predicted over "
        f"{budget:.0f} s (`MMOPT_BENCH_GEOMLOSS_BUDGET`; runs past twice that are killed). "
        "Where no scaling reaches it, geomloss's own updates also run on at the final "
        "epsilon (`extra updates`, after a scaling-0.9 schedule; not a SamplesLoss option: "
        "its schedule patched) with its " + " and ".join(EXTENDED_BACKENDS) + " backend"
        + "s" * (len(EXTENDED_BACKENDS) > 1) + ". Torch and KeOps on "
        f"{THREADS} threads, KeOps's compilation not timed; `time / ours` wall-clock, in the "
        "same run. "
        + "The ten-minute runs (a stopping test given to geomloss): section "
        "`pointcloud_peers`. "
        + "\n\n" + table + "\n\n" + lines + "\n"
    )


def compare(clouds, ours, sizes=SIZES, dims=(2, 3), budget: float = BUDGET):
    """The Markdown table and summary lines of geomloss's backends against ours.

    ``clouds(n, d)`` gives ``(x, y, a, b, reg)``; ``ours(n, d)`` our run's ``time`` and
    ``error`` (its L1 marginal error) on them. Each backend runs as SamplesLoss does (the
    :data:`SCALINGS` sweep), then, for those of :data:`EXTENDED_BACKENDS` that did not reach
    our error, with :data:`EXTENDED` more updates at the final epsilon. Sizes grow per variant
    and dimension until a first run is predicted over ``budget`` (from the last size's time
    per pair and update)."""
    reason = available("tensorized")
    if reason is not None:  # nothing of geomloss can run: do not run ours either
        return "", f"- geomloss not run: {reason}"
    from _common import markdown_table  # beside this script, on the path of its runs

    variants = [(backend, None) for backend in BACKENDS]
    variants += [(backend, EXTENDED) for backend in EXTENDED_BACKENDS]
    rows, lines = [], []
    for d in dims:
        rate = {backend: None for backend in BACKENDS}
        hopeless = set()
        for n in sizes:
            if len(hopeless) == len(variants):
                break
            x, y, a, b, reg = clouds(n, d)
            mine = ours(n, d)
            ran = np.isfinite(mine.get("error", np.nan))
            rows.append({"n = m": n, "d": d, "solver": "ours", "scaling": "—",
                         "extra updates": "—", "updates": "—", "time (s)": mine.get("time"),
                         "CPU (s)": mine.get("cpu"), "peak RSS (MB)": mine.get("peak_mb"),
                         "marginal error": mine.get("error"), "time / ours": 1.0,
                         "status": "ran" if ran else mine.get("status")})
            if not ran:  # no time and error to compare with (e.g. over its memory budget)
                continue
            reached = set()
            for backend, settings in variants:
                if (backend, settings) in hopeless or (settings and backend in reached):
                    continue
                runs, rate[backend] = sweep(x, y, a, b, reg, mine["error"], backend,
                                            rate[backend], budget, settings)
                for run in runs:
                    rows.append({
                        "n = m": n, "d": d, "solver": f"geomloss {backend}",
                        "scaling": run["scaling"], "extra updates": run["extra"],
                        "updates": run.get("iterations"), "time (s)": run.get("time"),
                        "CPU (s)": run.get("cpu"), "peak RSS (MB)": run.get("peak_mb"),
                        "marginal error": run.get("error"),
                        "time / ours": run["time"] / mine["time"] if "time" in run else None,
                        "status": run["status"]})
                if runs[0]["status"] != "ran":
                    hopeless.add((backend, settings))
                if runs[-1].get("error", np.inf) <= mine["error"]:
                    reached.add(backend)
                lines.append(f"- n = m = {n}, d = {d}, geomloss {backend}"
                             + (" with extra updates" if settings else "") + ": "
                             + summary(runs, mine["time"], mine["error"]))
    return markdown_table(rows), "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "until":
        print(json.dumps(solve_until(sys.argv[2], sys.argv[3], float(sys.argv[4]),
                                     float(sys.argv[5]))))
    else:
        print(json.dumps(_solve(sys.argv[1], sys.argv[2], float(sys.argv[3]),
                                int(sys.argv[4]))))
