"""The shared loop, driven by a minimal solver written for the test."""

import warnings
from dataclasses import dataclass

import numpy as np
import pytest

from mmopt import ConvergenceWarning, Problem, Solver
from mmopt._core.result import Status
from mmopt._core.solver import SolverState, StopSolve


@dataclass(frozen=True)
class Scripted(Problem):
    """A problem whose iterates follow a script of objective values."""

    values: tuple
    interrupt_at: int | None = None


class ScriptedSolver(Solver):
    name = "scripted-test"
    problem_types = (Scripted,)

    def __init__(self, *, tol=0.0, max_iter=100, callback=None, verbose=0):
        self.tol = tol
        self.max_iter = max_iter
        self.callback = callback
        self.verbose = verbose

    def _init_state(self, problem, x0):
        return SolverState(x=np.zeros(1), fun=np.inf)

    def _step(self, problem, state):
        k = int(state.x[0]) + 1
        if problem.interrupt_at == k:
            raise KeyboardInterrupt
        value = problem.values[min(k, len(problem.values)) - 1]
        record = {"late": 1.0} if k >= 3 else {}
        return SolverState(x=np.array([float(k)]), fun=value, residual=value, record=record)


def test_non_finite_value_gives_status_4_and_last_finite_iterate():
    problem = Scripted(values=(5.0, 4.0, np.nan, 1.0))
    with pytest.warns(ConvergenceWarning, match="Numerical failure"):
        res = ScriptedSolver().solve(problem)
    assert res.status == 4 and res.nit == 2
    assert res.fun == 4.0 and res.x[0] == 2.0


def test_interrupt_inside_a_step_returns_best_so_far():
    problem = Scripted(values=(5.0, 3.0, 4.0, 6.0, 7.0), interrupt_at=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = ScriptedSolver().solve(problem)
    assert res.status == 3 and res.nit == 4
    assert res.fun == 3.0 and res.x[0] == 2.0


def test_converges_on_tol_and_pads_late_history_entries():
    problem = Scripted(values=(5.0, 3.0, 1.0, 0.5, 0.1))
    res = ScriptedSolver(tol=0.6).solve(problem)
    assert res.status == 0 and res.nit == 4
    np.testing.assert_array_equal(res.history["fun"], [5.0, 3.0, 1.0, 0.5])
    late = res.history["late"]
    assert late.shape == (4,) and np.isnan(late[:2]).all() and (late[2:] == 1.0).all()
    assert np.all(np.diff(res.history["time"]) >= 0)


def test_verbose_bar(capsys):
    ScriptedSolver(verbose=1, tol=0.6).solve(Scripted(values=(5.0, 3.0, 0.1)))
    assert "scripted-test" in capsys.readouterr().err


class StoppingSolver(ScriptedSolver):
    """Ends the solve from inside a step at iteration ``stop_at``."""

    name = "stopping-test"

    def __init__(self, *, stop_at=3, keep_state=True, tol=0.0, max_iter=100, callback=None,
                 verbose=0):
        super().__init__(tol=tol, max_iter=max_iter, callback=callback, verbose=verbose)
        self.stop_at = stop_at
        self.keep_state = keep_state

    def _step(self, problem, state):
        new_state = super()._step(problem, state)
        if int(new_state.x[0]) == self.stop_at:
            raise StopSolve(
                Status.STALLED, "Stalled: scripted.", new_state if self.keep_state else None
            )
        return new_state


@pytest.mark.parametrize("keep_state", [True, False])
def test_stop_solve_from_a_step(keep_state):
    problem = Scripted(values=(5.0, 4.0, 3.0, 2.0))
    with pytest.warns(ConvergenceWarning, match="Stalled: scripted"):
        res = StoppingSolver(keep_state=keep_state).solve(problem)
    assert res.status == 5 and not res.success and res.message == "Stalled: scripted."
    expected = 3 if keep_state else 2
    assert res.nit == expected and res.x[0] == expected
    assert res.history["fun"].shape == (expected,)


def test_stop_solve_yields_to_convergence():
    # The stopping state meets tol: that is convergence, not a stall.
    problem = Scripted(values=(5.0, 4.0, 1e-12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = StoppingSolver(tol=1e-9).solve(problem)
    assert res.status == 0 and res.nit == 3 and res.message.startswith("Converged")


@dataclass(frozen=True)
class Continued(Scripted):
    """The first ``n_intermediate`` iterates belong to an auxiliary problem."""

    n_intermediate: int = 0


class ContinuationSolver(ScriptedSolver):
    name = "continuation-test"
    problem_types = (Continued,)

    def _step(self, problem, state):
        new = super()._step(problem, state)
        new.intermediate = int(new.x[0]) <= problem.n_intermediate
        return new


def test_intermediate_iterates_neither_stop_nor_count_as_best():
    # The auxiliary problem's values are smaller (better for a minimizer) and its residual
    # is below tol: the loop must go on and keep the best of the problem's own iterates.
    problem = Continued(values=(0.0, 0.0, 5.0, 3.0, 4.0, 6.0), interrupt_at=6,
                        n_intermediate=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = ContinuationSolver(tol=0.5).solve(problem)
    assert res.status == 3 and res.nit == 5
    np.testing.assert_array_equal(res.history["fun"], [0.0, 0.0, 5.0, 3.0, 4.0])
    assert res.fun == 3.0 and res.x[0] == 4.0


def test_interrupt_during_a_continuation_returns_the_latest_iterate():
    problem = Continued(values=(9.0, 8.0, 7.0, 6.0), interrupt_at=3, n_intermediate=3)
    res = ContinuationSolver().solve(problem)
    assert res.status == 3 and res.nit == 2
    assert res.x[0] == 2.0  # not the initial state


class BudgetSolver(ScriptedSolver):
    """Stops through the loop's hook once ``budget`` iterations are done."""

    name = "budget-test"

    def __init__(self, *, budget=3, stop_status=Status.MAX_ITER, tol=0.0, max_iter=100,
                 callback=None, verbose=0):
        super().__init__(tol=tol, max_iter=max_iter, callback=callback, verbose=verbose)
        self.budget = budget
        self.stop_status = stop_status

    def _should_stop(self, problem, state):
        if state.x[0] >= self.budget:
            return self.stop_status, f"Budget of {self.budget} spent."
        return None


def test_should_stop_hook_ends_the_solve_with_its_status_and_reason():
    problem = Scripted(values=(5.0, 4.0, 3.0, 2.0, 1.0))
    seen = []
    with pytest.warns(ConvergenceWarning, match="Budget of 3 spent"):
        res = BudgetSolver(callback=lambda r: seen.append(r.nit)).solve(problem)
    assert res.status == 1 and not res.success and res.nit == 3
    assert res.message == "Budget of 3 spent." and res.x[0] == 3.0
    assert len(res.history["fun"]) == 3
    assert seen == [1, 2, 3]  # the callback still sees the last iteration, before the hook


def test_should_stop_hook_runs_before_the_tol_test_and_may_return_a_bare_status():
    # The residual reaches tol at iteration 2, where the hook stops first.
    problem = Scripted(values=(5.0, 0.5, 0.1))

    class Bare(BudgetSolver):
        def _should_stop(self, problem, state):
            return Status.CALLBACK if state.x[0] >= 2 else None

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # status 2 does not warn
        res = Bare(tol=1.0).solve(problem)
    assert res.status == 2 and res.nit == 2
    assert res.message == "Stopped by the callback (StopIteration)."


def test_hook_that_never_fires_leaves_the_loop_as_it_was():
    problem = Scripted(values=(5.0, 4.0, 3.0))
    plain = ScriptedSolver(tol=3.5).solve(problem)
    hooked = BudgetSolver(budget=99, tol=3.5).solve(problem)
    assert (plain.status, plain.nit, plain.fun) == (hooked.status, hooked.nit, hooked.fun) == (
        0, 3, 3.0)
