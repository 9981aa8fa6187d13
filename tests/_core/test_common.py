"""Loop semantics every registered solver must honour (scipy's common-test pattern)."""

import re
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from _helpers import shrinkage_problem
from sklearn.base import clone

import mmopt
from mmopt import SOLVERS, ConvergenceWarning, Result, Solver
from mmopt._core.params import constraints_of, invalid_values
from mmopt.bcd import L1, BCDProblem, LeastSquares
from mmopt.mm import LinearTargetModel, MMProblem, TargetSurrogateProblem
from mmopt.ot import (
    OTProblem,
    P2OTProblem,
    PartialOTProblem,
    PointCloudOTProblem,
    UnbalancedOTProblem,
)
from mmopt.registration import NonRigidRegistrationProblem, RegistrationProblem


def _mm_problem(seed=0):
    # A smooth convex problem whose MM map contracts slowly: many iterations are needed.
    A = np.diag(np.linspace(1.0, 50.0 + seed, 6))
    return MMProblem(
        objective=lambda x: 0.5 * float(x @ A @ x) - float(x.sum()),
        surrogate_minimizer=lambda x: x - (A @ x - 1.0) / (50.0 + seed),
        x0=np.zeros(6),
    )


def _target_problem(seed=0):
    # Logistic regression by target surrogates: exact inner solves, several MM steps.
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((40, 3))
    y = (X @ [1.0, -2.0, 0.5] + rng.standard_normal(40) > 0).astype(float)
    return TargetSurrogateProblem(LinearTargetModel(), "logistic", X, y, alpha=0.05)


def _ot_problem(reg=0.02, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.random((12, 2)), rng.random((15, 2))
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    return OTProblem([], [], C / C.max(), reg=reg)


def _unbalanced_problem(seed=0):
    # Small reg: the stabilized scaling and the Newton stage both run.
    problem = _ot_problem(seed=seed)
    return UnbalancedOTProblem([], np.full(15, 1.5 / 15), problem.C, 2e-3, (1.0, 0.5))


def _registration_problem(seed=0):
    # A small cloud and a moved copy of it; the ICP solve runs a few annealing stages.
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(200, 3)) * [3.0, 2.0, 1.0]
    angle = 0.3
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                  [0, 0, 1.0]])
    return RegistrationProblem(source, source @ R.T + [0.5, 0.0, 0.2])


def _nonrigid_problem(seed=0):
    # A small ellipsoid and a bumped copy of it (known normals): SPARE runs a few iterations.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(150, 3))
    x /= np.linalg.norm(x, axis=1)[:, None]
    source = x * [1.0, 0.7, 0.5]
    normals = source / [1.0, 0.49, 0.25]
    normals /= np.linalg.norm(normals, axis=1)[:, None]
    target = source + 0.04 * normals * np.sin(3 * source[:, :1])
    return NonRigidRegistrationProblem(source, target, source_normals=normals,
                                       target_normals=normals, k=6)


def _bilevel_problem(seed=0):
    return shrinkage_problem(np.array([1.0, 2.0, 3.0]) + 0.1 * seed)


def _lasso_problem(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((30, 40))
    y = X[:, :4] @ np.array([2.0, -1.0, 1.0, 0.5]) + 0.1 * rng.standard_normal(30)
    return BCDProblem(LeastSquares(X, y), L1(0.05))


# Every registered solver needs a small problem here: a new family adds its entry. Each
# factory takes a seed, so that the reentrancy tests can solve several different problems.
EXAMPLE_PROBLEMS = {
    "maid": _bilevel_problem,
    "bcd": _lasso_problem,
    "cd": _lasso_problem,
    "mm": _mm_problem,
    "sso": _target_problem,
    "sinkhorn": _ot_problem,
    "icp": _registration_problem,
    "spare": _nonrigid_problem,
    # Small reg, so that the Newton stage runs.
    "sns": lambda seed=0: _ot_problem(reg=1e-3, seed=seed),
    # The solver's default k (None) is unconstrained: a smooth problem that converges.
    "sparsity_constrained": lambda seed=0: _ot_problem(reg=0.1, seed=seed),
    "unbalanced_sinkhorn": lambda seed=0: _unbalanced_problem(seed=seed),
    "partial_sinkhorn": lambda seed=0: PartialOTProblem(
        [], np.full(15, 1.2 / 15), _ot_problem(seed=seed).C, 0.7, 0.02
    ),
    "p2ot": lambda seed=0: P2OTProblem(
        -np.log(_ot_problem(seed=seed).C[:, :4] + 0.01), rho=0.4, gamma=1.0, reg=0.05
    ),
    "exact": _ot_problem,
    # Sharp regime (reg below the squared spacing) with a two-level hierarchy.
    "pointcloud_sinkhorn": lambda seed=0: PointCloudOTProblem(
        *np.random.default_rng(seed).random((2, 60, 2)), reg=1e-3
    ),
}

NAMES = sorted(SOLVERS)


def _stop_at(name, default):
    """The iteration at which a callback stops the solve: a single-step solver (exact OT:
    one LP solve) has only iteration 1."""
    return 1 if SOLVERS[name].single_step else default


def test_every_solver_has_an_example_problem():
    assert set(SOLVERS) <= set(EXAMPLE_PROBLEMS), (
        "add a small problem for each new solver to EXAMPLE_PROBLEMS"
    )


@pytest.mark.parametrize("name", NAMES)
def test_result_fields(name):
    res = mmopt.solve(EXAMPLE_PROBLEMS[name](), solver=name, max_iter=10_000)
    assert isinstance(res, Result)
    for field in ("x", "fun", "success", "status", "message", "nit", "time", "history"):
        assert field in res, field
    assert res.solver == name
    assert res.status == 0 and res.success
    assert res.nit >= 1 and res.time >= 0
    for key in ("fun", "residual", "time"):
        assert res.history[key].shape == (res.nit,)
    assert all(v.shape == (res.nit,) for v in res.history.values())
    assert res.history["residual"][-1] <= SOLVERS[name]().tol
    assert np.isfinite(res.fun)


@pytest.mark.parametrize("name", NAMES)
def test_max_iter_warns_and_sets_status_1(name):
    if SOLVERS[name].single_step:
        pytest.skip(f"{name!r} gives its answer in one step: max_iter cannot cut it short")
    with pytest.warns(ConvergenceWarning, match="Maximum number of iterations"):
        res = mmopt.solve(EXAMPLE_PROBLEMS[name](), solver=name, max_iter=2, tol=0.0)
    assert res.status == 1 and not res.success and res.nit == 2


@pytest.mark.parametrize("name", NAMES)
def test_callback_stop_iteration(name):
    stop = _stop_at(name, 3)
    seen = []

    def callback(intermediate_result):
        assert isinstance(intermediate_result, Result)
        seen.append(intermediate_result.nit)
        if intermediate_result.nit == stop:
            raise StopIteration

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = mmopt.solve(EXAMPLE_PROBLEMS[name](), solver=name, callback=callback, tol=0.0)
    assert res.status == 2 and res.nit == stop and seen == list(range(1, stop + 1))
    assert "callback" in res.message


@pytest.mark.parametrize("name", NAMES)
def test_keyboard_interrupt_returns_best_iterate(name):
    stop = _stop_at(name, 4)

    def callback(intermediate_result):
        if intermediate_result.nit == stop:
            raise KeyboardInterrupt

    res = mmopt.solve(EXAMPLE_PROBLEMS[name](), solver=name, callback=callback, tol=0.0)
    assert res.status == 3 and not res.success
    # Iterates of an auxiliary problem (a continuation stage) record its value, not the
    # problem's; they never count as the best iterate.
    own = res.history.get("intermediate", np.zeros(res.nit)) != 1.0
    if own.any():
        fun = res.history["fun"][own]
        assert res.fun == pytest.approx(fun.max() if SOLVERS[name].maximize else fun.min())
    assert np.all(np.isfinite(res.x))


@pytest.mark.parametrize("name", NAMES)
def test_callback_snapshot_is_a_copy(name):
    def callback(intermediate_result):
        intermediate_result.x[...] = np.nan

    res = mmopt.solve(EXAMPLE_PROBLEMS[name](), solver=name, callback=callback)
    assert res.success and np.all(np.isfinite(res.x))


@pytest.mark.parametrize("name", NAMES)
def test_options_are_sklearn_params(name):
    solver = SOLVERS[name](max_iter=7)
    params = solver.get_params()
    assert params["max_iter"] == 7 and "tol" in params and "callback" in params
    other = clone(solver).set_params(max_iter=9)
    assert other.max_iter == 9 and solver.max_iter == 7
    assert name in repr(solver) or type(solver).__name__ in repr(solver)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_a_type_error_naming_it(name):
    with pytest.raises(TypeError, match=rf"'bogus_option'.*{name}"):
        mmopt.solve(EXAMPLE_PROBLEMS[name](), solver=name, bogus_option=1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "option, value, error",
    [("tol", -1.0, ValueError), ("max_iter", 0, ValueError), ("max_iter", 1.5, TypeError),
     ("callback", 3, TypeError), ("verbose", -1, ValueError)],
)
def test_bad_common_options(name, option, value, error):
    with pytest.raises(error, match=option):
        mmopt.solve(EXAMPLE_PROBLEMS[name](), solver=name, **{option: value})


def test_no_registered_solver_overrides_solve():
    # What a solver needs around the loop goes into its hooks (_init_state, _step,
    # _should_stop, _result_fields, _close_state), so every solver shares one loop.
    overriding = sorted(name for name, cls in SOLVERS.items() if cls.solve is not Solver.solve)
    assert overriding == []


def _invalid_option_cases():
    """(solver, option, value, error) for every registered solver that declares a table."""
    cases = []
    for name in NAMES:
        cls = SOLVERS[name]
        own = any("_parameter_constraints" in vars(klass) or "_options" in vars(klass)
                  for klass in cls.__mro__[:cls.__mro__.index(Solver)])
        if not own:
            cases.append(pytest.param(
                name, None, None, None, id=f"{name}-no-table",
                marks=pytest.mark.skip(reason=f"{cls.__name__} declares no "
                                       "_parameter_constraints table yet: its own options "
                                       "are not covered by this test")))
            continue
        for option, value, error in invalid_values(constraints_of(cls)[0]):
            cases.append(pytest.param(name, option, value, error,
                                      id=f"{name}-{option}-{value!r}"))
    return cases


@pytest.mark.parametrize("name, option, value, error", _invalid_option_cases())
def test_declared_options_reject_their_invalid_values(name, option, value, error):
    with pytest.raises(error, match=re.escape(option)):
        mmopt.solve(EXAMPLE_PROBLEMS[name](), solver=name, **{option: value})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("option, value, error", invalid_values(constraints_of(Solver)[0]))
def test_common_options_reject_their_invalid_values(name, option, value, error):
    # The base table holds for every solver, with or without a table of its own.
    with pytest.raises(error, match=re.escape(option)):
        mmopt.solve(EXAMPLE_PROBLEMS[name](), solver=name, **{option: value})


@pytest.mark.filterwarnings("ignore::mmopt.ConvergenceWarning")
@pytest.mark.parametrize("name", NAMES)
def test_verbose_progress_goes_to_stderr(name, capsys):
    mmopt.solve(EXAMPLE_PROBLEMS[name](), solver=name, verbose=2, max_iter=3, tol=0.0)
    err = capsys.readouterr().err
    assert "iter" in err and "fun=" in err


# ------------------------------------------------------------------------------ reentrancy
def _answer(res):
    """What two solves of one problem must agree on exactly."""
    return res.status, res.nit, float(res.fun), np.array(res.x, copy=True)


def _same_answer(first, second):
    return (
        first[:2] == second[:2]
        and (first[2] == second[2] or (np.isnan(first[2]) and np.isnan(second[2])))
        and np.array_equal(first[3], second[3], equal_nan=True)
    )


@pytest.mark.filterwarnings("ignore::mmopt.ConvergenceWarning")
@pytest.mark.parametrize("n_threads", [2, 4])
@pytest.mark.parametrize("name", NAMES)
def test_shared_instance_serves_threads(name, n_threads):
    # One solver object, several problems solved from several threads at once: the answers
    # are exactly the sequential ones, and the solver's attributes are its options only.
    solver = SOLVERS[name](max_iter=2_000)
    problems = [EXAMPLE_PROBLEMS[name](seed=seed) for seed in range(n_threads)]
    sequential = [_answer(solver.solve(problem)) for problem in problems]
    before = dict(vars(solver))
    jobs = problems * 3
    with ThreadPoolExecutor(n_threads) as pool:
        concurrent = list(pool.map(lambda problem: _answer(solver.solve(problem)), jobs))
    for i, answer in enumerate(concurrent):
        assert _same_answer(answer, sequential[i % n_threads]), (name, i)
    after = vars(solver)
    assert before.keys() == after.keys()
    assert all(before[key] is after[key] for key in before)


@pytest.mark.parametrize("name", NAMES)
def test_solve_leaves_only_options_on_the_solver(name):
    solver = SOLVERS[name]()
    before = dict(vars(solver))
    assert set(before) == set(solver.get_params()), "a solver stores its options only"
    mmopt.solve(EXAMPLE_PROBLEMS[name](), solver=solver)
    assert dict(vars(solver)).keys() == before.keys()


def _raise(exc_type, stop=2):
    def callback(intermediate_result):
        if intermediate_result.nit == stop:
            raise exc_type

    return callback


@pytest.mark.filterwarnings("ignore::mmopt.ConvergenceWarning")
@pytest.mark.parametrize(
    "ending",
    ["converged", "max_iter", "stop_iteration", "keyboard_interrupt", "callback_error"],
)
@pytest.mark.parametrize("name", NAMES)
def test_no_thread_left_behind(name, ending):
    threads_before = threading.active_count()
    stop = _stop_at(name, 2)
    options = {
        "converged": {},
        "max_iter": {"max_iter": 2, "tol": 0.0},
        "stop_iteration": {"callback": _raise(StopIteration, stop), "tol": 0.0},
        "keyboard_interrupt": {"callback": _raise(KeyboardInterrupt, stop), "tol": 0.0},
        "callback_error": {"callback": _raise(RuntimeError, stop), "tol": 0.0},
    }[ending]
    for _ in range(3):
        if ending == "callback_error":
            with pytest.raises(RuntimeError):
                mmopt.solve(EXAMPLE_PROBLEMS[name](), solver=name, **options)
        else:
            mmopt.solve(EXAMPLE_PROBLEMS[name](), solver=name, **options)
    assert threading.active_count() == threads_before
