"""Block coordinate descent with greedy rules and variable blocks (Nutini, Laradji, Schmidt).

One iteration updates one block ``b``: the three levers of the paper are options of
:class:`BlockCoordinateDescent`:

* ``partition``: fixed blocks (``"order"``, ``"sorted"``, ``"avg"``, ``"red-black"`` on a
  graph, or user blocks) or ``"variable"`` blocks chosen anew each iteration;
* ``selection``: ``"cyclic"``, ``"random"``, ``"lipschitz"`` sampling, the greedy
  Gauss-Southwell family ``"gs"``, ``"gsl"``, ``"gsd"``, ``"gsq"``, and the proximal
  ``"gs-s"``, ``"gs-r"``, ``"gs-q"`` rules for non-smooth penalties;
* ``update``: ``"gradient"`` (prox-gradient with 1/L_b), ``"backtracking"`` (adaptive L_b
  with a per-coordinate memory), ``"matrix"`` (the block of the Hessian bound, its Cholesky
  factor cached per fixed block), ``"newton"`` (exact block Hessian, Armijo line search) and
  ``"exact"`` (exact block minimization of a quadratic, by sparse elimination: on a forest
  block this is message passing and costs ``O(|b|)``).

The datafit's gradient is kept for the whole vector (the greedy rules and the stopping test
need it). After each block move it is either recomputed from the maintained linear predictor
``aux`` (``O(nnz(X))``), or, for quadratic datafits, updated incrementally by the Hessian's
block columns (``O(p |b|)``, :mod:`mmopt.bcd.gradient`), with an exact recomputation once
per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from mmopt._core.linesearch import armijo, backtracking
from mmopt._core.params import Constraint, InstanceOf, Interval, Options, Param, Rule
from mmopt._core.registry import register_solver
from mmopt._core.result import STATUS_MESSAGES, Status
from mmopt._core.solver import Solver, SolverState, StopSolve
from mmopt._core.validation import check_array
from mmopt.bcd import _kernels
from mmopt.bcd.datafits import LabelPropagationQuadratic, LeastSquares, Logistic
from mmopt.bcd.gradient import IncrementalGradient, incremental_pays, supports_incremental
from mmopt.bcd.partition import check_blocks, make_partition, red_black_partition
from mmopt.bcd.problem import BCDProblem

__all__ = ["BlockCoordinateDescent", "SELECTIONS", "UPDATES", "PARTITIONS"]

SELECTIONS = ("cyclic", "random", "lipschitz", "gs", "gsl", "gsd", "gsq", "gs-s", "gs-r", "gs-q")
UPDATES = ("gradient", "backtracking", "matrix", "newton", "exact")
PARTITIONS = ("auto", "order", "sorted", "avg", "variable", "red-black", "greedy-tree")
_LIPSCHITZ_AWARE = ("lipschitz", "gsl", "gsd", "gsq", "gs-r", "gs-q")
_ARMIJO = 1e-4
_ROUNDING = 1e-15  # relative slack of the Armijo tests for the objective's rounding
_INNER_SWEEPS = 50
# Active-set Newton: the support must have held for this many iterations; at most this many
# coordinates (the Newton system is dense).
_SETTLE = 10
_MAX_ACTIVE = 2000
# Fixed blocks of a design-based datafit get a dense bound matrix: cap their size.
_MAX_DENSE_BLOCK = 2000
# A block whose datafit is flat (all-zero columns) has L_b = 0: its step uses this constant
# instead (the gradient there is 0, so the step is the penalty's prox with a huge step).
_TINY = np.finfo(float).tiny
# Backtracking doublings at most: in exact arithmetic log2(|b|) + 1 suffice (each
# coordinate's constant is remembered), so this only ends a search that rounding or a
# non-finite value keeps from succeeding.
_MAX_DOUBLINGS = 100


class _IndexBlocks(Constraint):
    """User blocks: a sequence of index arrays (checked against the problem by
    :func:`~mmopt.bcd.check_blocks` when a solve starts)."""

    def accepts_type(self, value) -> bool:
        return self.is_satisfied_by(value)

    def is_satisfied_by(self, value) -> bool:
        return not isinstance(value, (str, bytes)) and hasattr(value, "__iter__")

    def describe(self) -> str:
        return "a sequence of index arrays"

    def valid_value(self):
        return [[0]]


# Seeds of numpy.random.default_rng.
RANDOM_STATE = [
    None,
    Interval(int, 0, None),
    InstanceOf(np.random.Generator, np.random.BitGenerator, np.random.SeedSequence,
               name="a numpy Generator, BitGenerator or SeedSequence"),
]


def _named(partition):
    """The partition's name, or None for user blocks."""
    return partition if isinstance(partition, str) else None


@dataclass(eq=False)
class _BCDRun:
    """What one solve sets up and every iteration of it shares: the partition, the block
    constants and factor caches, the random generator and the incremental gradient.

    A solve makes its own (in ``_init_state``), so that one solver object can serve several
    threads at once: the solver keeps its options only.
    """

    rng: np.random.Generator
    lip: np.ndarray
    tree: bool = False
    A_csr: sp.csr_matrix | None = None
    A_diag: np.ndarray | None = None
    variable: bool = False
    blocks: list | None = None
    k_var: int = 0
    block_id: np.ndarray | None = None
    L_block: np.ndarray | None = None
    cache: dict = field(default_factory=dict)
    ddiag: np.ndarray | None = None
    gsq_inv: sp.csr_matrix | None = None
    greedy: bool = False
    epoch: int = 1
    incremental: IncrementalGradient | None = None
    gap: bool = False


@dataclass
class _BCDState(SolverState):
    aux: np.ndarray = None
    grad: np.ndarray = None
    k: int = 0
    memory: np.ndarray = None
    stable: int = 0  # iterations the L1 support has stayed the same
    record: dict = field(default_factory=dict)
    run: _BCDRun = None


@register_solver
class BlockCoordinateDescent(Solver):
    """Block coordinate descent for ``f(x) + g(x)`` (:class:`~mmopt.bcd.BCDProblem`).

    Parameters
    ----------
    block_size : int, default=5
        Coordinates per block (fixed partitions cut into blocks of this size; variable blocks
        take this many coordinates). Ignored for user blocks and ``"red-black"``.
    partition : str or sequence of index arrays, default="auto"
        ``"order"``, ``"sorted"`` (by decreasing coordinate Lipschitz constant), ``"avg"``
        (similar average constants), ``"variable"`` (each iteration's block is the
        ``block_size`` best coordinates under the selection rule, found by an O(p)
        ``np.argpartition``), ``"red-black"`` (colour classes of the graph of a
        :class:`~mmopt.bcd.LabelPropagationQuadratic`), ``"greedy-tree"`` (each iteration
        grows a forest of that graph greedily, nodes ranked by ``"gsl"``, ``"gs"`` or
        ``"random"``, as large as it can be, and minimizes exactly on it by compiled message
        passing in ``O(|b|)``; ``block_size`` is ignored), or blocks given as index arrays that
        must partition the coordinates. ``"auto"`` is ``"sorted"`` for Lipschitz-aware rules
        and ``"order"`` otherwise.
    selection : str, default="gsl"
        ``"cyclic"``, ``"random"`` (uniform), ``"lipschitz"`` (probability proportional to
        ``L_b``), ``"gs"`` (largest ``||v_b||``), ``"gsl"`` (largest ``||v_b||^2 / L_b``),
        ``"gsd"`` (largest ``sum_i v_i^2 / d_i`` with ``d`` the diagonal bound
        ``d_i = sum_j |H_ij|`` of the block), ``"gsq"`` (largest ``v_b^T H_b^{-1} v_b``, the
        progress under the full quadratic bound of the block). ``v`` is the gradient, or for a
        non-smooth penalty the minimal-norm subgradient. The proximal rules ``"gs-s"`` (the
        same as ``"gs"`` with ``v``), ``"gs-r"`` (largest prox-gradient step ``||d_b||``) and
        ``"gs-q"`` (largest decrease of the block's prox-linear model) are the paper's
        rules for L1. With variable blocks, ``"gsd"`` and ``"gsq"`` rank coordinates like
        ``"gsl"`` (the block is not known before it is chosen; the matrix update then uses the
        block's full bound).
    update : str, default="gradient"
        ``"gradient"``, ``"backtracking"``, ``"matrix"``, ``"newton"`` or ``"exact"``
        (quadratic datafits only).
    gradient : {"auto", "recompute", "incremental"}, default="auto"
        How the full gradient that greedy rules need is kept after a block move.
        ``"recompute"`` forms it from the maintained ``X w`` (or ``A x``): ``O(nnz(X))`` per
        iteration. ``"incremental"`` (quadratic datafits only: :class:`LeastSquares`,
        :class:`LabelPropagationQuadratic`) adds ``H[:, b] @ delta_b``: for least squares
        ``H = X^T X / n``, whose columns are formed on demand and cached (least recently
        used, 64 MiB at most; the whole Gram matrix when it fits), ``O(p |b|)`` per
        iteration once cached; for label propagation the block's sparse columns of ``A``,
        ``O(nnz(A[:, b]))``. Either way the gradient is recomputed exactly once per epoch
        (``p / block_size`` iterations), which bounds rounding drift; iterates agree with
        ``"recompute"`` up to rounding (exactly, for label propagation). ``"auto"`` decides by
        sizes, measuring nothing (:func:`mmopt.bcd.gradient.incremental_pays`):
        ``"incremental"`` for greedy rules on least squares when a block's Gram columns fit
        the cache, ``4 p |b| <= nnz(X)`` and forming them costs less than a recomputation
        (sparse ``X``; dense ``X`` when the whole Gram matrix fits), and on label propagation
        from 50,000 nodes; otherwise ``"recompute"``. Logistic and multinomial
        datafits always recompute: their gradient depends nonlinearly on ``X w``. Random,
        cyclic and Lipschitz rules only form the full gradient once per epoch, and
        ``"greedy-tree"`` blocks are too large to gain: both ignore this option.
    active_set_newton : bool, default=False
        For penalties with an L1 part: once the support has stayed the same for 10
        iterations, take a Newton step on the whole support (the penalty is smooth on the
        support's orthant; coordinates whose sign would flip are set to 0, and the step is
        kept only if the objective decreases). Proximal-gradient updates identify the
        support in finitely many iterations, after which these steps converge
        superlinearly (in one step for least squares).
    stopping : {"auto", "gap", "kkt"}, default="auto"
        Stopping quantity: the duality gap (least squares and logistic with an L1 penalty;
        ``"auto"`` uses it there) or the largest distance of ``-grad`` to the penalty's
        subdifferential (zero exactly at a minimizer).
    random_state : int, Generator or None
        Seed of the random rules.
    tol : float, default=1e-6
        Stop when the stopping quantity is ``<= tol``.
    max_iter : int, default=1000
        Block updates at most.
    callback, verbose
        As for every :class:`mmopt.Solver`.

    Notes
    -----
    ``Result`` fields beyond the common ones: ``blocks`` (the fixed partition, or None for
    variable blocks), ``gradient`` (the datafit's gradient at ``x``); the history records
    ``block_size`` per iteration.

    References
    ----------
    J. Nutini, I. Laradji, M. Schmidt, "Let's Make Block Coordinate Descent Converge Faster:
    Faster Greedy Rules, Message-Passing, Active-Set Complexity, and Superlinear Convergence",
    Journal of Machine Learning Research 23, 2022 (greedy block rules, variable and tree
    blocks, matrix and Newton updates, active-set Newton).

    J. Nutini, M. Schmidt, I. Laradji, M. Friedlander, H. Koepke, "Coordinate Descent
    Converges Faster with the Gauss-Southwell Rule Than Random Selection", ICML 2015
    (the ``"gs"``, ``"gsl"`` and proximal Gauss-Southwell rules).

    Examples
    --------
    >>> from mmopt.bcd import BCDProblem, BlockCoordinateDescent, LeastSquares
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((40, 10))
    >>> y = X @ np.arange(10.0)
    >>> solver = BlockCoordinateDescent(selection="gsq", update="matrix", tol=1e-9)
    >>> res = solver.solve(BCDProblem(LeastSquares(X, y)))
    >>> np.round(res.x, 4)
    array([0., 1., 2., 3., 4., 5., 6., 7., 8., 9.])
    """

    name = "bcd"
    problem_types = (BCDProblem,)
    required_methods = ("objective",)

    _options = {
        "block_size": Param(5, Interval(int, 1, None)),
        "partition": Param("auto", Options(PARTITIONS), _IndexBlocks()),
        "selection": Param("gsl", Options(SELECTIONS)),
        "update": Param("gradient", Options(UPDATES)),
        "gradient": Param("auto", Options({"auto", "recompute", "incremental"})),
        "active_set_newton": Param(False, bool),
        "stopping": Param("auto", Options({"auto", "gap", "kkt"})),
        "random_state": Param(None, *RANDOM_STATE),
    }
    _parameter_rules: ClassVar[list] = [
        Rule(
            ("partition", "selection"),
            lambda p: _named(p["partition"]) not in ("variable", "greedy-tree")
            or p["selection"] not in ("cyclic", "lipschitz"),
            "selection='cyclic' and 'lipschitz' need fixed blocks; with "
            "partition='variable' or 'greedy-tree' use 'random' or a greedy rule",
        ),
        Rule(
            ("partition", "selection"),
            lambda p: _named(p["partition"]) != "greedy-tree"
            or p["selection"] in ("random", "gs", "gsl"),
            "partition='greedy-tree' orders nodes by selection='gsl', 'gs' or 'random'",
        ),
    ]

    def check_problem(self, problem) -> None:
        """Check the options that depend on the problem's datafit and penalty."""
        super().check_problem(problem)
        datafit, penalty = problem.datafit, problem.penalty
        partition = self.partition if isinstance(self.partition, str) else None
        if self.update == "exact" and not datafit.quadratic:
            raise ValueError(
                "update='exact' needs a quadratic datafit "
                "(LeastSquares, LabelPropagationQuadratic)."
            )
        if partition == "greedy-tree" and (
            not isinstance(datafit, LabelPropagationQuadratic) or not penalty.smooth
        ):
            raise ValueError(
                "partition='greedy-tree' needs a LabelPropagationQuadratic datafit and a "
                "smooth penalty."
            )
        if partition == "red-black" and not isinstance(datafit, LabelPropagationQuadratic):
            raise ValueError("partition='red-black' needs a LabelPropagationQuadratic datafit.")
        if self.gradient == "incremental" and not supports_incremental(datafit):
            raise ValueError(
                "gradient='incremental' needs a quadratic datafit (LeastSquares, "
                f"LabelPropagationQuadratic), got {type(datafit).__name__}."
            )
        if self.stopping == "gap" and not self._gap_stops(problem):
            raise ValueError(
                "stopping='gap' needs a LeastSquares or Logistic datafit with an L1 penalty."
            )

    def _gap_stops(self, problem) -> bool:
        """Whether the duality gap is the stopping quantity."""
        datafit, penalty = problem.datafit, problem.penalty
        return (
            self.stopping in ("auto", "gap")
            and hasattr(datafit, "duality_gap")
            and penalty.l1 > 0
            and not (penalty.l2 > 0 and isinstance(datafit, Logistic))
        )

    # ------------------------------------------------------------------ set-up
    def _setup(self, problem: BCDProblem) -> _BCDRun:
        datafit, penalty = problem.datafit, problem.penalty
        p = datafit.n_coords
        run = _BCDRun(
            rng=np.random.default_rng(self.random_state),
            lip=np.asarray(datafit.lipschitz, dtype=float),
        )
        partition = self.partition
        if isinstance(partition, str) and partition == "auto":
            partition = "sorted" if self.selection in _LIPSCHITZ_AWARE else "order"
        run.tree = isinstance(partition, str) and partition == "greedy-tree"
        if run.tree:
            run.A_csr = datafit.A.tocsr()
            run.A_diag = datafit.A.diagonal() + penalty.l2
        run.variable = isinstance(partition, str) and partition in ("variable", "greedy-tree")
        if run.variable:
            run.blocks = None
            run.k_var = min(self.block_size, p)
        else:
            if isinstance(partition, str) and partition == "red-black":
                blocks = red_black_partition(datafit.W)
            elif isinstance(partition, str):
                blocks = make_partition(partition, run.lip, min(self.block_size, p))
            else:
                blocks = check_blocks(partition, p, name="partition")
            run.blocks = blocks
            run.block_id = np.empty(p, dtype=np.intp)
            for i, b in enumerate(blocks):
                run.block_id[b] = i
            n_blocks = len(blocks)
            run.L_block = np.empty(n_blocks)
            need_matrix = self.selection in ("gsd", "gsq") or self.update in ("matrix",)
            ddiag = np.empty(p)
            gsq_parts = []
            for i, b in enumerate(blocks):
                if need_matrix or len(b) <= 64:
                    H = datafit.hessian_bound(b)
                    H = H + penalty.l2 * np.eye(len(b))
                    run.L_block[i] = np.linalg.eigvalsh(H)[-1] if len(b) > 1 else H[0, 0]
                    ddiag[b] = np.abs(H).sum(axis=1)
                    if need_matrix:
                        chol = _cholesky(H)
                        run.cache[i] = (H, chol)
                        if self.selection == "gsq":
                            gsq_parts.append(scipy.linalg.cho_solve(chol, np.eye(len(b))))
                else:
                    # Large blocks (red-black): the diagonal-dominance bound is cheap and valid.
                    if isinstance(datafit, LabelPropagationQuadratic):
                        H = None
                    elif len(b) <= _MAX_DENSE_BLOCK:
                        H = datafit.hessian_bound(b)
                    else:
                        raise ValueError(
                            f"blocks[{i}] has {len(b)} coordinates: blocks of more than "
                            f"{_MAX_DENSE_BLOCK} need a graph datafit (their bound matrix is "
                            "dense)."
                        )
                    row = (
                        np.abs(datafit.A[:, b]).sum(axis=0).A1
                        if H is None
                        else np.abs(H).sum(axis=1)
                    )
                    ddiag[b] = row + penalty.l2
                    run.L_block[i] = ddiag[b].max()
            run.ddiag = np.maximum(ddiag, _TINY)  # a zero column: no 0/0 in the scores
            if self.selection == "gsq":
                perm = np.concatenate(blocks)
                Hinv = sp.block_diag(gsq_parts, format="csr")
                # Undo the permutation: coordinate perm[i] sits at row i of the block diagonal.
                P = sp.csr_matrix((np.ones(p), (perm, np.arange(p))), shape=(p, p))
                run.gsq_inv = (P @ Hinv @ P.T).tocsr()
        run.greedy = self.selection not in ("cyclic", "random", "lipschitz")
        run.epoch = len(run.blocks) if run.blocks is not None else -(-p // run.k_var)
        run.incremental = None
        if run.greedy and not run.tree:
            largest = run.k_var if run.blocks is None else max(len(b) for b in run.blocks)
            if self.gradient == "incremental" or (
                self.gradient == "auto" and incremental_pays(datafit, largest)
            ):
                run.incremental = IncrementalGradient(datafit)
        run.gap = self._gap_stops(problem)
        return run

    def _init_state(self, problem, x0) -> _BCDState:
        run = self._setup(problem)
        p = problem.n_coords
        if x0 is None:
            x = np.zeros(p)
        else:
            x = np.array(check_array(x0, "x0", ndim=1, shape=(p,)), dtype=float)
            if problem.penalty.positive:
                x = np.maximum(x, 0.0)
        with np.errstate(over="ignore", invalid="ignore"):  # a bad x0 is reported below
            # Block moves are small: this solver keeps its vectors in float64 whatever the
            # design's precision (products with X run in the design's).
            aux = np.asarray(problem.datafit.init_aux(x), dtype=float)
            grad = _gradient(problem.datafit, x, aux)
            state = _BCDState(x=x, fun=np.inf, aux=aux, grad=grad, memory=run.lip.copy(), run=run)
            state.fun = self._objective(problem, x, aux)
            state.residual = self._residual(problem, state)
        if not _finite(state.fun, state.residual, state.grad, aux):
            raise ValueError(
                "x0 gives a non-finite objective or gradient: the problem's scale overflows "
                "float64 there; start closer to 0 or rescale the data."
            )
        return state

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _objective(problem, x, aux) -> float:
        return problem.datafit.value(x, aux) + problem.penalty.value(x)

    def _residual(self, problem, state) -> float:
        if state.run.gap:
            datafit = problem.datafit
            if isinstance(datafit, LeastSquares) and state.grad is not None:
                # X^T R is -n * grad: no product with X when the gradient is maintained.
                gap = datafit.duality_gap(state.x, state.aux, problem.penalty, grad=state.grad)
            else:
                gap = datafit.duality_gap(state.x, state.aux, problem.penalty)
            return max(gap, 0.0)
        return float(problem.penalty.subdiff_distance(state.x, state.grad).max())

    def _scores(self, problem, state, step):
        """Per-coordinate score whose block sums the greedy rule maximizes."""
        rule, pen, x, g = self.selection, problem.penalty, state.x, state.grad
        run = state.run
        if rule in ("gs-r", "gs-q"):
            d = pen.prox(x - step * g, step) - x
            if rule == "gs-r":
                return d * d
            new = x + d
            # Decrease of the separable prox-linear model, coordinate by coordinate. The
            # penalty change is formed without cancellation (|x + d| - |x| = sign(x) d when
            # the sign is kept): near the solution the decreases are tiny differences of
            # O(1) terms, and rounding would otherwise drown the rule.
            same = (np.sign(new) == np.sign(x)) & (x != 0)
            l1_change = np.where(same, np.sign(x) * d, np.abs(new) - np.abs(x))
            r_change = pen.l1 * l1_change + pen.l2 * d * (x + 0.5 * d)
            return -(g * d + 0.5 * d * d / step + r_change)
        v = pen.subdiff_distance(x, g)
        v2 = v * v
        if rule in ("gs", "gs-s"):
            return v2
        if rule == "gsl" or run.variable:
            return v2 * step
        if rule == "gsd":
            return v2 / run.ddiag
        raise AssertionError(rule)  # gsq handled by _select

    def _select(self, problem, state) -> np.ndarray:
        rule, run = self.selection, state.run
        if run.variable:
            p = problem.n_coords
            if rule == "random":
                return np.sort(run.rng.choice(p, run.k_var, replace=False))
            step = 1.0 / np.maximum(run.lip + problem.penalty.l2, 1e-300)
            scores = self._scores(problem, state, step)
            k = run.k_var
            if k >= p:
                return np.arange(p)
            return np.sort(np.argpartition(scores, p - k)[p - k :])
        n_blocks = len(run.blocks)
        if rule == "cyclic":
            return run.blocks[state.k % n_blocks]
        if rule == "random":
            return run.blocks[run.rng.integers(n_blocks)]
        if rule == "lipschitz":
            prob = run.L_block / run.L_block.sum()
            return run.blocks[run.rng.choice(n_blocks, p=prob)]
        if rule == "gsq":
            v = problem.penalty.subdiff_distance(state.x, state.grad)
            scores = v * (run.gsq_inv @ v)
        else:
            step = 1.0 / np.maximum(run.L_block[run.block_id], 1e-300)
            # For "gsl" each coordinate's score is already divided by its block's L_b.
            scores = self._scores(problem, state, step)
        totals = np.bincount(run.block_id, weights=scores, minlength=n_blocks)
        return run.blocks[int(np.argmax(totals))]

    def _variable_block_bound(self, problem, run, block):
        """The datafit's bound on a block without a per-block cache entry (variable blocks),
        read from the Gram cache when the gradient is maintained incrementally."""
        if run.incremental is not None:
            H = run.incremental.block_hessian(block)
            if H is not None:
                return H
        return problem.datafit.hessian_bound(block)

    def _block_matrix(self, problem, run, block, block_index):
        if block_index is not None and block_index in run.cache:
            return run.cache[block_index]
        H = self._variable_block_bound(problem, run, block)
        H = H + problem.penalty.l2 * np.eye(len(block))
        entry = (H, _cholesky(H))
        if block_index is not None:
            run.cache[block_index] = entry
        return entry

    def _block_lipschitz(self, problem, run, block, block_index):
        if block_index is not None:
            return run.L_block[block_index]
        H = self._variable_block_bound(problem, run, block)
        return float(np.linalg.eigvalsh(H)[-1]) + problem.penalty.l2

    # ------------------------------------------------------------------ one step
    def _greedy_tree(self, problem, state):
        """Forest block grown greedily by the rule's scores, with its exact update."""
        pen, run = problem.penalty, state.run
        g = state.grad + pen.l2 * state.x
        if self.selection == "random":
            order = run.rng.permutation(g.size)
        else:
            score = g * g if self.selection == "gs" else g * g / run.A_diag
            order = np.argsort(-score, kind="stable")
        return _kernels.greedy_forest_solve(run.A_csr, run.A_diag, order, g)

    def _step(self, problem, state: _BCDState) -> _BCDState:
        new = self._advance(problem, state)
        if new.grad is not None and not _finite(0.0, 0.0, new.grad):
            # The loop checks the objective, the residual and x; the gradient feeds the next
            # block choice and the result, so it must be finite too.
            raise StopSolve(Status.NUMERICAL_FAILURE, STATUS_MESSAGES[Status.NUMERICAL_FAILURE])
        return new

    def _advance(self, problem, state: _BCDState) -> _BCDState:
        run = state.run
        if run.tree:
            return self._tree_step(problem, state)
        if (
            self.active_set_newton
            and not problem.penalty.smooth
            and state.stable >= _SETTLE
            and state.grad is not None
        ):
            new = self._active_newton(problem, state)
            if new is not None:
                return new
        block = self._select(problem, state)
        block_index = None if run.variable else int(run.block_id[block[0]])
        datafit, pen = problem.datafit, problem.penalty
        x, aux = state.x.copy(), state.aux.copy()
        xb = x[block]
        if state.grad is not None:
            gb = state.grad[block]
        else:
            gb = datafit.gradient_block(state.x, state.aux, block)
        memory = state.memory
        if self.update == "gradient":
            L = max(self._block_lipschitz(problem, run, block, block_index), _TINY)
            d = pen.prox(xb - gb / L, 1.0 / L) - xb
        elif self.update == "backtracking":
            d, memory = self._backtracking(problem, state, block, xb, gb)
        elif self.update == "matrix":
            H, chol = self._block_matrix(problem, run, block, block_index)
            d = _model_step(pen, xb, gb, H, chol)
        elif self.update == "newton":
            H = datafit.hessian(state.aux, block) + pen.l2 * np.eye(len(block))
            d = _model_step(pen, xb, gb, H, _cholesky(H))
            d = self._armijo(problem, state, block, xb, gb, d)
        else:  # exact block minimization of a quadratic
            d = self._exact(problem, run, block, block_index, xb, gb)
        moved = bool(np.any(d != 0))
        if moved:
            x[block] = xb + d
            datafit.update_aux(aux, block, d)
        k = state.k + 1
        # Random and cyclic rules need only the block's gradient: the full gradient (and the
        # stopping test) is then formed once per epoch, not at every block.
        full = run.greedy or k % run.epoch == 0
        if run.incremental is not None and k % run.epoch != 0 and state.grad is not None:
            # The gradient of a quadratic moves by H[:, b] @ d; the exact recomputation once
            # per epoch (the else branch) bounds the rounding drift.
            grad = state.grad.copy()
            if moved:
                run.incremental.update(grad, block, d, aux=aux)
        else:
            grad = _gradient(datafit, x, aux) if full else None
        new = _BCDState(
            x=x,
            fun=self._objective(problem, x, aux),
            aux=aux,
            grad=grad,
            k=k,
            memory=memory,
            run=run,
        )
        new.residual = self._residual(problem, new) if full else state.residual
        new.record = {"block_size": float(len(block))}
        same = np.array_equal(x != 0, state.x != 0)
        new.stable = state.stable + 1 if same else 0
        return new

    def _active_newton(self, problem, state):
        """Newton step on the support, the L1 term linear there; None when it fails."""
        datafit, pen = problem.datafit, problem.penalty
        support = np.flatnonzero(state.x)
        if support.size == 0 or support.size > _MAX_ACTIVE:
            return None
        xs = state.x[support]
        sign = np.sign(xs)
        g = state.grad[support] + pen.l1 * sign + pen.l2 * xs
        H = datafit.hessian(state.aux, support) + pen.l2 * np.eye(support.size)
        d = scipy.linalg.cho_solve(_cholesky(H), -g)

        def trial(step):
            new_xs = xs + step * d
            # Stay in the support's orthant: a coordinate that would change sign stops at 0.
            new_xs = np.where(np.sign(new_xs) == sign, new_xs, 0.0)
            move = new_xs - xs
            x, aux = state.x.copy(), state.aux.copy()
            x[support] = new_xs
            datafit.update_aux(aux, support, move)
            return x, aux, self._objective(problem, x, aux), float(g @ move)

        def accept(step, t):
            # Armijo's test on the projected move (not step * d once a coordinate is clipped).
            _, _, fun, slope = t
            return fun <= state.fun + _ARMIJO * slope + _ROUNDING * abs(state.fun)

        search = backtracking(trial, accept, max_trials=30)
        if not search.success:
            return None
        x, aux, fun, _ = search.trial
        grad = _gradient(datafit, x, aux)
        new = _BCDState(
            x=x,
            fun=fun,
            aux=aux,
            grad=grad,
            k=state.k + 1,
            memory=state.memory,
            stable=0,
            run=state.run,
        )
        new.residual = self._residual(problem, new)
        new.record = {"block_size": float(support.size)}
        return new

    def _tree_step(self, problem, state):
        datafit = problem.datafit
        block, d = self._greedy_tree(problem, state)
        x, aux = state.x.copy(), state.aux.copy()
        x[block] += d
        datafit.update_aux(aux, block, d)
        new = _BCDState(
            x=x,
            fun=self._objective(problem, x, aux),
            aux=aux,
            grad=_gradient(datafit, x, aux),
            k=state.k + 1,
            memory=state.memory,
            run=state.run,
        )
        new.residual = self._residual(problem, new)
        new.record = {"block_size": float(block.size)}
        return new

    def _backtracking(self, problem, state, block, xb, gb):
        pen, datafit = problem.penalty, problem.datafit
        memory = state.memory.copy()
        # The block constant is at least each coordinate's: start from the largest remembered.
        L0 = max(float(memory[block].max()) + pen.l2, _TINY)
        f0 = datafit.value(state.x, state.aux)

        # The step 1 / L halves, i.e. the constant doubles: L0 / step is exact for the
        # powers of two the search tries.
        def trial(step):
            L = L0 / step
            d = pen.prox(xb - gb / L, 1.0 / L) - xb
            aux = state.aux.copy()
            datafit.update_aux(aux, block, d)
            x = state.x.copy()
            x[block] = xb + d
            return L, d, datafit.value(x, aux)

        def accept(step, t):
            # The descent lemma's bound with constant L - l2 (the datafit's own).
            L, d, value = t
            return value <= f0 + gb @ d + 0.5 * (L - pen.l2) * (d @ d) + 1e-12 * abs(f0)

        search = backtracking(trial, accept, max_trials=_MAX_DOUBLINGS)
        if not search.success:
            raise StopSolve(
                Status.NUMERICAL_FAILURE,
                "Numerical failure: the backtracking line search found no step size (a "
                "non-finite datafit value?); the last finite iterate is returned.",
            )
        L, d, _ = search.trial
        memory[block] = L - pen.l2
        return d, memory

    def _armijo(self, problem, state, block, xb, gb, d):
        pen, datafit = problem.penalty, problem.datafit
        F0 = state.fun
        if datafit.quadratic:
            # The Newton model is the function itself: the full step minimizes it.
            return d
        decrease = gb @ d + pen.value(xb + d) - pen.value(xb)

        def trial(t):
            x = state.x.copy()
            x[block] = xb + t * d
            aux = state.aux.copy()
            datafit.update_aux(aux, block, t * d)
            return self._objective(problem, x, aux)

        # A rounding allowance, so that steps at the level of machine precision pass.
        search = backtracking(
            trial, armijo(F0, decrease, c1=_ARMIJO, rounding=_ROUNDING * abs(F0)), max_trials=50
        )
        return search.step * d if search.success else np.zeros_like(d)

    def _exact(self, problem, run, block, block_index, xb, gb):
        datafit, pen = problem.datafit, problem.penalty
        if not pen.smooth:
            H = datafit.hessian_bound(block) + pen.l2 * np.eye(len(block))
            return _model_step(pen, xb, gb, H, None)
        rhs = -(gb + pen.l2 * xb)
        if isinstance(datafit, LabelPropagationQuadratic):
            key = ("exact", block_index)
            solve = run.cache.get(key) if block_index is not None else None
            if solve is None:
                A_bb = (datafit.A[block][:, block] + pen.l2 * sp.eye(len(block))).tocsc()
                if A_bb.nnz == len(block):
                    diag = A_bb.diagonal()
                    solve = lambda r: r / diag  # noqa: E731 - no edges inside the block
                else:
                    # Sparse elimination; on a forest it creates no fill (message passing).
                    solve = spla.factorized(A_bb)
                if block_index is not None:
                    run.cache[key] = solve
            return solve(rhs)
        H, chol = self._block_matrix(problem, run, block, block_index)
        return scipy.linalg.cho_solve(chol, rhs)

    def _result_fields(self, problem, state):
        grad = state.grad
        if grad is None:
            grad = _gradient(problem.datafit, state.x, state.aux)
        return {"blocks": state.run.blocks, "gradient": grad}


def _gradient(datafit, x, aux) -> np.ndarray:
    """The datafit's gradient as float64 (a float32 design's is float32)."""
    return np.asarray(datafit.gradient(x, aux), dtype=float)


def _cholesky(H):
    try:
        return scipy.linalg.cho_factor(H, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        # A singular block bound (duplicate columns): a tiny ridge keeps the step defined.
        eps = 1e-12 * max(1.0, float(np.abs(np.diag(H)).max()))
        return scipy.linalg.cho_factor(H + eps * np.eye(len(H)), lower=True, check_finite=False)


def _model_step(pen, xb, gb, H, chol):
    """Minimize ``gb.d + 1/2 d^T H d + g(xb + d)`` over the block.

    Smooth penalty: one Cholesky solve. L1 penalties: coordinate descent on the small model
    (exact per coordinate; the model is strongly convex on the block, so the sweeps converge).
    """
    if pen.smooth:
        if chol is None:
            chol = _cholesky(H)
        return scipy.linalg.cho_solve(chol, -(gb + pen.l2 * xb))
    Hm = H - pen.l2 * np.eye(len(xb))  # the penalty's own L2 part goes through its prox
    d = np.zeros_like(xb)
    grad = gb.copy()  # gradient of the smooth model gb.d + 1/2 d^T Hm d at d
    diag = np.maximum(np.diag(Hm), 1e-300)
    for _ in range(_INNER_SWEEPS):
        change = 0.0
        for i in range(len(xb)):
            u = xb[i] + d[i]
            new = pen.prox(np.array([u - grad[i] / diag[i]]), 1.0 / diag[i])[0]
            delta = new - u
            if delta != 0.0:
                d[i] += delta
                grad += Hm[:, i] * delta
                change = max(change, abs(delta))
        if change <= 1e-12 * (1.0 + np.abs(xb).max()):
            break
    return d


def _finite(fun, residual, *arrays) -> bool:
    """Whether the scalars and the arrays (None for an array not formed) are all finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        sums = [float(np.sum(a)) for a in arrays if a is not None]
    return math.isfinite(fun) and math.isfinite(residual) and all(map(math.isfinite, sums))
