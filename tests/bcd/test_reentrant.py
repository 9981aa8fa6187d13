"""One BCD solver object serves several threads (issue 13): every per-run quantity (the
partition, block constants and factor caches, the random generator, the incremental
gradient's Gram cache, the squared design of proximal Newton) lives in the run's state.

Problems of different sizes are mixed on purpose: with run state on the solver, a kernel
given another run's buffers (no bounds checks) reads or writes out of bounds."""

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mmopt import ConvergenceWarning
from mmopt.bcd import (
    L1,
    L2,
    BCDProblem,
    BlockCoordinateDescent,
    CoordinateDescent,
    ElasticNet,
    LabelPropagationQuadratic,
    LeastSquares,
    Logistic,
)
from mmopt.datasets import make_lattice_graph


def _least_squares(seed):
    rng = np.random.default_rng(seed)
    n, p = 20 + 7 * seed, 12 + 5 * seed
    X = rng.standard_normal((n, p))
    y = X[:, :3] @ [1.0, -2.0, 0.5] + 0.1 * rng.standard_normal(n)
    return BCDProblem(LeastSquares(X, y), L1(0.05))


def _logistic(seed):
    rng = np.random.default_rng(seed)
    n, p = 30 + 9 * seed, 8 + 4 * seed
    X = rng.standard_normal((n, p))
    s = np.where(X[:, 0] + 0.5 * rng.standard_normal(n) > 0, 1.0, -1.0)
    return BCDProblem(Logistic(X, s), ElasticNet(0.05, 0.7))


def _logistic_l2(seed):
    problem = _logistic(seed)
    return BCDProblem(problem.datafit, L2(0.05))


def _graph(seed):
    W, y = make_lattice_graph(5 + seed, n_labelled=4, random_state=seed)
    return BCDProblem(LabelPropagationQuadratic(W, y, label_weight=10.0))


CASES = {
    "bcd-incremental": (
        lambda: BlockCoordinateDescent(selection="gs-q", gradient="incremental", max_iter=400),
        _least_squares,
    ),
    "bcd-variable-random": (
        lambda: BlockCoordinateDescent(
            partition="variable", selection="random", random_state=3, max_iter=400
        ),
        _least_squares,
    ),
    "bcd-gsq-matrix": (
        lambda: BlockCoordinateDescent(selection="gsq", update="matrix", max_iter=400),
        _least_squares,
    ),
    "bcd-backtracking-lipschitz": (
        lambda: BlockCoordinateDescent(
            selection="lipschitz", update="backtracking", random_state=1, max_iter=400
        ),
        _logistic,
    ),
    "bcd-active-newton": (
        lambda: BlockCoordinateDescent(active_set_newton=True, max_iter=400),
        _least_squares,
    ),
    "bcd-greedy-tree": (
        lambda: BlockCoordinateDescent(partition="greedy-tree", selection="gsl", max_iter=200),
        _graph,
    ),
    "bcd-red-black-exact": (
        lambda: BlockCoordinateDescent(
            partition="red-black", selection="cyclic", update="exact", max_iter=200
        ),
        _graph,
    ),
    "cd-least-squares": (lambda: CoordinateDescent(), _least_squares),
    "cd-prox-newton": (lambda: CoordinateDescent(), _logistic),
    "cd-newton-cg": (lambda: CoordinateDescent(), _logistic_l2),
}


def _answer(res):
    return res.status, res.nit, float(res.fun), np.array(res.x, copy=True)


@pytest.mark.filterwarnings("ignore::mmopt.ConvergenceWarning")
@pytest.mark.parametrize("case", sorted(CASES))
def test_shared_solver_gives_the_sequential_answers(case):
    make_solver, make_problem = CASES[case]
    solver = make_solver()
    problems = [make_problem(seed) for seed in range(4)]
    options = dict(vars(solver))
    sequential = [_answer(solver.solve(problem)) for problem in problems]
    jobs = problems * 3
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda problem: _answer(solver.solve(problem)), jobs))
    for i, got in enumerate(concurrent):
        want = sequential[i % 4]
        assert got[:3] == want[:3], (case, i)
        np.testing.assert_array_equal(got[3], want[3])
    assert vars(solver).keys() == options.keys()
    assert all(vars(solver)[key] is options[key] for key in options)


def test_solve_twice_gives_the_same_answer():
    # A random rule seeded by an int starts from the same generator in every run.
    solver = BlockCoordinateDescent(selection="random", random_state=0, max_iter=300)
    problem = _least_squares(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        first, second = solver.solve(problem), solver.solve(problem)
    np.testing.assert_array_equal(first.x, second.x)
    assert first.nit == second.nit
