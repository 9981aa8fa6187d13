"""mmopt: majorization-minimization and friends behind one scipy-style API.

The front door is :func:`mmopt.solve` (like ``scipy.optimize.minimize``); each family
(:mod:`mmopt.mm`, ...) adds problems, solvers, one-call functions and scikit-learn
estimators that all return or hold a :class:`mmopt.Result`.
"""

# Importing the families registers their solvers.
from mmopt import bcd, bilevel, mm, ot, registration
from mmopt._core import (
    SOLVERS,
    AndersonAcceleration,
    ConvergenceWarning,
    Problem,
    Result,
    Solver,
    solve,
    solve_many,
)
from mmopt._core.threads import openmp_enabled

__version__ = "0.1.0.dev0"

__all__ = [
    "SOLVERS",
    "AndersonAcceleration",
    "ConvergenceWarning",
    "Problem",
    "Result",
    "Solver",
    "__version__",
    "bcd",
    "bilevel",
    "mm",
    "ot",
    "openmp_enabled",
    "registration",
    "solve",
    "solve_many",
]
