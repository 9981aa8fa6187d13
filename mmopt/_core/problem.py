"""The base class of every problem."""

from __future__ import annotations

from typing import ClassVar

__all__ = ["Problem"]


class Problem:
    """Base class of mmopt problems.

    A problem holds validated, read-only data and the functions a solver evaluates; it does not
    iterate. Subclasses (usually frozen dataclasses) check and convert their inputs once, at
    construction, raising ``ValueError``/``TypeError`` messages that name the argument.

    Attributes
    ----------
    default_solver : str
        Registered name of the solver :func:`mmopt.solve` uses when none is given.

    Examples
    --------
    >>> from mmopt.mm import MMProblem
    >>> problem = MMProblem(
    ...     objective=lambda x: float(np.sum((x - 1.0) ** 2)),
    ...     surrogate_minimizer=lambda x: 0.5 * (x + 1.0),
    ...     x0=np.zeros(3),
    ... )
    >>> isinstance(problem, Problem)
    True
    """

    default_solver: ClassVar[str | None] = None

    def solve(self, solver=None, **options):
        """Solve this problem; shorthand for ``mmopt.solve(self, solver, **options)``."""
        from mmopt._core.registry import solve

        return solve(self, solver, **options)

    def _set_fields(self, **values) -> None:
        """Store checked, converted values in place of the raw ones, once, at construction
        (a frozen dataclass refuses plain assignment)."""
        for name, value in values.items():
            object.__setattr__(self, name, value)
