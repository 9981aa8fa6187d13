"""Type-II Anderson acceleration of a fixed-point map, with the safeguard MM methods need."""

from __future__ import annotations

import numpy as np

from mmopt._core.validation import check_scalar

__all__ = ["AndersonAcceleration"]


class AndersonAcceleration:
    """Type-II Anderson acceleration of a fixed-point iteration ``x <- G(x)``.

    Keeps the last ``m`` differences of the residuals ``r_k = G(x_k) - x_k`` and of the map
    values ``G(x_k)``, solves the small least-squares problem
    ``theta = argmin ||r_k - dR theta||^2 + regularization ||D theta||^2`` (``D`` scales the
    columns of ``dR`` to unit norm) through its regularized normal equations, whose Gram
    matrix is kept up to date one column at a time (``O(d m)`` work per update), and
    proposes

    ``x_{k+1} = x_k + damping * r_k - (dX + damping * dR) theta``,

    which for ``damping=1`` is the classic ``G(x_k) - dG theta``. Columns that make the system
    ill-conditioned are dropped, oldest first; when none is left the history is reset.

    The proposal is only a candidate. Callers apply the safeguard with :meth:`safeguard`:
    keep the proposal only when its objective (or residual norm) is no larger than the
    reference (the plain step's value, or the last accepted one); otherwise take the plain
    step ``G(x_k)``, and the history is reset. ``n_accepted``, ``n_rejected`` and ``n_resets``
    count what happened; :attr:`extrapolated` tells whether the last :meth:`update` returned
    an extrapolated point or the plain step.

    Parameters
    ----------
    m : int, default=5
        Memory: number of past differences used.
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

    Examples
    --------
    Accelerate the linear fixed-point map ``G(x) = A x + b``:

    >>> import numpy as np
    >>> from mmopt import AndersonAcceleration
    >>> A = np.diag([0.9, 0.5, 0.99]); b = np.ones(3)
    >>> aa = AndersonAcceleration(m=3)
    >>> x = np.zeros(3)
    >>> for _ in range(6):
    ...     x = aa.update(x, A @ x + b)
    >>> bool(np.allclose(x, np.linalg.solve(np.eye(3) - A, b)))
    True
    """

    def __init__(
        self,
        m: int = 5,
        *,
        regularization: float = 1e-10,
        damping: float = 1.0,
        max_condition: float = 1e10,
        delay: int = 0,
    ):
        self.m = check_scalar(m, "m", kind=int, min_value=1)
        self.regularization = check_scalar(regularization, "regularization", min_value=0.0)
        self.damping = check_scalar(
            damping, "damping", min_value=0.0, max_value=1.0, include_min=False
        )
        self.max_condition = check_scalar(max_condition, "max_condition", min_value=1.0)
        self.delay = check_scalar(delay, "delay", kind=int, min_value=0)
        self.n_accepted = 0
        self.n_rejected = 0
        self.n_resets = 0
        self.reset()
        self.n_resets = 0

    def reset(self) -> None:
        """Forget the history (after a rejected proposal or a change of problem)."""
        self._g_prev = None
        self._r_prev = None
        self._n_cols = 0
        self._next_col = 0
        self._since_reset = 0
        self.extrapolated = False
        self.n_resets += 1

    def fresh(self) -> AndersonAcceleration:
        """A new accelerator with the same options and an empty history.

        A solver given an accelerator as an option runs with ``accelerator.fresh()``, so that
        the caller's object is never mutated and concurrent solves never share a history.
        """
        return type(self)(
            self.m,
            regularization=self.regularization,
            damping=self.damping,
            max_condition=self.max_condition,
            delay=self.delay,
        )

    @property
    def history_size(self) -> int:
        """Number of difference pairs currently used."""
        return self._n_cols

    def _allocate(self, size: int) -> None:
        # Zero-filled so that unused columns never carry NaN garbage into the products
        # below, which run over the whole buffer.
        self._dG = np.zeros((size, self.m), order="F")
        self._dR = np.zeros((size, self.m), order="F")
        self._gram = np.zeros((self.m, self.m))

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
        if self._g_prev is not None and self._g_prev.shape != x.shape:
            raise ValueError(
                f"x changed size from {self._g_prev.shape[0]} to {x.shape[0]}; call reset()."
            )
        r = g - x
        if self._g_prev is not None:
            if getattr(self, "_dG", None) is None or self._dG.shape[0] != x.size:
                self._allocate(x.size)
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
            self._next_col = (col + 1) % self.m
            self._n_cols = min(self._n_cols + 1, self.m)
        self._g_prev = g.copy()
        self._r_prev = r
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
        """Solve the regularized, column-normalized normal equations on the newest columns.

        Returns the coefficients over the whole buffer (zero for unused columns), or None
        (and a reset) when no well-conditioned subset of columns is left.
        """
        # Columns in chronological order, newest last, so that dropping from the front drops
        # the oldest differences.
        order = [(self._next_col + i) % self.m for i in range(self.m)][self.m - self._n_cols :]
        rhs_all = self._dR.T @ r
        while order:
            gram = self._gram[np.ix_(order, order)]
            norms = np.sqrt(np.diag(gram))
            if not np.all(norms > 0):
                order = order[1:]
                continue
            normalized = gram / np.outer(norms, norms)
            normalized[np.diag_indices_from(normalized)] += self.regularization
            eigenvalues = np.linalg.eigvalsh(normalized)
            # cond(Gram) is cond(dR)^2: compare the square root with the bound.
            if eigenvalues[0] > 0 and np.sqrt(eigenvalues[-1] / eigenvalues[0]) <= (
                self.max_condition
            ):
                phi = np.linalg.solve(normalized, rhs_all[order] / norms)
                theta_used = phi / norms
                if np.all(np.isfinite(theta_used)):
                    theta = np.zeros(self.m)
                    theta[order] = theta_used
                    return theta
            order = order[1:]
        self.reset()
        return None

    def safeguard(self, value: float, reference: float) -> bool:
        """Apply the safeguard to an extrapolated point and keep the counts.

        Parameters
        ----------
        value : float
            Objective (or residual norm) at the extrapolated point.
        reference : float
            The value it must not exceed: at the plain step, or the last accepted value.

        Returns
        -------
        bool
            True to keep the extrapolated point. On False the caller takes the plain step;
            the history has been reset.
        """
        if np.isfinite(value) and value <= reference:
            self.n_accepted += 1
            return True
        self.n_rejected += 1
        self.reset()
        return False

    def __repr__(self) -> str:
        return (
            f"AndersonAcceleration(m={self.m}, regularization={self.regularization}, "
            f"damping={self.damping}, max_condition={self.max_condition}, delay={self.delay})"
        )
