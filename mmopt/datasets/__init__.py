"""Data for mmopt's examples, tests and benchmarks: real data loaders and generators.

The data layer returns arrays and imports no solver family (the families may import it):
problems are built on the family's side, e.g.
:func:`mmopt.registration.make_registration_problem`.
"""

from mmopt.datasets._generators import load_diabetes_with_outliers, make_regression_with_outliers
from mmopt.datasets._ot import make_ot_problem
from mmopt.datasets._scans import load_scan_pair, make_registration_clouds

__all__ = [
    "load_diabetes_with_outliers",
    "load_scan_pair",
    "make_ot_problem",
    "make_registration_clouds",
    "make_regression_with_outliers",
]
