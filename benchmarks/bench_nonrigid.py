"""SPARE vs pycpd's DeformableRegistration (CPD) on deformations of the shipped scan.

Run: python benchmarks/bench_nonrigid.py [--quick] [spare] [cpd] [probreg] [cpd10k] [solvers]
(pycpd and probreg optional), or through ``benchmarks/run.py --only nonrigid``. Tables:
SPARE (coarse stage + fine stage, its defaults) against its fine stage alone without
distance rejection (the defaults before the coarse stage) on the full scan, several kinds
and seeds, clean and with 20% outliers and 30% missing overlap (``spare``); SPARE against
CPD at CPD's defaults on every 4th point, where CPD's n x m kernel still fits the time
budget (``cpd``); SPARE against probreg's non-rigid CPD at its defaults and run to
convergence on the same points (``probreg``); SPARE against CPD on 10,000 random points,
CPD stopped past twice SPARE's time (``cpd10k``); SPARE's time per part with each sparse
solver on the full scan (``solvers``). Error: RMS distance of the deformed source to the
true position of every source point (data units).
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np

from mmopt.datasets import load_scan_pair, make_nonrigid_problem
from mmopt.registration import SPARE
from mmopt.registration.arap import best_rotations


def _rms(x, y) -> float:
    return float(np.sqrt(np.mean(np.sum((x - y) ** 2, axis=1))))


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def _cases(seeds):
    for seed in seeds:
        for kind in ("bend", "twist", "bumps"):
            yield kind, 0.0, 1.0, seed
    for seed in seeds:
        for kind in ("bend", "twist", "bumps"):
            yield kind, 0.2, 0.7, seed


def _label(kind, outliers, overlap, seed) -> str:
    extra = f", {outliers:.0%} outliers, {overlap:.0%} overlap" if outliers else ""
    return f"{kind}{extra}, seed {seed}"


def _scan_points(sub: int):
    """Every ``sub``-th point of the shipped scan's source, and its normals."""
    scan = load_scan_pair()
    return scan.source[::sub], scan.source_normals[::sub]


def _spare_runs(points, normals, cases):
    """Per case: its label, the generated problem (with its ground truth) and SPARE's
    result and seconds at ``max_iter=30``, the setting of every comparison table."""
    for kind, outliers, overlap, seed in cases:
        data = make_nonrigid_problem(points, normals, kind=kind, outlier_fraction=outliers,
                                     overlap=overlap, random_state=seed)
        res, seconds = _timed(SPARE(max_iter=30).solve, data.problem)
        yield _label(kind, outliers, overlap, seed), data, res, seconds


def _spare_table(sub: int, seeds) -> list[str]:
    points, normals = _scan_points(sub)
    lines = [f"SPARE on {points.shape[0]:,} source points (`max_iter=30`):", "",
             "| problem | start | SPARE (defaults) | fine stage only, no distance rejection |",
             "|---|---|---|---|"]
    for kind, outliers, overlap, seed in _cases(seeds):
        data = make_nonrigid_problem(points, normals, kind=kind, outlier_fraction=outliers,
                                     overlap=overlap, random_state=seed)
        truth = data.ground_truth
        cells = []
        for options in ({}, {"coarse": False, "reject_distance": None}):
            if options and seed != seeds[0]:
                cells.append("")  # the comparison on the first seed only (time)
                continue
            res, seconds = _timed(SPARE(max_iter=30, **options).solve, data.problem)
            cells.append(f"{_rms(res.points, truth):.4f} ({seconds:.1f} s, {res.nit} it)")
        lines.append(f"| {_label(kind, outliers, overlap, seed)} | "
                     f"{_rms(data.problem.source, truth):.4f} | " + " | ".join(cells) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def _cpd_table(sub: int, seeds) -> list[str]:
    try:
        from pycpd import DeformableRegistration
    except ImportError:
        return ["pycpd is not installed: no CPD comparison."]
    points, normals = _scan_points(sub)
    lines = [f"SPARE vs CPD on {points.shape[0]:,} source points:", "",
             "| problem | start | SPARE | CPD |", "|---|---|---|---|"]
    for label, data, res, t_spare in _spare_runs(points, normals, _cases(seeds)):
        truth, source, target = data.ground_truth, data.problem.source, data.problem.target
        (moved, _), t_cpd = _timed(lambda x, y: DeformableRegistration(X=x, Y=y).register(),
                                   target, source)
        lines.append(f"| {label} | {_rms(source, truth):.4f} | "
                     f"{_rms(res.points, truth):.4f} ({t_spare:.1f} s) | "
                     f"{_rms(moved, truth):.4f} ({t_cpd:.1f} s) |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def _probreg_table(sub: int, seeds) -> list[str]:
    """SPARE vs probreg's non-rigid CPD at its defaults and run to convergence."""
    try:
        from probreg import cpd
    except ImportError:
        return ["probreg is not installed: no probreg comparison."]
    points, normals = _scan_points(sub)
    lines = [f"SPARE vs probreg's non-rigid CPD on {points.shape[0]:,} source points: at "
             "probreg's defaults (`maxiter=50, tol=1e-3`) and run to convergence "
             "(`maxiter=500, tol=1e-7`):", "",
             "| problem | start | SPARE | probreg (defaults) | probreg (converged) |",
             "|---|---|---|---|---|"]
    for label, data, res, t_spare in _spare_runs(points, normals, _cases(seeds)):
        truth, source, target = data.ground_truth, data.problem.source, data.problem.target
        cells = []
        for options in ({}, {"maxiter": 500, "tol": 1e-7}):
            out, seconds = _timed(lambda x, y, o: cpd.registration_cpd(
                x, y, tf_type_name="nonrigid", **o), source, target, options)
            cells.append(f"{_rms(out.transformation.transform(source), truth):.4f} "
                         f"({seconds:.1f} s)")
        lines.append(f"| {label} | {_rms(source, truth):.4f} | "
                     f"{_rms(res.points, truth):.4f} ({t_spare:.1f} s) | " + " | ".join(cells)
                     + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


class _OutOfTime(Exception):
    pass


def _cpd_within(source, target, truth, budget: float):
    """CPD at its defaults, stopped at the first iteration that ends after ``budget``
    seconds: ``[(seconds, iteration, error to truth), ...]`` per iteration and whether it
    stopped by itself."""
    from pycpd import DeformableRegistration

    trace = []
    start = time.perf_counter()

    def record(iteration, Y, **_):
        trace.append((time.perf_counter() - start, iteration, _rms(Y, truth)))
        if trace[-1][0] > budget:
            raise _OutOfTime

    try:
        DeformableRegistration(X=target, Y=source).register(callback=record)
    except _OutOfTime:
        return trace, False
    return trace, True


def _cpd_large_table(n: int, seeds, budget_factor: float) -> list[str]:
    """SPARE vs CPD on ``n`` random source points; CPD runs for at most ``budget_factor``
    times SPARE's time on the case (at least one iteration)."""
    try:
        import pycpd  # noqa: F401
    except ImportError:
        return ["pycpd is not installed: no CPD comparison."]
    scan = load_scan_pair()
    keep = np.sort(np.random.default_rng(0).choice(scan.source.shape[0], n, replace=False))
    points, normals = scan.source[keep], scan.source_normals[keep]
    lines = [f"SPARE vs CPD on {n:,} random source points (CPD stopped after the first "
             f"iteration ending past {budget_factor:g} x SPARE's time):", "",
             "| problem | start | SPARE | CPD at SPARE's time | CPD at the stop |",
             "|---|---|---|---|---|"]
    cases = [c for c in _cases(seeds) if c[1] == 0.0 or c[3] == seeds[0]]
    for label, data, res, t_spare in _spare_runs(points, normals, cases):
        truth, source, target = data.ground_truth, data.problem.source, data.problem.target
        trace, done = _cpd_within(source, target, truth, budget_factor * t_spare)
        at_spare = [row for row in trace if row[0] <= t_spare]
        cell = (f"{at_spare[-1][2]:.4f} (it {at_spare[-1][1]})" if at_spare
                else "no iteration done")
        last = trace[-1]
        stop = f"{last[2]:.4f} ({last[0]:.1f} s, {last[1]} it{'' if done else ', cut'})"
        lines.append(f"| {label} | {_rms(source, truth):.4f} | "
                     f"{_rms(res.points, truth):.4f} ({t_spare:.1f} s, {res.nit} it) | "
                     f"{cell} | {stop} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


class _TimedSPARE(SPARE):
    """SPARE recording the seconds of each part of its outer iteration."""

    def _system(self, *args):
        return self._clock("assembly", super()._system, *args)

    def _solve_positions(self, s, *args):
        # The factorization and solve: the assembly inside is timed by _system.
        H, rhs = self._system(s, *args)
        return self._clock("sparse solve", lambda: s.linear.solve(H, rhs).reshape(-1, 3))

    def _update_rotations(self, s, *args):
        M = self._clock("rotation assembly", self._rotation_targets, s, *args)
        return self._clock("3x3 SVDs", best_rotations, M)

    def _clock(self, key, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
        return out


def _solver_table(sub: int) -> list[str]:
    """SPARE's time per part with each sparse back end, on the bend and twist cases."""
    from mmopt.registration._spd_solve import cholespy_available

    points, normals = _scan_points(sub)
    methods = ["superlu"] + (["cholespy"] if cholespy_available() else [])
    parts = ("sparse solve", "assembly", "rotation assembly", "3x3 SVDs")
    lines = [f"SPARE's fine stage by part on {points.shape[0]:,} points (seconds; the coarse "
             "stage and the closest points make up the rest of the total):", "",
             "| problem | linear_solver | total | " + " | ".join(parts) + " | error |",
             "|---|---|---|" + "---|" * len(parts) + "---|"]
    for kind in ("bend", "twist"):
        data = make_nonrigid_problem(points, normals, kind=kind, random_state=0)
        for method in methods:
            solver = _TimedSPARE(max_iter=30, linear_solver=method)
            solver.seconds = {}
            res, seconds = _timed(solver.solve, data.problem)
            cells = " | ".join(f"{solver.seconds.get(p, 0.0):.2f}" for p in parts)
            lines.append(f"| {kind}, seed 0 ({res.nit} it) | {method} | {seconds:.1f} | "
                         f"{cells} | {_rms(res.points, data.ground_truth):.4f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def run(quick: bool = False,
        tables=("spare", "cpd", "probreg", "cpd10k", "solvers")) -> str:
    """The Markdown section of BENCHMARKS.md."""
    warnings.simplefilter("ignore")
    spare = _spare_table(8 if quick else 1, (0,) if quick else (0, 1)) if "spare" in tables else []
    cpd = _cpd_table(16 if quick else 4, (0,)) if "cpd" in tables else []
    probreg = _probreg_table(16 if quick else 4, (0,)) if "probreg" in tables else []
    large = (_cpd_large_table(2000 if quick else 10000, (0,) if quick else (0, 1), 2.0)
             if "cpd10k" in tables else [])
    solvers = _solver_table(8 if quick else 1) if "solvers" in tables else []
    return "\n".join(
        ["## Non-rigid registration (SPARE) vs pycpd's CPD", "",
         "`mmopt.datasets.make_nonrigid_problem` on the shipped scan (noise 0.001 L, L ~ 1.94 "
         "the diagonal); RMS error to the true position of every source point, data units; "
         "CPD's `DeformableRegistration` at its defaults.", ""]
        + spare + [""] + cpd + [""] + probreg + [""] + large + [""] + solvers
    )


if __name__ == "__main__":
    names = ("spare", "cpd", "probreg", "cpd10k", "solvers")
    chosen = [a for a in sys.argv[1:] if a in names] or names
    print(run(quick="--quick" in sys.argv, tables=chosen))
