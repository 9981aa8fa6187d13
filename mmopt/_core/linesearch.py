"""Backtracking line searches: the one halving loop every family's step uses.

A step proposes a direction; :func:`backtracking` tries ``step, step * shrink, ...`` until a
test accepts the trial point. What is tried (``trial``) and what is accepted (``accept``)
are the caller's: the trial returns whatever the caller needs later (a value, a new iterate,
a marginal error), so the accepted trial is never computed twice. :func:`armijo` builds the
usual sufficient-decrease test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LineSearchResult", "armijo", "backtracking"]


@dataclass(frozen=True)
class LineSearchResult:
    """The outcome of :func:`backtracking`.

    Attributes
    ----------
    step : float
        The accepted step, or the last one tried when none was accepted.
    trial : object
        What ``trial(step)`` returned for that step.
    n_trials : int
        Number of calls to ``trial``.
    success : bool
        Whether ``accept`` accepted a step.
    """

    step: float
    trial: Any
    n_trials: int
    success: bool


def backtracking(
    trial: Callable[[float], Any],
    accept: Callable[[float, Any], bool],
    *,
    step: float = 1.0,
    shrink: float = 0.5,
    max_trials: int = 30,
) -> LineSearchResult:
    """Try ``step``, ``step * shrink``, ... until ``accept(step, trial(step))`` holds.

    Parameters
    ----------
    trial : callable
        ``trial(step) -> t``: evaluates the trial point (any object the caller wants back).
    accept : callable
        ``accept(step, t) -> bool``: the acceptance test, e.g. :func:`armijo`.
    step : float, default=1.0
        The first step tried.
    shrink : float, default=0.5
        Factor in (0, 1) between successive steps.
    max_trials : int, default=30
        Most trials; the search fails after them.

    Returns
    -------
    LineSearchResult

    Examples
    --------
    >>> from mmopt._core.linesearch import armijo, backtracking
    >>> f = lambda x: (x - 0.1) ** 2          # from x = 0 along d = 1: slope -0.2
    >>> out = backtracking(lambda t: f(t), armijo(f(0.0), -0.2))
    >>> out.success, out.step, out.n_trials
    (True, 0.125, 4)
    """
    if not 0.0 < shrink < 1.0:
        raise ValueError(f"shrink must lie in (0, 1); got {shrink!r}.")
    if max_trials < 1:
        raise ValueError(f"max_trials must be at least 1; got {max_trials!r}.")
    value = None
    for n_trials in range(1, max_trials + 1):
        value = trial(step)
        if accept(step, value):
            return LineSearchResult(step, value, n_trials, True)
        if n_trials < max_trials:
            step *= shrink
    return LineSearchResult(step, value, max_trials, False)


def armijo(
    value0: float,
    slope: float,
    *,
    c1: float = 1e-4,
    rounding: float = 0.0,
    maximize: bool = False,
    value: Callable[[Any], float] | None = None,
) -> Callable[[float, Any], bool]:
    """Armijo's sufficient-decrease test as an ``accept`` function for :func:`backtracking`.

    Accepts a step ``t`` whose value satisfies ``phi(t) <= value0 + c1 t slope + rounding``
    (``>=`` with ``maximize``, where ``slope`` is then the ascent rate). ``rounding`` lets a
    step pass whose change is below the rounding error of the values, near a minimizer where
    the test would otherwise reject every step. A NaN value is always rejected.

    Parameters
    ----------
    value0 : float
        The objective at step 0.
    slope : float
        The directional derivative at step 0 (negative for a descent direction).
    c1 : float, default=1e-4
        Fraction of the linear decrease that must be achieved.
    rounding : float, default=0.0
        Slack for rounding error (non-negative).
    maximize : bool, default=False
        Test for sufficient increase instead.
    value : callable, optional
        Extracts the objective from what the trial returned (default: the trial is the
        value).
    """
    extract = (lambda t: t) if value is None else value

    if maximize:

        def accept(step: float, trial: Any) -> bool:
            return bool(extract(trial) >= value0 + c1 * step * slope - rounding)

    else:

        def accept(step: float, trial: Any) -> bool:
            return bool(extract(trial) <= value0 + c1 * step * slope + rounding)

    return accept
