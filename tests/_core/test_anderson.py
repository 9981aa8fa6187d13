import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmopt import AndersonAcceleration
from mmopt._core import anderson as anderson_module
from mmopt._core.anderson import (
    ANDERSON_OPTION,
    AndersonStep,
    anderson_counts,
    make_accelerator,
)
from mmopt._core.params import invalid_values, validate_params


def _linear_map(seed, d=20, rho=0.95):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    eig = rng.uniform(-rho, rho, size=d)
    A = (q * eig) @ q.T
    b = rng.standard_normal(d)
    return A, b, np.linalg.solve(np.eye(d) - A, b)


def _iterate(A, b, aa, n_iter, x0):
    x = x0
    errors = []
    for _ in range(n_iter):
        g = A @ x + b
        x = g if aa is None else aa.update(x, g)
        errors.append(x)
    return x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accelerates_linear_fixed_point(seed):
    A, b, x_star = _linear_map(seed)
    x0 = np.zeros_like(b)
    plain = _iterate(A, b, None, 60, x0)
    accelerated = _iterate(A, b, AndersonAcceleration(memory=10), 60, x0)
    assert np.linalg.norm(accelerated - x_star) < 1e-3 * np.linalg.norm(plain - x_star)


def test_full_memory_solves_linear_problem_exactly():
    # On a linear map in dimension d, AA with memory >= d is GMRES-like: exact after d+1 steps.
    A, b, x_star = _linear_map(3, d=4)
    x = _iterate(A, b, AndersonAcceleration(memory=4, regularization=0.0), 6, np.zeros(4))
    np.testing.assert_allclose(x, x_star, rtol=1e-8, atol=1e-10)


def test_first_update_returns_plain_step_and_delay():
    aa = AndersonAcceleration(memory=3, delay=2)
    x, g = np.zeros(3), np.ones(3)
    np.testing.assert_array_equal(aa.update(x, g), g)
    assert not aa.extrapolated
    # one difference exists, but the delay still asks for a plain step
    np.testing.assert_array_equal(aa.update(g, 1.5 * g), 1.5 * g)
    assert not aa.extrapolated
    aa.update(1.5 * g, 1.7 * g)
    assert aa.extrapolated


def test_collinear_history_is_dropped_not_exploded():
    aa = AndersonAcceleration(memory=3, regularization=0.0)
    x = np.zeros(2)
    # identical residual differences -> rank-deficient system
    for _ in range(5):
        g = x + np.array([1.0, 1.0])
        x = aa.update(x, g)
        assert np.all(np.isfinite(x))


def test_safeguard_counts_and_resets():
    aa = AndersonAcceleration(memory=2)
    aa.update(np.zeros(2), np.ones(2))
    aa.update(np.ones(2), 1.5 * np.ones(2))
    assert aa.history_size == 1
    assert aa.safeguard(1.0, 2.0)
    assert not aa.safeguard(3.0, 2.0)
    assert not aa.safeguard(np.nan, 2.0)
    assert (aa.n_accepted, aa.n_rejected) == (1, 2)
    assert aa.history_size == 0


def test_inputs_not_mutated_and_shape_checks():
    aa = AndersonAcceleration()
    x, g = np.arange(3.0), np.arange(3.0) + 1
    xc, gc = x.copy(), g.copy()
    aa.update(x, g)
    aa.update(g, g + 0.5)
    np.testing.assert_array_equal(x, xc)
    np.testing.assert_array_equal(g, gc)
    with pytest.raises(ValueError, match="same shape"):
        aa.update(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="changed size"):
        aa.update(np.zeros(5), np.zeros(5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"memory": 0}, "memory must be"),
        ({"memory": 2.5}, "memory must be an integer"),
        ({"damping": 0.0}, "damping"),
        ({"damping": 1.5}, "damping"),
        ({"regularization": -1.0}, "regularization"),
        ({"delay": -1}, "delay"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        AndersonAcceleration(**kwargs)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    d=st.integers(1, 8),
    memory=st.integers(1, 6),
    damping=st.floats(0.1, 1.0),
)
def test_contraction_converges_with_any_settings(seed, d, memory, damping):
    A, b, x_star = _linear_map(seed, d=d, rho=0.8)
    aa = AndersonAcceleration(memory=memory, damping=damping, regularization=1e-8)
    x = np.zeros(d)
    best = np.inf
    for _ in range(200):
        g = A @ x + b
        # residual safeguard, the way callers use it
        if np.linalg.norm(g - x) > 1e3 * max(best, 1e-300):
            aa.reset()
        best = min(best, np.linalg.norm(g - x))
        x = aa.update(x, g)
    assert np.linalg.norm(x - x_star) <= 1e-6 * max(1.0, np.linalg.norm(x_star))


def test_every_invalid_option_value_is_refused_naming_it():
    table = AndersonAcceleration._parameter_constraints
    cases = invalid_values(table)
    assert {name for name, _, _ in cases} == set(table)
    for name, value, error in cases:
        with pytest.raises(error, match=rf"^{name} must be"):
            AndersonAcceleration(**{name: value})


def test_the_option_entry_accepts_flags_and_instances_only():
    table = {"anderson": ANDERSON_OPTION}
    for value in (True, False, np.bool_(True), AndersonAcceleration(memory=2)):
        validate_params(table, {"anderson": value})
    for value in ("yes", 1, None, AndersonAcceleration):
        with pytest.raises(TypeError, match="anderson must be"):
            validate_params(table, {"anderson": value})


def test_fresh_copies_options_not_history_and_leaves_the_original():
    aa = AndersonAcceleration(memory=3, regularization=1e-6, damping=0.5, max_condition=1e8,
                              delay=1)
    aa.update(np.zeros(2), np.ones(2))
    aa.update(np.ones(2), 1.5 * np.ones(2))
    aa.safeguard(1.0, 0.0)
    before = dict(vars(aa))
    copy = aa.fresh()
    assert repr(copy) == repr(aa)
    assert (copy.history_size, copy.n_accepted, copy.n_rejected, copy.n_resets) == (0, 0, 0, 0)
    assert vars(aa).keys() == before.keys()
    assert all(vars(aa)[k] is before[k] for k in before)


def test_make_accelerator():
    option = AndersonAcceleration(memory=7, damping=0.3)
    aa = make_accelerator(option)
    assert aa is not option and (aa.memory, aa.damping) == (7, 0.3)
    assert make_accelerator(option) is not aa  # one per run
    assert make_accelerator(False) is None and make_accelerator(None) is None
    assert repr(make_accelerator(True)) == repr(AndersonAcceleration())
    assert anderson_counts(None) == {"n_accepted": 0, "n_rejected": 0}


def _quadratic_steps(aa, c, n_steps, reference_shift=0.0):
    """Gradient steps x - (x - c) / 4 on F = ||x - c||^2 / 2 through safeguarded_step."""
    x = np.zeros(c.size)
    outcomes = []
    evaluated = []

    def evaluate(point):
        evaluated.append(point.copy())
        return 0.5 * float((point - c) @ (point - c)), ("info", point.copy())

    for _ in range(n_steps):
        g = x - 0.25 * (x - c)
        fun = 0.5 * float((x - c) @ (x - c))
        outcome = aa.safeguarded_step(x, g, evaluate, fun + reference_shift)
        outcomes.append(outcome)
        x = outcome.point if outcome.accepted else g
    return x, outcomes, evaluated


def test_safeguarded_step_accepts_decreases_and_returns_the_callers_info():
    c = np.array([1.0, -2.0, 0.5])
    aa = AndersonAcceleration(memory=3)
    x, outcomes, evaluated = _quadratic_steps(aa, c, 6)
    assert not outcomes[0].tried and np.isnan(outcomes[0].record)  # no history yet
    tried = [o for o in outcomes if o.tried]
    assert tried and all(o.accepted and o.record == 1.0 for o in tried)
    assert len(evaluated) == len(tried) == aa.n_accepted and aa.n_rejected == 0
    for o in tried:
        assert o.info[0] == "info" and np.array_equal(o.info[1], o.point)
        assert o.value == pytest.approx(0.5 * float((o.point - c) @ (o.point - c)))
    # The quadratic is solved exactly once the history spans it (a Krylov method).
    np.testing.assert_allclose(x, c, atol=1e-12)


def test_safeguarded_step_rejects_increases_and_resets():
    c = np.array([1.0, -2.0, 0.5])
    aa = AndersonAcceleration(memory=3)
    # A reference below any value the extrapolation can reach: every proposal is refused.
    _, outcomes, _ = _quadratic_steps(aa, c, 6, reference_shift=-1e9)
    tried = [o for o in outcomes if o.tried]
    assert tried and all(not o.accepted and o.record == 0.0 for o in tried)
    assert all(o.point is None and o.info is None for o in tried)
    assert aa.n_rejected == len(tried) and aa.n_accepted == 0
    assert aa.n_resets == aa.n_rejected and aa.history_size == 0


def test_safeguarded_step_maps_the_candidate_before_evaluating():
    aa = AndersonAcceleration(memory=2)
    seen = []
    x = np.array([4.0, -3.0])
    for _ in range(4):
        g = 0.5 * x
        outcome = aa.safeguarded_step(
            x, g, lambda p: (seen.append(p) or 0.0, None), np.inf,
            to_point=lambda v: np.maximum(v, 0.0),
        )
        x = outcome.point if outcome.accepted else g
    assert seen and all(np.all(p >= 0.0) for p in seen)
    assert isinstance(outcome, AndersonStep)


class _PlainAnderson:
    """The accelerator written plainly, as before its buffers were reused: fresh arrays at
    every step, the chronological column list and NumPy's helpers (``ix_``, ``outer``,
    ``diag_indices_from``) for the small system. The same floating-point operations in the
    same order, so the iterates must agree bit for bit."""

    def __init__(self, memory, regularization, damping, max_condition, delay):
        self.m, self.reg, self.beta = memory, regularization, damping
        self.max_condition, self.delay = max_condition, delay
        self.dG = self.dR = None
        self.reset()

    def reset(self):
        self.g_prev = self.r_prev = None
        self.n_cols = self.next_col = self.since_reset = 0

    def update(self, x, g):
        r = g - x
        if self.g_prev is not None:
            if self.dG is None or self.dG.shape[0] != x.size:
                self.dG = np.zeros((x.size, self.m), order="F")
                self.dR = np.zeros((x.size, self.m), order="F")
                self.gram = np.zeros((self.m, self.m))
            col = self.next_col
            self.dG[:, col] = g - self.g_prev
            self.dR[:, col] = r - self.r_prev
            products = self.dR.T @ self.dR[:, col]
            self.gram[col, :] = products
            self.gram[:, col] = products
            self.next_col = (col + 1) % self.m
            self.n_cols = min(self.n_cols + 1, self.m)
        self.g_prev, self.r_prev = g.copy(), r
        self.since_reset += 1
        if self.n_cols == 0 or self.since_reset <= self.delay:
            return g, False
        order = [(self.next_col + i) % self.m for i in range(self.m)][self.m - self.n_cols:]
        rhs = self.dR.T @ r
        while order:
            gram = self.gram[np.ix_(order, order)]
            norms = np.sqrt(np.diag(gram))
            if np.all(norms > 0):
                normalized = gram / np.outer(norms, norms)
                normalized[np.diag_indices_from(normalized)] += self.reg
                eig = np.linalg.eigvalsh(normalized)
                if eig[0] > 0 and np.sqrt(eig[-1] / eig[0]) <= self.max_condition:
                    theta_used = np.linalg.solve(normalized, rhs[order] / norms) / norms
                    if np.all(np.isfinite(theta_used)):
                        theta = np.zeros(self.m)
                        theta[order] = theta_used
                        if self.beta == 1.0:
                            return g - self.dG @ theta, True
                        return (x + self.beta * r - self.dG @ theta
                                + (1.0 - self.beta) * (self.dR @ theta)), True
            order = order[1:]
        self.reset()
        return g, False


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"memory": 1},
        {"memory": 3, "damping": 0.4},
        {"memory": 6, "delay": 2},
        {"memory": 4, "regularization": 0.0},
        {"memory": 5, "max_condition": 10.0},  # columns dropped often
        {"memory": 8, "max_condition": 1e3, "damping": 0.7},
    ],
)
@pytest.mark.parametrize("d", [1, 3, 40])
def test_iterates_are_those_of_the_plain_algorithm_bit_for_bit(options, d):
    # Reused buffers and fewer NumPy calls per step must not change a single iterate: with
    # rejections (resets), collinear and ill-conditioned histories, and a change of size.
    aa = AndersonAcceleration(**options)
    ref = _PlainAnderson(aa.memory, aa.regularization, aa.damping, aa.max_condition, aa.delay)
    for size in (d, d + 2):
        A, b, _ = _linear_map(size + len(options), d=size, rho=0.97)
        x = np.zeros(size)
        for k in range(70):
            g = A @ x + b
            if k % 9 == 8:  # a refused proposal: both forget their history
                aa.safeguard(1.0, 0.0)
                ref.reset()
            out = aa.update(x, g)
            expected, extrapolated = ref.update(x, g)
            assert aa.extrapolated == extrapolated
            np.testing.assert_array_equal(out, expected)
            x = out
        aa.reset()
        ref.reset()


def _nonlinear_maps(k, d, seed):
    """k contractive maps G_i(x) = A_i tanh(x) + b_i (different per problem)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((k, d, d)) * 0.9 / np.sqrt(d)
    b = rng.standard_normal((k, d))
    return lambda X: np.einsum("kij,kj->ki", A, np.tanh(X)) + b


@pytest.mark.parametrize(
    "options",
    [
        {"memory": 3},
        {"memory": 5, "damping": 0.7, "delay": 2},
        {"memory": 4, "regularization": 0.0, "max_condition": 10.0},
    ],
)
def test_batched_equals_single_accelerators_run_one_by_one(options, monkeypatch):
    # the per-problem fallback (old columns dropped) is counted when the batch calls it
    calls = []
    one_by_one = anderson_module._history_coefficients
    monkeypatch.setattr(anderson_module, "_history_coefficients",
                        lambda *args: calls.append(1) or one_by_one(*args))
    k, d = 5, 7
    G = _nonlinear_maps(k, d, 0)
    batched = AndersonAcceleration(**options).batched(k)
    singles = [AndersonAcceleration(**options) for _ in range(k)]
    X = np.zeros((k, d))
    x_single = X.copy()
    extrapolated = 0
    batched_calls = 0
    for _ in range(14):  # (not to machine precision: conditioning is then a coin toss)
        before = len(calls)
        X = batched.update(X, G(X))
        batched_calls += len(calls) - before
        g = G(x_single)
        x_single = np.stack([aa.update(x, gi) for aa, x, gi in zip(singles, x_single, g)])
        np.testing.assert_allclose(X, x_single, rtol=1e-9, atol=1e-12)
        assert batched.extrapolated.tolist() == [aa.extrapolated for aa in singles]
        assert batched.n_resets.tolist() == [aa.n_resets for aa in singles]
        extrapolated += int(batched.extrapolated.sum())
    assert extrapolated > k * 8
    # max_condition 10 sends problems through the fallback in the third case only
    assert (batched_calls > 0) == ("max_condition" in options)


def test_batched_subsets_safeguard_keep_and_shift():
    k, d = 4, 6
    G = _nonlinear_maps(k, d, 1)
    batched = AndersonAcceleration(memory=3).batched(k)
    singles = [AndersonAcceleration(memory=3) for _ in range(k)]
    X = np.zeros((k, d))
    rows = np.array([0, 2, 3])
    for it in range(8):
        # problem 1 moves only every other step; the others every step
        move = rows if it % 2 else np.arange(k)
        out = batched.update(X[move], G(X)[move], move)
        g = G(X)
        for c, i in enumerate(move):
            np.testing.assert_allclose(out[c], singles[i].update(X[i], g[i]), rtol=1e-9)
        X[move] = out
    values = np.array([1.0, np.nan, 3.0, 0.5])
    references = np.array([2.0, 2.0, 2.0, 2.0])
    accepted = batched.safeguard(values, references)
    expected = [aa.safeguard(v, r) for aa, v, r in zip(singles, values, references)]
    assert accepted.tolist() == expected == [True, False, False, True]
    assert batched.n_rejected.tolist() == [aa.n_rejected for aa in singles]
    assert batched._n_cols.tolist() == [aa.history_size for aa in singles]
    # dropping problem 0 keeps the others' histories; a shift of origin moves both the
    # iterate and the map (differences unchanged): the proposal moves by the same shift
    batched.keep(np.array([False, True, True, True]))
    singles = singles[1:]
    X = X[1:]
    delta = np.linspace(-1.0, 1.0, d)
    batched.shift(np.tile(delta, (3, 1)))
    for aa in singles:
        aa._g_prev += delta
    g = G(np.vstack([X[:1], X]))[1:]  # maps of problems 1..3
    out = batched.update(X + delta, g + delta)
    for c, aa in enumerate(singles):
        np.testing.assert_allclose(out[c], aa.update(X[c] + delta, g[c] + delta), rtol=1e-9)


def test_batched_threads_give_the_same_iterates():
    # problems are independent: their steps do not depend on how they are spread
    k, d = 6, 300
    G = _nonlinear_maps(k, d, 2)
    runs = []
    for threads in (1, 2):
        batched = AndersonAcceleration(memory=4, damping=0.8).batched(k)
        X = np.zeros((k, d))
        for _ in range(9):
            X = batched.update(X, G(X), n_threads=threads)
        runs.append(X)
    np.testing.assert_array_equal(runs[0], runs[1])


def test_batched_rejects_bad_shapes():
    with pytest.raises(ValueError, match="memory must be at most 64"):
        AndersonAcceleration(memory=65).batched(2)
    batched = AndersonAcceleration().batched(2)
    with pytest.raises(ValueError, match="same shape"):
        batched.update(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="rows for"):
        batched.update(np.zeros((2, 3)), np.zeros((2, 3)), rows=[0])
    batched.update(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="changed size"):
        batched.update(np.zeros((2, 4)), np.ones((2, 4)))
