"""Warnings raised by mmopt solvers."""

from sklearn.exceptions import ConvergenceWarning as _SklearnConvergenceWarning


class ConvergenceWarning(_SklearnConvergenceWarning):
    """A solver stopped before its stopping test was met.

    Raised for ``max_iter`` reached (status 1) and numerical failure (status 4). It subclasses
    :class:`sklearn.exceptions.ConvergenceWarning`, so filters written for scikit-learn catch it.
    """
