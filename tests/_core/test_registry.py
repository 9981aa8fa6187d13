import numpy as np
import pytest

import mmopt
from mmopt import SOLVERS, Problem, Solver
from mmopt._core.registry import get_solver, register_solver
from mmopt.mm import MMProblem, MMSolver


def _problem():
    return MMProblem(
        objective=lambda x: float(np.sum((x - 2.0) ** 2)),
        surrogate_minimizer=lambda x: 0.5 * (x + 2.0),
        x0=np.zeros(2),
    )


def test_default_solver_and_named_solver_agree():
    a = mmopt.solve(_problem(), tol=1e-12)
    b = mmopt.solve(_problem(), solver="mm", tol=1e-12)
    c = mmopt.solve(_problem(), solver=MMSolver, tol=1e-12)
    for res in (a, b, c):
        np.testing.assert_allclose(res.x, 2.0)
        assert res.solver == "mm"


def test_solver_instance_is_cloned_not_modified():
    solver = MMSolver(tol=1e-3)
    res = mmopt.solve(_problem(), solver=solver, tol=1e-12)
    assert solver.tol == 1e-3
    np.testing.assert_allclose(res.x, 2.0, atol=1e-9)


def test_x0_is_passed_and_checked():
    res = mmopt.solve(_problem(), x0=[2.0, 2.0])
    assert res.nit == 1
    with pytest.raises(ValueError, match="x0 must have shape"):
        mmopt.solve(_problem(), x0=np.zeros(3))
    with pytest.raises(ValueError, match="x0"):
        mmopt.solve(_problem(), x0=[np.nan, 0.0])


def test_unknown_solver_name():
    with pytest.raises(ValueError, match="solver must be one of"):
        mmopt.solve(_problem(), solver="nope")
    with pytest.raises(TypeError, match="solver must be"):
        mmopt.solve(_problem(), solver=3)


def test_problem_must_be_a_problem():
    with pytest.raises(TypeError, match="problem must be an mmopt Problem"):
        mmopt.solve("not a problem")


def test_solver_rejects_foreign_problem():
    class Other(Problem):
        default_solver = "mm"

    with pytest.raises(TypeError, match="solver 'mm' solves MMProblem"):
        mmopt.solve(Other())


def test_problem_without_default_solver():
    with pytest.raises(ValueError, match="no default solver"):
        get_solver(None, Problem())


def test_register_solver_rejects_clash_and_non_solvers():
    class Clash(Solver):
        name = "mm"

    with pytest.raises(ValueError, match="already registered"):
        register_solver(Clash)
    with pytest.raises(TypeError):
        register_solver(int)
    assert SOLVERS["mm"] is MMSolver


def test_problem_solve_shorthand():
    res = _problem().solve(tol=1e-12)
    np.testing.assert_allclose(res.x, 2.0)
