"""Hardened inputs of the shared core (issue 13): validation, the loop, solve/solve_many,
AndersonAcceleration and the thread helpers. Bad inputs raise naming the argument; extreme
inputs end with a finite result or an honest status; inputs are never modified."""

import threading
import warnings

import joblib
import numpy as np
import pytest
from _helpers import assert_thread_safe, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

import mmopt
from mmopt import AndersonAcceleration, Problem, Solver
from mmopt._core.solver import SolverState
from mmopt._core.threads import check_n_threads, effective_n_threads
from mmopt._core.validation import check_array, check_input
from mmopt.mm import MMProblem, MMSolver

FAST = fuzz_settings(25)


# ------------------------------------------------------------------------------ validation
@FAST
@given(kind=st.sampled_from(["ragged", "string", "object", "complex", "nan", "inf", "empty",
                             "none"]))
def test_check_array_rejects_every_bad_array_naming_it(fuzz, kind):
    value = fuzz.BAD_ARRAYS[kind]
    error = fuzz.raises_naming(check_array, "weights", value, "weights")
    # NumPy's own wording names no argument.
    assert "setting an array element" not in str(error)


@FAST
@given(kind=st.sampled_from(["ragged", "string", "object", "complex", "empty", "none"]))
def test_check_input_rejects_what_validate_data_would_not_name(fuzz, kind):
    fuzz.raises_naming(check_input, "X", fuzz.BAD_ARRAYS[kind], "X")


def test_check_input_lets_labels_and_sparse_through():
    import scipy.sparse as sp

    labels = np.array(["a", "b", "a"])
    assert check_input(labels, "y", numeric=False) is labels
    with pytest.raises(TypeError, match="y must hold real numbers"):
        check_input(labels, "y")
    matrix = sp.eye(3, format="csr")
    assert check_input(matrix, "X", allow_sparse=True) is matrix
    with pytest.raises(TypeError, match="X must be a dense array"):
        check_input(matrix, "X")


@FAST
@given(
    values=st.lists(
        st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=12
    ),
    fortran=st.booleans(),
    readonly=st.booleans(),
)
def test_check_array_returns_a_readonly_equal_array_and_leaves_the_input(fuzz, values,
                                                                         fortran, readonly):
    array = np.asarray(values).reshape(1, -1)
    array = np.asfortranarray(array) if fortran else array
    array.flags.writeable = not readonly
    before = fuzz.snapshot(array)
    out = check_array(array, "a", ndim=2)
    assert not out.flags.writeable and np.array_equal(out, array)
    fuzz.assert_unchanged(before, array)
    assert array.flags.writeable == (not readonly)


# -------------------------------------------------------------------------- solve / many
def _quadratic(seed=0, x0=None):
    A = np.diag(np.linspace(1.0, 10.0 + seed, 4))

    def objective(x):
        # An overflow here is the user's own arithmetic: the solver reports what follows.
        with np.errstate(over="ignore", invalid="ignore"):
            return 0.5 * float(x @ A @ x) - float(x.sum())

    return MMProblem(
        objective=objective,
        surrogate_minimizer=lambda x: x - (A @ x - 1.0) / (10.0 + seed),
        x0=np.zeros(4) if x0 is None else x0,
    )


def test_solve_many_names_problems(fuzz):
    # Issue 13: solve_many(None) raised "'NoneType' object is not iterable".
    fuzz.raises_naming(mmopt.solve_many, "problems", None)
    fuzz.raises_naming(mmopt.solve_many, "problems", 3)
    fuzz.raises_naming(mmopt.solve_many, "problems", _quadratic())
    fuzz.raises_naming(mmopt.solve_many, "problems[1]", [_quadratic(), "not a problem"])
    fuzz.raises_naming(mmopt.solve_many, "x0s", [_quadratic()], x0s=[None, None])
    fuzz.raises_naming(mmopt.solve_many, "x0s", [_quadratic()], x0s=3)


def test_solve_names_its_arguments(fuzz):
    fuzz.raises_naming(mmopt.solve, "bogus", _quadratic(), solver="mm", bogus=1)
    with pytest.raises((TypeError, ValueError)):
        mmopt.solve(None)


# ---------------------------------------------------------------------------- MMProblem
@pytest.mark.parametrize("returned", [None, "1.0", [1.0, 2.0], np.ones(2)])
def test_objective_returning_no_number_names_the_objective(fuzz, returned):
    # Issue 13: an objective returning None gave float()'s message about 'NoneType'.
    problem = MMProblem(lambda x: returned, lambda x: 0.5 * x, np.ones(2))
    fuzz.raises_naming(MMSolver().solve, "objective", problem)


def test_surrogate_minimizer_returning_none_names_it(fuzz):
    problem = MMProblem(lambda x: float(x @ x), lambda x: None, np.ones(2))
    fuzz.raises_naming(MMSolver().solve, "surrogate_minimizer", problem)


@pytest.mark.parametrize("anderson", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_objective_turning_non_finite_gives_status_4_with_the_last_finite_iterate(
    fuzz, anderson, bad
):
    # Issue 13: status 4 promises the last finite iterate; fun must not be NaN.
    calls = []

    def objective(x):
        calls.append(1)
        return bad if len(calls) > 6 else float(np.sum((x - 3.0) ** 2))

    problem = MMProblem(objective, lambda x: 0.5 * (x + 3.0), np.zeros(3))
    with pytest.warns(mmopt.ConvergenceWarning, match="Numerical failure"):
        res = MMSolver(anderson=anderson, tol=0.0).solve(problem)
    assert res.status == 4 and res.nit >= 1
    fuzz.assert_honest(res)
    assert np.isfinite(res.fun) and np.all(np.isfinite(res.x))
    assert res.fun == pytest.approx(float(np.sum((res.x - 3.0) ** 2)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_objective_non_finite_at_the_start_is_an_error(fuzz, bad):
    # No finite iterate exists: an honest error instead of status 4 with fun NaN.
    problem = MMProblem(lambda x: bad, lambda x: 0.5 * x, np.ones(2))
    fuzz.raises_naming(MMSolver().solve, "x0", problem)


@pytest.mark.parametrize("kind", ["nan", "inf", "ragged", "string", "complex", "none"])
def test_mm_problem_bad_x0_named(fuzz, kind):
    fuzz.raises_naming(MMProblem, "x0", lambda x: 0.0, lambda x: x, fuzz.BAD_ARRAYS[kind])
    if kind != "none":  # solve(problem, None) means the problem's own start
        fuzz.raises_naming(MMSolver().solve, "x0", _quadratic(), fuzz.BAD_ARRAYS[kind])


def test_mm_problem_bad_callables_named(fuzz):
    fuzz.raises_naming(MMProblem, "objective", 3, lambda x: x, np.ones(2))
    fuzz.raises_naming(MMProblem, "surrogate_minimizer", lambda x: 0.0, None, np.ones(2))
    fuzz.raises_naming(MMProblem, "project", lambda x: 0.0, lambda x: x, np.ones(2), project=1)


@pytest.mark.parametrize(
    "option, value",
    [("anderson", 0), ("anderson", None), ("anderson", "yes"), ("stopping", "bogus"),
     ("tol", -1.0), ("max_iter", 0), ("tol", np.nan)],
)
def test_mm_solver_bad_options_named(fuzz, option, value):
    fuzz.raises_naming(MMSolver(**{option: value}).solve, option, _quadratic())


@FAST
@given(exponent=st.integers(-300, 300), anderson=st.booleans())
def test_mm_solver_on_extreme_starts_is_finite_or_honest(fuzz, exponent, anderson):
    x0 = np.full(4, 10.0**exponent)
    before = fuzz.snapshot(x0)
    problem = _quadratic(x0=x0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mmopt.ConvergenceWarning)
            # No NumPy warning may leak out of the solver.
            warnings.simplefilter("error", RuntimeWarning)
            res = MMSolver(anderson=anderson, max_iter=200).solve(problem)
    except ValueError as error:
        # Only when the objective itself overflows at the start.
        assert "x0" in str(error) and exponent > 150
    else:
        fuzz.assert_honest(res)
        assert res.status in (0, 1, 4)
        assert np.isfinite(res.fun) and np.all(np.isfinite(res.x))
    fuzz.assert_unchanged(before, x0)


# ----------------------------------------------------------------------- the loop itself
class _Scripted(Problem):
    def __init__(self, values, start=np.inf):
        self.values, self.start = values, start


class _ScriptedSolver(Solver):
    name = "scripted-fuzz"
    problem_types = (_Scripted,)

    def __init__(self, *, tol=0.0, max_iter=20, callback=None, verbose=0):
        self.tol, self.max_iter, self.callback, self.verbose = tol, max_iter, callback, verbose

    def _init_state(self, problem, x0):
        return SolverState(x=np.zeros(1), fun=problem.start)

    def _step(self, problem, state):
        k = int(state.x[0]) + 1
        value = problem.values[min(k, len(problem.values)) - 1]
        return SolverState(x=np.array([float(k)]), fun=value, residual=1.0)


@pytest.mark.parametrize("start", [np.inf, np.nan])
def test_loop_never_returns_status_4_without_a_finite_iterate(start):
    # The first step already fails and the start has no finite value: status 4 would return
    # fun=inf/NaN while saying "the last finite iterate is returned".
    with pytest.raises(ValueError, match="non-finite value was met before any finite iterate"):
        _ScriptedSolver().solve(_Scripted(values=(np.nan,), start=start))


def test_loop_status_4_after_finite_iterates_is_honest(fuzz):
    with pytest.warns(mmopt.ConvergenceWarning):
        res = _ScriptedSolver().solve(_Scripted(values=(3.0, 2.0, np.nan)))
    assert res.status == 4 and res.fun == 2.0 and res.x[0] == 2.0
    fuzz.assert_honest(res)


# -------------------------------------------------------------------------------- Anderson
def test_anderson_fresh_is_an_independent_copy_of_the_options():
    aa = AndersonAcceleration(3, regularization=1e-8, damping=0.5, delay=2)
    x = np.zeros(3)
    for _ in range(5):
        x = aa.update(x, 0.5 * x + 1.0)
    other = aa.fresh()
    assert repr(other) == repr(aa)
    assert other.history_size == 0 and aa.history_size > 0
    assert other.n_accepted == other.n_rejected == 0


@pytest.mark.parametrize(
    "kwargs, name",
    [({"m": 0}, "m"), ({"m": 2.5}, "m"), ({"damping": 0.0}, "damping"),
     ({"damping": 1.5}, "damping"), ({"regularization": -1.0}, "regularization"),
     ({"max_condition": 0.5}, "max_condition"), ({"delay": -1}, "delay"),
     ({"regularization": np.nan}, "regularization")],
)
def test_anderson_bad_options_named(fuzz, kwargs, name):
    fuzz.raises_naming(AndersonAcceleration, name, **kwargs)


@FAST
@given(
    rates=st.lists(st.floats(0.0, 0.99), min_size=1, max_size=6),
    m=st.integers(1, 6),
    exponent=st.integers(-150, 150),
)
def test_anderson_on_a_linear_contraction_stays_finite_and_leaves_inputs(fuzz, rates, m,
                                                                        exponent):
    A = np.diag(rates)
    b = np.full(len(rates), 10.0**exponent)
    aa = AndersonAcceleration(m)
    x = np.zeros(len(rates))
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        for _ in range(30):
            g = A @ x + b
            before = fuzz.snapshot(x, g)
            proposal = aa.update(x, g)
            fuzz.assert_unchanged(before, x, g)
            assert np.all(np.isfinite(proposal))
            x = proposal if aa.safeguard(
                float(np.abs(A @ proposal + b - proposal).sum()),
                float(np.abs(A @ g + b - g).sum()),
            ) else g
    # The safeguard keeps the residual from growing: it ends no larger than the first one.
    assert np.abs(A @ x + b - x).sum() <= np.abs(b).sum() * (1.0 + 1e-12)


def test_anderson_shape_changes_are_errors():
    aa = AndersonAcceleration()
    with pytest.raises(ValueError, match="same shape"):
        aa.update(np.zeros(3), np.zeros(2))
    aa.update(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="changed size"):
        aa.update(np.zeros(4), np.ones(4))


# ------------------------------------------------------------------------ reentrancy (MM)
def test_one_mm_solver_and_one_problem_shared_by_threads():
    # Same problem object and same solver from 4 threads at once: the sequential answer.
    solver, problem = MMSolver(tol=1e-12, max_iter=5000), _quadratic(seed=3)
    assert_thread_safe(solver, [problem], ["nit", "x", "n_evaluations", "n_accepted"],
                       repeats=12)


# --------------------------------------------------------------------------------- threads
def test_n_threads_zero_negative_and_non_integers_are_rejected(fuzz):
    # Issue 13: n_threads=0 or -5 were accepted silently somewhere.
    cpus = joblib.cpu_count()
    for bad in (0, -cpus - 1, -1000):
        fuzz.raises_naming(check_n_threads, "n_threads", bad)
        fuzz.raises_naming(effective_n_threads, "n_threads", bad)
    for bad in (1.5, "2", True):
        fuzz.raises_naming(check_n_threads, "n_threads", bad)
    assert check_n_threads(None) is None and check_n_threads(-1) == -1
    assert effective_n_threads(-cpus) == 1


def test_thread_count_is_stable_after_many_solves():
    before = threading.active_count()
    for seed in range(5):
        MMSolver().solve(_quadratic(seed))
    assert threading.active_count() == before
