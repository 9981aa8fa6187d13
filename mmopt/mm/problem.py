"""The majorization-minimization problem protocol (defined in :mod:`mmopt._core.mm`, which
other families build on)."""

from mmopt._core.mm import MMProblem

__all__ = ["MMProblem"]
