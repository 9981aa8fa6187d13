import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmopt import AndersonAcceleration
from mmopt._core.params import constraints_of, invalid_values
from mmopt.mm import MMProblem, MMSolver


def _logistic_problem(seed, n=80, p=6):
    """L2-regularized logistic regression with the Bohning quadratic majorizer (a real MM)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    y = (X @ rng.standard_normal(p) + 0.5 * rng.standard_normal(n) > 0).astype(float)
    lam = 1e-2
    hessian_bound = 0.25 * X.T @ X + lam * np.eye(p)
    chol = np.linalg.cholesky(hessian_bound)

    def objective(w):
        z = X @ w
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * lam * w @ w)

    def gradient(w):
        return X.T @ (1.0 / (1.0 + np.exp(-(X @ w))) - y) + lam * w

    def surrogate_minimizer(w):
        step = np.linalg.solve(chol.T, np.linalg.solve(chol, gradient(w)))
        return w - step

    return MMProblem(objective, surrogate_minimizer, np.zeros(p)), gradient


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solution_satisfies_first_order_conditions(seed):
    problem, gradient = _logistic_problem(seed)
    res = MMSolver(tol=1e-12, max_iter=5000).solve(problem)
    assert res.success
    assert np.linalg.norm(gradient(res.x)) < 1e-8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anderson_cuts_iterations_and_never_ends_worse(seed):
    problem, _ = _logistic_problem(seed)
    plain = MMSolver(anderson=False, tol=1e-10, max_iter=20_000).solve(problem)
    fast = MMSolver(anderson=True, tol=1e-10).solve(problem)
    assert fast.nit <= plain.nit / 2
    assert fast.fun <= plain.fun + 1e-12 * abs(plain.fun)
    assert fast.n_evaluations == fast.nit + 1 + fast.n_rejected
    assert fast.n_accepted > 0


@pytest.mark.filterwarnings("ignore::mmopt.ConvergenceWarning")
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), memory=st.integers(1, 8), anderson=st.booleans())
def test_objective_never_increases(seed, memory, anderson):
    problem, _ = _logistic_problem(seed, n=30, p=4)
    option = AndersonAcceleration(memory=memory) if anderson else False
    res = MMSolver(anderson=option, tol=1e-10, max_iter=300).solve(problem)
    fun = res.history["fun"]
    assert np.all(np.diff(fun) <= 1e-12 * np.abs(fun[:-1]) + 1e-15)


def test_projection_is_applied_to_extrapolated_points():
    # minimize sum (x - c)^2 over x >= 0 with c partly negative: the MM map keeps x >= 0,
    # an extrapolation may not, and project() must bring it back.
    c = np.array([1.0, -1.0, 2.0])
    seen = []

    def surrogate_minimizer(x):
        seen.append(x.min())
        return np.maximum(0.5 * (x + c), 0.0) * 0.9 + 0.1 * np.maximum(c, 0.0)

    problem = MMProblem(
        lambda x: float(np.sum((x - c) ** 2)),
        surrogate_minimizer,
        np.ones(3),
        project=lambda x: np.maximum(x, 0.0),
    )
    res = MMSolver(tol=1e-12).solve(problem)
    assert min(seen) >= 0.0
    np.testing.assert_allclose(res.x, np.maximum(c, 0.0), atol=1e-8)


def test_surrogate_minimizer_shape_is_checked():
    problem = MMProblem(lambda x: 0.0, lambda x: np.zeros(x.size + 1), np.zeros(2))
    with pytest.raises(ValueError, match="surrogate minimizer returned shape"):
        MMSolver().solve(problem)


def test_history_records_acceptance():
    problem, _ = _logistic_problem(0)
    res = MMSolver(tol=1e-10).solve(problem)
    accepted = res.history["accepted"]
    assert np.nansum(accepted == 1.0) == res.n_accepted
    assert np.isnan(accepted[0])  # the first step has no history to extrapolate from
    assert np.nansum(accepted == 0.0) == res.n_rejected
    assert res.history["n_evaluations"][-1] == res.n_evaluations
    plain = MMSolver(anderson=False, tol=1e-10, max_iter=20_000).solve(problem)
    assert np.isnan(plain.history["accepted"]).all() and plain.n_accepted == 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"objective": None}, TypeError, "objective must be callable"),
        ({"surrogate_minimizer": 3}, TypeError, "surrogate_minimizer must be callable"),
        ({"x0": [[1.0]]}, ValueError, "x0 must be 1-dimensional"),
        ({"x0": [np.nan]}, ValueError, "x0 must not contain NaN"),
        ({"project": "clip"}, TypeError, "project must be callable"),
    ],
)
def test_mm_problem_validation(kwargs, error, match):
    args = {"objective": lambda x: 0.0, "surrogate_minimizer": lambda x: x, "x0": [0.0]}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        MMProblem(**args)


def test_bad_solver_options():
    problem, _ = _logistic_problem(0)
    with pytest.raises(TypeError, match="anderson must be True or False or an instance"):
        MMSolver(anderson="yes").solve(problem)
    with pytest.raises(ValueError, match="memory must be"):
        MMSolver(anderson=AndersonAcceleration(memory=0))
    with pytest.raises(ValueError, match="damping"):
        AndersonAcceleration(damping=2.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'm'"):
        MMSolver(m=5)  # the flat options are gone: memory lives in AndersonAcceleration


def test_every_invalid_option_value_is_refused_naming_it():
    problem, _ = _logistic_problem(0, n=20, p=3)
    table, _ = constraints_of(MMSolver)
    cases = invalid_values(table)
    assert {"anderson", "stopping"} <= {name for name, _, _ in cases}
    for name, value, error in cases:
        with pytest.raises(error, match=rf"\b{name}\b"):
            MMSolver(**{name: value}).solve(problem)


def test_anderson_instance_is_a_configuration_never_mutated():
    problem, _ = _logistic_problem(1)
    option = AndersonAcceleration(memory=3, damping=0.9)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(option).items()}
    solver = MMSolver(anderson=option, tol=1e-10)
    first = solver.solve(problem)
    second = solver.solve(problem)
    assert first.n_accepted > 0
    # Each solve starts from an empty history: the same iterates twice.
    np.testing.assert_array_equal(first.x, second.x)
    assert (first.nit, first.n_accepted) == (second.nit, second.n_accepted)
    assert vars(option).keys() == before.keys()
    for key, value in vars(option).items():
        assert value is before[key] or np.array_equal(value, before[key])
    assert solver.anderson is option


def test_anderson_true_is_the_default_accelerator():
    problem, _ = _logistic_problem(2)
    default = MMSolver(tol=1e-10).solve(problem)
    explicit = MMSolver(anderson=AndersonAcceleration(), tol=1e-10).solve(problem)
    np.testing.assert_array_equal(default.x, explicit.x)
    np.testing.assert_array_equal(default.history["accepted"], explicit.history["accepted"])
    smaller = MMSolver(anderson=AndersonAcceleration(memory=1), tol=1e-10).solve(problem)
    assert smaller.nit != default.nit or not np.array_equal(smaller.x, default.x)


def test_x0_not_mutated():
    x0 = np.zeros(6)
    problem, _ = _logistic_problem(0)
    MMSolver().solve(problem, x0=x0)
    assert np.all(x0 == 0.0)


def test_one_solver_with_an_anderson_object_serves_many_threads():
    from concurrent.futures import ThreadPoolExecutor

    problems = [_logistic_problem(seed)[0] for seed in range(4)]
    solver = MMSolver(anderson=AndersonAcceleration(memory=4), tol=1e-10)
    alone = [solver.solve(p) for p in problems]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(solver.solve, problems * 2))
    for ref, res in zip(alone * 2, together, strict=True):
        np.testing.assert_array_equal(ref.x, res.x)
        assert (ref.nit, ref.n_accepted, ref.n_rejected) == (res.nit, res.n_accepted,
                                                           res.n_rejected)
