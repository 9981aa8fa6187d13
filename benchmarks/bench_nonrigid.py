"""SPARE vs pycpd's DeformableRegistration (CPD) on deformations of the shipped scan.

Run: python benchmarks/bench_nonrigid.py [subsample]   (pycpd optional: pip install pycpd)
Prints, per problem, the RMS error to the true positions and the time of each method.
"""

import sys
import time
import warnings

import numpy as np

from mmopt.datasets import load_scan_pair, make_nonrigid_problem
from mmopt.registration import SPARE


def rms(x, y):
    return float(np.sqrt(np.mean(np.sum((x - y) ** 2, axis=1))))


def main(sub: int = 4) -> None:
    warnings.simplefilter("ignore")
    scan = load_scan_pair()
    points, normals = scan.source[::sub], scan.source_normals[::sub]
    try:
        from pycpd import DeformableRegistration
    except ImportError:
        DeformableRegistration = None
    cases = [(kind, 0.0, 1.0) for kind in ("bend", "twist", "bumps")]
    cases += [("bend", 0.2, 0.7), ("bumps", 0.2, 0.7)]
    print(f"{points.shape[0]} source points")
    for kind, outliers, overlap in cases:
        data = make_nonrigid_problem(points, normals, kind=kind, outlier_fraction=outliers,
                                     overlap=overlap, random_state=0)
        source, target, truth = data.problem.source, data.problem.target, data.ground_truth
        line = (f"{kind:6s} outliers={outliers:.1f} overlap={overlap:.1f}  "
                f"start {rms(source, truth):.4f}")
        start = time.perf_counter()
        res = SPARE(max_iter=30).solve(data.problem)
        line += f"  SPARE {rms(res.points, truth):.4f} ({time.perf_counter() - start:.1f}s)"
        if DeformableRegistration is not None:
            start = time.perf_counter()
            moved, _ = DeformableRegistration(X=target, Y=source).register()
            line += f"  CPD {rms(moved, truth):.4f} ({time.perf_counter() - start:.1f}s)"
        print(line, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
