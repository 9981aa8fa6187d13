"""OT family: Sinkhorn and Sinkhorn-Newton-Sparse against POT (when installed)."""

from __future__ import annotations

import ctypes
import os
import time
import warnings
from functools import partial

import numpy as np
from _common import best_of as _timed
from _common import cpuinfo, markdown_table
from _common import gaussian_clouds as _clouds

from mmopt.datasets import make_image_histograms
from mmopt.ot import exact_ot, sinkhorn, sinkhorn_newton_sparse

try:
    import ot as pot
except ImportError:  # POT is an optional benchmark extra
    pot = None
try:
    import regot
except ImportError:  # so is regot (sparse-Newton Sinkhorn solvers in C++)
    regot = None




def _reuse_heap_memory():
    """Have glibc serve large allocations from the heap and keep freed memory (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to set
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


def _digits_case():
    """OT between the samples of two digit classes (64 pixels each), cost normalized."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    source, target = X[y == 3], X[y == 8]
    C = ((source[:, None] - target[None]) ** 2).sum(-1)
    return (np.full(len(source), 1.0 / len(source)), np.full(len(target), 1.0 / len(target)),
            C / C.max())


def _marginal_error(P, a, b):
    return float(np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum())


def _other_cases(quick):
    from mmopt.datasets import make_ot_problem

    cases = [
        ("shifted clouds", make_ot_problem(300 if quick else 1000, shift=2.0, random_state=1)),
        ("digits 3 vs 8", _digits_case()),
    ]
    rows = []
    for name, (a, b, C) in cases:
        for reg in (1e-3, 1e-4):
            sns, t_sns = _timed(
                lambda a=a, b=b, C=C, reg=reg: sinkhorn_newton_sparse(
                    a, b, C, reg, tol=1e-9, max_iter=20_000
                ),
                repeat=3,
            )
            ours, t_ours = _timed(
                lambda a=a, b=b, C=C, reg=reg: sinkhorn(a, b, C, reg, tol=1e-9, max_iter=5_000,
                                                        method="log")
            )
            row = {
                "problem": name,
                "n x m": f"{C.shape[0]} x {C.shape[1]}",
                "reg": reg,
                "SNS sinkhorn+newton iters (status)": (
                    f"{sns.n_sinkhorn}+{sns.n_newton} ({sns.status})"
                ),
                "SNS marginal error": sns.marginal_error,
                "SNS time / our sinkhorn": t_sns / t_ours,
                "our sinkhorn iters, marginal error": f"{ours.nit}, {ours.marginal_error:.2g}",
                "SNS time / regot SSNS": None,
                "regot SSNS iters, marginal error": None,
            }
            if regot is not None:
                out, t_regot = _timed(
                    lambda a=a, b=b, C=C, reg=reg: regot.sinkhorn_ssns(
                        np.asfortranarray(C), a, b, reg, tol=1e-9, max_iter=1000
                    ),
                    repeat=3,
                )
                row["SNS time / regot SSNS"] = t_sns / t_regot
                row["regot SSNS iters, marginal error"] = (
                    f"{out.niter}, {_marginal_error(np.asarray(out.plan), a, b):.2g}"
                )
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Suite against POT's default ot.sinkhorn (issue 15)


def _cpu_path() -> str:
    """The SIMD path of our kernels and the CPU vendor, e.g. 'avx512 on AuthenticAMD'."""
    from mmopt_ext._sinkhorn import exp_path

    return f"{exp_path()} on {cpuinfo('vendor_id') or 'unknown vendor'}"


def _mixture(n, rng, dim=2):
    """A Gaussian mixture with random weights and spreads."""
    k = int(rng.integers(3, 7))
    centers = 4.0 * rng.random((k, dim))
    labels = rng.choice(k, n, p=rng.dirichlet(np.ones(k)))
    return centers[labels] + rng.uniform(0.2, 0.6, k)[labels, None] * rng.standard_normal((n, dim))


def _suite_problems(quick, seed=0):
    """(name, a, b, C) of the suite: the cost squared Euclidean, divided by its max."""
    rng = np.random.default_rng(seed)
    n, m = (300, 260) if quick else (1000, 900)
    side = 16 if quick else 32  # image histograms: side x side pixel grid

    def normalized(x, y):
        C = ((x[:, None] - y[None]) ** 2).sum(-1)
        return C / C.max()

    problems = []
    x, y = _mixture(n, rng), _mixture(m, rng)
    problems.append(("2-D mixtures, random weights", rng.dirichlet(np.ones(n)),
                     rng.dirichlet(np.ones(m)), normalized(x, y)))
    # 3-D clouds of different shapes: an anisotropic Gaussian against a shell.
    x = rng.standard_normal((n, 3)) * np.array([1.5, 0.7, 0.3])
    y = rng.standard_normal((m, 3))
    y = y / np.linalg.norm(y, axis=1, keepdims=True) * rng.uniform(0.8, 1.2, (m, 1))
    problems.append(("3-D ellipsoid vs shell, uniform", np.full(n, 1.0 / n), np.full(m, 1.0 / m),
                     normalized(x, y)))
    # Image histograms: two smooth random images on the same pixel grid.
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) / side
    images = []
    for _ in range(2):
        bumps = rng.random((4, 2))
        image = sum(np.exp(-((grid - c) ** 2).sum(1) / 0.02) for c in bumps) + 1e-3
        images.append(image / image.sum())
    problems.append((f"{side}x{side} image histograms", images[0], images[1],
                     normalized(grid, grid)))
    return problems


def _interleaved(funcs, repeat):
    """Median wall time of each function, the calls interleaved (f0, f1, ..., f0, f1, ...)
    so that a change of load on this machine hits all of them alike; the last outputs."""
    times = [[] for _ in funcs]
    outputs = [None] * len(funcs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeat):
            for k, func in enumerate(funcs):
                start = time.perf_counter()
                outputs[k] = func()
                times[k].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times], outputs


def _per_call_times(solvers, inputs, *, min_time=0.2, rounds=5):
    """Median wall time per call of each solver, robust for solves of a few milliseconds.

    ``solvers`` are functions of ``inputs`` (the arrays ``a, b, C``). Each call gets its own
    fresh copies of them, made outside the timed region, so that no solver profits from an
    earlier call on the same arrays. Two untimed warm-up calls each set how many calls a
    round makes (a round of each solver covers at least ``min_time`` seconds); the rounds
    interleave the solvers, in forward and reverse order alternately, so that a change of
    load, or of what the previous solver left in cache, hits all of them alike; the
    result is the median over ``rounds`` rounds of each round's mean time per call.
    Returns ``(times, outputs)`` (the last output of each).
    """
    def call(func):
        fresh = [np.array(x, copy=True) for x in inputs]
        start = time.perf_counter()
        out = func(*fresh)
        return time.perf_counter() - start, out

    outputs = [None] * len(solvers)
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for func in solvers:
            first = min(call(func)[0] for _ in range(2))
            calls.append(max(1, int(np.ceil(min_time / max(first, 1e-6)))))
        per_call = [[] for _ in solvers]
        for r in range(rounds):
            order = range(len(solvers)) if r % 2 == 0 else reversed(range(len(solvers)))
            for k in order:
                total = 0.0
                for _ in range(calls[k]):
                    elapsed, outputs[k] = call(solvers[k])
                    total += elapsed
                per_call[k].append(total / calls[k])
    return [float(np.median(t)) for t in per_call], outputs


def pot_suite(quick: bool = False, regs=(1e-1, 1e-2, 3e-3, 1e-3, 1e-4), seed=0) -> list[dict]:
    """Time ratios against POT's default ``ot.sinkhorn``, one thread each, same L1 error.

    POT stops on its own test (L2 column error <= 1e-9, checked every 10 iterations); its
    plan's L1 marginal error ``e`` is measured, and ours run to ``tol = max(1e-9, e)``: the
    same error, or 1e-9 where POT went below it. At 1e-4 POT does not converge (its cap is
    shown); ours run to 1e-9. Times: :func:`_per_call_times` (each solve repeated to cover
    0.2 s per round, interleaved, median of 5 rounds).
    """
    # Solves of 10-30 ms timed once each (median of 3) gave ratios that moved by a third
    # between runs (3-D 1e-2: 0.40 on one path, 0.53 on the other for the same code).
    from threadpoolctl import threadpool_limits

    rows = []
    with threadpool_limits(1):
        for name, a, b, C in _suite_problems(quick, seed):
            for reg in regs:
                cap = 20_000 if reg >= 1e-3 else 10_000
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    P, log = pot.sinkhorn(a, b, C, reg, stopThr=1e-9, numItermax=cap, log=True)
                pot_error = _marginal_error(P, a, b)
                pot_ok = bool(np.isfinite(P).all() and pot_error < 1e-6 and log["niter"] < cap - 1)
                tol = max(1e-9, pot_error) if pot_ok else 1e-9
                funcs = [
                    partial(sinkhorn, reg=reg, tol=tol, max_iter=200_000, n_threads=1),
                    partial(sinkhorn_newton_sparse, reg=reg, tol=tol, max_iter=200_000,
                            n_threads=1),
                ]
                if pot_ok:
                    funcs.append(partial(pot.sinkhorn, reg=reg, stopThr=1e-9, numItermax=cap))
                times, (ours, sns, *_) = _per_call_times(funcs, (a, b, C))
                rows.append({
                    "problem": name,
                    "reg": reg,
                    "POT iters, L1 error": (f"{log['niter']}, {pot_error:.1e}" if pot_ok
                                            else f"not converged ({cap} iters)"),
                    "sinkhorn iters (method), L1 error": (
                        f"{ours.nit} ({ours.method}), {ours.marginal_error:.1e}"),
                    "sinkhorn / POT": times[0] / times[2] if pot_ok else None,
                    "SNS iters, L1 error": (
                        f"{sns.n_sinkhorn}+{sns.n_newton}, {sns.marginal_error:.1e}"),
                    "SNS / POT": times[1] / times[2] if pot_ok else None,
                    "sinkhorn time (s)": times[0],
                })
    return rows


def floor_figure(quick: bool = False) -> list[dict]:
    """Our scaling-domain iteration time over NumPy's ``K @ v`` plus ``K.T @ u``.

    The iteration time is the difference of two solves (tol 0, 20 and 220 iterations) over
    200, so that setup and result assembly do not count; medians of 5 rounds, one thread.
    Those solves sweep the float64 kernel only (the float32 phase switched off): the floor
    is NumPy's float64 products. The float32 sweep (the first iterations of kernels of
    2^18+ entries) is given as its time over the float64 sweep's, kernel against kernel.
    """
    import importlib

    from threadpoolctl import threadpool_limits

    from mmopt_ext._sinkhorn import scaling_iteration

    module = importlib.import_module("mmopt.ot.sinkhorn")
    rows = []
    with threadpool_limits(1):
        for name, a, b, C in _suite_problems(quick)[:2]:
            reg = 1e-2
            K = np.exp(-C / reg)
            u, v = np.ones(C.shape[0]), np.ones(C.shape[1])
            ratios, single = [], []
            saved = module._SINGLE_MIN_ENTRIES
            module._SINGLE_MIN_ENTRIES = np.inf
            try:
                for _ in range(5):
                    times, _ = _interleaved([
                        partial(sinkhorn, a, b, C, reg, tol=0.0, max_iter=20, n_threads=1),
                        partial(sinkhorn, a, b, C, reg, tol=0.0, max_iter=220, n_threads=1),
                    ], 1)
                    start = time.perf_counter()
                    for _ in range(50):
                        K @ v
                        K.T @ u
                    numpy_time = (time.perf_counter() - start) / 50
                    ratios.append((times[1] - times[0]) / 200 / numpy_time)
                    sweeps = []
                    for kernel in (K, K.astype(np.float32)):
                        acc = np.empty((1, C.shape[1]))
                        start = time.perf_counter()
                        for _ in range(50):
                            scaling_iteration(kernel, a, b, u.copy(), v.copy(), acc, 1e300, 1)
                        sweeps.append(time.perf_counter() - start)
                    single.append(sweeps[1] / sweeps[0])
            finally:
                module._SINGLE_MIN_ENTRIES = saved
            rows.append({"problem": name, "shape": f"{C.shape[0]}x{C.shape[1]}",
                         "iteration / (K @ v + K.T @ u)": float(np.median(ratios)),
                         "float32 sweep / float64 sweep": float(np.median(single))})
    return rows


def _batched_problem(n, k, seed=0, kind="mixtures"):
    """One cost shared by k problems, a source histogram and k target histograms.

    ``mixtures``: n x n cost between 2-D mixtures (squared Euclidean / max), a random
    source histogram, k smooth targets (random mixtures of bumps over the target points).
    ``images``: images on a square grid of about n pixels (squared distance between pixels
    / max), a blob as source and k images of two blobs each, pixels below 1e-3 of an
    image's largest left empty (zero mass).
    """
    rng = np.random.default_rng(seed)
    if kind == "images":
        return make_image_histograms(int(round(np.sqrt(n))), k, random_state=rng)
    x, y = _mixture(n, rng), _mixture(n, rng)
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    C /= C.max()
    a = rng.dirichlet(np.ones(n))
    columns = []
    for _ in range(k):
        centers = y[rng.choice(n, 3, replace=False)]
        density = sum(w * np.exp(-((y - c) ** 2).sum(1) / rng.uniform(0.2, 2.0))
                      for w, c in zip(rng.dirichlet(np.ones(3)), centers))
        density = density + 1e-3 * density.max()
        columns.append(density / density.sum())
    return a, np.stack(columns, axis=1), C


def _pot_batched_errors(a, b, C, reg, log):
    """Per-column L1 marginal errors of POT's batched plans ``diag(u_j) K diag(v_j)``."""
    K = np.exp(-C / reg)
    u, v = log["u"], log["v"]
    return (np.abs(u * (K @ v) - a[:, None]).sum(0) + np.abs(v * (K.T @ u) - b).sum(0))


def batched_suite(quick: bool = False, regs=(1e-2, 3e-3, 1e-3), k: int = 32,
                  thread_counts=(1, 2), kind: str = "mixtures", with_pot: bool = True,
                  repeat: int = 3) -> list[dict]:
    """k histograms on one cost: our batched solve against k separate solves and POT's
    batched ``ot.sinkhorn``, one thread each and on two threads (ours ``n_threads=2``,
    POT's BLAS at 2 threads), each to the same L1 marginal error (POT's worst column's, or
    1e-9 where it went below; 2e-8 without POT)."""
    from threadpoolctl import threadpool_limits

    n = 300 if quick else 1000
    a, b, C = _batched_problem(n, k, kind=kind)
    rows = []
    for threads in thread_counts:
        with threadpool_limits(threads):
            for reg in regs:
                cap = 20_000
                pot_ok, log, pot_error = False, None, None
                if with_pot:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        costs, log = pot.sinkhorn(a, b, C, reg, stopThr=1e-9,
                                                  numItermax=cap, log=True)
                    pot_error = float(_pot_batched_errors(a, b, C, reg, log).max())
                    pot_ok = bool(np.isfinite(costs).all() and pot_error < 1e-6
                                  and log["niter"] < cap - 1)
                tol = max(1e-9, pot_error) if pot_ok else (1e-9 if with_pot else 2e-8)
                funcs = [
                    partial(sinkhorn, a, b, C, reg, tol=tol, n_threads=threads),
                    lambda reg=reg, tol=tol, threads=threads: [
                        sinkhorn(a, b[:, j], C, reg, tol=tol, n_threads=threads)
                        for j in range(k)
                    ],
                ]
                if pot_ok:
                    funcs.append(partial(pot.sinkhorn, a, b, C, reg, stopThr=1e-9,
                                         numItermax=cap))
                times, (ours, separate, *_) = _interleaved(funcs, 1 if quick else repeat)
                gap = max(float(np.abs(ours.transport_cost[j] - separate[j].transport_cost))
                          for j in range(k))
                if not with_pot:
                    pot_cell = "-"
                elif pot_ok:
                    pot_cell = f"{log['niter']}, {pot_error:.1e}"
                else:
                    pot_cell = f"not converged ({cap} iters)"
                rows.append({
                    "problem": f"{kind}, {C.shape[0]}x{C.shape[1]}",
                    "k": k,
                    "threads": threads,
                    "reg": reg,
                    "POT iters, worst L1 error": pot_cell,
                    "batched iters (max over columns), worst L1 error": (
                        f"{ours.nit}, {float(ours.marginal_error.max()):.1e}"),
                    "iterations: batched sum / separate sum": (
                        float(ours.column_nit.sum()) / sum(r.nit for r in separate)),
                    "batched / k separate": times[0] / times[1],
                    "batched / POT batched": times[0] / times[2] if pot_ok else None,
                    "max |cost - separate cost|": gap,
                    "batched time (s)": times[0],
                })
    return rows


def batched_other(quick: bool = False) -> list[dict]:
    """The batched solve outside the main case (one thread, without POT): image
    histograms on a grid (k = 32), and the mixtures with k = 8 and k = 128."""
    rows = batched_suite(quick, thread_counts=(1,), kind="images", with_pot=False)
    for k in (8, 128):
        rows += batched_suite(quick, regs=(1e-2, 1e-3), k=k, thread_counts=(1,),
                              with_pot=False, repeat=1 if k == 128 else 3)
    return rows


_MARKER = "--- mmopt bench_ot avx2 report ---"
_AVX2_SCRIPT = """
import sys
sys.path.insert(0, {here!r})
import bench_ot
from _common import markdown_table
quick = {quick!r}
print({marker!r})
print(bench_ot._cpu_path())
print(markdown_table(bench_ot.pot_suite(quick, regs=(1e-2, 3e-3, 1e-3))))
print()
print(markdown_table(bench_ot.floor_figure(quick)))
"""


def exp_path_figure(quick: bool = False) -> list[dict]:
    """Time per entry of the log-domain half step (one ``exp`` per entry) on each ``exp``
    path this CPU runs, interleaved in one process, one thread; relative to AVX-512's."""
    from mmopt.ot._kernels import log_half_step
    from mmopt_ext._sinkhorn import exp_paths, select_exp_path

    n = 300 if quick else 1000
    rng = np.random.default_rng(0)
    C = rng.random((n, n))
    g, f, log_a = rng.random(n) * 0.1, np.zeros(n), np.full(n, -np.log(n))
    paths = exp_paths()

    def half_steps(path):
        select_exp_path(path)
        for _ in range(10):
            log_half_step(C, g, f, log_a, 1e-2, n_threads=1)

    try:
        times, _ = _interleaved([partial(half_steps, path) for path in paths], 5)
    finally:
        select_exp_path(None)
    per_entry = {path: t / (10 * n * n) for path, t in zip(paths, times)}
    fastest = per_entry[paths[-1]]
    return [{"exp path": path, "ns per entry": 1e9 * t, f"time / {paths[-1]}": t / fastest}
            for path, t in per_entry.items()]


def avx2_report(quick: bool = False) -> str:
    """The suite at reg 1e-2, 3e-3, 1e-3 and the floor on the AVX2 path, in a child process
    started with ``MMOPT_EXP_PATH=avx2`` (which selects that path on an AVX-512 CPU)."""
    import subprocess
    import sys

    from mmopt_ext._sinkhorn import exp_paths

    if "avx2" not in exp_paths():
        return "The AVX2 path is not available on this CPU."
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", _AVX2_SCRIPT.format(here=here, quick=quick, marker=_MARKER)],
        env=dict(os.environ, MMOPT_EXP_PATH="avx2"), capture_output=True, text=True,
        check=True,
    ).stdout
    # Imports may print first (POT imports pykeops when it is installed, which prints a
    # warning on stdout): the report starts after the marker line.
    path, tables = out.split(_MARKER + "\n", 1)[-1].split("\n", 1)
    return "\n".join([
        f"CPU path: {path} (`MMOPT_EXP_PATH=avx2`). The same suite and floor as above, "
        "reg 1e-2, 3e-3 and 1e-3. The scaling domain's fused sweep is the same AVX2 code "
        "on both paths; the `exp` path matters where kernels are recomputed (absorptions, "
        "SNS, the log domain). Its cost per entry, each path in turn (log-domain half step, "
        "one thread, medians of 5 interleaved rounds):",
        "",
        markdown_table(exp_path_figure(quick)),
        "",
        tables.strip(),
    ])


def batched_report(quick: bool = False) -> str:
    """The batched-histograms tables (section ``ot_batched``: ``python benchmarks/run.py
    --only ot_batched``)."""
    n = 300 if quick else 1000
    return "\n".join([
        f"## Batched histograms: k problems sharing one {n}-point cost", "",
        "`sinkhorn(a, b, C, reg)` with `b` of shape (m, k): our batched solve (GEMMs on one "
        "shared kernel, each problem Anderson-mixed) against k separate default `sinkhorn` "
        "calls and POT's batched `ot.sinkhorn` (same `b`), interleaved, medians of 3; all "
        "to the worst L1 marginal error POT's columns reached (or 1e-9). Threads: ours "
        "`n_threads`, POT's OpenBLAS through threadpoolctl. 2-D mixtures (random weights) "
        "against 32 smooth target histograms. \"iterations\": the problems' iterations "
        "summed, batched over separate, a level's included (Anderson mixing and epsilon "
        "scaling are batched-only: where the cost's spread over reg exceeds 500, the batch "
        "first solves every problem to L1 error 0.1 at 10x reg; the separate solves "
        "over-relax).", "",
        markdown_table(batched_suite(quick, with_pot=pot is not None)), "",
        "### Other problems and k (one thread, without POT, to L1 error 2e-8)", "",
        f"Images: a {int(round(np.sqrt(n)))}x{int(round(np.sqrt(n)))} pixel grid, squared "
        "distance between pixels, 32 two-blob images with empty pixels. Mixtures as above "
        "with k = 8 and k = 128 (k = 128: one run each).", "",
        markdown_table(batched_other(quick)),
    ])


def suite_report(quick: bool = False) -> str:
    lines = [
        "## Against POT's default ot.sinkhorn (one thread each)",
        "",
        f"CPU path: {_cpu_path()}. Interleaved rounds (ours, SNS, POT, then reversed), "
        "each solve repeated to cover 0.2 s per round on fresh copies of its inputs, median "
        "of 5 rounds of the time per solve. "
        "POT stops on its own test at 1e-9; ours run to the L1 marginal error POT reached "
        "(or 1e-9 where it went below).",
        "",
    ]
    if pot is None:
        return "\n".join(lines + ["POT is not installed (`pip install pot`)."])
    lines += [markdown_table(pot_suite(quick)), "", "### Floor", "",
              "One float64 scaling-domain iteration (the whole step, reg 1e-2, one thread) "
              "over NumPy's `K @ v` plus `K.T @ u` on the same matrix; and the float32 "
              "sweep that kernels of 2^18+ entries use while the error is above "
              "max(1e-6, 10 tol), over the float64 sweep (kernel against kernel).", "",
              markdown_table(floor_figure(quick)), "",
              "### The AVX2 path", "", avx2_report(quick)]
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    n = 300 if quick else 1000
    a, b, C = _clouds(n)
    rows, measured = [], {}
    for reg in (1e-1, 1e-2, 1e-3, 1e-4):
        # Sinkhorn at reg 1e-4 needs far more than 20,000 iterations (minutes per solve
        # here): it runs a fixed 2,000 to show where it stands.
        cap = 2_000 if reg < 1e-3 else 20_000
        ours, t_ours = _timed(lambda reg=reg, cap=cap: sinkhorn(a, b, C, reg, tol=1e-9,
                                                               max_iter=cap), repeat=3)
        sns, t_sns = _timed(
            lambda reg=reg: sinkhorn_newton_sparse(a, b, C, reg, tol=1e-9, max_iter=20_000),
            repeat=3,
        )
        row = {
            "reg": reg,
            "sinkhorn iters (status)": f"{ours.nit} ({ours.status})",
            "sinkhorn marginal error": ours.marginal_error,
            "SNS sinkhorn+newton iters (status)": (
                f"{sns.n_sinkhorn}+{sns.n_newton} ({sns.status})"
            ),
            "SNS marginal error": sns.marginal_error,
            "SNS time / our sinkhorn": t_sns / t_ours,
            "SNS time / POT sinkhorn": None,
            "POT sinkhorn iters cap, marginal error": None,
        }
        if pot is not None:
            # POT's scaling Sinkhorn, stopping on its own (L2) marginal test at 1e-9.
            P, t_pot = _timed(
                lambda reg=reg, cap=cap: pot.sinkhorn(a, b, C, reg, stopThr=1e-9,
                                                      numItermax=5 * cap)
            )
            row["SNS time / POT sinkhorn"] = t_sns / t_pot
            row["POT sinkhorn iters cap, marginal error"] = (
                f"{5 * cap}, {_marginal_error(P, a, b):.2g}"
            )
        if regot is not None and reg <= 1e-3:
            # regot's SSNS stops on its own marginal test at 1e-9; its L1 error is shown.
            out, t_regot = _timed(
                lambda reg=reg: regot.sinkhorn_ssns(np.asfortranarray(C), a, b, reg, tol=1e-9,
                                                    max_iter=1000),
                repeat=3,
            )
            row["SNS time / regot SSNS"] = t_sns / t_regot
            row["regot SSNS iters, marginal error"] = (
                f"{out.niter}, {_marginal_error(np.asarray(out.plan), a, b):.2g}"
            )
        else:
            row["SNS time / regot SSNS"] = None
            row["regot SSNS iters, marginal error"] = None
        measured[reg] = (ours, t_ours, sns, t_sns)
        rows.append(row)
    lines = [
        "# Optimal transport",
        "",
        suite_report(quick),
        "",
        "## Sinkhorn and Sinkhorn-Newton-Sparse",
        "",
        f"{n} points from two 2-D standard Gaussians, squared Euclidean cost divided by its "
        "max, uniform weights, stopping at L1 marginal error 1e-9 or 20,000 iterations "
        "(status 1; 2,000 for Sinkhorn at reg 1e-4); POT: its own test at 1e-9 or 5x our "
        "cap, whose final L1 error is shown (a POT run that stops on its cap took that "
        "long without converging). mmopt and regot times: best of 3 runs; POT: one run.",
        "",
        markdown_table(rows),
        "",
        "## Other problems: shifted clouds, digits",
        "",
        "SNS to L1 marginal error 1e-9 against regot's SSNS (best of 3 each) and our "
        "log-domain Sinkhorn (capped at 5,000 iterations; one run). Shifted clouds: 1000 "
        "points, the target Gaussian shifted by 2 along each axis (seed 1). Digits: the 183 "
        "images of a 3 against the 174 of an 8 (64 pixels), squared Euclidean cost divided "
        "by its max.",
        "",
        markdown_table(_other_cases(quick)),
    ]
    if pot is not None:
        reg, n_iter = 1e-3, 20
        # Time per iteration as the difference of two runs (n and 2n iterations for POT,
        # 10n and 20n for ours), so that neither side's setup and result assembly counts;
        # five rounds, each measuring both sides back to back, and the median round's ratio
        # (a difference of two times is sensitive to the other jobs on this machine).
        # POT's n x m NumPy temporaries cost it twice as much when glibc serves them from
        # fresh mmaps (page faults) as from reused heap memory, and which one a process gets
        # depends on its history; the heap is forced here so that POT runs at its best.
        _reuse_heap_memory()
        ratios, parallel_ratios, pot_iterations = [], [], []
        for _ in range(5):
            pot_runs = [
                _timed(lambda k=k: pot.sinkhorn(a, b, C, reg, method="sinkhorn_log",
                                                numItermax=k, stopThr=0.0))[1]
                for k in (n_iter, 2 * n_iter)
            ]
            pot_iterations.append((pot_runs[1] - pot_runs[0]) / n_iter)
            for threads, store in ((1, ratios), (None, parallel_ratios)):
                our_runs = [
                    _timed(lambda k=k, threads=threads: sinkhorn(
                        a, b, C, reg, method="log", max_iter=k, tol=0.0, n_threads=threads
                    ))[1]
                    for k in (10 * n_iter, 20 * n_iter)
                ]
                store.append(((our_runs[1] - our_runs[0]) / (10 * n_iter)) / pot_iterations[-1])
        t_pot_iteration = float(np.median(pot_iterations))
        small = _clouds(80, seed=1)
        ref = pot.sinkhorn(*small, 1e-2, method="sinkhorn_log", stopThr=1e-13,
                           numItermax=100_000)
        mine = sinkhorn(*small, 1e-2, method="log", tol=1e-13, max_iter=100_000)
        sinkhorn_1e3, _, sns_1e3, t_sns_1e3 = measured[1e-3]
        # POT's sinkhorn_log to 1e-9 would take as many iterations as our Sinkhorn (same
        # algorithm): its time is projected from its measured iteration time.
        projected_pot_log = t_pot_iteration * sinkhorn_1e3.nit
        P_emd, t_emd = _timed(lambda: pot.emd(a, b, C))
        exact, t_exact = _timed(lambda: exact_ot(a, b, C))
        lines += [
            "",
            "## Against POT directly",
            "",
            markdown_table(
                [
                    {
                        "measure": "log-domain iteration time / POT sinkhorn_log's (reg 1e-3, "
                        "one thread each, median of 5 rounds)",
                        "value": float(np.median(ratios)),
                    },
                    {
                        "measure": f"the same, ours on all {os.cpu_count()} CPUs "
                        "(n_threads=None; POT's NumPy code has no threads)",
                        "value": float(np.median(parallel_ratios)),
                    },
                    {
                        "measure": "SNS time / POT sinkhorn_log projected time (reg 1e-3)",
                        "value": t_sns_1e3 / projected_pot_log,
                    },
                    {
                        "measure": "Sinkhorn iterations / SNS iterations (reg 1e-3)",
                        "value": sinkhorn_1e3.nit / sns_1e3.nit,
                    },
                    {
                        "measure": "max |plan - POT sinkhorn_log plan| (80 points, reg 1e-2)",
                        "value": float(np.abs(ref - mine.plan).max()),
                    },
                    {
                        "measure": "exact_ot time / POT emd",
                        "value": t_exact / t_emd,
                    },
                    {
                        "measure": "exact_ot cost - POT emd cost",
                        "value": exact.fun - float((C * P_emd).sum()),
                    },
                ]
            ),
        ]
    else:
        lines += ["", "POT is not installed (`pip install pot`): peer columns are empty."]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    # python benchmarks/bench_ot.py [--quick] --suite: only the suite against POT's default
    # ot.sinkhorn and the floor figure; --batched: only the batched histograms.
    quick_run = "--quick" in sys.argv
    if "--batched" in sys.argv:
        print(batched_report(quick_run))
    else:
        print(suite_report(quick_run) if "--suite" in sys.argv else run(quick_run))
