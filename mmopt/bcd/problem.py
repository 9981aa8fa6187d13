"""The BCD problem: a smooth datafit plus a separable penalty."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmopt._core.problem import Problem
from mmopt.bcd.datafits import Datafit
from mmopt.bcd.penalties import NoPenalty, Penalty

__all__ = ["BCDProblem"]


@dataclass(frozen=True, eq=False)
class BCDProblem(Problem):
    """Minimize ``F(x) = f(x) + g(x)``, ``f`` a smooth datafit and ``g`` a separable penalty.

    Parameters
    ----------
    datafit : Datafit
        :class:`~mmopt.bcd.LeastSquares`, :class:`~mmopt.bcd.Logistic`,
        :class:`~mmopt.bcd.Multinomial` or :class:`~mmopt.bcd.LabelPropagationQuadratic`.
    penalty : Penalty, default=NoPenalty()
        :class:`~mmopt.bcd.NoPenalty`, :class:`~mmopt.bcd.L2`, :class:`~mmopt.bcd.L1`,
        :class:`~mmopt.bcd.L1Positive` or :class:`~mmopt.bcd.ElasticNet`.

    Examples
    --------
    >>> from mmopt.bcd import BCDProblem, LeastSquares, L1
    >>> problem = BCDProblem(LeastSquares(np.eye(3), [3.0, -0.5, 1.0]), L1(0.1))
    >>> res = problem.solve(tol=1e-10)
    >>> np.round(res.x, 6)
    array([ 2.7, -0.2,  0.7])
    """

    datafit: Datafit
    penalty: Penalty = field(default_factory=NoPenalty)

    default_solver = "bcd"

    def __post_init__(self):
        if not isinstance(self.datafit, Datafit):
            raise TypeError(
                f"datafit must be a mmopt.bcd Datafit, got {type(self.datafit).__name__}."
            )
        if not isinstance(self.penalty, Penalty):
            raise TypeError(
                f"penalty must be a mmopt.bcd Penalty, got {type(self.penalty).__name__}."
            )

    @property
    def n_coords(self) -> int:
        """Number of coordinates of ``x``."""
        return self.datafit.n_coords

    def objective(self, x) -> float:
        """``F(x)``."""
        x = np.asarray(x, dtype=float)
        return self.datafit.value(x, self.datafit.init_aux(x)) + self.penalty.value(x)
