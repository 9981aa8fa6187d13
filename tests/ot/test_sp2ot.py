import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from mmopt.mm import MMSolver
from mmopt.ot import (
    SP2OTProblem,
    progressive_partial_ot,
    semantic_graph,
    sp2ot_pseudo_labels,
)


def _blobs(seed, n_major=60, n_minor=15):
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(0, 1, (n_major, 2)), rng.normal(4, 1, (n_minor, 2)),
                   rng.normal((0, 5), 1, (n_minor, 2))])
    truth = np.repeat([0, 1, 2], [n_major, n_minor, n_minor])
    centers = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
    logits = -0.5 * ((X[:, None] - centers[None]) ** 2).sum(-1) + rng.normal(0, 1, (len(X), 3))
    C = -(logits - np.log(np.exp(logits).sum(1, keepdims=True)))
    return X, truth, logits, C


def test_semantic_graph_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    S = semantic_graph(X, n_neighbors=4, sigma=0.7).toarray()
    D = ((X[:, None] - X[None]) ** 2).sum(-1)
    np.fill_diagonal(D, np.inf)
    reference = np.zeros_like(D)
    for i in range(30):
        nearest = np.argsort(D[i])[:4]
        reference[i, nearest] = np.exp(-D[i, nearest] / (2 * 0.7**2))
    np.testing.assert_allclose(S, reference, atol=1e-12)
    assert np.all(np.diag(S) == 0)


def _run(problem, **options):
    settings = {"anderson": False, "stopping": "objective", "tol": 1e-10, "max_iter": 40}
    settings.update(options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MMSolver(**settings).solve(problem)


@pytest.mark.parametrize("anderson", [False, True])
def test_objective_never_increases(anderson):
    X, _, _, C = _blobs(0)
    problem = SP2OTProblem(C, semantic_graph(X, 8), rho=0.5, lam=2.0)
    res = _run(problem, anderson=anderson)
    fun = res.history["fun"]
    assert np.all(np.diff(fun) <= 1e-12 * np.abs(fun[1:]))
    # The semantic term lowers F below the plain P2OT plan's value.
    assert res.fun < problem.objective(problem.initial_point()) - 1e-6


def _non_psd_graph(n, seed):
    # A symmetric graph with strongly negative eigenvalues: edges between the two halves
    # only (bipartite), so -<S, D D^T> is not >= 0 and the linearization does not majorize.
    rng = np.random.default_rng(seed)
    half = n // 2
    B = (rng.random((half, n - half)) < 0.3) * 1.0
    return sp.csr_matrix(np.block([[np.zeros((half, half)), B],
                                   [B.T, np.zeros((n - half, n - half))]]))


def test_non_psd_graph_safeguard():
    X, _, _, C = _blobs(1)
    S = _non_psd_graph(C.shape[0], 1)
    assert np.linalg.eigvalsh(S.toarray()).min() < -1.0
    plain = SP2OTProblem(C, S, rho=0.3, lam=100.0, safeguard=False)
    guarded = SP2OTProblem(C, S, rho=0.3, lam=100.0)
    # Without the safeguard the linearization overshoots: F goes up at some step.
    x, increased = plain.initial_point(), False
    for _ in range(6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the overshooting inner solves are slow
            new, fun, _ = plain.safeguarded_step(x)
        increased |= fun > plain.objective(x) + 1e-9
        x = new
    assert increased
    # With it F never increases, and the halving was needed.
    x, halvings = guarded.initial_point(), 0
    for _ in range(6):
        new, fun, h = guarded.safeguarded_step(x)
        assert fun <= guarded.objective(x) + 1e-12 * abs(fun)
        halvings += h
        x = new
    assert halvings > 0
    res = _run(guarded, anderson=True, max_iter=15)
    assert np.all(np.diff(res.history["fun"]) <= 1e-12 * np.abs(res.history["fun"][1:]))


def test_plans_stay_feasible():
    X, _, _, C = _blobs(2)
    problem = SP2OTProblem(C, semantic_graph(X, 8), rho=0.4, lam=5.0)
    res = _run(problem, anderson=True)
    Q = res.x.reshape(problem.shape)
    n = Q.shape[0]
    assert np.all(Q >= 0) and np.all(Q.sum(1) <= 1 / n + 1e-14)
    assert Q.sum() == pytest.approx(0.4, abs=1e-9)


def test_projection_is_feasible():
    X, _, _, C = _blobs(3)
    problem = SP2OTProblem(C, semantic_graph(X, 5), rho=0.3, lam=1.0)
    rng = np.random.default_rng(0)
    for scale in (0.1, 1.0, 10.0):
        Q = problem.project(rng.normal(0, scale / C.size, C.size)).reshape(C.shape)
        assert np.all(Q >= 0) and np.all(Q.sum(1) <= 1 / C.shape[0] + 1e-15)
        assert Q.sum() == pytest.approx(0.3, abs=1e-12)


def test_lam_zero_is_p2ot():
    X, _, _, C = _blobs(4)
    problem = SP2OTProblem(C, semantic_graph(X, 5), rho=0.5, lam=0.0)
    res = _run(problem)
    reference = progressive_partial_ot(C, 0.5, tol=1e-12).plan
    np.testing.assert_allclose(res.x.reshape(C.shape), reference, atol=1e-8)


def test_pseudo_labels_on_imbalanced_blobs(fuzz):
    X, truth, logits, _ = _blobs(5)
    before = fuzz.snapshot(logits, X)
    res = sp2ot_pseudo_labels(logits, X, rho=0.5, lam=1.0, n_neighbors=8)
    fuzz.assert_unchanged(before, logits, X)
    assert res.plan.shape == (90, 3) and res.labels.shape == (90,)
    assert res.mask.dtype == bool and 0 < res.mask.mean() <= 1
    np.testing.assert_allclose(res.confidence, res.plan.sum(1) * 90)
    # Mostly right (a uniform prior pulls some majority samples into the small clusters).
    accuracy = res.labels == truth
    assert accuracy[res.mask].mean() > 0.75


@pytest.mark.parametrize(
    "kwargs, name",
    [({"features": np.ones((5, 2))}, "features"), ({"logits": np.ones(90)}, "logits"),
     ({"rho": 0.0}, "rho"), ({"lam": -1.0}, "lam"), ({"threshold": 2.0}, "threshold"),
     ({"n_neighbors": 0}, "n_neighbors"), ({"features": "x"}, "features")],
)
def test_bad_inputs(fuzz, kwargs, name):
    X, _, logits, _ = _blobs(6)
    args = {"logits": logits, "features": X, "rho": 0.5}
    args.update(kwargs)
    fuzz.raises_naming(sp2ot_pseudo_labels, name, **args)


def test_bad_graph_shape():
    _, _, _, C = _blobs(7)
    with pytest.raises(ValueError, match="S must"):
        SP2OTProblem(C, sp.eye(5), rho=0.5)


def test_one_solver_serves_two_threads():
    # SP2OT stores its options only: vars() unchanged by solves, and two threads sharing
    # one instance get the answers of sequential solves.
    from concurrent.futures import ThreadPoolExecutor

    from mmopt.ot import SP2OT

    problems = []
    for seed in (1, 2):
        X, _, _, C = _blobs(seed)
        problems.append(SP2OTProblem(C, semantic_graph(X, 5), rho=0.6, lam=20.0))
    solver = SP2OT(max_iter=15)
    before = dict(vars(solver))
    sequential = [solver.solve(p) for p in problems]
    assert vars(solver) == before
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(solver.solve, problems * 2))
    assert vars(solver) == before
    for res, ref in zip(threaded, sequential * 2):
        assert res.nit == ref.nit
        np.testing.assert_allclose(res.x, ref.x, rtol=0, atol=1e-14)
        assert res.fun == pytest.approx(ref.fun, rel=1e-14)
    assert not np.allclose(sequential[0].x, sequential[1].x)
