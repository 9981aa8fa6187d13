"""The shared core: problem, solver and result API, Anderson acceleration, validation."""

from mmopt._core.anderson import AndersonAcceleration
from mmopt._core.exceptions import ConvergenceWarning
from mmopt._core.problem import Problem
from mmopt._core.registry import SOLVERS, get_solver, register_solver, solve, solve_many
from mmopt._core.result import STATUS_MESSAGES, Result, Status
from mmopt._core.solver import Solver, SolverState

__all__ = [
    "SOLVERS",
    "STATUS_MESSAGES",
    "AndersonAcceleration",
    "ConvergenceWarning",
    "Problem",
    "Result",
    "Solver",
    "SolverState",
    "Status",
    "get_solver",
    "register_solver",
    "solve",
    "solve_many",
]
