"""The OT family's Cython kernel against a plain NumPy reference."""

import numpy as np
import pytest
from scipy.special import logsumexp

from mmopt.ot._kernels import log_half_step


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (40, 70)])
@pytest.mark.parametrize("reg", [1.0, 1e-2, 1e-4])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_log_half_step_matches_numpy(shape, reg, n_threads):
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    C = rng.random(shape)
    # Potentials of the size reg * O(1), as in a solve (larger ones overflow the plan itself).
    g, f_old = reg * rng.standard_normal(shape[1]), reg * rng.standard_normal(shape[0])
    log_a = np.log(rng.dirichlet(np.ones(shape[0])))
    f_new, row_mass = log_half_step(C, g, f_old, log_a, reg, n_threads=n_threads)
    lse = logsumexp((g[None, :] - C) / reg, axis=1)
    np.testing.assert_allclose(f_new, reg * (log_a - lse), rtol=1e-12, atol=1e-12 * reg)
    expected_mass = np.exp(logsumexp((f_old[:, None] + g[None, :] - C) / reg, axis=1))
    np.testing.assert_allclose(row_mass, expected_mass, rtol=1e-10)


def test_thread_count_does_not_change_the_result():
    rng = np.random.default_rng(0)
    C = rng.random((300, 200))
    args = (C, rng.random(200), rng.random(300), np.log(np.full(300, 1 / 300)), 1e-3)
    one, two = log_half_step(*args, n_threads=1), log_half_step(*args, n_threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
