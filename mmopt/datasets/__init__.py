"""Data for mmopt's examples, tests and benchmarks: real data loaders and generators.

The data layer sits above the solver families: it may import their problem classes (so that
a generator can return a ready problem), and no family imports it (their ``_demo`` modules,
run by the CLI, aside).
"""

from mmopt.datasets._bcd import make_lattice_graph, make_sparse_least_squares
from mmopt.datasets._generators import load_diabetes_with_outliers, make_regression_with_outliers
from mmopt.datasets._moe import make_moe_regression
from mmopt.datasets._nonrigid import make_nonrigid_problem
from mmopt.datasets._ot import make_image_histograms, make_ot_problem
from mmopt.datasets._scans import (
    load_scan_pair,
    make_registration_clouds,
    make_registration_problem,
)

__all__ = [
    "load_diabetes_with_outliers",
    "load_scan_pair",
    "make_image_histograms",
    "make_lattice_graph",
    "make_moe_regression",
    "make_nonrigid_problem",
    "make_ot_problem",
    "make_registration_clouds",
    "make_registration_problem",
    "make_regression_with_outliers",
    "make_sparse_least_squares",
]
