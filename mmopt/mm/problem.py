"""The majorization-minimization problem protocol."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np

from mmopt._core.problem import Problem
from mmopt._core.validation import check_array, check_callable

__all__ = ["MMProblem"]


class MMProblem(Problem):
    """A problem solvable by majorization-minimization.

    To minimize ``F``, MM builds at ``x`` a surrogate ``Q(.|x) >= F`` that touches ``F`` at
    ``x`` and moves to its minimizer ``G(x) = argmin Q(.|x)``; ``F`` then never increases.
    The problem supplies ``F`` (:meth:`objective`) and ``G`` (:meth:`surrogate_minimizer`),
    either as callables given here or by overriding the methods in a subclass (as the built-in
    problems do). Iterates are flat float vectors.

    Parameters
    ----------
    objective : callable ``objective(x) -> float``
        The function ``F`` to minimize.
    surrogate_minimizer : callable ``surrogate_minimizer(x) -> ndarray``
        ``G(x)``, the minimizer of the majorizer built at ``x``; same shape as ``x``.
    x0 : array-like of shape (d,)
        Default starting point.
    project : callable ``project(x) -> ndarray``, optional
        Maps an extrapolated (Anderson) point back into the domain of ``F`` (for example
        clipping to the non-negative orthant). Identity when None.

    Notes
    -----
    Subclasses may also override :meth:`mm_step`, which returns ``(G(x), F(x))`` together:
    most MM problems compute ``F(x)`` almost for free while building the surrogate at ``x``
    (the residuals of IRLS, the products of NMF), and the solver only ever asks for both.
    It may return a third element, ``(||G(x) - x||^2, ||x||^2)``, when it gets those in the
    same pass; the solver then skips reading both vectors again for its stopping test.

    Examples
    --------
    Minimize ``F(x) = sum(log(cosh(x - 2)))`` with the quadratic majorizer of curvature 1:

    >>> import numpy as np
    >>> from mmopt.mm import MMProblem
    >>> problem = MMProblem(
    ...     objective=lambda x: float(np.sum(np.log(np.cosh(x - 2.0)))),
    ...     surrogate_minimizer=lambda x: x - np.tanh(x - 2.0),
    ...     x0=np.zeros(3),
    ... )
    >>> res = problem.solve(tol=1e-10)
    >>> np.round(res.x, 6)
    array([2., 2., 2.])
    """

    default_solver = "mm"

    def __init__(
        self,
        objective: Callable[[np.ndarray], float],
        surrogate_minimizer: Callable[[np.ndarray], np.ndarray],
        x0,
        *,
        project: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self._objective = check_callable(objective, "objective", allow_none=False)
        self._surrogate_minimizer = check_callable(
            surrogate_minimizer, "surrogate_minimizer", allow_none=False
        )
        self._project = check_callable(project, "project")
        self.x0 = check_array(x0, "x0", ndim=1)

    def objective(self, x: np.ndarray) -> float:
        """Return ``F(x)``."""
        value = self._objective(x)
        if isinstance(value, bool) or not isinstance(value, numbers.Real | np.ndarray):
            raise TypeError(
                f"objective must return a real number, got {type(value).__name__}."
            )
        if np.ndim(value) != 0 and np.size(value) != 1:
            raise TypeError(
                f"objective must return a scalar, got an array of shape {np.shape(value)}."
            )
        return float(np.asarray(value).reshape(()))

    def surrogate_minimizer(self, x: np.ndarray) -> np.ndarray:
        """Return ``G(x)``, the minimizer of the majorizer of ``F`` built at ``x``."""
        return _as_iterate(self._surrogate_minimizer(x), "surrogate_minimizer", x)

    def project(self, x: np.ndarray) -> np.ndarray:
        """Map an extrapolated point back into the domain (identity by default)."""
        if getattr(self, "_project", None) is None:
            return x
        return _as_iterate(self._project(x), "project", x)

    def mm_step(self, x: np.ndarray) -> tuple:
        """Return ``(G(x), F(x))``; override to share work between the two.

        An override may append ``(||G(x) - x||^2, ||x||^2)`` as a third element.
        """
        return self.surrogate_minimizer(x), self.objective(x)

    def initial_point(self) -> np.ndarray:
        """The default starting point."""
        return self.x0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(d={np.size(self.initial_point())})"


def _as_iterate(value, name: str, x: np.ndarray) -> np.ndarray:
    """A user callable's output as a float vector shaped like ``x``, or an error naming it."""
    if value is None:
        raise TypeError(f"{name} must return an array shaped like x, got None.")
    try:
        out = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must return an array of real numbers, got {type(value).__name__}."
        ) from None
    if out.shape != np.shape(x):
        raise ValueError(
            f"{name}: the surrogate minimizer returned shape {out.shape} for an iterate of "
            f"shape {np.shape(x)}."
        )
    return out
