"""Solver names, and the front doors :func:`solve` and :func:`solve_many`."""

from __future__ import annotations

from collections.abc import Iterable

from mmopt._core.problem import Problem
from mmopt._core.result import Result
from mmopt._core.solver import Solver
from mmopt._core.threads import single_threaded

__all__ = ["SOLVERS", "register_solver", "get_solver", "solve", "solve_many"]

#: Registered solver classes by name; families add theirs at import.
SOLVERS: dict[str, type[Solver]] = {}


def register_solver(cls: type[Solver]) -> type[Solver]:
    """Class decorator: make ``cls`` reachable as ``solve(problem, solver=cls.name)``."""
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError("register_solver expects a Solver subclass.")
    existing = SOLVERS.get(cls.name)
    if existing is not None and not _same_definition(existing, cls):
        raise ValueError(f"a solver named {cls.name!r} is already registered ({existing}).")
    SOLVERS[cls.name] = cls
    return cls


def _same_definition(first: type, second: type) -> bool:
    # A module imported a second time (pytest's importlib mode running a module's doctests)
    # defines the class again: that is not a name clash.
    import inspect

    try:
        same_file = inspect.getfile(first) == inspect.getfile(second)
    except TypeError:
        same_file = False
    return first is second or (first.__qualname__ == second.__qualname__ and same_file)


def get_solver(solver, problem=None, **options) -> Solver:
    """Build the solver instance that :func:`solve` would use.

    ``solver`` may be a registered name, a :class:`Solver` subclass or instance (an instance
    is cloned, never modified), or None for the problem's default solver.
    """
    if solver is None:
        if problem is None or getattr(problem, "default_solver", None) is None:
            raise ValueError(
                f"solver must be given: {type(problem).__name__} has no default solver."
            )
        solver = problem.default_solver
    if isinstance(solver, str):
        if solver not in SOLVERS:
            known = ", ".join(sorted(SOLVERS))
            raise ValueError(f"solver must be one of {known}; got {solver!r}.")
        cls, params = SOLVERS[solver], {}
    elif isinstance(solver, type) and issubclass(solver, Solver):
        cls, params = solver, {}
    elif isinstance(solver, Solver):
        cls, params = type(solver), solver.get_params(deep=False)
    else:
        raise TypeError(
            "solver must be a registered name, a Solver subclass or instance, or None; "
            f"got {type(solver).__name__}."
        )
    valid = cls._get_param_names()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"unknown option{'s' if len(unknown) > 1 else ''} "
            + ", ".join(repr(u) for u in unknown)
            + f" for solver {cls.name!r}; valid options: {', '.join(valid)}."
        )
    params.update(options)
    return cls(**params)


def solve(problem: Problem, solver=None, *, x0=None, **options) -> Result:
    """Solve ``problem`` with the named solver (or the problem's default), like ``minimize``.

    Parameters
    ----------
    problem : Problem
        A problem instance of any family.
    solver : str, Solver subclass or instance, optional
        Which solver to use; by default ``problem.default_solver``. The names are the keys of
        ``mmopt.SOLVERS``.
    x0 : array-like, optional
        Starting point in the solver's variable; the problem's default when None.
    **options
        Keyword options of the solver (``tol``, ``max_iter``, ``callback``, ``verbose``, ...).
        An unknown option raises ``TypeError`` naming it and the solver.

    Returns
    -------
    Result

    Examples
    --------
    >>> import mmopt
    >>> from mmopt.mm import MMProblem
    >>> problem = MMProblem(
    ...     objective=lambda x: float(np.sum((x - 3.0) ** 2)),
    ...     surrogate_minimizer=lambda x: 0.5 * (x + 3.0),
    ...     x0=np.zeros(2),
    ... )
    >>> res = mmopt.solve(problem, solver="mm", tol=1e-12)
    >>> res.solver, np.round(res.x, 6)
    ('mm', array([3., 3.]))
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be an mmopt Problem, got {type(problem).__name__}.")
    instance = get_solver(solver, problem, **options)
    return instance.solve(problem, x0=x0)


def _solve_in_worker(problem, solver, x0, options):
    # Workers already run side by side: keep each one's kernels and BLAS single-threaded.
    with single_threaded():
        return solve(problem, solver, x0=x0, **options)


def solve_many(
    problems: Iterable[Problem],
    solver=None,
    *,
    x0s: Iterable | None = None,
    n_jobs: int | None = None,
    **options,
) -> list[Result]:
    """Solve independent problems in parallel through joblib.

    Any joblib backend works, so inside ``joblib.parallel_config(backend="dask")`` (with a
    ``dask.distributed.Client`` open) the problems are spread over a Dask cluster.

    Parameters
    ----------
    problems : iterable of Problem
        The problems; they are sent to the workers, so they must be picklable
        (cloudpickle handles lambdas with the default ``loky`` backend and with Dask).
    solver : str, Solver subclass or instance, optional
        As in :func:`solve`, shared by all problems.
    x0s : iterable of array-like, optional
        One starting point per problem.
    n_jobs : int, optional
        Number of parallel jobs, as in joblib (``None`` means 1 unless a
        ``joblib.parallel_config`` context says otherwise; ``-1`` all CPUs).
    **options
        Solver options, shared by all problems.

    Returns
    -------
    list of Result
        In the order of ``problems``.

    Examples
    --------
    >>> import mmopt
    >>> from mmopt.mm import MMProblem
    >>> problems = [
    ...     MMProblem(
    ...         objective=lambda x, c=c: float(np.sum((x - c) ** 2)),
    ...         surrogate_minimizer=lambda x, c=c: 0.5 * (x + c),
    ...         x0=np.zeros(1),
    ...     )
    ...     for c in (1.0, 2.0)
    ... ]
    >>> [round(float(r.x[0]), 4) for r in mmopt.solve_many(problems, tol=1e-10, n_jobs=2)]
    [1.0, 2.0]
    """
    from joblib import Parallel, delayed

    if isinstance(problems, Problem):
        raise TypeError("problems must be an iterable of Problem instances; wrap one in a list.")
    try:
        problems = list(problems)
    except TypeError:
        raise TypeError(
            f"problems must be an iterable of Problem instances, got {type(problems).__name__}."
        ) from None
    if x0s is not None and (isinstance(x0s, str | bytes) or not hasattr(x0s, "__iter__")):
        raise TypeError(f"x0s must be an iterable of starts or None, got {type(x0s).__name__}.")
    for i, problem in enumerate(problems):
        if not isinstance(problem, Problem):
            raise TypeError(
                f"problems[{i}] must be an mmopt Problem, got {type(problem).__name__}."
            )
    starts = [None] * len(problems) if x0s is None else list(x0s)
    if len(starts) != len(problems):
        raise ValueError(
            f"x0s must hold one start per problem: got {len(starts)} for {len(problems)}."
        )
    # Fail early, in the caller's process, on unknown options or a wrong solver name.
    for problem in problems:
        get_solver(solver, problem, **options).check_problem(problem)
    return Parallel(n_jobs=n_jobs)(
        delayed(_solve_in_worker)(problem, solver, x0, options)
        for problem, x0 in zip(problems, starts)
    )
