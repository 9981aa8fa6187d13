"""Majorization-minimization (MM) with safeguarded Anderson acceleration.

:class:`MMProblem` is the protocol (an objective and the minimizer of a majorizing surrogate),
:class:`MMSolver` the solver, and the built-in problems come with scikit-learn estimators.
"""

from mmopt.mm.problem import MMProblem
from mmopt.mm.solver import MMSolver

__all__ = ["MMProblem", "MMSolver"]
