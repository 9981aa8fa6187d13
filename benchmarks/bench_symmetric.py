"""Rigid ICP metrics on the shipped scan pair: symmetric point-to-plane vs point-to-plane and
point-to-point (accuracy against the reference transform, iterations, time).

Run: python benchmarks/bench_symmetric.py, or ``benchmarks/run.py --only symmetric``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from _common import markdown_table

from mmopt.datasets import load_scan_pair
from mmopt.registration import ICP, RegistrationProblem
from mmopt.registration.se3 import rotation_angle

METRICS = ("point_to_point", "point_to_plane", "symmetric")


def run(quick: bool = False) -> str:
    """The Markdown section of BENCHMARKS.md."""
    warnings.simplefilter("ignore")
    scan = load_scan_pair()
    step = 4 if quick else 1
    reference = scan.reference_transform
    rows = []
    for normals in ("given", "estimated"):
        kwargs = {}
        if normals == "given":
            kwargs = {"source_normals": scan.source_normals[::step],
                      "target_normals": scan.target_normals}
        for init in ("centroids", "identity"):
            for metric in METRICS:
                problem = RegistrationProblem(scan.source[::step], scan.target, **kwargs)
                start = time.perf_counter()
                res = ICP(metric=metric, init=init).solve(problem)
                seconds = time.perf_counter() - start
                rows.append({
                    "normals": normals, "start": init, "metric": metric,
                    "rotation error (deg)": float(np.degrees(rotation_angle(
                        res.rotation.T @ reference[:3, :3]))),
                    "translation error": float(np.linalg.norm(res.translation
                                                              - reference[:3, 3])),
                    "iterations": res.nit, "time (s)": seconds, "status": res.status,
                })
    return "\n".join([
        "## Rigid ICP metrics: symmetric point-to-plane", "",
        "`ICP(metric=...)` at its other defaults (Welsch loss, annealed scale, Anderson) on "
        f"the shipped scan pair ({scan.source[::step].shape[0]:,} source points); errors "
        "against the pair's reference transform (translation in data units, diagonal "
        "~1.9); one run each (times indicative only).", "",
        markdown_table(rows),
    ])


if __name__ == "__main__":
    print(run())
