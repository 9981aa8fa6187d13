"""Data for mmopt's examples, tests and benchmarks: real data loaders and generators."""

from mmopt.datasets._generators import load_diabetes_with_outliers, make_regression_with_outliers

__all__ = ["load_diabetes_with_outliers", "make_regression_with_outliers"]
