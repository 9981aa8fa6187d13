"""Type-II Anderson acceleration of a fixed-point map, and its safeguard protocol.

:class:`AndersonAcceleration` is both the option a solver accepts (``anderson=True``,
``False`` or a configured instance) and, through :meth:`AndersonAcceleration.fresh`, the
per-run accelerator that keeps the history. :func:`make_accelerator` turns the option into a
fresh accelerator for one solve, and :meth:`AndersonAcceleration.safeguarded_step` is the one
safeguard protocol: extrapolate, evaluate, keep the extrapolated point only if the objective
does not increase. ``ANDERSON_OPTION`` holds the option's constraints, for a solver's
``_options`` table (``"anderson": Param(True, *ANDERSON_OPTION)``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmopt._core.params import InstanceOf, Interval, validate_params
from mmopt_ext._anderson import MEMORY_LIMIT as _BATCHED_MAX_MEMORY
from mmopt_ext._anderson import batched_update as _batched_update

__all__ = [
    "ANDERSON_OPTION",
    "AndersonAcceleration",
    "AndersonStep",
    "BatchedAnderson",
    "anderson_counts",
    "make_accelerator",
]


@dataclass(frozen=True)
class AndersonStep:
    """What :meth:`AndersonAcceleration.safeguarded_step` decided.

    Attributes
    ----------
    tried : bool
        Whether an extrapolated point was proposed and evaluated (False while the history is
        too short, during the delay after a reset, or when no well-conditioned subset of the
        history was left).
    accepted : bool
        Whether the extrapolated point was kept. When False the caller takes its plain step.
    point : object or None
        The accepted point (after ``to_point``), else None.
    value : float
        The objective at the extrapolated point (NaN when none was tried).
    info : object or None
        What ``evaluate`` returned beside the value for the extrapolated point (the plain step
        from it, correspondences, ...), kept when it was accepted, else None.
    """

    tried: bool = False
    accepted: bool = False
    point: Any = None
    value: float = float("nan")
    info: Any = None

    @property
    def record(self) -> float:
        """For the history: 1.0 kept, 0.0 refused, NaN when nothing was proposed."""
        if not self.tried:
            return float("nan")
        return 1.0 if self.accepted else 0.0


_NOT_TRIED = AndersonStep()


def _acceptable(value, reference):
    """The safeguard's rule, for one value or an array of them: finite and no larger than
    the reference (NaN and infinities are refused)."""
    return np.isfinite(value) & (value <= reference)


def _history_coefficients(gram, rhs_all, columns, regularization, max_condition):
    """Coefficients of the regularized, column-normalized normal equations on the newest
    columns of one history.

    ``gram`` is the (memory, memory) Gram matrix of the residual differences, ``rhs_all``
    their products with the newest residual, ``columns`` the used columns, oldest first.
    Columns are dropped from the front (oldest) until the system is well conditioned.
    Returns the coefficients over the whole buffer (zero for unused columns), or None when
    no well-conditioned subset is left.
    """
    # The system is a few columns wide: the work here is Python and NumPy call overhead,
    # so each pass makes as few calls as it can.
    for first in range(columns.size):
        order = columns[first:]
        sub = gram[order[:, None], order]
        norms = np.sqrt(sub.diagonal())
        if not norms.min() > 0:  # also False for NaN
            continue
        normalized = sub / (norms[:, None] * norms)
        normalized.ravel()[:: len(order) + 1] += regularization
        eigenvalues = np.linalg.eigvalsh(normalized)
        low, high = float(eigenvalues[0]), float(eigenvalues[-1])
        # cond(Gram) is cond(dR)^2: compare the square root with the bound.
        if low > 0 and math.sqrt(high / low) <= max_condition:
            phi = np.linalg.solve(normalized, rhs_all[order] / norms)
            theta_used = phi / norms
            if np.isfinite(theta_used).all():
                theta = np.zeros(gram.shape[0])
                theta[order] = theta_used
                return theta
    return None


class AndersonAcceleration:
    """Type-II Anderson acceleration of a fixed-point iteration ``x <- G(x)``.

    Keeps the last ``memory`` differences of the residuals ``r_k = G(x_k) - x_k`` and of the
    map values ``G(x_k)``, solves the small least-squares problem
    ``theta = argmin ||r_k - dR theta||^2 + regularization ||D theta||^2`` (``D`` scales the
    columns of ``dR`` to unit norm) through its regularized normal equations, whose Gram
    matrix is kept up to date one column at a time (``O(d memory)`` work per update), and
    proposes

    ``x_{k+1} = x_k + damping * r_k - (dX + damping * dR) theta``,

    which for ``damping=1`` is the classic ``G(x_k) - dG theta``. Columns that make the system
    ill-conditioned are dropped, oldest first; when none is left the history is reset.

    The proposal is only a candidate. :meth:`safeguarded_step` is the protocol solvers use:
    it records ``(x, G(x))``, evaluates the extrapolated point and keeps it only if its
    objective is no larger than a reference (the current objective); otherwise the caller
    takes the plain step ``G(x)`` and the history is reset. ``n_accepted``, ``n_rejected``
    and ``n_resets`` count what happened.

    A solver takes this object as its ``anderson`` option: it is then a configuration, and
    each solve runs with its own :meth:`fresh` copy (see :func:`make_accelerator`), so the
    caller's object is never changed and one solver can serve several threads.

    Parameters
    ----------
    memory : int, default=5
        Number of past differences used.
    regularization : float, default=1e-10
        Tikhonov term on the column-normalized least-squares problem; a small value damps
        wild extrapolations when the differences are nearly collinear.
    damping : float, default=1.0
        Mixing parameter ``beta`` in (0, 1].
    max_condition : float, default=1e10
        Largest accepted condition number of the normalized least-squares matrix.
    delay : int, default=0
        Number of plain steps after each reset before extrapolating again. A short delay
        avoids proposals built from differences that straddle a change of regime.

    References
    ----------
    .. [1] D. G. Anderson, "Iterative procedures for nonlinear integral equations",
       *J. ACM* 12(4), 547-560, 1965.
    .. [2] H. F. Walker and P. Ni, "Anderson acceleration for fixed-point iterations",
       *SIAM J. Numer. Anal.* 49(4), 1715-1735, 2011.
    .. [3] J. Zhang, Y. Yao and B. Deng, "Fast and robust iterative closest point",
       *IEEE TPAMI* 44(7), 3450-3466, 2022 (the objective safeguard).

    Examples
    --------
    Accelerate the linear fixed-point map ``G(x) = A x + b``:

    >>> from mmopt import AndersonAcceleration
    >>> A = np.diag([0.9, 0.5, 0.99]); b = np.ones(3)
    >>> aa = AndersonAcceleration(memory=3)
    >>> x = np.zeros(3)
    >>> for _ in range(6):
    ...     x = aa.update(x, A @ x + b)
    >>> bool(np.allclose(x, np.linalg.solve(np.eye(3) - A, b)))
    True

    The safeguarded protocol, minimizing ``F(x) = ||x - c||^2 / 2`` by the gradient map
    ``G(x) = x - (x - c) / 2``:

    >>> c = np.array([1.0, -2.0])
    >>> aa = AndersonAcceleration(memory=2).fresh()
    >>> x = np.zeros(2)
    >>> for _ in range(5):
    ...     g = x - 0.5 * (x - c)
    ...     step = aa.safeguarded_step(
    ...         x, g, lambda p: (0.5 * float((p - c) @ (p - c)), None),
    ...         reference=0.5 * float((x - c) @ (x - c)),
    ...     )
    ...     x = step.point if step.accepted else g
    >>> bool(np.allclose(x, c)), aa.n_accepted, aa.n_rejected
    (True, 3, 0)
    """

    _parameter_constraints = {
        "memory": [Interval(int, 1, None)],
        "regularization": [Interval(float, 0, None)],
        "damping": [Interval(float, 0, 1, closed="right")],
        "max_condition": [Interval(float, 1, None)],
        "delay": [Interval(int, 0, None)],
    }

    def __init__(
        self,
        memory: int = 5,
        *,
        regularization: float = 1e-10,
        damping: float = 1.0,
        max_condition: float = 1e10,
        delay: int = 0,
    ):
        validate_params(
            self._parameter_constraints,
            {
                "memory": memory,
                "regularization": regularization,
                "damping": damping,
                "max_condition": max_condition,
                "delay": delay,
            },
        )
        self.memory = int(memory)
        self.regularization = float(regularization)
        self.damping = float(damping)
        self.max_condition = float(max_condition)
        self.delay = int(delay)
        self._start()

    def _start(self) -> None:
        """An empty history, no buffers and zero counts."""
        self._size = -1  # length of the vectors the buffers hold (none yet)
        self.n_accepted = 0
        self.n_rejected = 0
        self.n_resets = -1  # the reset that starts the history is not counted
        self.reset()

    def reset(self) -> None:
        """Forget the history (after a rejected proposal or a change of problem)."""
        # The buffers stay allocated: a reset happens after every rejected proposal, and
        # the next pair has the same size unless the caller changed problem.
        self._has_prev = False
        self._n_cols = 0
        self._next_col = 0
        self._since_reset = 0
        self.extrapolated = False
        self.n_resets += 1

    def fresh(self) -> AndersonAcceleration:
        """A new accelerator with the same options, an empty history and zero counts.

        A solver given an accelerator as an option runs with ``accelerator.fresh()``, so that
        the caller's object is never mutated and concurrent solves never share a history.
        """
        # The options were checked when this object was made: copy them without checking
        # again (a solve makes one accelerator, and small solves feel the cost).
        copy = type(self).__new__(type(self))
        for name in self._parameter_constraints:
            setattr(copy, name, getattr(self, name))
        copy._start()
        return copy

    def batched(self, k: int) -> BatchedAnderson:
        """``k`` accelerators with these options, run together on the rows of ``(k, d)``
        arrays (see :class:`BatchedAnderson`)."""
        return BatchedAnderson(self, k)

    @property
    def history_size(self) -> int:
        """Number of difference pairs currently used."""
        return self._n_cols

    def _allocate(self, size: int) -> None:
        # Zero-filled so that unused columns never carry NaN garbage into the products
        # below, which run over the whole buffer. Allocated once per run (and again only if
        # the vectors change size after a reset), not at every step: with large iterates a
        # fresh temporary per step costs page faults, with small ones Python overhead.
        self._dG = np.zeros((size, self.memory), order="F")
        self._dR = np.zeros((size, self.memory), order="F")
        self._gram = np.zeros((self.memory, self.memory))
        self._g_prev = np.empty(size)
        # Two residual buffers used in turn: the newest residual and the one before it.
        self._r_prev = np.empty(size)
        self._r_next = np.empty(size)
        self._size = size

    def update(self, x, g) -> np.ndarray:
        """Record the pair ``(x, G(x))`` and return the next point to try.

        Parameters
        ----------
        x : ndarray of shape (d,)
            The current iterate.
        g : ndarray of shape (d,)
            ``G(x)``, the plain fixed-point step from ``x``.

        Returns
        -------
        ndarray of shape (d,)
            The extrapolated point, or ``g`` while the history is too short (then
            :attr:`extrapolated` is False).
        """
        x = np.asarray(x, dtype=float).ravel()
        g = np.asarray(g, dtype=float).ravel()
        if x.shape != g.shape:
            raise ValueError(f"x and g must have the same shape, got {x.shape} and {g.shape}.")
        size = x.shape[0]
        if self._has_prev and self._size != size:
            raise ValueError(f"x changed size from {self._size} to {size}; call reset().")
        if self._size != size:
            self._allocate(size)
        # r = g - x into the free residual buffer; the previous one is still needed.
        r = np.subtract(g, x, out=self._r_next)
        if self._has_prev:
            col = self._next_col
            # Differences of G values (not of iterates): the undamped proposal is then a
            # single product, g - dG theta.
            np.subtract(g, self._g_prev, out=self._dG[:, col])
            np.subtract(r, self._r_prev, out=self._dR[:, col])
            # Keep the Gram matrix dR^T dR up to date one column at a time: O(d m) per
            # update instead of refactorizing a d-by-m matrix.
            products = self._dR.T @ self._dR[:, col]
            self._gram[col, :] = products
            self._gram[:, col] = products
            self._next_col = (col + 1) % self.memory
            self._n_cols = min(self._n_cols + 1, self.memory)
        np.copyto(self._g_prev, g)
        self._r_prev, self._r_next = r, self._r_prev
        self._has_prev = True
        self._since_reset += 1
        self.extrapolated = False
        if self._n_cols == 0 or self._since_reset <= self.delay:
            return g
        theta = self._coefficients(r)
        if theta is None:
            return g
        self.extrapolated = True
        beta = self.damping
        if beta == 1.0:
            return g - self._dG @ theta
        # dX = dG - dR, so (dX + beta dR) theta = dG theta - (1 - beta) dR theta.
        return x + beta * r - self._dG @ theta + (1.0 - beta) * (self._dR @ theta)

    def _coefficients(self, r):
        """The least-squares coefficients for the newest residual ``r`` (see
        :func:`_history_coefficients`), or None after a reset."""
        n_cols = self._n_cols
        oldest = self._next_col - n_cols
        columns = np.arange(oldest, oldest + n_cols) % self.memory
        theta = _history_coefficients(self._gram, self._dR.T @ r, columns,
                                      self.regularization, self.max_condition)
        if theta is None:
            self.reset()
        return theta

    def safeguard(self, value: float, reference: float) -> bool:
        """Decide on an extrapolated point from its objective, and keep the counts.

        Parameters
        ----------
        value : float
            Objective (or residual norm) at the extrapolated point.
        reference : float
            The value it must not exceed: the current objective, or the last accepted one.

        Returns
        -------
        bool
            True to keep the extrapolated point. On False the caller takes the plain step;
            the history has been reset.
        """
        if _acceptable(value, reference):
            self.n_accepted += 1
            return True
        self.n_rejected += 1
        self.reset()
        return False

    def safeguarded_step(
        self,
        x,
        g,
        evaluate: Callable[[Any], tuple[float, Any]],
        reference: float,
        *,
        to_point: Callable[[np.ndarray], Any] | None = None,
    ) -> AndersonStep:
        """One safeguarded Anderson step: extrapolate, evaluate, keep it only if no worse.

        Records ``(x, G(x))`` with :meth:`update`; when that gives an extrapolated point,
        maps it with ``to_point`` (a projection onto the domain, or from the accelerated
        variables back to the iterate), evaluates it and applies :meth:`safeguard` against
        ``reference``. The caller takes its plain step ``G(x)`` unless the result says
        ``accepted``; so a solver whose plain step never increases the objective stays
        monotone with the acceleration on.

        Parameters
        ----------
        x : ndarray of shape (d,)
            The current iterate, in the accelerated variables.
        g : ndarray of shape (d,)
            ``G(x)``, the plain fixed-point step, in the same variables.
        evaluate : callable
            ``evaluate(point) -> (value, info)``: the objective at the proposed point and
            whatever else the caller computed there and wants back (``info``).
        reference : float
            The largest objective accepted (usually the objective at ``x``).
        to_point : callable, optional
            Maps the extrapolated vector to the point that ``evaluate`` takes; identity when
            None.

        Returns
        -------
        AndersonStep
            ``tried``, ``accepted``, the accepted ``point``, its ``value`` and ``info``.
        """
        candidate = self.update(x, g)
        if not self.extrapolated:
            return _NOT_TRIED
        point = candidate if to_point is None else to_point(candidate)
        value, info = evaluate(point)
        if self.safeguard(value, reference):
            return AndersonStep(tried=True, accepted=True, point=point, value=value, info=info)
        return AndersonStep(tried=True, accepted=False, value=value)

    def __repr__(self) -> str:
        # Like scikit-learn's estimators: only the options that differ from their defaults.
        parameters = inspect.signature(AndersonAcceleration.__init__).parameters
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self._parameter_constraints
            if getattr(self, name) != parameters[name].default
        )
        return f"{type(self).__name__}({shown})"


class BatchedAnderson:
    """``k`` independent :class:`AndersonAcceleration` histories advanced together.

    Row ``i`` of the ``(k, d)`` arrays passed to :meth:`update` is problem ``i``'s iterate;
    each problem keeps its own history, and what :meth:`update` proposes for it is what an
    :class:`AndersonAcceleration` with the same options, given the same pairs, proposes
    (same least squares, same dropping of ill-conditioned columns, same resets). The
    products run over all problems at once (stacked small solves), which is what a solver
    of many problems sharing one operator needs (batched Sinkhorn). :meth:`safeguard` is
    :meth:`AndersonAcceleration.safeguard` for many problems: a refused value resets that
    problem's history.

    Made by :meth:`AndersonAcceleration.batched`; ``n_accepted``, ``n_rejected`` and
    ``n_resets`` are per-problem counts, ``extrapolated`` says which problems' last
    proposal was extrapolated.

    Examples
    --------
    Two linear maps ``G_i(x) = A_i x + b_i`` accelerated together:

    >>> from mmopt import AndersonAcceleration
    >>> A = np.stack([np.diag([0.9, 0.5, 0.99]), np.diag([0.3, 0.8, 0.95])])
    >>> b = np.ones((2, 3))
    >>> aa = AndersonAcceleration(memory=3).batched(2)
    >>> X = np.zeros((2, 3))
    >>> for _ in range(6):
    ...     X = aa.update(X, np.einsum("kij,kj->ki", A, X) + b)
    >>> bool(np.allclose(X, np.linalg.solve(np.eye(3) - A, b[:, :, None])[:, :, 0]))
    True
    """

    _STATE = ("_dG", "_dR", "_gram", "_g_prev", "_r_prev", "_has_prev", "_n_cols",
              "_next_col", "_since_reset", "extrapolated", "n_accepted", "n_rejected",
              "n_resets")

    def __init__(self, options: AndersonAcceleration, k: int):
        if options.memory > _BATCHED_MAX_MEMORY:
            raise ValueError(f"memory must be at most {_BATCHED_MAX_MEMORY} for batched "
                             f"histories, got {options.memory}.")
        for name in AndersonAcceleration._parameter_constraints:
            setattr(self, name, getattr(options, name))
        self.k = int(k)
        self._size = -1
        self._has_prev = np.zeros(self.k, dtype=bool)
        self._n_cols = np.zeros(self.k, dtype=np.intp)
        self._next_col = np.zeros(self.k, dtype=np.intp)
        self._since_reset = np.zeros(self.k, dtype=np.intp)
        self.extrapolated = np.zeros(self.k, dtype=bool)
        self.n_accepted = np.zeros(self.k, dtype=int)
        self.n_rejected = np.zeros(self.k, dtype=int)
        self.n_resets = np.zeros(self.k, dtype=int)

    def _allocate(self, size: int) -> None:
        k, memory = self.k, self.memory
        # Zero-filled: unused columns enter the stacked products with weight zero.
        self._dG = np.zeros((k, memory, size))
        self._dR = np.zeros((k, memory, size))
        self._gram = np.zeros((k, memory, memory))
        self._g_prev = np.zeros((k, size))
        self._r_prev = np.zeros((k, size))
        self._size = size

    def reset(self, rows=None) -> None:
        """Forget the histories of ``rows`` (indices or a boolean mask; all when None)."""
        rows = slice(None) if rows is None else rows
        self._has_prev[rows] = False
        self._n_cols[rows] = 0
        self._next_col[rows] = 0
        self._since_reset[rows] = 0
        self.extrapolated[rows] = False
        self.n_resets[rows] += 1
        if self._size >= 0:
            self._dG[rows] = 0.0
            self._dR[rows] = 0.0
            self._gram[rows] = 0.0

    def keep(self, keep) -> None:
        """Keep only the problems ``keep`` (a boolean mask or indices), in that order."""
        for name in self._STATE:
            value = getattr(self, name, None)
            if isinstance(value, np.ndarray):
                setattr(self, name, value[keep])
        self.k = self._has_prev.size

    def shift(self, delta, rows=None) -> None:
        """Move the problems' variables by ``delta`` (c, d) (a change of origin, e.g. of
        the base of log scalings): differences are unchanged, the last map value moves."""
        if self._size >= 0:
            rows = slice(None) if rows is None else rows
            self._g_prev[rows] += delta

    def safeguard(self, values, references, rows=None) -> np.ndarray:
        """:meth:`AndersonAcceleration.safeguard` for the problems ``rows`` (all when None):
        which values are kept; the others are counted refused and their histories reset."""
        rows = np.arange(self.k) if rows is None else np.asarray(rows)
        accepted = _acceptable(np.asarray(values, dtype=float), references)
        self.n_accepted[rows[accepted]] += 1
        refused = rows[~accepted]
        if refused.size:
            self.n_rejected[refused] += 1
            self.reset(refused)
        return accepted

    def update(self, X, G, rows=None, *, n_threads: int = 1) -> np.ndarray:
        """Record the pairs ``(X[i], G[i])`` of the problems ``rows`` (all when None) and
        return their next points (``(len(rows), d)``; the rows of ``G`` where nothing
        was extrapolated, see :attr:`extrapolated`).

        Each problem's step (its newest differences, Gram row, normalized normal equations
        and extrapolation) is one compiled pass, problems in parallel on ``n_threads``
        threads; a problem whose full system is ill-conditioned drops its oldest columns
        one by one as :class:`AndersonAcceleration` does, and is reset when none is left.
        """
        X = np.ascontiguousarray(X, dtype=float)
        G = np.ascontiguousarray(G, dtype=float)
        if X.shape != G.shape or X.ndim != 2:
            raise ValueError(
                f"X and G must be 2-D of the same shape, got {X.shape} and {G.shape}.")
        size = X.shape[1]
        if self._size != size:
            if self._has_prev.any():
                raise ValueError(f"the iterates changed size from {self._size} to {size}; "
                                 "call reset().")
            self._allocate(size)
        rows = np.arange(self.k) if rows is None else np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.intp, copy=False)
        if rows.size != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows for {rows.size} problems.")
        out = np.empty_like(G)
        rhs = np.empty((rows.size, self.memory))
        theta = np.empty((rows.size, self.memory))
        state = np.empty(rows.size, dtype=np.int8)
        _batched_update(X, G, rows, self._dG, self._dR, self._gram, self._g_prev,
                        self._r_prev, self._has_prev.view(np.uint8), self._n_cols,
                        self._next_col, self._since_reset, self.delay, self.regularization,
                        self.max_condition, self.damping, out, rhs, theta, state,
                        n_threads)
        self.extrapolated[rows] = state == 1
        for c in np.flatnonzero(state == 2):
            # The full system is ill-conditioned: drop the oldest columns one by one.
            row = rows[c]
            n_cols = self._n_cols[row]
            oldest = self._next_col[row] - n_cols
            columns = np.arange(oldest, oldest + n_cols) % self.memory
            found = _history_coefficients(self._gram[row], rhs[c], columns,
                                          self.regularization, self.max_condition)
            if found is None:
                self.reset([row])
                continue
            self.extrapolated[row] = True
            dG_theta = found @ self._dG[row]
            if self.damping == 1.0:
                out[c] = G[c] - dG_theta
            else:
                beta = self.damping
                r = G[c] - X[c]
                out[c] = X[c] + beta * r - dG_theta + (1.0 - beta) * (found @ self._dR[row])
        return out


# What ``anderson=True`` means; solves run with fresh copies of it.
_DEFAULT = AndersonAcceleration()

#: The ``anderson`` option's constraints (``Param(True, *ANDERSON_OPTION)`` in ``_options``).
ANDERSON_OPTION = [bool, InstanceOf(AndersonAcceleration)]


def make_accelerator(option: bool | AndersonAcceleration | None) -> AndersonAcceleration | None:
    """The per-run accelerator for a solver's ``anderson`` option.

    ``True`` gives a default :class:`AndersonAcceleration`, ``False`` (or None) no
    acceleration, and an instance its :meth:`~AndersonAcceleration.fresh` copy, so that the
    option object is never mutated by a solve.

    Examples
    --------
    >>> from mmopt._core.anderson import AndersonAcceleration, make_accelerator
    >>> option = AndersonAcceleration(memory=3)
    >>> aa = make_accelerator(option)
    >>> aa is not option, aa.memory, make_accelerator(False)
    (True, 3, None)
    """
    if isinstance(option, AndersonAcceleration):
        return option.fresh()
    if option is None or not option:
        return None
    return _DEFAULT.fresh()


def anderson_counts(accelerator: AndersonAcceleration | None) -> dict[str, int]:
    """``n_accepted`` and ``n_rejected`` of a run's accelerator (0 and 0 without one)."""
    if accelerator is None:
        return {"n_accepted": 0, "n_rejected": 0}
    return {"n_accepted": accelerator.n_accepted, "n_rejected": accelerator.n_rejected}
