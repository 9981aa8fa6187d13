"""Fast coordinate descent with working sets, gap-safe screening and Anderson extrapolation.

For least squares and binary logistic regression with L1 / L2 / elastic-net / non-negative
L1 penalties. One iteration of :class:`CoordinateDescent` is one outer working-set
iteration:

1. from the full gradient, the duality gap and (a pure L1 penalty) the gap-safe sphere:
   features proven to be zero at the optimum are removed for good;
2. the working set: the current support plus the coordinates that violate optimality most
   (an O(p) ``np.argpartition``), at least twice the support; all features when the penalty
   has no L1 part;
3. least squares: compiled coordinate-descent epochs on the working set (the residual
   ``y - X w`` kept exact), with an Anderson extrapolation of the last iterates every 5
   epochs kept only when it lowers the objective; logistic: proximal-Newton iterations, each
   direction from compiled coordinate descent on the loss's quadratic model, then an Armijo
   line search; until the working set's own duality gap (its optimality violation without
   an L1 part) is a fraction of the outer one. With a smooth penalty (L2 or none) the
   direction is the Newton system's solution by preconditioned conjugate gradients instead
   (one Newton step per outer iteration, inexact with a forcing term);
4. the full gradient again, and the stopping quantity: the duality gap (or the largest
   optimality violation when there is no gap: no L1 part, or logistic with an L2 part)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from mmopt._core.exceptions import ConvergenceWarning
from mmopt._core.krylov import conjugate_gradient
from mmopt._core.linesearch import armijo, backtracking
from mmopt._core.params import Interval, Options, Param
from mmopt._core.registry import register_solver
from mmopt._core.result import STATUS_MESSAGES, Status
from mmopt._core.solver import Solver, SolverState, StopSolve
from mmopt._core.validation import check_array
from mmopt.bcd import _kernels
from mmopt.bcd.datafits import LeastSquares, Logistic
from mmopt.bcd.problem import BCDProblem

__all__ = ["CoordinateDescent"]

# Epochs between two Anderson extrapolations / inner optimality checks (the user guide's
# "every five epochs"; 5 took fewer epochs to tol than 10 on lasso and L1-logistic problems).
_ANDERSON_EVERY = 5
# The working set is solved until its gap is this fraction of the outer gap.
_INNER_FRACTION = 0.3
# Proximal Newton (logistic): iterations per working set, sweeps per direction, and the
# relative stall of the sweeps that ends a direction.
_MAX_NEWTON = 100
_MAX_INNER_EPOCHS = 20
_INNER_RTOL = 0.3
# Newton-CG (logistic, smooth penalty): conjugate-gradient iterations per Newton system at
# most, and the fraction of ``tol`` below which the system's residual needs no reduction.
_MAX_CG = 1000
_CG_TOL_FRACTION = 0.3
# Forcing term min(0.5, ||g||_inf ** power): 0.5 measured fastest on the benchmark problem
# (0.75 and 1.0 over-solve the early systems: 1.3x the time).
_FORCING_POWER = 0.5
_NEWTON_SOLVERS = ("auto", "cd", "cg")
# Outer iterations in a row that lower neither the objective nor the stopping quantity
# before the solve is declared stalled.
_MAX_STALLS = 5


def _rounding(dtype) -> float:
    """Relative change below which an iterate of this precision has not moved."""
    return 16 * float(np.finfo(dtype).eps)


def _tol_floor(dtype, fun) -> float:
    """The smallest duality gap a design of this precision resolves, about: the rounding of
    the objective that the iterates carry (the sums are float64). 0 for float64 designs."""
    if dtype == np.float64:
        return 0.0
    return float(np.finfo(dtype).eps) * max(abs(float(fun)), float(np.finfo(dtype).tiny))

# Armijo line searches (proximal Newton, Newton-CG): sufficient-decrease fraction, slack for
# the objective's rounding (relative), and halvings at most (steps 1, 1/2, ..., 2**-33: down
# to about 1e-10).
_ARMIJO = 1e-4
_ARMIJO_ROUNDING = 1e-15
_MAX_HALVINGS = 34


@dataclass(eq=False)
class _CDRun:
    """What one solve computes once and its iterations share (made by ``_init_state``, so
    that the solver object keeps its options only and can serve several threads)."""

    squared: object = None  # the squared design X * X (logistic proximal Newton), on demand


@dataclass
class _CDState(SolverState):
    lin: np.ndarray = None  # R = y - X w (least squares) or z = X w (logistic)
    grad: np.ndarray = None  # full datafit gradient at x
    screened: np.ndarray = None
    gap: float = np.inf
    n_epochs: int = 0
    ws_size: int = 0
    intercept: float = 0.0
    run: _CDRun = None
    stalls: int = 0  # consecutive outer iterations that lowered neither fun nor residual


@register_solver
class CoordinateDescent(Solver):
    """Compiled coordinate descent with working sets for L1/L2 least squares and logistic.

    Solves a :class:`~mmopt.bcd.BCDProblem` whose datafit is
    :class:`~mmopt.bcd.LeastSquares` or :class:`~mmopt.bcd.Logistic` and whose penalty is any
    of the family's (its ``l1``, ``l2`` and ``positive`` weights go to the kernel). See the
    module documentation for one iteration.

    Parameters
    ----------
    working_set : bool, default=True
        Solve growing working sets; otherwise every epoch sweeps all (unscreened) features.
    screening : bool, default=True
        Gap-safe screening (an L1 penalty without L2 part; not for logistic regression with
        an intercept).
    extrapolation : bool, default=True
        Anderson extrapolation of the inner iterates (Bertrand and Massias): every 5
        epochs, the affine combination of the last iterates that minimizes the norm of
        their differences' combination, kept only when the objective drops. A fixed,
        offline scheme of coordinate descent, distinct from the ``anderson=`` option of the
        MM-type solvers (an :class:`~mmopt.AndersonAcceleration` configuration).
    prox_newton : bool, default=True
        Logistic datafit: proximal-Newton iterations on the working set, their directions
        from compiled coordinate descent on the loss's quadratic model and an Armijo line
        search (the glmnet scheme); False: proximal coordinate-gradient steps with step
        ``4 / ||X_j||^2``.
    newton_solver : {"auto", "cd", "cg"}, default="auto"
        How a proximal-Newton direction is computed (logistic datafit, ``prox_newton``):
        ``"cd"``, coordinate descent on the quadratic model (any penalty); ``"cg"``,
        preconditioned conjugate gradients on the Newton system ``(X^T D X / n + l2 I) d =
        -g`` (smooth penalties only: L2 or none), each iteration two matrix-vector products
        with ``X``, stopped by an inexact-Newton forcing term ``min(0.5, sqrt(||g||_inf))``
        relative to ``||g||``, or once the predicted gradient is below a fraction of
        ``tol``; ``"auto"``, ``"cg"`` for smooth penalties and ``"cd"`` otherwise.
    fit_intercept : bool, default=False
        Also fit an unpenalized intercept ``b`` (``X w + b``), updated exactly (least
        squares) or by a safeguarded Newton step (logistic) after every epoch. It is
        reported in ``Result.intercept``; ``x`` holds the coefficients only.
    ws_min_size : int, default=10
        Smallest working set.
    max_epochs : int, default=50_000
        Epochs at most within one outer iteration.
    tol : float, default=1e-6
        Stop when the duality gap (in the units of ``f``) is ``<= tol``; for logistic
        regression with an L2 part, when the largest optimality violation is.
    max_iter : int, default=100
        Outer iterations at most.
    callback, verbose
        As for every :class:`mmopt.Solver`.

    Notes
    -----
    ``Result`` extra fields: ``gap`` (the duality gap, an upper bound on the objective's
    distance to its minimum, see :meth:`LeastSquares.duality_gap` and
    :meth:`Logistic.duality_gap`: without any penalty it is the objective itself),
    ``n_epochs`` (all epochs, over all working sets; conjugate-gradient iterations count as
    epochs), ``n_screened`` (features removed by screening). The history records ``gap``,
    ``ws_size`` and ``n_epochs`` per outer iteration.

    An outer iteration that changes nothing, or five in a row that lower neither the
    objective nor the stopping quantity beyond rounding, end the solve with status 5
    (stalled, with a ``ConvergenceWarning``): on badly scaled data rounding can hide the
    optimality conditions from the stopping test. A non-finite iterate ends it with status 4
    and the last finite iterate.

    A float32 design is solved in float32 (``x`` is float32; objectives and gaps are summed
    in float64). Its iterates carry the objective's rounding, about ``1.2e-7 |f|``: a
    ``tol`` below that warns (``ConvergenceWarning``) when the solve starts.

    References
    ----------
    J. Friedman, T. Hastie, R. Tibshirani, "Regularization Paths for Generalized Linear
    Models via Coordinate Descent", Journal of Statistical Software 33(1), 2010 (coordinate
    descent, proximal Newton for logistic regression).

    O. Fercoq, A. Gramfort, J. Salmon, "Mind the duality gap: safer rules for the Lasso",
    ICML 2015 (gap-safe screening).

    M. Massias, A. Gramfort, J. Salmon, "Celer: a Fast Solver for the Lasso with Dual
    Extrapolation", ICML 2018 (working sets).

    Q. Bertrand, M. Massias, "Anderson acceleration of coordinate descent", AISTATS 2021.

    Examples
    --------
    >>> from mmopt.bcd import BCDProblem, CoordinateDescent, L1, LeastSquares
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 200))
    >>> y = X[:, :3] @ [3.0, -2.0, 1.0]
    >>> res = CoordinateDescent(tol=1e-10).solve(BCDProblem(LeastSquares(X, y), L1(0.1)))
    >>> np.flatnonzero(res.x), res.gap <= 1e-10
    (array([0, 1, 2]), True)
    """

    name = "cd"
    problem_types = (BCDProblem,)
    required_methods = ("objective",)
    residual_covers_x = True

    _options = {
        "working_set": Param(True, bool),
        "screening": Param(True, bool),
        "extrapolation": Param(True, bool),
        "prox_newton": Param(True, bool),
        "newton_solver": Param("auto", Options(_NEWTON_SOLVERS)),
        "fit_intercept": Param(False, bool),
        "ws_min_size": Param(10, Interval(int, 1, None)),
        "max_epochs": Param(50_000, Interval(int, 1, None)),
        "max_iter": Param(100),
    }

    def check_problem(self, problem) -> None:
        super().check_problem(problem)
        if not isinstance(problem.datafit, (LeastSquares, Logistic)):
            raise TypeError(
                "solver 'cd' handles LeastSquares and Logistic datafits; got "
                f"{type(problem.datafit).__name__} (use solver='bcd')."
            )
        if self.newton_solver == "cg" and not problem.penalty.smooth:
            raise ValueError(
                "newton_solver='cg' needs a smooth penalty (L2 or none); got "
                f"{type(problem.penalty).__name__} (use newton_solver='cd' or 'auto')."
            )

    # ------------------------------------------------------------------ helpers
    def _is_ls(self, problem) -> bool:
        return isinstance(problem.datafit, LeastSquares)

    def _aux(self, problem, lin):
        return problem.datafit.y - lin if self._is_ls(problem) else lin

    def _gap_stops(self, problem) -> bool:
        """Whether the duality gap is the stopping quantity: with an L1 part (and, for
        logistic regression, no L2 part), where the gap goes to 0 at least as fast as the
        optimality violation; otherwise the violation stops the solve."""
        pen = problem.penalty
        return pen.l1 > 0 and (self._is_ls(problem) or pen.l2 == 0)

    def _evaluated(self, problem, x, lin, screened, **fields) -> _CDState:
        """The state at ``x`` (``fields``: its counters): objective, full gradient, duality
        gap and stopping quantity."""
        datafit, pen = problem.datafit, problem.penalty
        aux = self._aux(problem, lin)
        grad = datafit.gradient(x, aux)
        fun = datafit.value(x, aux) + pen.value(x)
        if self._gap_stops(problem):
            gap = datafit.duality_gap(x, aux, pen)
        else:
            # Reported only; the gap of a smooth penalty comes from the gradient at hand.
            gap = datafit.duality_gap(x, aux, pen, grad=grad)
        # A gap is non-negative (weak duality): a negative value is rounding.
        gap = max(float(gap), 0.0) if not np.isnan(gap) else float("nan")
        if self._gap_stops(problem):
            residual = gap
        else:
            violation = pen.subdiff_distance(x, grad)
            violation[screened] = 0.0
            residual = float(violation.max())
        return _CDState(
            x=x, fun=fun, residual=residual, lin=lin, grad=grad, screened=screened, gap=gap,
            **fields,
        )

    def _init_state(self, problem, x0) -> _CDState:
        datafit = problem.datafit
        p = datafit.n_coords
        # The vectors the kernels update in place take the design's precision.
        dtype = datafit.X.dtype
        if x0 is None:
            x = np.zeros(p, dtype=dtype)
        else:
            x = np.array(check_array(x0, "x0", ndim=1, shape=(p,)), dtype=dtype)
            if problem.penalty.positive:
                x = np.maximum(x, 0.0)
        # X @ 0 is a pass over X for nothing.
        aux = datafit.init_aux(x) if x.any() else np.zeros(datafit.n_samples, dtype=dtype)
        lin = datafit.y - aux if self._is_ls(problem) else aux.copy()
        lin = np.ascontiguousarray(lin, dtype=dtype)
        intercept = self._update_intercept(problem, lin, 50) if self.fit_intercept else 0.0
        screened = np.zeros(p, dtype=bool)
        # Features with a zero column never move; leave them out from the start.
        screened |= datafit.norms2 == 0
        with np.errstate(over="ignore", invalid="ignore"):
            state = self._evaluated(problem, x, lin, screened, intercept=intercept, run=_CDRun())
        fun = state.fun
        if not _finite(fun, state.gap, state.residual, state.grad, lin, x):
            raise ValueError(
                "x0 gives a non-finite objective, gradient or duality gap: the problem's "
                f"scale overflows {dtype} there; start closer to 0 or rescale the data."
            )
        floor = _tol_floor(dtype, fun)
        if self.tol < floor:
            warnings.warn(
                f"tol={self.tol:.3g} is below what a {dtype} design resolves (about "
                f"{floor:.2g} here: the objective's rounding); the solve is likely to stall "
                "(status 5). Raise tol or pass X as float64.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return state

    def _update_intercept(self, problem, lin, n_newton=1) -> float:
        """Minimize over the intercept with the coefficients fixed; return its change."""
        if self._is_ls(problem):
            shift = float(lin.mean())  # R = y - Xw - b: the best b absorbs the mean residual
            lin -= shift
            return shift
        datafit = problem.datafit
        total = 0.0
        for _ in range(n_newton):
            raw = datafit.raw_gradient(lin)
            g = float(raw.mean())
            if abs(g) < 1e-15:
                break
            s = 0.25 - (raw + 0.5 * datafit.y) ** 2  # sigma (1 - sigma) from the raw gradient
            h = max(float(s.mean()), 1e-12)
            f0 = datafit.value(None, lin)
            # Newton step, halved until the loss does not increase (the 1-D problem is
            # convex); after 30 refusals the next, tiny step is taken anyway.
            search = backtracking(
                lambda t: datafit.value(None, lin + t),  # noqa: B023 - called right here
                armijo(f0, 0.0),
                step=-g / h,
                max_trials=30,
            )
            step = search.step if search.success else 0.5 * search.step
            lin += step
            total += step
        return total

    # ------------------------------------------------------------------ one outer iteration
    def _screen(self, problem, state, x, lin, screened):
        """Gap-safe sphere test (pure L1 penalty): drop features proven zero at the optimum.

        The dual point is the one the duality gap uses; the dual objective is strongly
        concave (least squares: ``n alpha^2`` in the rescaled point, logistic: ``4 n`` since
        the binary entropy's curvature is at least 4), so the optimal dual point lies in a
        ball of radius ``sqrt(2 gap / strength)`` around it, and a feature whose
        correlation stays below the L1 weight over the whole ball is zero at the optimum.
        Logistic regression with an intercept is not screened: its inexact intercept steps
        leave the dual point slightly outside the intercept's constraint.
        """
        datafit, pen = problem.datafit, problem.penalty
        if not (self.screening and pen.l2 == 0 and pen.l1 > 0) or not np.isfinite(state.gap):
            return
        if not self._is_ls(problem) and self.fit_intercept:
            return
        n = datafit.n_samples
        gap = max(state.gap, 0.0)
        if self._is_ls(problem):
            XtR = -n * state.grad  # X^T R
            dual_norm = XtR.max(initial=0.0) if pen.positive else np.abs(XtR).max()
            scale = max(n * pen.l1, dual_norm)
            radius = np.sqrt(2.0 * n * gap) / (n * pen.l1)
            corr = XtR / scale  # X^T theta, to compare with 1
            bound = 1.0
        else:
            Xtrho = -state.grad  # X^T rho with rho = -l'(z) / n
            dual_norm = Xtrho.max(initial=0.0) if pen.positive else np.abs(Xtrho).max()
            corr = Xtrho * (1.0 if dual_norm <= pen.l1 else pen.l1 / dual_norm)
            radius = np.sqrt(gap / (2.0 * n))
            bound = pen.l1
        if not pen.positive:
            corr = np.abs(corr)
        newly = (corr + radius * np.sqrt(datafit.norms2) < bound) & ~screened
        if not newly.any():
            return
        moved = newly & (x != 0)
        if moved.any():
            idx = np.flatnonzero(moved)
            # lin is R = y - X w (least squares) or z = X w (logistic).
            sign = 1.0 if self._is_ls(problem) else -1.0
            _kernels.add_columns(datafit.X, idx, sign * x[idx], lin)
            x[idx] = 0.0
        screened |= newly

    def _working_set(self, problem, state, x, screened):
        p = x.shape[0]
        candidates = np.flatnonzero(~screened)
        # Without an L1 part every coordinate is non-zero at the optimum: working sets would
        # only grow back to all features.
        if not self.working_set or problem.penalty.smooth:
            return candidates
        support = x != 0
        score = problem.penalty.subdiff_distance(x, state.grad)
        score[support] = np.inf
        score[screened] = -1.0
        size = max(self.ws_min_size, 2 * int(support.sum()))
        size = min(size, candidates.size)
        if size >= candidates.size:
            return candidates
        ws = np.argpartition(score, p - size)[p - size :]
        return np.sort(ws[score[ws] >= 0])

    def _ws_objective(self, problem, w_ws, lin):
        """Objective up to terms fixed on the working set (the datafit is always complete)."""
        datafit, pen = problem.datafit, problem.penalty
        if self._is_ls(problem):
            data = 0.5 * float(np.dot(lin, lin.astype(float, copy=False))) / datafit.n_samples
        else:
            data = datafit.value(None, lin)
        return data + pen.value(w_ws)

    def _ws_stop(self, problem, x, lin, ws, target):
        """True when the working-set subproblem is solved to ``target``."""
        datafit, pen = problem.datafit, problem.penalty
        n = datafit.n_samples
        if self._is_ls(problem):
            XtR = _kernels.column_dots(datafit.X, lin, ws)
            grad_ws = -XtR / n
        else:
            raw = datafit.raw_gradient(lin)
            grad_ws = _kernels.column_dots(datafit.X, raw, ws) / n
        w_ws = x[ws]
        # The gap needs an L1 part (and, for logistic, no L2 part); otherwise: optimality.
        if pen.l1 > 0 and (self._is_ls(problem) or pen.l2 == 0):
            gap = self._ws_gap(problem, w_ws, lin, grad_ws)
            return gap <= target
        return float(pen.subdiff_distance(w_ws, grad_ws).max()) <= target

    def _ws_gap(self, problem, w_ws, lin, grad_ws):
        datafit, pen = problem.datafit, problem.penalty
        n = datafit.n_samples
        if self._is_ls(problem):
            R = lin
            l1, l2 = n * pen.l1, n * pen.l2
            XtA = -n * grad_ws - l2 * w_ws
            dual_norm = XtA.max(initial=0.0) if pen.positive else np.abs(XtA).max(initial=0.0)
            R2 = float(R @ R)
            const = l1 / dual_norm if dual_norm > l1 else 1.0
            gap = 0.5 * R2 * (1 + const**2) if dual_norm > l1 else R2
            gap += l1 * np.abs(w_ws).sum() - const * float(R @ datafit.y)
            gap += 0.5 * l2 * (1 + const**2) * float(w_ws @ w_ws)
            return gap / n
        rho_norm = -grad_ws  # X_ws^T rho
        norm = rho_norm.max(initial=0.0) if pen.positive else np.abs(rho_norm).max(initial=0.0)
        scale = 1.0 if norm <= pen.l1 else pen.l1 / norm
        v = np.clip(-datafit.raw_gradient(lin) * datafit.y * scale, 0.0, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = np.where(v > 0, v * np.log(v), 0.0) + np.where(
                v < 1, (1 - v) * np.log1p(-v), 0.0
            )
        dual = -float(ent.sum()) / n
        return datafit.value(None, lin) + pen.value(w_ws) - dual

    def _epochs(self, problem, x_ws, lin, ws, n_epochs, norms2, lips):
        datafit, pen = problem.datafit, problem.penalty
        n = datafit.n_samples
        if self._is_ls(problem):
            return _kernels.cd_least_squares(
                datafit.X,
                x_ws,
                lin,
                norms2,
                ws,
                n * pen.l1,
                n * pen.l2,
                pen.positive,
                n_epochs,
            )
        return _kernels.cd_logistic(
            datafit.X,
            datafit.y,
            x_ws,
            lin,
            lips,
            ws,
            n * pen.l1,
            n * pen.l2,
            pen.positive,
            n_epochs,
        )

    def _step(self, problem, state: _CDState) -> _CDState:
        datafit = problem.datafit
        x, lin, screened = state.x.copy(), state.lin.copy(), state.screened.copy()
        norms2 = np.ascontiguousarray(datafit.norms2)
        lips = norms2 / 4.0
        self._screen(problem, state, x, lin, screened)
        ws = self._working_set(problem, state, x, screened)
        target = max(_INNER_FRACTION * state.residual, 0.1 * self.tol)
        if not self.working_set:
            target = 0.0  # one pass of checks per outer iteration is all we do
        epochs = 0
        history = []
        ws32 = ws.astype(np.int32)
        intercept = state.intercept
        newton = self.prox_newton and not self._is_ls(problem)
        if newton and self._use_cg(problem):
            epochs, intercept, moved = self._newton_cg(
                problem, x, lin, state.grad, state.fun, intercept
            )
            if not moved:  # the line search failed (round-off): coordinate descent instead
                extra, intercept = self._prox_newton(
                    problem, state.run, x, lin, ws, target, intercept
                )
                epochs += extra
        elif newton:
            epochs, intercept = self._prox_newton(
                problem, state.run, x, lin, ws, target, intercept
            )
        last = self._ws_objective(problem, x[ws], lin) if not newton else None
        while not newton and epochs < self.max_epochs:
            change = self._epochs(problem, x, lin, ws32, 1, norms2, lips)
            shift = self._update_intercept(problem, lin) if self.fit_intercept else 0.0
            intercept += shift
            epochs += 1
            if change == 0.0 and shift == 0.0:
                # A fixed point: no coordinate moved, so further epochs would not either.
                # The working set's own test may still fail when rounding hides the
                # optimality conditions (badly scaled data): the outer loop decides.
                break
            if not np.isfinite(change):
                break  # the outer test below reports the numerical failure
            if self.extrapolation:
                history.append(x[ws].copy())
            if epochs % _ANDERSON_EVERY == 0:
                if self.extrapolation and len(history) >= _ANDERSON_EVERY + 1:
                    self._extrapolate(problem, x, lin, ws, history)
                    history = []
                if not self.working_set or self._ws_stop(problem, x, lin, ws, target):
                    break
                current = self._ws_objective(problem, x[ws], lin)
                if not current < last:
                    # No decrease over these epochs: the iterates only move by rounding
                    # (the working set's test can be out of float64's reach on badly
                    # scaled data); the outer iteration takes over.
                    break
                last = current
        new = self._evaluated(
            problem, x, lin, screened,
            n_epochs=state.n_epochs + epochs, ws_size=ws.size, intercept=intercept, run=state.run,
        )
        fun, grad, gap, residual = new.fun, new.grad, new.gap, new.residual
        new.record = {"gap": float(gap), "ws_size": float(ws.size), "n_epochs": float(epochs)}
        if not _finite(fun, gap, residual, grad, lin, x):
            raise StopSolve(Status.NUMERICAL_FAILURE, STATUS_MESSAGES[Status.NUMERICAL_FAILURE])
        # Progress must exceed rounding: at the level of the last bits, values go up and
        # down without the iterate getting anywhere.
        rounding = _rounding(x.dtype)
        progress = fun < state.fun - rounding * abs(state.fun) or residual < state.residual * (
            1.0 - rounding
        )
        new.stalls = 0 if progress else state.stalls + 1
        unchanged = (
            intercept == state.intercept
            and np.array_equal(x, state.x)
            and np.array_equal(lin, state.lin)
            and np.array_equal(screened, state.screened)
        )
        if residual > self.tol and (unchanged or new.stalls >= _MAX_STALLS):
            # Nothing moved (the next iteration would be this one again), or iterations no
            # longer lower the objective nor the stopping quantity: rounding rules.
            raise StopSolve(
                Status.STALLED,
                "Stalled: coordinate descent no longer makes progress while the stopping "
                f"quantity ({residual:.3g}) is still above tol ({self.tol:.3g}); rounding "
                "hides the optimality conditions (badly scaled data? rescale X and y, or "
                "raise tol).",
                state=new,
            )
        return new

    @staticmethod
    def _squared_design(datafit, run):
        if run.squared is None:
            X = datafit.X
            run.squared = X.multiply(X).tocsc() if sp.issparse(X) else np.square(X, order="F")
        return run.squared

    def _prox_newton(self, problem, run, x, lin, ws, target, intercept):
        """Proximal-Newton iterations on the working set (logistic loss); returns epochs."""
        datafit, pen = problem.datafit, problem.penalty
        n, y, X = datafit.n_samples, datafit.y, datafit.X
        ws32 = ws.astype(np.int32)
        hdiag = np.zeros(datafit.n_features, dtype=x.dtype)
        whole = ws.size == datafit.n_features
        # The curvature of each coordinate, sum_i l''_i X_ij^2, is one BLAS product with the
        # squared design (kept for the solve) instead of a scalar reduction per column.
        squared = self._squared_design(datafit, run)
        epochs = 0
        for _ in range(_MAX_NEWTON):
            s = expit(-y * lin)
            lp, lpp = -y * s, s * (1.0 - s)
            if whole:
                hdiag[:] = np.asarray(squared.T @ lpp).ravel()
            else:
                hdiag[ws] = np.asarray(squared[:, ws].T @ lpp).ravel()
            w_start = x[ws].copy()
            r = lp.astype(x.dtype)
            q = np.zeros(n, dtype=x.dtype)
            first = None
            for _ in range(_MAX_INNER_EPOCHS):
                change = _kernels.cd_quadratic_model(
                    X,
                    lpp,
                    hdiag,
                    x,
                    r,
                    q,
                    ws32,
                    n * pen.l1,
                    n * pen.l2,
                    pen.positive,
                )
                epochs += 1
                first = change if first is None else first
                # The direction need not be exact: stop once the sweeps have stalled.
                if change <= _INNER_RTOL * first:
                    break
            delta = x[ws] - w_start
            x[ws] = w_start
            f0 = datafit.value(None, lin) + pen.value(w_start)
            decrease = float(lp @ q) / n + pen.value(w_start + delta) - pen.value(w_start)
            search = backtracking(
                # The trial is called right here, with this iteration's vectors.
                lambda t: datafit.value(None, lin + t * q) + pen.value(w_start + t * delta),  # noqa: B023
                armijo(f0, decrease, c1=_ARMIJO, rounding=_ARMIJO_ROUNDING * abs(f0)),
                max_trials=_MAX_HALVINGS,
            )
            step = search.step if search.success else 0.0
            x[ws] = w_start + step * delta
            lin += step * q
            if self.fit_intercept:
                intercept += self._update_intercept(problem, lin)
            # When the working set is every feature, the outer test (one gradient) decides.
            if step == 0.0 or whole or self._ws_stop(problem, x, lin, ws, target):
                break
        return epochs, intercept

    def _use_cg(self, problem) -> bool:
        """Newton-CG for a smooth penalty: then the working set is every feature (all-zero
        columns aside, which CG handles: their rows of ``H`` are ``l2`` on the diagonal)."""
        return self.newton_solver != "cd" and problem.penalty.smooth

    def _newton_cg(self, problem, x, lin, grad, fun, intercept):
        """One Newton step with a truncated-CG direction and an Armijo line search.

        With a smooth penalty the proximal-Newton model is a ridge-like quadratic; its
        minimizer solves ``H d = -g`` with ``H = X^T diag(l'') X / n + l2 I``. Conjugate
        gradients need ``H`` only through products (``X p`` then ``X^T (l'' X p)``: two
        passes over ``X``, BLAS for dense designs, against ``n p^2`` to form ``H`` for a
        Cholesky factorization), and converge fast on the well-conditioned systems of
        regularized GLMs. The shared :func:`~mmopt._core.krylov.conjugate_gradient` runs
        with a hook that accumulates ``q = X d`` from the products already computed (the
        line search and the update of ``z = X w`` then need no further pass over ``X``) and
        a second stopping rule, the forcing term's sup-norm floor. ``grad`` is the datafit
        gradient and ``fun`` the objective at ``x`` (both known from the outer iteration).
        Returns the number of CG iterations, the intercept and whether the line search
        found a decrease.
        """
        datafit, pen = problem.datafit, problem.penalty
        n, y, X = datafit.n_samples, datafit.y, datafit.X
        s = expit(-y * lin)
        lpp = s * (1.0 - s) / n  # curvature of the mean loss in z
        tiny = np.finfo(x.dtype).tiny
        g = grad + pen.l2 * x
        g_inf = float(np.abs(g).max(initial=0.0))
        if g_inf == 0.0:
            return 0, intercept, True
        # Forcing term: inexact early, superlinear near the optimum (Eisenstat-Walker);
        # the residual never needs to go below a fraction of tol, the outer stopping test.
        eta = min(0.5, g_inf**_FORCING_POWER)
        stop_2 = eta * float(np.sqrt(g @ g))  # CG's own test, on ||r||_2
        stop_inf = _CG_TOL_FRACTION * self.tol
        # Jacobi-like preconditioner from the column norms and the mean curvature: it
        # corrects the features' scales without a pass over the squared design.
        precond = 1.0 / (datafit.norms2 * lpp.mean() + pen.l2 + tiny)
        q = np.zeros(n, dtype=x.dtype)
        products = []  # the last X p, which on_step folds into q = X d

        def hessian_product(direction):
            Xp = np.asarray(X @ direction).ravel()
            products[:] = [Xp]
            return np.asarray(X.T @ (lpp * Xp)).ravel() + pen.l2 * direction

        def accumulate(alpha, direction):
            np.add(q, alpha * products[0], out=q)

        cg = conjugate_gradient(
            hessian_product,
            -g,
            np.zeros_like(x),
            stop_2,
            max_iter=min(_MAX_CG, 2 * x.size + 10),
            inv_diag=precond,
            true_residual=False,
            stop=lambda r: float(np.abs(r).max()) <= stop_inf,
            on_step=accumulate,
        )
        d, iterations = cg.x, cg.n_matvec
        if not d.any():
            return iterations, intercept, False
        # Armijo backtracking on the exact objective (CG iterates are descent directions).
        search = backtracking(
            lambda t: datafit.value(None, lin + t * q) + pen.value(x + t * d),
            armijo(fun, float(g @ d), c1=_ARMIJO, rounding=_ARMIJO_ROUNDING * abs(fun)),
            max_trials=_MAX_HALVINGS,
        )
        if not search.success:
            return iterations, intercept, False
        step = search.step
        x += step * d
        lin += step * q
        if self.fit_intercept:
            intercept += self._update_intercept(problem, lin)
        return iterations, intercept, True

    def _extrapolate(self, problem, x, lin, ws, history):
        """Anderson extrapolation of the last iterates; kept only if the objective drops."""
        iterates = np.array(history)  # (K + 1, |ws|)
        U = np.diff(iterates, axis=0)
        try:
            z = np.linalg.solve(U @ U.T, np.ones(U.shape[0]))
        except np.linalg.LinAlgError:
            return
        if not np.all(np.isfinite(z)) or z.sum() == 0:
            return
        c = z / z.sum()
        w_acc = c @ iterates[1:]
        if problem.penalty.positive:
            w_acc = np.maximum(w_acc, 0.0)
        delta = w_acc - x[ws]
        lin_acc = lin.copy()
        sign = -1.0 if self._is_ls(problem) else 1.0
        _kernels.add_columns(problem.datafit.X, ws, sign * delta, lin_acc)
        if self._ws_objective(problem, w_acc, lin_acc) < self._ws_objective(problem, x[ws], lin):
            x[ws] = w_acc
            lin[:] = lin_acc

    def _result_fields(self, problem, state):
        return {
            "gap": float(state.gap),
            "n_epochs": int(state.n_epochs),
            "n_screened": int(state.screened.sum()),
            "gradient": state.grad,
            "intercept": float(state.intercept),
        }


def _finite(fun, gap, residual, *arrays) -> bool:
    """Whether an iterate's reported quantities are all finite (a sum is NaN or infinite
    whenever an entry is, without a temporary array)."""
    with np.errstate(over="ignore", invalid="ignore"):
        sums = [float(np.sum(a)) for a in arrays]
    return bool(np.isfinite([fun, gap, residual, *sums]).all())
