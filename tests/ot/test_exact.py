import numpy as np
import pytest

import mmopt
from mmopt import ConvergenceWarning
from mmopt.ot import ExactOT, OTProblem, exact_ot


def _random_problem(seed, n=7, m=9):
    rng = np.random.default_rng(seed)
    a, b = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m))
    return a, b, rng.random((n, m))


@pytest.mark.parametrize("seed", range(4))
def test_highs_solution_is_optimal_by_duality(seed):
    a, b, C = _random_problem(seed)
    res = exact_ot(a, b, C)
    assert res.method == "highs" and res.success
    P, f, g = res.plan, res.f, res.g
    # Primal feasibility, dual feasibility, equal objectives: optimality, independent of HiGHS.
    assert (P >= -1e-12).all()
    np.testing.assert_allclose(P.sum(1), a, atol=1e-10)
    np.testing.assert_allclose(P.sum(0), b, atol=1e-10)
    assert (f[:, None] + g[None, :] <= C + 1e-9).all()
    assert res.fun == pytest.approx(a @ f + b @ g, abs=1e-10)
    assert res.marginal_error < 1e-9


def test_uniform_square_uses_assignment_and_matches_the_lp():
    rng = np.random.default_rng(5)
    C = rng.random((12, 12))
    res = exact_ot([], [], C)
    assert res.method == "assignment"
    assert (np.count_nonzero(res.plan, axis=1) == 1).all()
    # The same problem with slightly non-uniform weights goes through HiGHS.
    lp = exact_ot(np.full(12, 1 / 12), np.full(12, 1 / 12) + np.r_[1e-12, -1e-12, [0] * 10], C)
    assert lp.method == "highs"
    assert res.fun == pytest.approx(lp.fun, abs=1e-9)


@pytest.mark.parametrize(
    "a, b, C, match",
    [
        ([0.5, 0.5], [1.0], np.ones((2, 2)), "b must have one entry per column"),
        ([0.5, -0.5], [], np.ones((2, 2)), "a must be non-negative"),
        ([0.5, 0.6], [0.5, 0.5], np.ones((2, 2)), "same total mass"),
        ([], [], [[0.0, np.inf]], "C must not contain NaN or infinite"),
        ([np.nan, 1.0], [], np.ones((2, 2)), "a must not contain NaN"),
        ([0.0, 0.0], [0.0, 0.0], np.ones((2, 2)), "a must have a positive total mass"),
    ],
)
def test_bad_input(a, b, C, match):
    with pytest.raises(ValueError, match=match):
        exact_ot(a, b, C)


# ------------------------------------------------------------------ the registered solver
def test_exact_is_a_registered_solver_with_one_honest_iteration():
    a, b, C = _random_problem(7)
    problem = OTProblem(a, b, C, reg=0.5)
    assert mmopt.SOLVERS["exact"] is ExactOT
    res = mmopt.solve(problem, solver="exact")
    direct = exact_ot(a, b, C)
    assert res.solver == direct.solver == "exact"
    assert res.status == 0 and res.nit == 1 and res.lp_nit >= 1
    assert all(len(v) == 1 for v in res.history.values())
    assert res.history["fun"][0] == res.fun
    np.testing.assert_array_equal(res.plan, direct.plan)
    assert res.x is res.plan
    # The relative marginal error is the residual; the absolute one its own field.
    assert res.residual == pytest.approx(res.marginal_error / a.sum(), abs=0)
    # reg is not part of the LP.
    other = mmopt.solve(OTProblem(a, b, C, reg=50.0), solver="exact")
    np.testing.assert_array_equal(other.plan, res.plan)


def test_exact_answer_is_the_lp_optimum_by_brute_force():
    # A 2x3 problem whose optimal vertex lies on a grid of the two free entries: a scan of
    # the grid (no LP code at all) finds the optimal cost.
    a, b = np.array([0.3, 0.7]), np.array([0.2, 0.5, 0.3])
    C = np.array([[1.0, 0.2, 3.0], [0.4, 2.0, 0.1]])
    res = exact_ot(a, b, C)
    # Two free entries (P00, P01) decide the plan; scan them on a fine grid.
    grid = np.linspace(0.0, 0.3, 301)
    best = np.inf
    for p00 in grid:
        for p01 in grid:
            p02 = 0.3 - p00 - p01
            row2 = b - np.array([p00, p01, p02])
            if p02 < -1e-12 or (row2 < -1e-12).any():
                continue
            best = min(best, C[0] @ [p00, p01, p02] + C[1] @ row2)
    assert res.fun == pytest.approx(best, abs=1e-12)


def test_exact_callback_sees_the_one_iterate_and_may_stop():
    seen = []

    def callback(intermediate_result):
        seen.append(intermediate_result.nit)
        raise StopIteration

    res = exact_ot(*_random_problem(1), callback=callback)
    assert seen == [1] and res.status == 2 and res.plan is not None


def test_exact_with_tol_below_its_marginal_error_stalls_and_warns():
    a, b, C = _random_problem(2)
    res0 = exact_ot(a, b, C)
    if res0.residual == 0.0:
        pytest.skip("HiGHS's plan met the marginals exactly")
    with pytest.warns(ConvergenceWarning, match="final"):
        res = exact_ot(a, b, C, tol=0.0)
    assert res.status == 5 and res.nit == 1 and not res.success
    np.testing.assert_array_equal(res.plan, res0.plan)


@pytest.mark.parametrize("option, value, error", [("tol", -1.0, ValueError),
                                                  ("max_iter", 0, ValueError),
                                                  ("callback", 3, TypeError),
                                                  ("k", 2, TypeError)])
def test_exact_bad_options_are_named(option, value, error):
    with pytest.raises(error, match=option):
        exact_ot(*_random_problem(3), **{option: value})


def test_exact_takes_no_starting_point():
    problem = OTProblem(*_random_problem(4), reg=1.0)
    with pytest.raises(ValueError, match="x0"):
        mmopt.solve(problem, solver="exact", x0=np.zeros(7))


def test_exact_solver_keeps_no_state():
    solver = ExactOT()
    before = dict(vars(solver))
    solver.solve(OTProblem(*_random_problem(5), reg=1.0))
    assert vars(solver) == before
