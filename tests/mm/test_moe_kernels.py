"""The mixture-of-experts kernels (mmopt_ext._moe) against NumPy/SciPy references."""

import numpy as np
import pytest
from scipy.special import log_softmax, logsumexp
from scipy.stats import norm

from mmopt.mm.moe import MoEProblem
from mmopt_ext import _moe


def random_case(seed):
    """Random sizes (row counts below, at and across the kernels' 256-row blocks), data,
    weights and parameters; some cases with sharp gates (logits in the hundreds)."""
    rng = np.random.default_rng(seed)
    n = int(rng.choice([1, 7, 255, 256, 257, 600, 1500]))
    p, K = int(rng.integers(1, 6)), int(rng.integers(2, 6))
    Z = np.column_stack([np.ones(n), rng.standard_normal((n, p - 1)) * rng.uniform(0.5, 3)])
    y = rng.standard_normal(n) * 2
    W = rng.standard_normal((K, p)) * (100.0 if seed % 5 == 0 else 1.0)
    W[-1] = 0.0
    B = rng.standard_normal((K, p))
    variances = rng.uniform(0.05, 2.0, K)
    R = rng.random((n, K))
    return Z, y, W, B, variances, R


def reference_gate_objective(Z, R, W):
    log_pi = log_softmax(Z @ W.T, axis=1)
    P = np.exp(log_pi)
    r = R.sum(axis=1)
    value = -np.sum(R * log_pi)
    grad = -((R - r[:, None] * P).T @ Z)[:-1]
    A = R.shape[1] - 1
    # sum_i r_i (delta_ab P_ia - P_ia P_ib) z_ij z_il
    middle = np.einsum("ia,ab->iab", P[:, :A], np.eye(A)) - np.einsum("ia,ib->iab", P[:, :A],
                                                                        P[:, :A])
    H = np.einsum("i,iab,ij,il->ajbl", r, middle, Z, Z)
    return value, grad.ravel(), H.reshape(A * Z.shape[1], A * Z.shape[1])


def close(a, b, rtol=1e-12):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(float(np.max(np.abs(b))), 1e-300)
    return float(np.max(np.abs(a - b))) <= rtol * scale


@pytest.mark.parametrize("seed", range(20))
def test_gate_objective_matches_reference(seed):
    Z, _, W, _, _, R = random_case(seed)
    K, p = R.shape[1], Z.shape[1]
    grad, hess = np.empty((K - 1) * p), np.empty(((K - 1) * p) ** 2)
    value = _moe.gate_objective(Z, R, W[:-1].copy(), grad, hess, True)
    ref_value, ref_grad, ref_hess = reference_gate_objective(Z, R, W)
    assert close(value, ref_value)
    assert close(grad, ref_grad, rtol=1e-11)
    assert close(hess.reshape(ref_hess.shape), ref_hess)
    assert np.array_equal(hess.reshape(ref_hess.shape), hess.reshape(ref_hess.shape).T)
    assert _moe.gate_objective(Z, R, W[:-1].copy(), None, None, False) == value


@pytest.mark.parametrize("seed", range(20))
def test_e_step_matches_reference(seed):
    Z, y, W, B, variances, _ = random_case(seed)
    joint = log_softmax(Z @ W.T, axis=1) + norm.logpdf(y[:, None], Z @ B.T,
                                                         np.sqrt(variances))
    log_norm = logsumexp(joint, axis=1)
    R = np.full((len(y), len(variances)), np.nan)
    total = _moe.e_step(Z, y, W, B, variances, R)
    assert close(total, log_norm.sum())
    assert close(R, np.exp(joint - log_norm[:, None]))
    assert np.allclose(R.sum(axis=1), 1.0, rtol=0, atol=1e-14)


@pytest.mark.parametrize("seed", range(20))
def test_expert_moments_and_residuals_match_reference(seed):
    Z, y, _, B, _, R = random_case(seed)
    K, p = R.shape[1], Z.shape[1]
    gram, rhs, mass, squares = np.empty((K, p, p)), np.empty((K, p)), np.empty(K), np.empty(K)
    _moe.expert_moments(Z, y, R, gram, rhs, mass)
    _moe.expert_residuals(Z, y, R, B, squares)
    assert close(gram, np.einsum("ik,ij,il->kjl", R, Z, Z))
    assert close(rhs, np.einsum("ik,i,ij->kj", R, y, Z))
    assert close(mass, R.sum(axis=0))
    assert close(squares, np.einsum("ik,ik->k", R, (y[:, None] - Z @ B.T) ** 2))


def test_em_step_matches_reference():
    # The experts' half of one EM step, recomputed with NumPy: weighted least squares and
    # weighted residual variances under the responsibilities of the current parameters.
    Z, y, W, B, variances, _ = random_case(3)
    X = Z[:, 1:]
    problem = MoEProblem(X, y, len(variances), MoEProblem.pack(W, B, variances))
    new_x, fun = problem.mm_step(problem.x0)
    joint = log_softmax(Z @ W.T, axis=1) + norm.logpdf(y[:, None], Z @ B.T,
                                                         np.sqrt(variances))
    R = np.exp(joint - logsumexp(joint, axis=1, keepdims=True))
    assert np.isclose(fun, -np.mean(logsumexp(joint, axis=1)), rtol=1e-12)
    _, new_B, new_variances = problem.unpack(new_x)
    for k in range(len(variances)):
        sqrt_w = np.sqrt(R[:, k])
        beta = np.linalg.lstsq(Z * sqrt_w[:, None], y * sqrt_w, rcond=None)[0]
        assert np.allclose(new_B[k], beta, rtol=1e-9, atol=1e-12)
        expected = np.sum(R[:, k] * (y - Z @ beta) ** 2) / R[:, k].sum()
        assert np.isclose(new_variances[k], expected, rtol=1e-9)


def test_kernels_reject_mismatched_shapes(fuzz):
    # Bounds are not checked inside the loops: run in a subprocess, so that an access out of
    # bounds fails this test instead of the suite.
    fuzz.run_isolated(
        """
        import numpy as np
        import pytest
        from mmopt_ext import _moe

        n, p, K = 300, 3, 3
        Z, y, R = np.ones((n, p)), np.ones(n), np.full((n, K), 1 / K)
        W, B, v = np.zeros((K, p)), np.zeros((K, p)), np.ones(K)
        for call in [
            lambda: _moe.gate_objective(Z, R[:-1], W[:-1].copy(), None, None, False),
            lambda: _moe.gate_objective(Z, R, W, None, None, False),
            lambda: _moe.gate_objective(Z, R, W[:-1].copy(), np.empty(1), np.empty(1), True),
            lambda: _moe.e_step(Z, y[:-1], W, B, v, R.copy()),
            lambda: _moe.e_step(Z, y, W, B, v[:-1].copy(), R.copy()),
            lambda: _moe.e_step(Z, y, W, B, v, np.empty((n, K + 1))),
            lambda: _moe.expert_moments(Z, y, R, np.empty((K, p, p + 1)), np.empty((K, p)),
                                        np.empty(K)),
            lambda: _moe.expert_moments(Z, y[:-1], R, np.empty((K, p, p)), np.empty((K, p)),
                                        np.empty(K)),
            lambda: _moe.expert_residuals(Z, y, R, B[:, :-1].copy(), np.empty(K)),
            lambda: _moe.expert_residuals(Z, y, R, B, np.empty(K - 1)),
            lambda: _moe.e_step_moments(Z, y, W, B, v, R.copy(), np.empty((K, p, p)),
                                        np.empty((K, p)), np.empty(K), np.empty(1),
                                        np.empty(((K - 1) * p) ** 2)),
            lambda: _moe.e_step_moments(Z, y[:-1], W, B, v, R.copy(), np.empty((K, p, p)),
                                        np.empty((K, p)), np.empty(K), np.empty((K - 1) * p),
                                        np.empty(((K - 1) * p) ** 2)),
        ]:
            with pytest.raises(ValueError, match="do not match|grad must have"):
                call()
        """
    )


def test_fortran_ordered_and_strided_inputs_give_the_same_fit():
    from mmopt.datasets import make_moe_regression
    from mmopt.mm import MixtureOfExperts

    X, y, _ = make_moe_regression(500, 2, 2, noise=0.3, random_state=0)
    reference = MixtureOfExperts(2, n_init=1, random_state=0).fit(X, y)
    for X_other in (np.asfortranarray(X), np.repeat(X, 2, axis=1)[:, ::2]):
        other = MixtureOfExperts(2, n_init=1, random_state=0).fit(X_other, y)
        np.testing.assert_array_equal(other.coef_, reference.coef_)


@pytest.mark.parametrize("seed", range(20))
def test_e_step_moments_matches_reference(seed):
    # The fused pass against the NumPy references of its parts: responsibilities and
    # log-likelihood, the experts' normal equations of those responsibilities, and the
    # gates' objective with its derivatives at the same gates.
    Z, y, W, B, variances, _ = random_case(seed)
    K, p = len(variances), Z.shape[1]
    joint = log_softmax(Z @ W.T, axis=1) + norm.logpdf(y[:, None], Z @ B.T,
                                                         np.sqrt(variances))
    log_norm = logsumexp(joint, axis=1)
    R_ref = np.exp(joint - log_norm[:, None])
    R = np.full((len(y), K), np.nan)
    gram, rhs, mass = np.empty((K, p, p)), np.empty((K, p)), np.full(K, np.nan)
    grad, hess = np.empty((K - 1) * p), np.empty(((K - 1) * p) ** 2)
    total, gate_value = _moe.e_step_moments(Z, y, W, B, variances, R, gram, rhs, mass, grad,
                                            hess)
    assert close(total, log_norm.sum())
    assert close(R, R_ref)
    assert close(gram, np.einsum("ik,ij,il->kjl", R_ref, Z, Z))
    assert close(rhs, np.einsum("ik,i,ij->kj", R_ref, y, Z))
    assert close(mass, R_ref.sum(axis=0))
    ref_value, ref_grad, ref_hess = reference_gate_objective(Z, R_ref, W)
    assert close(gate_value, ref_value)
    assert close(grad, ref_grad, rtol=1e-11)
    assert close(hess.reshape(ref_hess.shape), ref_hess)


@pytest.mark.parametrize("seed", range(10))
def test_fused_em_step_matches_separate_passes(seed):
    # MoEProblem.mm_step starts the M-step from the fused pass's sums; the M-step from
    # the responsibilities alone (separate passes, fit_gates' own first evaluation) must
    # give the same parameters.
    Z, y, W, B, variances, _ = random_case(seed)
    if Z.shape[0] < 50:
        return
    W = W / np.abs(W).max()  # gates a Newton solve can start from
    problem = MoEProblem(Z[:, 1:], y, len(variances), MoEProblem.pack(W, B, variances))
    fused, fun = problem.mm_step(problem.x0)
    R = np.empty((len(y), len(variances)))
    assert close(fun, problem._e_step(problem.x0, R))
    separate = problem.m_step(R, problem.unpack(problem.x0)[0])
    assert close(fused, separate, rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 3, 6])
def test_scalar_and_vector_logs_agree(seed):
    # The kernels' logs (libmvec's AVX2 log where available, else the C library's): both
    # paths against the NumPy reference.
    Z, y, W, B, variances, R = random_case(seed)
    joint = log_softmax(Z @ W.T, axis=1) + norm.logpdf(y[:, None], Z @ B.T,
                                                         np.sqrt(variances))
    expected = logsumexp(joint, axis=1).sum()
    ref_value = reference_gate_objective(Z, R, W)[0]
    try:
        for vector in (False, True):
            _moe._select_log_path(vector)
            out = np.empty((len(y), len(variances)))
            assert close(_moe.e_step(Z, y, W, B, variances, out), expected)
            assert close(_moe.gate_objective(Z, R, W[:-1].copy(), None, None, False),
                         ref_value)
    finally:
        _moe._select_log_path(True)
