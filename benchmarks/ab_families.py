"""Before/after comparison of every family: the same workloads run against two source trees.

Each tree is a checkout built in place (``python setup.py build_ext --inplace``). For every
family and every repeat, one worker runs the family's workload in a subprocess with
``PYTHONPATH=<before>``, then in one with ``PYTHONPATH=<after>`` (the order alternates from
one repeat to the next, so that a drift of the machine falls on both trees alike), with
OpenMP/BLAS threads fixed by ``--threads``. The table gives, per solve, the median time of
each tree, their ratio (after / before), the iterations and whether the objectives agree
within the stated relative tolerance. A family whose solver a tree does not have (it came
after the "before" commit) is run on the other tree only and marked so.

Usage (one repeat of all families: about one minute of CPU with one thread, a third of it
point-cloud OT at 3,000 and 10,000 points)::

    python benchmarks/ab_families.py --before /path/to/old --after . --repeats 5 --threads 1
    python benchmarks/ab_families.py --before ../old --after . --families ot,mm --jobs 4

The workloads call only public API and leave most options at their defaults (so renamed
Anderson and loss-scale options need no shim; the loss names "huber" and "welsch" are the
same in both trees); where an option they set was renamed, they pick the spelling the tree
accepts (``_spelling``: SNS's ``nu`` became ``drop_budget``). Workers import nothing from this
folder, so the harness of the newer tree can drive an older one.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

_MARK = "AB_FAMILIES_RESULT "


class Absent(Exception):
    """The tree has no solver for this family."""


def _timed(fn, budget=1.0, most=10):
    """``(seconds, output of the first call)``: a solve under a quarter of ``budget`` is
    repeated (at most ``most`` calls, about ``budget`` seconds in all) and the fastest call
    counts, so that short solves are not timed on one noisy call."""
    start = time.perf_counter()
    out = fn()
    best = spent = time.perf_counter() - start
    calls = 1
    while best < budget / 4 and spent < budget and calls < most:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
    return best, out


def _case(name, seconds, nit, objective, rtol, status=None, atol=0.0):
    """One solve's record; the trees agree when the objectives differ by at most
    ``atol + rtol * max(1, |before|)``."""
    return {"case": name, "seconds": seconds, "nit": None if nit is None else int(nit),
            "objective": float(objective), "rtol": rtol, "atol": atol,
            "status": None if status is None else int(status)}


def _spelling(target, value, *names):
    """``{name: value}`` for the first of ``names`` that ``target`` (a class or function)
    takes: the option was renamed between the trees."""
    params = inspect.signature(target).parameters
    for name in names:
        if name in params:
            return {name: value}
    raise TypeError(f"{target.__name__} takes none of {names}")


def _threads(target, threads):
    """``n_threads`` for solvers that take it (others follow OMP_NUM_THREADS)."""
    return {"n_threads": threads} if "n_threads" in inspect.signature(target).parameters else {}


def _ot_data(n, seed=0):
    from mmopt.datasets import make_ot_problem

    return make_ot_problem(n, shift=1.0, random_state=seed)


# ---------------------------------------------------------------------------- workloads
def _family_mm(threads):
    from mmopt.datasets import make_regression_with_outliers
    from mmopt.mm import MMRobustRegressor

    X, y, *_ = make_regression_with_outliers(20_000, 20, random_state=0)
    cases = []
    # "huber" and "welsch" name the same losses in both trees.
    for loss in ("huber", "welsch"):
        est = MMRobustRegressor(loss)
        seconds, _ = _timed(lambda est=est: est.fit(X, y))
        cases.append(_case(f"robust regression ({loss}), 20000 x 20", seconds, est.n_iter_,
                           est.result_.fun, 1e-6, est.result_.status))
    return cases


def _family_icp(threads):
    from mmopt.datasets import load_scan_pair
    from mmopt.registration import ICP, icp

    pair = load_scan_pair()
    seconds, res = _timed(lambda: icp(pair.source, pair.target, **_threads(ICP, threads)))
    # The rotation error against the shipped reference, in degrees.
    R = np.asarray(res.transform)[:3, :3] @ np.asarray(pair.reference_transform)[:3, :3].T
    angle = np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)))
    return [_case("icp, shipped scan pair (rotation error, deg)", seconds, res.nit, angle, 0.0,
                  res.status, atol=0.05)]


def _family_bcd(threads):
    from mmopt.bcd import BCDLasso

    rng = np.random.default_rng(0)
    n, p = 2000, 1000
    X = rng.standard_normal((n, p))
    w = np.zeros(p)
    w[:30] = rng.standard_normal(30)
    y = X @ w + 0.1 * rng.standard_normal(n)
    alpha = 0.01 * np.max(np.abs(X.T @ (y - y.mean()))) / n
    est = BCDLasso(alpha=alpha, tol=1e-8)
    seconds, _ = _timed(lambda: est.fit(X, y))
    # The Lasso objective, computed here.
    r = y - X @ est.coef_ - est.intercept_
    objective = 0.5 * r @ r / n + alpha * np.abs(est.coef_).sum()
    return [_case(f"lasso, {n} x {p}, alpha = 1% of max", seconds, est.n_iter_, objective,
                  1e-6)]


def _family_bilevel(threads):
    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.preprocessing import StandardScaler

    from mmopt.bilevel import BilevelLogisticRegression, BilevelRidge

    X, y = load_diabetes(return_X_y=True)
    ridge = BilevelRidge()
    seconds, _ = _timed(lambda: ridge.fit(X, y))
    cases = [_case("MAID ridge, diabetes (CV loss)", seconds, ridge.n_iter_,
                   -ridge.best_score_, 1e-4)]
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    logistic = BilevelLogisticRegression()
    seconds, _ = _timed(lambda: logistic.fit(X, y))
    cases.append(_case("MAID logistic, breast cancer (CV log-loss)", seconds,
                       logistic.n_iter_, -logistic.best_score_, 1e-4))
    return cases


def _family_ot(threads):
    from mmopt.ot import Sinkhorn, SinkhornNewtonSparse, sinkhorn, sinkhorn_newton_sparse

    a, b, C = _ot_data(1000)
    cases = []
    # The sparsification budget is `nu` before issue 14 and `drop_budget` after.
    budget = _spelling(SinkhornNewtonSparse, 1e-3, "drop_budget", "nu")
    for reg in (1e-2, 1e-3):
        seconds, res = _timed(lambda reg=reg: sinkhorn(a, b, C, reg, tol=1e-9, max_iter=20_000,
                                                       **_threads(Sinkhorn, threads)))
        cases.append(_case(f"sinkhorn, 1000 x 1000, reg {reg:g}", seconds, res.nit, res.fun,
                           1e-6, res.status))
        seconds, res = _timed(lambda reg=reg: sinkhorn_newton_sparse(
            a, b, C, reg, tol=1e-9, max_iter=20_000, **budget,
            **_threads(SinkhornNewtonSparse, threads)))
        cases.append(_case(f"SNS, 1000 x 1000, reg {reg:g}", seconds, res.nit, res.fun, 1e-6,
                           res.status))
    return cases


def _family_ot_batched(threads):
    import importlib.util

    if importlib.util.find_spec("mmopt.ot._batched") is None:
        raise Absent("no batched Sinkhorn (b of shape (m, k))")
    from mmopt.ot import Sinkhorn, sinkhorn

    rng = np.random.default_rng(0)
    a, _, C = _ot_data(500)
    B = rng.dirichlet(np.ones(500), size=8).T
    seconds, res = _timed(lambda: sinkhorn(a, B, C, 1e-2, tol=1e-9,
                                           **_threads(Sinkhorn, threads)))
    return [_case("batched sinkhorn, 500 x 500, k = 8, reg 0.01 (sum of costs)", seconds,
                  res.nit, np.sum(res.fun), 1e-6, np.max(res.status))]


def _family_partial(threads):
    import mmopt.ot as ot

    if not hasattr(ot, "partial_ot"):
        raise Absent("no partial/unbalanced OT")
    a, b, C = _ot_data(1000)
    seconds, res = _timed(lambda: ot.partial_ot(a, b, C, mass=0.7, reg=1e-2, tol=1e-9,
                                                **_threads(ot.PartialSinkhorn, threads)))
    cases = [_case("partial OT, 1000 x 1000, mass 0.7, reg 0.01", seconds, res.nit, res.fun,
                   1e-6, res.status)]
    seconds, res = _timed(lambda: ot.unbalanced_sinkhorn(
        a, b, C, 1e-2, 1.0, tol=1e-9, **_threads(ot.UnbalancedSinkhorn, threads)))
    cases.append(_case("unbalanced, 1000 x 1000, reg 0.01, reg_m 1", seconds, res.nit,
                       res.fun, 1e-6, res.status))
    return cases


def _family_sparse(threads):
    from mmopt.ot import SparsityConstrainedOT, sparsity_constrained_ot

    a, b, C = _ot_data(300)
    seconds, res = _timed(lambda: sparsity_constrained_ot(
        a, b, C, 5, 1e-2, **_threads(SparsityConstrainedOT, threads)))
    return [_case("sparsity-constrained OT, 300 x 300, k = 5, reg 0.01", seconds, res.nit,
                  res.fun, 1e-5, res.status)]


def _family_spare(threads):
    import mmopt.registration as registration

    if not hasattr(registration, "SPARE"):
        raise Absent("no non-rigid registration")
    from mmopt.datasets import make_nonrigid_problem

    rng = np.random.default_rng(0)
    # A small bumpy sheet, sampled here (the tree's scan data differ between versions).
    uv = rng.uniform(-1.0, 1.0, size=(800, 2))
    points = np.column_stack([uv, 0.1 * np.sin(3.0 * uv[:, 0]) * np.cos(2.0 * uv[:, 1])])
    data = make_nonrigid_problem(points, kind="bend", random_state=0)
    seconds, res = _timed(lambda: registration.SPARE(max_iter=30).solve(data.problem))
    return [_case("SPARE, 800-point sheet, bend", seconds, res.nit, res.fun, 1e-4,
                  res.status)]


def _family_moe(threads):
    import mmopt.mm as mm

    if not hasattr(mm, "MixtureOfExperts"):
        raise Absent("no mixture of experts")
    from mmopt.datasets import make_moe_regression

    X, y, _ = make_moe_regression(5000, 2, 3, noise=0.3, random_state=0)
    est = mm.MixtureOfExperts(3, n_init=1, random_state=0)
    seconds, _ = _timed(lambda: est.fit(X, y))
    return [_case("mixture of experts, 5000 x 2, 3 experts (-mean log-lik)", seconds,
                  est.n_iter_, -est.score(X, y), 1e-6)]


def _family_sso(threads):
    import mmopt.mm as mm

    if not hasattr(mm, "SSOClassifier"):
        raise Absent("no SSO")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5000, 50))
    y = (X @ rng.standard_normal(50) + rng.standard_normal(5000) > 0).astype(int)
    est = mm.SSOClassifier(alpha=1e-3, random_state=0)
    seconds, _ = _timed(lambda: est.fit(X, y))
    # The mean log-loss, computed here.
    z = X @ est.coef_.ravel() + est.intercept_[0]
    objective = np.mean(np.logaddexp(0.0, z) - y * z)
    return [_case("SSO logistic, 5000 x 50, full batch (mean log-loss)", seconds,
                  est.n_iter_, objective, 1e-4)]


def _family_sp2ot(threads):
    import mmopt.ot as ot

    if not hasattr(ot, "ImbalancedOTClustering"):
        raise Absent("no SP2OT clustering")
    from sklearn.datasets import make_blobs
    from sklearn.metrics import adjusted_rand_score

    X, truth = make_blobs([300, 100, 30], centers=[[0, 0], [4, 0], [0, 4]], random_state=0)
    est = ot.ImbalancedOTClustering(3, random_state=0)
    seconds, labels = _timed(lambda: est.fit_predict(X))
    return [_case("SP2OT clustering, 430 blobs 300/100/30 (ARI vs the truth)", seconds, None,
                  adjusted_rand_score(truth, labels), 0.0, atol=1e-6)]


def _family_pointcloud(threads):
    import mmopt.ot as ot

    if not hasattr(ot, "pointcloud_sinkhorn"):
        raise Absent("no point-cloud OT")
    rng = np.random.default_rng(0)
    cases = []
    # 10^4 at reg 1e-2 (the sharp regime) takes ~100 s of one core: it runs at reg 0.1 here.
    for n, reg in ((1000, 1e-2), (3000, 1e-2), (10_000, 1e-1)):
        x, y = rng.uniform(size=(n, 3)), rng.uniform(size=(n, 3)) + [0.2, 0.0, 0.0]
        seconds, res = _timed(lambda x=x, y=y, reg=reg: ot.pointcloud_sinkhorn(
            x, y, reg=reg, tol=1e-6, **_threads(ot.PointCloudSinkhorn, threads)))
        cases.append(_case(f"point-cloud sinkhorn, {n} 3-D points, reg {reg:g}", seconds,
                           res.nit, res.fun, 1e-5, res.status))
    return cases


FAMILIES = {
    "mm": _family_mm,
    "icp": _family_icp,
    "bcd": _family_bcd,
    "bilevel": _family_bilevel,
    "ot": _family_ot,
    "ot_batched": _family_ot_batched,
    "partial": _family_partial,
    "sparse": _family_sparse,
    "spare": _family_spare,
    "moe": _family_moe,
    "sso": _family_sso,
    "sp2ot": _family_sp2ot,
    "pointcloud": _family_pointcloud,
}


# ---------------------------------------------------------------------------- worker
def _worker(family: str, threads: int, root: str) -> None:
    import warnings

    import mmopt

    where = Path(mmopt.__file__).resolve()
    if Path(root).resolve() not in where.parents:
        raise SystemExit(f"mmopt imported from {where}, not from {root}")
    warnings.simplefilter("ignore")
    try:
        out = {"cases": FAMILIES[family](threads)}
    except Absent as exc:
        out = {"absent": str(exc)}
    print(_MARK + json.dumps(out), flush=True)


def _run_one(root: str, family: str, threads: int) -> dict:
    # No bytecode written into the trees compared (the "before" one may be read-only).
    env = dict(os.environ, PYTHONPATH=str(Path(root).resolve()), PYTHONDONTWRITEBYTECODE="1")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    with tempfile.TemporaryDirectory() as cwd:  # nothing in the working folder shadows mmopt
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", family,
             "--threads", str(threads), "--root", root],
            cwd=cwd, env=env, capture_output=True, text=True,
        )
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}


def _pair(family: str, repeat: int, args) -> tuple[str, int, dict]:
    trees = [("before", args.before), ("after", args.after)]
    if repeat % 2:
        trees.reverse()
    return family, repeat, {label: _run_one(root, family, args.threads) for label, root in trees}


def _agree(before: dict, after: dict) -> str:
    x, y = before["objective"], after["objective"]
    atol, rtol = after["atol"], after["rtol"]
    ok = abs(x - y) <= atol + rtol * max(1.0, abs(x))
    tol = f"abs {atol:g}" if atol else f"rel {rtol:g}"
    note = "" if before["status"] == after["status"] else ", **status differs**"
    return f"{'yes' if ok else '**no**'} ({tol}){note}"


def _fmt(value, spec=".3g"):
    return "-" if value is None else format(value, spec)


def _table(results: dict, families: list[str]) -> str:
    head = ("| family | solve | before s | after s | after / before | iterations | status | "
            "objective before | objective after | agree (tol) |")
    lines = [head, "|" + "---|" * 10]
    for family in families:
        runs = results[family]  # {label: [worker output per repeat]}
        problems = [out.get("error") for label in runs for out in runs[label] if "error" in out]
        if problems:
            lines.append(f"| {family} | error: {problems[0]} |" + " |" * 8)
            continue
        absent = {label: runs[label][0].get("absent") for label in runs}
        present = [label for label in ("before", "after") if not absent[label]]
        if not present:
            lines.append(f"| {family} | absent from both trees |" + " |" * 8)
            continue
        names = [c["case"] for c in runs[present[0]][0]["cases"]]
        for i, name in enumerate(names):
            med, cases = {}, {}
            for label in present:
                cs = [out["cases"][i] for out in runs[label]]
                med[label] = statistics.median(c["seconds"] for c in cs)
                cases[label] = cs[0]
            nit = " / ".join(_fmt(cases[label]["nit"], "d") for label in present)
            status = " / ".join(_fmt(cases[label]["status"], "d") for label in present)
            obj = {label: cases[label]["objective"] for label in present}
            if len(present) == 2:
                ratio = f"{med['after'] / med['before']:.2f}"
                agree = _agree(cases["before"], cases["after"])
            else:
                missing = "before" if "before" not in present else "after"
                ratio, agree = f"absent {missing}: {absent[missing]}", "-"
            lines.append(
                f"| {family} | {name} | {_fmt(med.get('before'))} | {_fmt(med.get('after'))} "
                f"| {ratio} | {nit} | {status} | {_fmt(obj.get('before'), '.10g')} "
                f"| {_fmt(obj.get('after'), '.10g')} | {agree} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="source root of the 'before' tree (built in place)")
    parser.add_argument("--after", default=".", help="source root of the 'after' tree")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP/OpenBLAS/MKL threads and the solvers' n_threads")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help=f"comma-separated, from: {', '.join(FAMILIES)}")
    parser.add_argument("--jobs", type=int, default=1,
                        help="parallel workers (each runs a family's before/after pair)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.threads, args.root)
        return 0
    if not args.before:
        parser.error("--before is required")
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    for root in (args.before, args.after):
        if not (Path(root) / "mmopt" / "__init__.py").is_file():
            parser.error(f"{root} is not a source root (no mmopt/__init__.py)")
    # The workers run in a scratch folder: they get absolute roots.
    args.before, args.after = (str(Path(root).resolve()) for root in (args.before, args.after))
    start = time.perf_counter()
    tasks = [(f, r) for r in range(args.repeats) for f in families]
    results = {f: {"before": [None] * args.repeats, "after": [None] * args.repeats}
               for f in families}
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for family, repeat, pair in pool.map(lambda t: _pair(*t, args), tasks):
            for label, out in pair.items():
                results[family][label][repeat] = out
    print(f"before: {args.before}  after: {args.after}  "
          f"repeats: {args.repeats}  threads: {args.threads}  jobs: {args.jobs}  "
          f"wall: {time.perf_counter() - start:.0f} s\n")
    print(_table(results, families))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
