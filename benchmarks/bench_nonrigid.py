"""SPARE vs pycpd's and probreg's CPD on deformations of the shipped scan.

Run: python benchmarks/bench_nonrigid.py [--quick] [spare] [small] [cpd10k] [cpd10kend]
[solvers]
(pycpd and probreg optional; the repository root on PYTHONPATH), or through
``benchmarks/run.py --only nonrigid``, which runs the tables and writes the whole
``nonrigid`` section of BENCHMARKS.md (nothing in it is written by hand; the notes from
earlier, longer runs are in the user guide, docs/user_guide/registration.rst, "Notes from
the benchmarks"). Set ``MMOPT_BENCH_SKIP_CPD10K=1`` to leave out ``cpd10k``: pycpd needs
about 4 GB at 10,000 points and minutes per iteration. The tables:

- ``spare``: SPARE with the paper's plane-only data term (``point_weight=0``, the default),
  with a point-to-point part (``point_weight=100``) and with the stiff-to-soft ARAP
  continuation (``arap_floor=0.1``) on the full scan;
- ``small``: every 8th point (1,851): SPARE (the same three settings) against pycpd's
  ``DeformableRegistration`` and
  probreg's non-rigid CPD at their defaults, and probreg run to convergence (the only
  place CPD is converged);
- ``cpd10k``: 10,000 random points, SPARE against pycpd at its defaults, stopped past
  twice SPARE's time;
- ``cpd10kend`` (opt-in: ``MMOPT_BENCH_CPD10K_END=1``): the same two cases, or those of
  ``MMOPT_BENCH_CPD10K_CASES`` (``"twist:0,bumps:0,bend:1"``: kind and seed, each clean and
  with outliers and missing overlap), probreg's non-rigid CPD at its defaults run to its
  own end, and pycpd at its defaults for a CPU budget (``MMOPT_BENCH_PYCPD_BUDGET``
  seconds, 1200 unless set, enough for its own end at 10,000 points; 0 leaves pycpd out;
  cut short of its end, the CPU time of its ``max_iterations`` is predicted from its time
  per iteration); CPU and wall seconds;
- ``solvers``: SPARE's time per part with each sparse solver on the full scan.

Error: RMS distance of the deformed source to the true position of every source point
(data units), and its part along the surface (the error minus its component along the
true normal).
"""

from __future__ import annotations

import os
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


def _cases(clean_seeds, robust_seeds=(0,)):
    for seed in clean_seeds:
        for kind in ("bend", "twist", "bumps"):
            yield kind, 0.0, 1.0, seed
    for seed in robust_seeds:
        for kind in ("bend", "twist", "bumps"):
            yield kind, 0.2, 0.7, seed


def _label(kind, outliers, overlap, seed) -> str:
    extra = f", {outliers:.0%} outliers, {overlap:.0%} overlap" if outliers else ""
    return f"{kind}{extra}, seed {seed}"


def _errors(x, data) -> str:
    """RMS error to the truth and its tangential part."""
    e = x - data.ground_truth
    along = np.einsum("na,na->n", e, data.ground_truth_normals)
    tangential = e - along[:, None] * data.ground_truth_normals
    return f"{_rms(x, data.ground_truth):.4f} / t {_rms(tangential, 0.0):.4f}"


def _spare_cell(data, **options) -> tuple[str, float]:
    res, seconds = _timed(SPARE(max_iter=30, **options).solve, data.problem)
    return f"{_errors(res.points, data)} ({seconds:.1f} s, {res.nit} it)", seconds


# SPARE's settings in the tables: its defaults, the point-to-point part, the continuation.
SETTINGS = ({}, {"point_weight": 100.0}, {"arap_floor": 0.1})


def _scan(sub: int):
    scan = load_scan_pair()
    return scan.source[::sub], scan.source_normals[::sub]


def _spare_table(sub: int, clean_seeds, robust_seeds) -> list[str]:
    points, normals = _scan(sub)
    lines = [f"SPARE on {points.shape[0]:,} source points (`max_iter=30`); each cell: error / "
             "its tangential part (time, iterations):", "",
             "| problem | start | SPARE (defaults) | SPARE `point_weight=100` | "
             "SPARE `arap_floor=0.1` |", "|---|---|---|---|---|"]
    for kind, outliers, overlap, seed in _cases(clean_seeds, robust_seeds):
        data = make_nonrigid_problem(points, normals, kind=kind, outlier_fraction=outliers,
                                     overlap=overlap, random_state=seed)
        cells = [_spare_cell(data, **options)[0] for options in SETTINGS]
        lines.append(f"| {_label(kind, outliers, overlap, seed)} | "
                     f"{_errors(data.problem.source, data)} | " + " | ".join(cells) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def _small_table(sub: int, seeds) -> list[str]:
    """SPARE vs pycpd (defaults) and probreg (defaults and converged) on a small cloud."""
    try:
        from pycpd import DeformableRegistration
    except ImportError:
        DeformableRegistration = None
    try:
        from probreg import cpd
    except ImportError:
        cpd = None
    points, normals = _scan(sub)
    lines = [f"SPARE vs CPD on {points.shape[0]:,} source points: pycpd's "
             "`DeformableRegistration` and probreg's non-rigid `registration_cpd` at their "
             "defaults, probreg also run to convergence (`maxiter=500, tol=1e-7`); each "
             "cell: error / its tangential part (time):", "",
             "| problem | start | SPARE (defaults) | SPARE `point_weight=100` | "
             "SPARE `arap_floor=0.1` | pycpd | probreg | probreg converged |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, outliers, overlap, seed in _cases(seeds, seeds):
        data = make_nonrigid_problem(points, normals, kind=kind, outlier_fraction=outliers,
                                     overlap=overlap, random_state=seed)
        source, target = data.problem.source, data.problem.target
        cells = [_spare_cell(data, **options)[0].split(",")[0] + ")" for options in SETTINGS]
        if DeformableRegistration is None:
            cells.append("not installed")
        else:
            (moved, _), seconds = _timed(
                lambda x, y: DeformableRegistration(X=x, Y=y).register(), target, source)
            cells.append(f"{_errors(moved, data)} ({seconds:.1f} s)")
        for options in ({}, {"maxiter": 500, "tol": 1e-7}):
            if cpd is None:
                cells.append("not installed")
                continue
            out, seconds = _timed(lambda x, y, o: cpd.registration_cpd(
                x, y, tf_type_name="nonrigid", **o), source, target, options)
            cells.append(f"{_errors(out.transformation.transform(source), data)} "
                         f"({seconds:.1f} s)")
        lines.append(f"| {_label(kind, outliers, overlap, seed)} | "
                     f"{_errors(source, data)} | " + " | ".join(cells) + " |")
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


def _cpd_large_table(n: int, budget_factor: float) -> list[str]:
    """SPARE vs CPD on ``n`` random source points (bend, clean and with outliers and missing
    overlap, seed 0: one CPD iteration takes minutes at this size); CPD runs for at most
    ``budget_factor`` times SPARE's time on the case (at least one iteration)."""
    try:
        import pycpd  # noqa: F401
    except ImportError:
        return ["pycpd is not installed: no CPD comparison."]
    scan = load_scan_pair()
    keep = np.sort(np.random.default_rng(0).choice(scan.source.shape[0], n, replace=False))
    points, normals = scan.source[keep], scan.source_normals[keep]
    lines = [f"SPARE vs CPD on {n:,} random source points (CPD stopped after the first "
             f"iteration ending past {budget_factor:g} x SPARE's time):", "",
             "| problem | start | SPARE (defaults) | SPARE `point_weight=100` | "
             "CPD at SPARE's time | CPD at the stop |", "|---|---|---|---|---|---|"]
    cases = [c for c in _cases((0,), (0,)) if c[0] == "bend"]
    for kind, outliers, overlap, seed in cases:
        data = make_nonrigid_problem(points, normals, kind=kind, outlier_fraction=outliers,
                                     overlap=overlap, random_state=seed)
        truth, source, target = data.ground_truth, data.problem.source, data.problem.target
        cell, t_spare = _spare_cell(data, point_weight=0.0)
        point = _spare_cell(data, point_weight=100.0)[0]
        trace, done = _cpd_within(source, target, truth, budget_factor * t_spare)
        at_spare = [row for row in trace if row[0] <= t_spare]
        at = (f"{at_spare[-1][2]:.4f} (it {at_spare[-1][1]})" if at_spare
              else "no iteration done")
        last = trace[-1]
        stop = f"{last[2]:.4f} ({last[0]:.1f} s, {last[1]} it{'' if done else ', cut'})"
        lines.append(f"| {_label(kind, outliers, overlap, seed)} | {_errors(source, data)} | "
                     f"{cell} | {point} | {at} | {stop} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def _cpu() -> float:
    return time.process_time()


def _probreg_to_the_end(source, target):
    """probreg's non-rigid CPD at its defaults, run to its own stop: the deformed source,
    CPU and wall seconds and iterations."""
    from probreg import cpd

    iterations = [0]

    def count(_transformation):
        iterations[0] += 1

    cpu, wall = _cpu(), time.perf_counter()
    out = cpd.registration_cpd(source, target, tf_type_name="nonrigid", callbacks=[count])
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    return out.transformation.transform(source), cpu, wall, iterations[0]


def _pycpd_for(source, target, budget: float):
    """pycpd's ``DeformableRegistration`` at its defaults for ``budget`` CPU seconds (at
    least one iteration): the deformed source at the cut, CPU and wall seconds, iterations
    done, whether it stopped by itself, and its ``max_iterations``."""
    from pycpd import DeformableRegistration

    cpu, wall = _cpu(), time.perf_counter()
    cpd = DeformableRegistration(X=target, Y=source)  # its n x n kernel: timed

    def record(iteration, **_):
        if _cpu() - cpu > budget:
            raise _OutOfTime

    try:
        cpd.register(callback=record)
        done = True
    except _OutOfTime:
        done = False
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    return cpd.TY, cpu, wall, cpd.iteration, done, cpd.max_iterations


def _end_cases(spec: str):
    """The cases of ``cpd10kend`` from ``"kind:seed,..."`` (each clean and with 20% outliers
    and 70% overlap), in that order."""
    cases = []
    for item in (part.strip() for part in spec.split(",")):
        kind, _, seed = item.partition(":")
        if kind not in ("bend", "twist", "bumps") or not seed.strip().isdigit():
            raise ValueError(f"{CPD10K_CASES}: expected 'kind:seed' items with kind in bend, "
                             f"twist, bumps, got {item!r}.")
        cases.append((kind, int(seed)))
    return ([(kind, 0.0, 1.0, seed) for kind, seed in cases]
            + [(kind, 0.2, 0.7, seed) for kind, seed in cases])


def _cpd_to_the_end_table(n: int, budget: float, cases) -> list[str]:
    """SPARE vs CPD at their defaults on ``n`` random source points, one row per case of
    ``cases`` (``(kind, outliers, overlap, seed)``): probreg run to its own stop, pycpd for
    ``budget`` CPU seconds with the time its defaults' end would take predicted from its
    CPU time per iteration (left out when ``budget`` is 0)."""
    scan = load_scan_pair()
    keep = np.sort(np.random.default_rng(0).choice(scan.source.shape[0], n, replace=False))
    points, normals = scan.source[keep], scan.source_normals[keep]
    with_pycpd = budget > 0
    pycpd_text = (f"pycpd's `DeformableRegistration` is cut after the first iteration ending "
                  f"past {budget:g} CPU s, and its defaults' end (`max_iterations`) is "
                  "predicted from its CPU time per iteration" if with_pycpd
                  else "pycpd not run (budget 0)")
    lines = [f"SPARE vs CPD at their defaults on {n:,} random source points; each cell: error "
             "/ its tangential part (CPU s, wall s, iterations). probreg's non-rigid "
             f"`registration_cpd` runs to its own stop; {pycpd_text}:", "",
             "| problem | start | SPARE (defaults) | probreg (to its end) |"
             + (" pycpd (cut) | pycpd CPU s / it | pycpd's end predicted (CPU s) |"
                if with_pycpd else ""),
             "|---|---|---|---|" + ("---|---|---|" if with_pycpd else "")]
    for kind, outliers, overlap, seed in cases:
        data = make_nonrigid_problem(points, normals, kind=kind, outlier_fraction=outliers,
                                     overlap=overlap, random_state=seed)
        source, target = data.problem.source, data.problem.target
        cpu, wall = _cpu(), time.perf_counter()
        res = SPARE(max_iter=30).solve(data.problem)
        cells = [f"{_errors(res.points, data)} ({_cpu() - cpu:.1f}, "
                 f"{time.perf_counter() - wall:.1f}, {res.nit} it)"]
        try:
            moved, cpu, wall, nit = _probreg_to_the_end(source, target)
            cells.append(f"{_errors(moved, data)} ({cpu:.0f}, {wall:.0f}, {nit} it)")
        except ImportError:
            cells.append("not installed")
        if with_pycpd:
            try:
                moved, cpu, wall, nit, done, max_it = _pycpd_for(source, target, budget)
                per = cpu / max(nit, 1)
                cells += [f"{_errors(moved, data)} ({cpu:.0f}, {wall:.0f}, {nit} it"
                          f"{'' if done else ', cut'})", f"{per:.1f}",
                          f"{cpu:.0f} (ended)" if done else f"{per * max_it:.0f} ({max_it} it)"]
            except ImportError:
                cells += ["not installed", "", ""]
        lines.append(f"| {_label(kind, outliers, overlap, seed)} | {_errors(source, data)} | "
                     + " | ".join(cells) + " |")
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
    """SPARE's time per part with each sparse back end, on the bend case."""
    from mmopt.registration._spd_solve import cholespy_available

    points, normals = _scan(sub)
    methods = ["superlu"] + (["cholespy"] if cholespy_available() else [])
    parts = ("sparse solve", "assembly", "rotation assembly", "3x3 SVDs")
    lines = [f"SPARE's fine stage by part on {points.shape[0]:,} points (seconds; the coarse "
             "stage and the closest points make up the rest of the total):", "",
             "| problem | linear_solver | total | " + " | ".join(parts) + " | error |",
             "|---|---|---|" + "---|" * len(parts) + "---|"]
    data = make_nonrigid_problem(points, normals, kind="bend", random_state=0)
    for method in methods:
        solver = _TimedSPARE(max_iter=30, linear_solver=method)
        solver.seconds = {}
        res, seconds = _timed(solver.solve, data.problem)
        cells = " | ".join(f"{solver.seconds.get(p, 0.0):.2f}" for p in parts)
        lines.append(f"| bend, seed 0 ({res.nit} it) | {method} | {seconds:.1f} | "
                     f"{cells} | {_rms(res.points, data.ground_truth):.4f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


TABLES = ("spare", "small", "cpd10k", "cpd10kend", "solvers")
SKIP_CPD10K = "MMOPT_BENCH_SKIP_CPD10K"
# Opt-in: probreg to its own end took 165-179 CPU s per case at 10,000 points (its tol ended
# it after 10-11 of its 50 iterations; dense n x n solve, ~2.4 GB), pycpd ~1 min per iteration.
RUN_CPD10KEND = "MMOPT_BENCH_CPD10K_END"
# pycpd's CPU budget (seconds) in ``cpd10kend``; 0 leaves pycpd out. Its tolerance (on the
# change of sigma^2, absolute) ended it after 10-12 of its 100 iterations at 10,000 points,
# 520-613 CPU s a case (one thread, under load).
PYCPD_BUDGET = "MMOPT_BENCH_PYCPD_BUDGET"
# The cases of ``cpd10kend``, "kind:seed,..." (each clean and robust); bend seed 0 unless set.
CPD10K_CASES = "MMOPT_BENCH_CPD10K_CASES"


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # not available on this platform
        return "unknown"


def run(quick: bool = False, tables=TABLES) -> str:
    """The Markdown section of BENCHMARKS.md (each table followed by its run time)."""
    warnings.simplefilter("ignore")
    skip_cpd10k = os.environ.get(SKIP_CPD10K, "") not in ("", "0")
    run_cpd10kend = os.environ.get(RUN_CPD10KEND, "") not in ("", "0")
    builders = {
        "spare": lambda: _spare_table(8 if quick else 1, (0,), (0,)),
        "small": lambda: _small_table(16 if quick else 8, (0,)),
        "cpd10k": lambda: _cpd_large_table(2000 if quick else 10000, 2.0),
        "cpd10kend": lambda: _cpd_to_the_end_table(
            2000 if quick else 10000, float(os.environ.get(PYCPD_BUDGET, "1200")),
            _end_cases(os.environ.get(CPD10K_CASES, "bend:0"))),
        "solvers": lambda: _solver_table(8 if quick else 1),
    }
    out = ["## Non-rigid registration (SPARE) vs CPD", "",
           "Written by `python benchmarks/run.py --only nonrigid` (tables of "
           "`benchmarks/bench_nonrigid.py`; notes from earlier, longer runs are in the user "
           "guide, `docs/user_guide/registration.rst`, \"Notes from the benchmarks\"). "
           "`mmopt.datasets.make_nonrigid_problem` on the shipped scan (noise 0.001 L, L ~ 1.94 "
           "the diagonal); RMS error to the true position of every source point, data units, "
           "and its tangential part (`t`: the error minus its component along the true "
           "normal). SPARE at its defaults but `max_iter=30`. CPD is converged only in the "
           "small table. Times depend on the machine's load, given per table (1-minute load "
           "average at its start and end).", ""]
    total = time.perf_counter()
    for name in TABLES:
        if name not in tables:
            continue
        if name == "cpd10k" and skip_cpd10k:
            out += [f"(table `cpd10k` not run: `{SKIP_CPD10K}` was set; it needs about 4 GB "
                    "for pycpd at 10,000 points.)", ""]
            continue
        if name == "cpd10kend" and not run_cpd10kend:
            out += [f"(table `cpd10kend` not run: set `{RUN_CPD10KEND}=1` to run it; about "
                    "30 min: per case at 10,000 points, probreg to its end about 3 min, pycpd to "
                    "its end about 10 min.)", ""]
            continue
        start_load = _load()
        lines, seconds = _timed(builders[name])
        out += lines + ["", f"(table `{name}`: {seconds / 60:.1f} min, load average "
                            f"{start_load} -> {_load()})", ""]
    out.append(f"(all tables: {(time.perf_counter() - total) / 60:.1f} min)")
    return "\n".join(out)


if __name__ == "__main__":
    chosen = [a for a in sys.argv[1:] if a in TABLES] or TABLES
    print(run(quick="--quick" in sys.argv, tables=chosen))
