"""The majorization-minimization solver (defined in :mod:`mmopt._core.mm`, which other
families build on)."""

from mmopt._core.mm import MMSolver

__all__ = ["MMSolver"]
