"""Data for mmopt's examples, tests and benchmarks: real data loaders and generators."""

from mmopt.datasets._generators import load_diabetes_with_outliers, make_regression_with_outliers
from mmopt.datasets._nonrigid import make_nonrigid_problem
from mmopt.datasets._ot import make_ot_problem
from mmopt.datasets._scans import load_scan_pair, make_registration_problem

__all__ = [
    "load_diabetes_with_outliers",
    "load_scan_pair",
    "make_nonrigid_problem",
    "make_ot_problem",
    "make_registration_problem",
    "make_regression_with_outliers",
]
