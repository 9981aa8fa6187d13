"""Sparsity-constrained OT: kernels against NumPy, optimality conditions, references."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import check_grad

import mmopt
from mmopt import ConvergenceWarning
from mmopt._core.params import constraints_of, invalid_values
from mmopt.ot import OTProblem, SparsityConstrainedOT, exact_ot, sparsity_constrained_ot
from mmopt.ot._kernels import sparse_columns
from mmopt.ot.sparsity_constrained import _Conjugates


def _clouds(n, m, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) + shift
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    return C / C.max()


# ------------------------------------------------------------------ NumPy references
def _top_k_rows(s, k, positive_only):
    """Indices of the k largest entries, ties broken by the smaller index (stable sort)."""
    order = np.argsort(-s, kind="stable")[:k]
    if positive_only:
        order = order[s[order] > 0]
    return order


def _project_simplex(y):
    """Euclidean projection onto the probability simplex by sorting (Held et al.)."""
    u = np.sort(y)[::-1]
    cumulative = np.cumsum(u) - 1.0
    rho = np.nonzero(u - cumulative / np.arange(1, y.size + 1) > 0)[0][-1]
    return np.maximum(y - cumulative[rho] / (rho + 1.0), 0.0)


def _reference_semi_dual(alpha, C, b, reg, k):
    n, m = C.shape
    plan, phi = np.zeros((n, m)), np.zeros(m)
    for j in range(m):
        if b[j] == 0:
            continue
        s = alpha - C[:, j]
        rows = _top_k_rows(s, k, False)
        p = _project_simplex(s[rows] / (reg * b[j]))
        phi[j] = s[rows] @ p - 0.5 * reg * b[j] * p @ p
        plan[rows, j] = b[j] * p
    return plan, phi


def _reference_dual(alpha, beta, C, reg, k):
    n, m = C.shape
    plan, phi = np.zeros((n, m)), np.zeros(m)
    for j in range(m):
        s = alpha + beta[j] - C[:, j]
        rows = _top_k_rows(s, k, True)
        phi[j] = 0.5 / reg * np.sum(s[rows] ** 2)
        plan[rows, j] = s[rows] / reg
    return plan, phi


def _dense(rows, values, nnz, n):
    plan = np.zeros((n, nnz.size))
    for j in range(nnz.size):
        plan[rows[j, : nnz[j]], j] = values[j, : nnz[j]]
    return plan


# --------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("k", [1, 2, 5, 12, 40])
@pytest.mark.parametrize("formulation", ["semi_dual", "dual"])
@pytest.mark.parametrize("ties", [False, True])
def test_kernel_matches_numpy(formulation, k, ties):
    rng = np.random.default_rng(k)
    n, m = 12, 9
    C = rng.integers(0, 4, size=(n, m)).astype(float) if ties else rng.random((n, m))
    alpha = np.zeros(n) if ties else rng.normal(scale=0.3, size=n)
    beta = rng.normal(scale=0.3, size=m) + 1.0
    b = rng.random(m)
    b[3] = 0.0
    reg = 0.3
    rows, values, nnz, phi, row_sums, col_sums = sparse_columns(
        formulation, alpha, beta, np.ascontiguousarray(C.T), b, reg, k
    )
    if formulation == "semi_dual":
        ref_plan, ref_phi = _reference_semi_dual(alpha, C, b, reg, k)
    else:
        ref_plan, ref_phi = _reference_dual(alpha, beta, C, reg, k)
    plan = _dense(rows, values, nnz, n)
    np.testing.assert_allclose(plan, ref_plan, atol=1e-13)
    np.testing.assert_allclose(phi, ref_phi, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(row_sums, ref_plan.sum(axis=1), atol=1e-13)
    np.testing.assert_allclose(col_sums, ref_plan.sum(axis=0), atol=1e-13)
    assert nnz.max() <= k


def test_kernel_tie_breaking_keeps_smaller_rows():
    # All entries of a column tie: the first k rows are kept, in every thread layout.
    C = np.zeros((6, 3))
    out = sparse_columns("dual", np.ones(6), np.zeros(3), C.T.copy(), None, 1.0, 2)
    rows, nnz = out[0], out[2]
    for j in range(3):
        assert sorted(rows[j, : nnz[j]]) == [0, 1]


@pytest.mark.parametrize("formulation", ["semi_dual", "dual"])
def test_kernel_does_not_depend_on_threads(formulation):
    rng = np.random.default_rng(1)
    C = rng.integers(0, 5, size=(40, 30)).astype(float)
    args = (formulation, rng.normal(size=40), rng.normal(size=30), C.T.copy(),
            np.full(30, 1 / 30), 0.1, 3)
    one = sparse_columns(*args, n_threads=1)
    two = sparse_columns(*args, n_threads=2)
    for first, second in zip(one, two):
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("formulation", ["semi_dual", "dual"])
@pytest.mark.parametrize("k", [1, 3, 25])
def test_conjugate_gradients_by_finite_differences(formulation, k):
    C = _clouds(25, 20, seed=k)
    problem = OTProblem([], [], C, reg=0.05)
    conj = _Conjugates(problem, min(k, 25), 0.05, formulation, 1)
    rng = np.random.default_rng(k)
    size = 25 if formulation == "semi_dual" else 45
    for _ in range(3):
        x = rng.normal(scale=0.1, size=size)
        error = check_grad(
            lambda z: conj.value_and_grad(z)[0], lambda z: conj.value_and_grad(z)[1], x,
            epsilon=1e-7,
        )
        assert error <= 1e-5 * max(1.0, np.linalg.norm(conj.value_and_grad(x)[1]))


# ----------------------------------------------------------------------- the solver
@pytest.mark.parametrize("formulation", ["semi_dual", "dual"])
def test_unconstrained_plan_satisfies_kkt(formulation):
    # k >= n is quadratically regularized OT, a convex QP: at the optimum the plan is
    # max(f_i + g_j - C_ij, 0) / reg for some potentials, with both marginals exact.
    C = _clouds(30, 24, seed=2)
    a = np.random.default_rng(2).random(30)
    a /= a.sum()
    b = np.full(24, 1 / 24)
    reg = 0.05
    res = sparsity_constrained_ot(a, b, C, k=30, reg=reg, formulation=formulation)
    assert res.success, res.message
    assert res.marginal_error <= 1e-8
    plan = res.plan.toarray()
    f = res.f
    # Recover each column's potential from its positive entries (the semi-dual has no g).
    g = np.array(
        [np.median((reg * plan[:, j] - f + C[:, j])[plan[:, j] > 0]) for j in range(24)]
    )
    np.testing.assert_allclose(plan, np.maximum(f[:, None] + g[None] - C, 0) / reg, atol=1e-7)


def test_unconstrained_plan_equals_pot():
    ot = pytest.importorskip("ot")
    C = _clouds(40, 40, seed=3)
    a = b = np.full(40, 1 / 40)
    reg = 0.1
    res = sparsity_constrained_ot(a, b, C, k=40, reg=reg, tol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = ot.smooth.smooth_ot_dual(a, b, C, reg, reg_type="l2", stopThr=1e-14,
                                             numItermax=10_000)
    assert res.marginal_error <= 1e-8
    np.testing.assert_allclose(res.plan.toarray(), reference, atol=1e-6)


def test_formulations_agree_without_constraint():
    C = _clouds(20, 20, seed=4)
    semi = sparsity_constrained_ot([], [], C, k=20, reg=0.1, formulation="semi_dual")
    dual = sparsity_constrained_ot([], [], C, k=20, reg=0.1, formulation="dual")
    np.testing.assert_allclose(semi.plan.toarray(), dual.plan.toarray(), atol=1e-7)
    assert semi.objective == pytest.approx(dual.objective, rel=1e-7)
    # Strong duality: the dual optimum equals the primal objective.
    assert dual.fun == pytest.approx(dual.objective, rel=1e-6)


def test_k_equal_one_semi_dual_value_is_the_exact_ot_cost():
    # With k = 1 every column is a vertex of the simplex, so the regularizer adds the
    # constant reg/2 sum_j b_j^2 and the semi-dual is the unregularized one: its optimal
    # value is the exact OT cost (a permutation problem here).
    rng = np.random.default_rng(5)
    n = 15
    C = rng.random((n, n))
    reg = 0.1
    exact = exact_ot([], [], C)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the optimum is a kink
        res = sparsity_constrained_ot([], [], C, k=1, reg=reg, ftol=0.0, max_iter=3000)
    b = np.full(n, 1 / n)
    assert res.fun - 0.5 * reg * b @ b == pytest.approx(exact.fun, rel=1e-6)
    assert res.nnz_per_column.max() == 1


def test_sparse_plan_and_fields():
    C = _clouds(50, 40, seed=6)
    res = sparsity_constrained_ot([], [], C, k=4, reg=0.05)
    assert sp.issparse(res.plan) and res.plan.format == "csc"
    assert res.plan.shape == (50, 40)
    nnz = np.diff(res.plan.indptr)
    np.testing.assert_array_equal(nnz, res.nnz_per_column)
    assert nnz.max() <= 4
    assert np.all(res.plan.data > 0)
    dense = res.plan.toarray()
    assert res.transport_cost == pytest.approx(np.sum(C * dense))
    assert res.objective == pytest.approx(np.sum(C * dense) + 0.025 * np.sum(dense**2))
    assert res.row_violation == pytest.approx(np.abs(dense.sum(1) - 1 / 50).sum())
    assert res.column_violation == pytest.approx(np.abs(dense.sum(0) - 1 / 40).sum(), abs=1e-12)
    assert res.marginal_error == pytest.approx(res.row_violation + res.column_violation)
    assert res.nfev >= res.nit and res.k == 4 and res.formulation == "semi_dual"
    assert "g" not in res and res.f.shape == (50,)
    dense_res = sparsity_constrained_ot([], [], C, k=4, reg=0.05, plan_format="dense")
    np.testing.assert_allclose(dense_res.plan, dense)


def test_dual_has_both_potentials():
    C = _clouds(30, 20, seed=7)
    res = sparsity_constrained_ot([], [], C, k=5, reg=0.1, formulation="dual")
    assert res.x.shape == (50,) and res.g.shape == (20,)
    assert res.nnz_per_column.max() <= 5


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 25),
    m=st.integers(1, 25),
    k=st.integers(1, 30),
    reg=st.sampled_from([1e-3, 1e-2, 0.1, 1.0]),
    formulation=st.sampled_from(["semi_dual", "dual"]),
    seed=st.integers(0, 2**16),
)
def test_at_most_k_nonzeros_per_column(n, m, k, reg, formulation, seed):
    if k * m < n:
        k = -(-n // m)
    rng = np.random.default_rng(seed)
    C = rng.random((n, m))
    a, b = rng.random(n) + 0.1, rng.random(m) + 0.1
    b *= a.sum() / b.sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = sparsity_constrained_ot(a, b, C, k=k, reg=reg, formulation=formulation,
                                      max_iter=200)
    assert res.nnz_per_column.max() <= k
    assert np.diff(res.plan.indptr).max() <= k
    assert np.all(np.isfinite(res.plan.data)) and np.all(res.plan.data >= 0)
    if formulation == "semi_dual":
        assert res.column_violation <= 1e-10 * b.sum()


def test_polish_fixes_marginals_on_the_support():
    C = _clouds(60, 60, seed=8, shift=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # L-BFGS-B alone stops short of tol (its line search works on objective values).
        options = dict(k=5, reg=0.1, max_iter=80, newton=False)
        raw = sparsity_constrained_ot([], [], C, **options)
        polished = sparsity_constrained_ot([], [], C, polish=True, **options)
    assert raw.marginal_error > 1e-8
    assert polished.polished and polished.marginal_error <= 1e-8
    # Same support (the scaling never creates an entry).
    raw_support = raw.plan.toarray() > 0
    assert np.all(raw_support[polished.plan.toarray() > 0])


def test_warm_start_from_the_solution():
    C = _clouds(40, 30, seed=9)
    first = sparsity_constrained_ot([], [], C, k=30, reg=0.1)
    again = sparsity_constrained_ot([], [], C, k=30, reg=0.1, x0=first.x)
    assert again.nit <= 2 and again.success


def test_stall_at_a_kink_is_reported():
    # k = 1 with unequal row masses: each column sends all its mass to one row, so rows of
    # mass other than a sum of column masses cannot be served exactly; the solve must say
    # so, not claim success.
    C = _clouds(10, 10, seed=10)
    a = np.random.default_rng(10).random(10) + 0.5
    a /= a.sum()
    with pytest.warns(ConvergenceWarning, match="Stalled"):
        res = sparsity_constrained_ot(a, [], C, k=1, reg=0.1, max_iter=5000)
    assert res.status == 5 and not res.success
    assert res.row_violation > 1e-8 and res.column_violation <= 1e-12


def test_solve_front_door_and_problem_reg():
    C = _clouds(15, 15, seed=11)
    problem = OTProblem([], [], C, reg=0.1)
    res = mmopt.solve(problem, solver="sparsity_constrained", k=15)
    direct = sparsity_constrained_ot([], [], C, k=15, reg=0.1)
    np.testing.assert_allclose(res.plan.toarray(), direct.plan.toarray(), atol=1e-12)
    # The solver's reg overrides the problem's.
    other = SparsityConstrainedOT(k=15, reg=1.0).solve(problem)
    assert not np.allclose(other.plan.toarray(), res.plan.toarray(), atol=1e-6)


def test_zero_mass_rows_and_columns_stay_empty():
    C = _clouds(8, 6, seed=12)
    a = np.full(8, 1 / 6)
    a[[1, 4]] = 0.0
    a /= a.sum()
    b = np.array([0.0, 0.25, 0.25, 0.25, 0.25, 0.0])
    res = sparsity_constrained_ot(a, b, C, k=6, reg=0.1, formulation="dual")
    dense = res.plan.toarray()
    assert np.all(dense[[1, 4]] == 0) and np.all(dense[:, [0, 5]] == 0)
    assert res.marginal_error <= 1e-8


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "k, error, match",
    [(0, ValueError, r"k must be None or an integer in \[1, inf\)"),
     (-2, ValueError, r"k must be None or an integer in \[1"),
     (2.0, TypeError, "k must be None or an integer"),
     (True, TypeError, "k must be None or an integer"),
     (1, ValueError, r"k \* m must be at least n")],
)
def test_bad_k(k, error, match):
    C = _clouds(10, 4)
    with pytest.raises(error, match=match):
        sparsity_constrained_ot([], [], C, k=k, reg=0.1)


def test_numpy_integer_k_is_accepted():
    res = sparsity_constrained_ot([], [], _clouds(6, 6), k=np.int64(2), reg=0.1)
    assert res.k == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [({"reg": 0.0}, "reg"), ({"reg": -1.0}, "reg"), ({"a": [0.5, np.nan, 0.5]}, "a"),
     ({"a": [-0.1, 0.6, 0.5]}, "a"), ({"b": [0.2, 0.2]}, "mass"),
     ({"C": np.full((3, 2), np.inf)}, "C"), ({"a": [0.3, 0.3, 0.4], "C": np.ones((2, 2))}, "a")],
)
def test_bad_problem(kwargs, match):
    args = {"a": [], "b": [0.5, 0.5], "C": np.ones((3, 2)), "reg": 0.1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sparsity_constrained_ot(args["a"], args["b"], args["C"], k=2, reg=args["reg"])


@pytest.mark.parametrize(
    "option, value, error",
    [("formulation", "primal", ValueError), ("memory", 0, ValueError),
     ("polish", "yes", TypeError), ("plan_format", "coo", ValueError),
     ("ftol", -1.0, ValueError), ("patience", 0, ValueError), ("init", "random", ValueError)],
)
def test_bad_options(option, value, error):
    with pytest.raises(error, match=option):
        sparsity_constrained_ot([], [], _clouds(5, 5), k=2, reg=0.1, **{option: value})


@pytest.mark.parametrize(
    "option, value, error",
    invalid_values(constraints_of(SparsityConstrainedOT)[0]),
    ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__,
)
def test_every_option_rejects_what_its_constraints_rule_out(option, value, error):
    problem = OTProblem([], [], _clouds(5, 5), reg=0.1)
    with pytest.raises(error, match=option):
        SparsityConstrainedOT(**{option: value}).solve(problem)


def test_the_constraint_table_covers_every_option():
    # The common options come from the base Solver's table.
    table, _ = constraints_of(SparsityConstrainedOT)
    assert set(table) == set(SparsityConstrainedOT().get_params())


def test_bad_x0_shape():
    with pytest.raises(ValueError, match="x0"):
        sparsity_constrained_ot([], [], _clouds(5, 5), k=2, reg=0.1, x0=np.zeros(10))


def test_inputs_are_not_modified():
    C = _clouds(12, 10, seed=13)
    a, b = np.full(12, 1 / 12), np.full(10, 0.1)
    copies = C.copy(), a.copy(), b.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # k = 3 may stall at a kink
        sparsity_constrained_ot(a, b, C, k=3, reg=0.1, formulation="dual")
    for original, copy in zip((C, a, b), copies):
        np.testing.assert_array_equal(original, copy)


@pytest.mark.parametrize("formulation", ["semi_dual", "dual"])
def test_entropic_start_reaches_the_same_optimum(formulation):
    C = _clouds(40, 35, seed=14)
    common = dict(k=40, reg=0.05, formulation=formulation)
    warm = sparsity_constrained_ot([], [], C, init="sinkhorn", **common)
    cold = sparsity_constrained_ot([], [], C, init="zeros", **common)
    assert warm.success and cold.success
    np.testing.assert_allclose(warm.plan.toarray(), cold.plan.toarray(), atol=1e-8)
    assert warm.fun == pytest.approx(cold.fun, rel=1e-10)


def test_constant_cost_start_is_finite():
    # A zero cost spread makes the entropic start's reg tiny: it must not fail. Every entry
    # ties, where the tie-broken gradient is no ascent direction: the solve may stall, and
    # then says so.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = sparsity_constrained_ot([], [], np.ones((6, 4)), k=2, reg=0.1)
    assert np.isfinite(res.fun) and res.nnz_per_column.max() <= 2


def test_a_raising_callback_leaves_no_worker_thread():
    # On main each call left its L-BFGS-B worker blocked (1 -> 6 threads after 5 calls).
    import threading

    C = _clouds(5, 5)

    def callback(intermediate_result):
        if intermediate_result.nit == 2:
            raise RuntimeError("stop here")

    before = threading.active_count()
    for _ in range(5):
        with pytest.raises(RuntimeError, match="stop here"):
            sparsity_constrained_ot([], [], C, k=2, reg=0.1, tol=0.0, callback=callback)
    assert threading.active_count() == before


def test_one_solver_shared_by_two_threads(fuzz):
    # On main two threads sharing one SparsityConstrainedOT deadlocked on its L-BFGS-B
    # queue: isolated, so that a hang fails this test only.
    fuzz.run_isolated(
        """
        from concurrent.futures import ThreadPoolExecutor
        import numpy as np
        from mmopt.ot import OTProblem, SparsityConstrainedOT

        def problem(seed):
            rng = np.random.default_rng(seed)
            x, y = rng.random((12, 2)), rng.random((15, 2))
            return OTProblem([], [], ((x[:, None] - y[None]) ** 2).sum(-1), reg=0.1)

        solver = SparsityConstrainedOT(k=3, reg=0.1, max_iter=300)
        problems = [problem(seed) for seed in range(2)]
        alone = [solver.solve(p).x for p in problems]
        with ThreadPoolExecutor(2) as pool:
            shared = list(pool.map(lambda p: solver.solve(p).x, problems * 3))
        for i, x in enumerate(shared):
            assert np.array_equal(x, alone[i % 2]), i
        """,
        timeout=120,
    )
